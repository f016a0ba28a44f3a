//! S5: reconnect storm with resume. Clients connect, all drop at once, one
//! message is sent to each while it is away, then all reconnect together
//! (at most `connect_parallel` handshakes in flight, as a fleet with
//! jittered backoff would). Connect time is TCP connect to the 101
//! answer; resume time runs until the missed message has arrived.

use super::{Checks, CpuMeter, Ctx, Outcome, histogram};
use crate::client::{self, SINGLE};
use futures::SinkExt;
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;

const QUIET: Duration = Duration::from_secs(30);

pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let s = ctx.scale;
    let n = s.storm_clients;
    ctx.topo.quiesce().await;
    let users = ctx.pool.get(ctx.topo, n + 1).await?;
    let (sender, clients) = (users[n].clone(), users[..n].to_vec());
    let name = ctx.topo.kind.name();
    let limit = Arc::new(Semaphore::new(s.connect_parallel));

    // First connection of every client, then all drop together.
    let bar = crate::bar(format!("s5 {name}: first connect"), n as u64);
    let mut first = Vec::new();
    for (i, u) in clients.iter().enumerate() {
        let (url, limit, bar) = (ctx.topo.ws_url(i, &u.token), limit.clone(), bar.clone());
        first.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let (mut tx, mut rx) = client::connect_split(&url, None).await?;
            client::handshake(&mut tx, &mut rx).await?;
            bar.inc(1);
            anyhow::Ok((tx, rx))
        }));
    }
    let mut open = Vec::new();
    for f in first {
        open.push(f.await??);
    }
    bar.finish_and_clear();
    for (mut tx, _rx) in open {
        let _ = tx.close().await;
    }
    drop(limit);
    // While they are away, one message each: a pair run with the sender on
    // one side and every client on the other.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.topo.quiesce().await;
    send_one_each(ctx, &sender, &clients).await?;

    let limit = Arc::new(Semaphore::new(s.connect_parallel));
    let bar = crate::bar(format!("s5 {name}: storm"), n as u64);
    let cpu = CpuMeter::start(ctx.topo);
    let start = client::now_us();
    let mut tasks = Vec::new();
    for (i, u) in clients.iter().enumerate() {
        let (url, limit, bar) = (ctx.topo.ws_url(i + 1, &u.token), limit.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await?;
            let t0 = client::now_us();
            let (mut tx, mut rx) = client::connect_split(&url, None).await?;
            let connected = client::now_us();
            drop(permit);
            let mut got = 0;
            while got == 0 {
                let Some(f) = client::next_frame(&mut rx, QUIET).await? else { break };
                if f.kind == SINGLE {
                    got += 1;
                    let conv = f.conversation_id.unwrap_or_default();
                    tx.send(client::ack(&conv, f.seq)).await?;
                }
            }
            let resumed = client::now_us();
            bar.inc(1);
            anyhow::Ok((tx, rx, connected - t0, connected, resumed - t0, got))
        }));
    }
    let mut checks = Checks { expected: n as u64, ..Default::default() };
    let (mut connect, mut resume) = (histogram(), histogram());
    let mut last_connected = start;
    let mut keep = Vec::new();
    for t in tasks {
        match t.await? {
            Ok((tx, rx, c, at, r, got)) => {
                connect.record(c.max(1))?;
                resume.record(r.max(1))?;
                last_connected = last_connected.max(at);
                checks.delivered += got.min(1);
                checks.duplicated += got.saturating_sub(1);
                keep.push((tx, rx));
            }
            Err(e) => {
                if checks.errors == 0 {
                    eprintln!("a storm client failed: {e:#}");
                }
                checks.errors += 1;
            }
        }
    }
    bar.finish_and_clear();
    checks.lost = checks.expected - checks.delivered;
    // The acks are sent; give the server a moment to record them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (mut tx, _rx) in keep {
        let _ = tx.close().await;
    }
    let span = last_connected.saturating_sub(start).max(1) as f64 / 1e6;
    let mut o = Outcome::new("s5", ctx.topo, format!("{n} clients"));
    o.set("clients", n as f64)
        .set("parallel", s.connect_parallel as f64)
        .set("connects_per_sec", (n as u64 - checks.errors) as f64 / span);
    o.percentiles("connect", &connect);
    o.percentiles("resume", &resume);
    cpu.finish(&mut o, "connect", n as u64);
    o.checks = checks;
    Ok(vec![o])
}

/// One message from `sender` to each of `clients`, all acknowledged.
async fn send_one_each(
    ctx: &mut Ctx<'_>,
    sender: &crate::users::User,
    clients: &[crate::users::User],
) -> anyhow::Result<()> {
    let (mut tx, mut rx) = client::connect_split(&ctx.topo.ws_url(0, &sender.token), None).await?;
    client::handshake(&mut tx, &mut rx).await?;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let window = ctx.scale.window.max(1);
    let (mut sent, mut acked) = (0, 0);
    while acked < clients.len() {
        while sent < clients.len() && sent - acked < window {
            let payload = client::Payload { i: 0, t: client::now_us() };
            tx.feed(client::single(clients[sent].id, &format!("{tag}-{sent}"), payload)).await?;
            sent += 1;
        }
        tx.flush().await?;
        match client::next_frame(&mut rx, QUIET).await? {
            Some(f) if f.kind == client::ACK => acked += 1,
            Some(f) if f.kind == client::ERROR => anyhow::bail!("send refused: {:?}", f.code),
            Some(_) => {}
            None => anyhow::bail!("sender socket closed"),
        }
    }
    let _ = tx.close().await;
    Ok(())
}
