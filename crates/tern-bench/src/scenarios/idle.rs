//! S1: idle capacity. Authenticated connections that only heartbeat, held
//! by worker processes (each under the open-file limit, each from its own
//! 127.0.0.x source address) and spread over the front processes. We
//! report each front process's RSS growth per connection and the CPU its
//! heartbeats cost, per process and in total.

use super::{Checks, Ctx, Outcome};
use crate::worker::Report;
use anyhow::{Context, bail};
use std::{process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};

pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let s = ctx.scale;
    let fronts = ctx.topo.front().len();
    let total = s.idle_per_process * fronts;
    let users = ctx.pool.get(ctx.topo, total).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ctx.topo.front_samples();

    // Connection i goes to front i % fronts; worker w takes a contiguous
    // share so every worker spreads over every front.
    let workers = total.div_ceil(s.idle_per_worker.max(1)).max(1);
    let per_worker = total.div_ceil(workers);
    let exe = crate::procs::tool()?;
    let mut children = Vec::new();
    for w in 0..workers {
        let share: Vec<String> = (w * per_worker..((w + 1) * per_worker).min(total))
            .map(|i| ctx.topo.ws_url(i, &users[i].token))
            .collect();
        let file = ctx.out.join(format!("s1-{}-worker-{w}.urls", ctx.topo.kind.name()));
        std::fs::write(&file, share.join("\n"))?;
        let bind = format!("127.0.0.{}", w + 1);
        let mut child = tokio::process::Command::new(&exe)
            .args(["worker-idle", "--urls"])
            .arg(&file)
            .args(["--bind", &bind, "--hb-secs", &s.hb_secs.to_string()])
            .args(["--parallel", &s.connect_parallel.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        children.push((child, lines, file));
    }
    let bar = crate::bar(format!("s1 {}: connect", ctx.topo.kind.name()), workers as u64);
    let mut checks = Checks { expected: total as u64, ..Default::default() };
    for (_, lines, _) in &mut children {
        let line = lines.next_line().await?.context("worker ended before connecting")?;
        let r: Report = serde_json::from_str(&line)?;
        checks.errors += r.failed;
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Let allocations settle, then measure memory, then heartbeat CPU.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctx.topo.check_alive()?;
    let after = ctx.topo.front_samples();
    let cpu0 = ctx.topo.all_samples();
    tokio::time::sleep(Duration::from_secs_f64(s.cpu_window_secs)).await;
    let cpu1 = ctx.topo.all_samples();

    let mut finished = Report::default();
    for (mut child, mut lines, file) in children {
        drop(child.stdin.take());
        let line = lines.next_line().await?.context("worker ended without its report")?;
        let r: Report = serde_json::from_str(&line)?;
        if r.phase != "finished" {
            bail!("unexpected worker report {line}");
        }
        finished.connected += r.connected;
        finished.heartbeats_sent += r.heartbeats_sent;
        finished.heartbeats_answered += r.heartbeats_answered;
        finished.dropped += r.dropped;
        let _ = child.wait().await;
        let _ = std::fs::remove_file(file);
    }
    checks.delivered = finished.connected - finished.dropped;
    checks.lost = checks.expected - checks.delivered;

    let name = ctx.topo.kind.name();
    let mut out = Vec::new();
    let mut total_delta = 0.0;
    let per_front = total as f64 / fronts as f64;
    for (i, p) in ctx.topo.front().into_iter().enumerate() {
        let delta = after[i].rss_bytes as f64 - before[i].rss_bytes as f64;
        total_delta += delta;
        let cpu = cpu1[i].1.cpu_secs - cpu0[i].1.cpu_secs;
        let mut o = Outcome::new("s1", ctx.topo, format!("{} ({name})", p.name));
        o.set("connections", per_front)
            .set("rss_before_mib", before[i].rss_bytes as f64 / 1048576.0)
            .set("rss_after_mib", after[i].rss_bytes as f64 / 1048576.0)
            .set("rss_per_conn_kib", delta / per_front / 1024.0)
            .set("heartbeat_cpu_pct", cpu / s.cpu_window_secs * 100.0);
        out.push(o);
    }
    let all_cpu: f64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a.1.cpu_secs - b.1.cpu_secs).sum();
    let mut o = Outcome::new("s1", ctx.topo, "total");
    o.set("connections", total as f64)
        .set("workers", workers as f64)
        .set("rss_per_conn_kib", total_delta / total as f64 / 1024.0)
        .set("heartbeat_interval_secs", s.hb_secs)
        .set("heartbeats_answered", finished.heartbeats_answered as f64)
        .set("heartbeat_cpu_pct_all_processes", all_cpu / s.cpu_window_secs * 100.0);
    o.checks = checks;
    if finished.heartbeats_answered + (total as u64) < finished.heartbeats_sent {
        o.checks.errors += finished.heartbeats_sent - finished.heartbeats_answered;
    }
    out.push(o);
    Ok(out)
}
