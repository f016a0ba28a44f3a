//! 1:1 traffic between pairs of users, shared by S0, S2 and S4: each pair
//! has a sender and a receiver, on different front processes when there
//! are several. Closed loop keeps `window` sends unacknowledged per
//! sender; open loop sends on a fixed schedule whatever the server does,
//! and latency counts from the scheduled time.

use super::{Checks, Stream, histogram};
use crate::{
    client::{self, ACK, ERROR, Payload, SINGLE},
    topology::Topology,
    users::User,
};
use futures::SinkExt;
use hdrhistogram::Histogram;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::sync::{Barrier, Semaphore};

/// How senders pace themselves.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// `messages` per sender, at most `window` unacknowledged.
    Closed { messages: u64, window: usize },
    /// `rate` per sender per second for `secs` seconds.
    Open { rate: f64, secs: f64 },
}

impl Pace {
    fn messages(self) -> u64 {
        match self {
            Pace::Closed { messages, .. } => messages,
            Pace::Open { rate, secs } => (rate * secs).floor().max(1.0) as u64,
        }
    }
}

/// What a run of pairs measured.
pub struct PairsResult {
    pub checks: Checks,
    /// Send (intended, in open loop) → receiver socket, microseconds.
    pub latency: Histogram<u64>,
    /// Distinct deliveries per second, first send to last delivery.
    pub delivered_per_sec: f64,
    /// Sends the server acknowledged per second over the same span.
    pub acked_per_sec: f64,
}

/// Waits this long for the next frame before calling the rest lost.
const QUIET: Duration = Duration::from_secs(20);
/// How long a sender waits before sending again what the server refused
/// with a retryable error.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Sends message `i` again, with its id and its first intended send time.
async fn resend(tx: &mut client::Tx, to: u64, tag: &str, i: u64, t: u64) -> anyhow::Result<()> {
    Ok(tx.send(client::single(to, &format!("{tag}-{i}"), Payload { i, t })).await?)
}

/// Runs `pairs` pairs from `users` (two per pair) at `pace`.
pub async fn run(
    topo: &Topology,
    users: &[User],
    pairs: usize,
    pace: Pace,
    label: &str,
) -> anyhow::Result<PairsResult> {
    topo.quiesce().await;
    let n = pace.messages();
    let run_tag = uuid::Uuid::now_v7().simple().to_string();
    // Everyone connects, then the clock is set, then senders start: a
    // clock set before the handshakes finish would count connect time as
    // latency and make every sender start with a burst of late sends.
    let barrier = Arc::new(Barrier::new(2 * pairs + 1));
    let go = Arc::new(Barrier::new(pairs + 1));
    let start_us = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let bar = crate::bar(label.to_string(), n * pairs as u64);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..pairs {
        let (from, to) = (users[2 * p].clone(), users[2 * p + 1].clone());
        let url = topo.ws_url(p + 1, &to.token);
        let (b, bar) = (barrier.clone(), bar.clone());
        receivers.push(tokio::spawn(async move {
            let mut session = client::Session::open_idle(url).await?;
            b.wait().await;
            let mut stream = Stream::default();
            let mut latency = histogram();
            let mut last_us = 0;
            while stream.checks.delivered < n {
                let next = session.next(QUIET).await?;
                stream.reconnected(session.reconnects);
                let Some(f) = next else {
                    let got = stream.checks.delivered;
                    eprintln!(
                        "receiver of user {}: socket closed or silent after {got}/{n}",
                        to.id
                    );
                    break;
                };
                if f.kind != SINGLE {
                    if f.kind != client::HEARTBEAT && !client::NEWS.contains(&f.kind) {
                        eprintln!(
                            "receiver of user {}: unexpected frame type {} ({:?})",
                            to.id, f.kind, f.code
                        );
                    }
                    continue;
                }
                let Some(payload) = f.content else { continue };
                if stream.see(payload.i, f.seq) {
                    last_us = client::now_us();
                    let _ = latency.record(last_us.saturating_sub(payload.t).max(1));
                    bar.inc(1);
                }
                session.shown(f.conversation_id, f.seq);
            }
            session.close().await;
            anyhow::Ok((stream.finish(n), latency, last_us))
        }));
        let url = topo.ws_url(p, &from.token);
        let (b, go, start_us, acked, tag) =
            (barrier.clone(), go.clone(), start_us.clone(), acked.clone(), run_tag.clone());
        let offset = p as f64 / pairs as f64;
        senders.push(tokio::spawn(async move {
            let (mut tx, mut rx) = client::connect_split(&url, None).await?;
            client::handshake(&mut tx, &mut rx).await?;
            b.wait().await;
            go.wait().await;
            // Only the closed loop waits for acks before sending more.
            let window = match pace {
                Pace::Closed { window, .. } => Some(Arc::new(Semaphore::new(window))),
                Pace::Open { .. } => None,
            };
            let reader_permits = window.clone();
            // Sends refused with a retryable error go back to the sender,
            // which sends them again (same id) after a pause, as the
            // protocol asks of clients.
            let (retry_tx, mut retries) =
                tokio::sync::mpsc::unbounded_channel::<(u64, tokio::time::Instant)>();
            let id_tag = tag.clone();
            let reader = tokio::spawn(async move {
                let (mut acks, mut errors) = (0u64, 0u64);
                let mut retry_codes = std::collections::BTreeMap::new();
                while acks + errors < n {
                    let Some(f) = client::next_frame(&mut rx, QUIET).await? else {
                        eprintln!(
                            "sender to user {}: socket closed or silent after {acks} acks",
                            to.id
                        );
                        errors += n - acks - errors;
                        break;
                    };
                    match f.kind {
                        ACK => {
                            acks += 1;
                            acked.fetch_add(1, Relaxed);
                        }
                        ERROR if f.retryable => {
                            if let Some(code) = &f.code {
                                *retry_codes.entry(code.clone()).or_insert(0u64) += 1;
                            }
                            let i = f.client_msg_id.as_deref().and_then(|id| {
                                id.strip_prefix(id_tag.as_str())?.strip_prefix('-')?.parse().ok()
                            });
                            match i {
                                Some(i) => {
                                    let due = tokio::time::Instant::now() + RETRY_PAUSE;
                                    let _ = retry_tx.send((i, due));
                                    continue;
                                }
                                None => errors += 1,
                            }
                        }
                        ERROR => {
                            eprintln!("sender to user {}: error {:?}", to.id, f.code);
                            errors += 1;
                        }
                        _ => continue,
                    }
                    if let Some(p) = &reader_permits {
                        p.add_permits(1);
                    }
                }
                if !retry_codes.is_empty() {
                    eprintln!("sender to user {}: retryable errors {retry_codes:?}", to.id);
                }
                anyhow::Ok((acks, errors))
            });
            let t0 = start_us.load(Relaxed);
            let mut sent_at = Vec::with_capacity(n as usize);
            let mut retried = 0u64;
            // Refused sends waiting out their pause, oldest first.
            let mut waiting = std::collections::VecDeque::new();
            for i in 0..n {
                // Retries due by now go first; none holds up the schedule.
                while let Ok(again) = retries.try_recv() {
                    waiting.push_back(again);
                }
                while waiting.front().is_some_and(|(_, due)| *due <= tokio::time::Instant::now()) {
                    let (again, _) = waiting.pop_front().expect("checked above");
                    resend(&mut tx, to.id, &tag, again, sent_at[again as usize]).await?;
                    retried += 1;
                }
                let t = match pace {
                    Pace::Closed { .. } => {
                        if let Some(p) = &window {
                            p.acquire().await?.forget();
                        }
                        client::now_us()
                    }
                    Pace::Open { rate, .. } => {
                        let due = t0 + (((i as f64 + offset) / rate) * 1e6) as u64;
                        let now = client::now_us();
                        if due > now {
                            tokio::time::sleep(Duration::from_micros(due - now)).await;
                        }
                        due
                    }
                };
                sent_at.push(t);
                let id = format!("{tag}-{i}");
                tx.send(client::single(to.id, &id, Payload { i, t })).await?;
            }
            // Everything is sent once; keep retrying until all is answered.
            let mut reader = reader;
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let (acks, errors) = loop {
                tokio::select! {
                    done = &mut reader => break done??,
                    Some(again) = retries.recv() => waiting.push_back(again),
                    _ = tokio::time::sleep_until(waiting.front().map_or(far, |(_, due)| *due)),
                        if !waiting.is_empty() =>
                    {
                        let (again, _) = waiting.pop_front().expect("not empty");
                        resend(&mut tx, to.id, &tag, again, sent_at[again as usize]).await?;
                        retried += 1;
                    }
                }
            };
            if retried > 0 {
                eprintln!(
                    "sender to user {}: {retried} sends retried after a retryable error",
                    to.id
                );
            }
            let _ = tx.close().await;
            anyhow::Ok((acks, errors))
        }));
    }
    // Once everyone is connected, start the clock a little ahead so the
    // first scheduled sends are not already late.
    barrier.wait().await;
    let lead = if matches!(pace, Pace::Open { .. }) { 20_000 } else { 0 };
    start_us.store(client::now_us() + lead, Relaxed);
    go.wait().await;
    let t0 = start_us.load(Relaxed);
    let mut checks = Checks::default();
    let mut latency = histogram();
    let mut end_us = t0;
    for r in receivers {
        let (c, h, last) = r.await??;
        checks.add(&c);
        latency.add(&h)?;
        end_us = end_us.max(last);
    }
    let mut acks = 0;
    for s in senders {
        let (a, errors) = s.await??;
        acks += a;
        checks.errors += errors;
    }
    bar.finish_and_clear();
    let span = (end_us.saturating_sub(t0)).max(1) as f64 / 1e6;
    Ok(PairsResult {
        checks,
        latency,
        delivered_per_sec: checks.delivered as f64 / span,
        acked_per_sec: acks as f64 / span,
    })
}
