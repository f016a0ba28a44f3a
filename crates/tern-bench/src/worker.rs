//! The idle-connection worker: a child `tern-bench` process holding a
//! share of S1's connections, so no process passes the open-file limit.
//! It reads one WebSocket URL per line from a file, connects them all from
//! its own source address, heartbeats each every `hb_secs`, and speaks to
//! its parent in JSON lines on stdout: one when everything is connected,
//! one when stdin closes (the parent's signal to finish).

use crate::client;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::{io::AsyncReadExt, sync::Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What a worker reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// `connected` first, `finished` at the end.
    pub phase: String,
    pub connected: u64,
    pub failed: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_answered: u64,
    /// Sockets the server closed while they should have stayed open.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    dropped: AtomicU64,
}

pub async fn run(urls: &Path, bind: Ipv4Addr, hb_secs: f64, parallel: usize) -> anyhow::Result<()> {
    let urls: Vec<String> = std::fs::read_to_string(urls)?.lines().map(str::to_string).collect();
    let counters = Arc::new(Counters::default());
    let limit = Arc::new(Semaphore::new(parallel));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let (url, limit, counters, stop) =
            (url.clone(), limit.clone(), counters.clone(), stop.clone());
        // Spread heartbeats evenly over the interval.
        let offset = hb_secs * i as f64 / urls.len().max(1) as f64;
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await?;
            let (mut tx, mut rx) = client::connect_split(&url, Some(bind)).await?;
            client::handshake(&mut tx, &mut rx).await?;
            drop(permit);
            let conn_task = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(offset)).await;
                let mut tick = tokio::time::interval(Duration::from_secs_f64(hb_secs));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if tx.send(client::heartbeat()).await.is_err() { break; }
                            counters.sent.fetch_add(1, Relaxed);
                        }
                        msg = rx.next() => match msg {
                            Some(Ok(Message::Text(t))) if t.contains("\"type\":99") => {
                                counters.answered.fetch_add(1, Relaxed);
                            }
                            Some(Ok(_)) => {}
                            _ => { counters.dropped.fetch_add(1, Relaxed); break; }
                        },
                        _ = stop.cancelled() => { let _ = tx.close().await; break; }
                    }
                }
            });
            anyhow::Ok(conn_task)
        }));
    }
    let mut report = Report { phase: "connected".into(), ..Default::default() };
    let mut running = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(task) => {
                report.connected += 1;
                running.push(task);
            }
            Err(_) => report.failed += 1,
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    // Hold the connections until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    stop.cancel();
    for t in running {
        let _ = t.await;
    }
    report.phase = "finished".into();
    report.heartbeats_sent = counters.sent.load(Relaxed);
    report.heartbeats_answered = counters.answered.load(Relaxed);
    report.dropped = counters.dropped.load(Relaxed);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
