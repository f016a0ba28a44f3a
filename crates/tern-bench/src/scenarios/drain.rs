//! S6: offline drain. Senders fill the backlogs of users who are away
//! (every send acknowledged, so stored), then the users connect and we
//! time until each has everything, checking order and duplicates. Case A
//! is one user with many pending messages, case B many users with many
//! each, all connecting at once.

use super::{Checks, CpuMeter, Ctx, Outcome, Stream};
use crate::{
    client::{self, ACK, ERROR, Payload, SINGLE},
    users::User,
};
use futures::SinkExt;
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;

const QUIET: Duration = Duration::from_secs(30);

pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let s = ctx.scale;
    let mut out = Vec::new();
    for &(users, each) in &[(1, s.drain_one), (s.drain_users, s.drain_each)] {
        if users == 0 || each == 0 {
            continue;
        }
        let all = ctx.pool.get(ctx.topo, 2 * users).await?;
        let (receivers, senders) = all.split_at(users);
        ctx.topo.quiesce().await;
        fill(ctx, senders, receivers, each).await?;
        ctx.topo.quiesce().await;
        let cpu = CpuMeter::start(ctx.topo);
        let (checks, secs) = drain(ctx, receivers, each).await?;
        let mut o = Outcome::new("s6", ctx.topo, format!("{users} x {each}"));
        o.set("users", users as f64)
            .set("pending_each", each as f64)
            .set("drain_secs", secs)
            .set("drained_per_sec", checks.delivered as f64 / secs.max(1e-6));
        cpu.finish(&mut o, "msg", checks.delivered);
        o.checks = checks;
        out.push(o);
    }
    Ok(out)
}

/// Sender `i` sends `each` messages to receiver `i`, which is offline.
async fn fill(
    ctx: &Ctx<'_>,
    senders: &[User],
    receivers: &[User],
    each: u64,
) -> anyhow::Result<()> {
    let name = ctx.topo.kind.name();
    let bar = crate::bar(format!("s6 {name}: fill"), senders.len() as u64 * each);
    let limit = Arc::new(Semaphore::new(ctx.scale.connect_parallel.min(64)));
    let window = ctx.scale.window.max(1) as u64;
    let mut tasks = Vec::new();
    for (i, (from, to)) in senders.iter().zip(receivers).enumerate() {
        let (url, to, limit, bar) =
            (ctx.topo.ws_url(i, &from.token), to.id, limit.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let (mut tx, mut rx) = client::connect_split(&url, None).await?;
            client::handshake(&mut tx, &mut rx).await?;
            let tag = uuid::Uuid::now_v7().simple().to_string();
            let (mut sent, mut acked) = (0u64, 0u64);
            while acked < each {
                while sent < each && sent - acked < window {
                    let p = Payload { i: sent, t: client::now_us() };
                    tx.feed(client::single(to, &format!("{tag}-{sent}"), p)).await?;
                    sent += 1;
                }
                tx.flush().await?;
                match client::next_frame(&mut rx, QUIET).await? {
                    Some(f) if f.kind == ACK => {
                        acked += 1;
                        bar.inc(1);
                    }
                    Some(f) if f.kind == ERROR => anyhow::bail!("send refused: {:?}", f.code),
                    Some(_) => {}
                    None => anyhow::bail!("sender socket closed"),
                }
            }
            let _ = tx.close().await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Connects every receiver at once; returns the checks and the seconds
/// from the first connect until the last receiver had everything.
async fn drain(ctx: &Ctx<'_>, receivers: &[User], each: u64) -> anyhow::Result<(Checks, f64)> {
    let name = ctx.topo.kind.name();
    let bar = crate::bar(format!("s6 {name}: drain"), receivers.len() as u64 * each);
    let limit = Arc::new(Semaphore::new(ctx.scale.connect_parallel));
    let start = client::now_us();
    let mut tasks = Vec::new();
    for (i, u) in receivers.iter().enumerate() {
        let (url, limit, bar) = (ctx.topo.ws_url(i + 1, &u.token), limit.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await?;
            let mut session = client::Session::open(url).await?;
            drop(permit);
            let mut stream = Stream::default();
            stream.receive(&mut session, SINGLE, each, QUIET, |_| bar.inc(1)).await?;
            let done = client::now_us();
            session.ack_shown().await?;
            anyhow::Ok((stream.finish(each), done, session))
        }));
    }
    let mut checks = Checks::default();
    let mut end = start;
    let mut keep = Vec::new();
    for t in tasks {
        match t.await? {
            Ok((c, done, session)) => {
                checks.add(&c);
                end = end.max(done);
                keep.push(session);
            }
            Err(e) => {
                eprintln!("a drain receiver failed: {e:#}");
                checks.errors += 1;
                checks.expected += each;
                checks.lost += each;
            }
        }
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for session in keep {
        session.close().await;
    }
    Ok((checks, end.saturating_sub(start) as f64 / 1e6))
}
