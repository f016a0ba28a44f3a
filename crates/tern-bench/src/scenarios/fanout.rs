//! S3: group fan-out. Every member is online (spread over the front
//! processes); one member sends messages to the group with up to
//! `--group-window` of them unacknowledged, as a busy group's senders
//! together have them (1: each message alone); we measure deliveries per
//! second and, per message, the time until the last member has it. Every
//! member must get every message once, in seq order.

use super::{Checks, CpuMeter, Ctx, Outcome, Stream, histogram};
use crate::client::{self, GROUP, Payload};
use futures::SinkExt;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::sync::mpsc;

const QUIET: Duration = Duration::from_secs(30);

pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let s = ctx.scale;
    let mut out = Vec::new();
    for &size in &s.group_sizes {
        // The sender is one of the members; it gets acks, not deliveries.
        let users = ctx.pool.get(ctx.topo, size).await?;
        let (sender, members) = (&users[0], &users[1..]);
        let group = ctx.pool.group(ctx.topo, sender, members).await?;
        ctx.topo.quiesce().await;
        let k = s.group_messages;
        let name = ctx.topo.kind.name();
        let bar = crate::bar(format!("s3 {name} group {size}: connect"), members.len() as u64);
        let last_at: Arc<Vec<AtomicU64>> = Arc::new((0..k).map(|_| AtomicU64::new(0)).collect());
        let (done_tx, mut done_rx) = mpsc::channel::<anyhow::Result<Checks>>(members.len());
        let connected = Arc::new(tokio::sync::Barrier::new(members.len() + 1));
        let urls: Vec<String> =
            members.iter().enumerate().map(|(i, m)| ctx.topo.ws_url(i, &m.token)).collect();
        let limit = Arc::new(tokio::sync::Semaphore::new(s.connect_parallel));
        for url in urls {
            let (last_at, done, bar, barrier, limit) =
                (last_at.clone(), done_tx.clone(), bar.clone(), connected.clone(), limit.clone());
            tokio::spawn(async move {
                let result = async {
                    let permit = limit.acquire_owned().await?;
                    let ok = client::Session::open_idle(url).await;
                    drop(permit);
                    bar.inc(1);
                    barrier.wait().await;
                    let mut session = ok?;
                    let mut stream = Stream::default();
                    let at = |p: client::Payload| {
                        last_at[p.i as usize].fetch_max(client::now_us(), Relaxed);
                    };
                    stream.receive(&mut session, GROUP, k, QUIET, at).await?;
                    session.close().await;
                    anyhow::Ok(stream.finish(k))
                }
                .await;
                let _ = done.send(result).await;
            });
        }
        drop(done_tx);
        connected.wait().await;
        bar.finish_and_clear();
        let (mut tx, mut rx) =
            client::connect_split(&ctx.topo.ws_url(0, &sender.token), None).await?;
        client::handshake(&mut tx, &mut rx).await?;
        let cpu = CpuMeter::start(ctx.topo);
        let mut sent_at = Vec::new();
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let mut errors = 0;
        // Up to `group_window` sends in flight, as a busy group has them.
        let (mut next, mut in_flight) = (0, 0);
        while next < k || in_flight > 0 {
            while next < k && in_flight < s.group_window.max(1) {
                let t = client::now_us();
                sent_at.push(t);
                let p = Payload { i: next, t };
                tx.send(client::group(group, &format!("{tag}-{next}"), p)).await?;
                (next, in_flight) = (next + 1, in_flight + 1);
            }
            let Some(f) = client::next_frame(&mut rx, QUIET).await? else { break };
            match f.kind {
                client::ACK => in_flight -= 1,
                client::ERROR => {
                    errors += 1;
                    in_flight -= 1;
                }
                _ => {}
            }
        }
        let bar = crate::bar(format!("s3 {name} group {size}: deliver"), members.len() as u64);
        let mut checks = Checks { errors, ..Default::default() };
        let mut first_error = None;
        while let Some(r) = done_rx.recv().await {
            match r {
                Ok(c) => checks.add(&c),
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("a member failed: {e:#}"));
                    checks.errors += 1;
                    checks.expected += k;
                    checks.lost += k;
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let _ = tx.close().await;
        let mut to_last = histogram();
        let mut end = sent_at[0];
        for (i, t) in sent_at.iter().enumerate() {
            let last = last_at[i].load(Relaxed);
            end = end.max(last);
            if last > 0 {
                to_last.record(last.saturating_sub(*t).max(1))?;
            }
        }
        let span = end.saturating_sub(sent_at[0]).max(1) as f64 / 1e6;
        let mut o = Outcome::new("s3", ctx.topo, format!("group {size}"));
        o.set("members", size as f64)
            .set("messages", k as f64)
            .set("window", s.group_window as f64)
            .set("deliveries_per_sec", checks.delivered as f64 / span)
            .set("to_last_member_p50_ms", to_last.value_at_quantile(0.5) as f64 / 1000.0)
            .set("to_last_member_max_ms", to_last.max() as f64 / 1000.0);
        cpu.finish(&mut o, "delivery", checks.delivered);
        o.checks = checks;
        o.error = first_error;
        out.push(o);
        drop(tx);
    }
    Ok(out)
}
