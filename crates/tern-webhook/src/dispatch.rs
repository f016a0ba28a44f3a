//! The dispatcher: sends an outbox's events to their endpoints.
//!
//! Every process of a producing service runs one per outbox, but only the
//! one holding the outbox's lease (a row of `webhook_leases`, renewed every
//! round) sends, so replicas never send the same events side by side. A
//! round reads the oldest live events, groups them by endpoint and order
//! key, and starts a task per group that is not already being sent, up to
//! `concurrency`: it sends the group's events one after the other (a
//! failure stops the group until the event's next attempt is due). Rounds
//! never wait for those tasks, so an endpoint that hangs holds up its own
//! order key and nothing else.

use crate::{
    Outbox,
    migration::{Outbox as Col, WebhookLeases},
    sign,
};
use backon::BackoffBuilder;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, QueryResult,
    sea_query::{Cond, Expr, ExprTrait, Query},
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};
use tern_runtime::clock::{now_ms, now_secs};
use tokio::task::JoinSet;

/// Events read per round.
const ROUND: u64 = 512;
/// How long the dispatcher sleeps when nothing is due and nothing wakes it.
const IDLE: Duration = Duration::from_secs(5);
/// The least time between two rounds: under load, the commits of that
/// long share one read of the outbox.
const GAP: Duration = Duration::from_millis(20);

/// One outbox row on its way out.
struct Row {
    id: i64,
    event_id: String,
    event_type: String,
    endpoint: String,
    order_key: String,
    body: String,
    attempts: i32,
    next_attempt_ms: i64,
}

impl Row {
    fn read(row: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            id: row.try_get("", "id")?,
            event_id: row.try_get("", "event_id")?,
            event_type: row.try_get("", "event_type")?,
            endpoint: row.try_get("", "endpoint")?,
            order_key: row.try_get("", "order_key")?,
            body: row.try_get("", "body")?,
            attempts: row.try_get("", "attempts")?,
            next_attempt_ms: row.try_get("", "next_attempt_ms")?,
        })
    }
}

struct Dispatcher {
    outbox: Outbox,
    db: DatabaseConnection,
    client: reqwest::Client,
    /// This process's name in the lease.
    holder: String,
    delivered: metrics::Counter,
    failed: metrics::Counter,
    parked: metrics::Counter,
    /// Rows delivered but not deleted yet: the next round deletes them in
    /// one statement before it reads (a crash before that sends them again,
    /// which at-least-once allows).
    sent: std::sync::Mutex<Vec<i64>>,
}

pub(crate) async fn run(outbox: Outbox, db: DatabaseConnection) {
    let settings = &outbox.inner.settings;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        // A redirect is an answer that is not 2xx: the endpoint is wrong.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tern-webhook/", env!("CARGO_PKG_VERSION")))
        .build();
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot build the HTTP client; no events are sent");
            return;
        }
    };
    let table = outbox.inner.table.clone();
    let dispatcher = Dispatcher {
        holder: uuid::Uuid::now_v7().to_string(),
        delivered: metrics::counter!("tern_webhook_delivered_total", "outbox" => table.clone()),
        failed: metrics::counter!("tern_webhook_failed_total", "outbox" => table.clone()),
        parked: metrics::counter!("tern_webhook_parked_total", "outbox" => table),
        outbox,
        db,
        client,
        sent: Default::default(),
    };
    Arc::new(dispatcher).run().await;
}

/// A group: (endpoint, order key).
type Key = (String, String);

/// The group tasks running, and their keys.
#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    keys: HashMap<tokio::task::Id, Key>,
}

impl Running {
    /// Forgets a finished task.
    fn reap(&mut self, done: Option<Result<(tokio::task::Id, ()), tokio::task::JoinError>>) {
        let id = match done {
            Some(Ok((id, ()))) => id,
            Some(Err(error)) => error.id(),
            None => return,
        };
        self.keys.remove(&id);
    }

    fn busy(&self) -> HashSet<&Key> {
        self.keys.values().collect()
    }
}

impl Dispatcher {
    async fn run(self: Arc<Self>) {
        let stop = tern_runtime::shutdown::on_signal();
        // The lease row; it exists already unless this is the first start.
        let mut insert = Query::insert();
        insert
            .into_table(WebhookLeases::Table)
            .columns([WebhookLeases::Outbox, WebhookLeases::Holder, WebhookLeases::UntilMs])
            .values_panic([self.outbox.inner.table.clone().into(), "".into(), 0i64.into()]);
        let _ = self.db.execute(&insert).await;
        let mut running = Running::default();
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(GAP.saturating_sub(last.elapsed())).await;
            last = Instant::now();
            while let Some(done) = running.tasks.try_join_next_with_id() {
                running.reap(Some(done));
            }
            let wait = match self.round(&mut running).await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::warn!(%error, "webhooks: cannot read the outbox; retrying");
                    Duration::from_secs(1)
                }
            };
            // A finished group may have more events: the next round looks.
            tokio::select! {
                _ = self.outbox.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                done = running.tasks.join_next_with_id(), if !running.tasks.is_empty() => {
                    running.reap(done);
                }
                _ = stop.cancelled() => break,
            }
        }
        running.tasks.shutdown().await;
        if let Err(error) = self.flush().await {
            tracing::debug!(%error, "webhooks: delivered events not deleted; they will be sent again");
        }
        // Let a replica (or this service's next start) take over at once.
        let mut release = Query::update();
        release
            .table(WebhookLeases::Table)
            .value(WebhookLeases::UntilMs, 0i64)
            .and_where(Expr::col(WebhookLeases::Outbox).eq(self.outbox.inner.table.clone()))
            .and_where(Expr::col(WebhookLeases::Holder).eq(self.holder.clone()));
        let _ = self.db.execute(&release).await;
    }

    /// Takes or renews the lease; false when another process holds it.
    async fn hold(&self) -> Result<bool, DbErr> {
        let now = now_ms();
        let until = now + self.outbox.inner.settings.lease_secs as i64 * 1000;
        let mut update = Query::update();
        update
            .table(WebhookLeases::Table)
            .values([
                (WebhookLeases::Holder, self.holder.clone().into()),
                (WebhookLeases::UntilMs, until.into()),
            ])
            .and_where(Expr::col(WebhookLeases::Outbox).eq(self.outbox.inner.table.clone()))
            .cond_where(
                Cond::any()
                    .add(Expr::col(WebhookLeases::Holder).eq(self.holder.clone()))
                    .add(Expr::col(WebhookLeases::UntilMs).lt(now)),
            );
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }

    /// One pass over the oldest live events: starts a task for each due
    /// group not already running. Returns how long to wait, at most, before
    /// the next pass (a finished task or a new event starts one sooner).
    async fn round(self: &Arc<Self>, running: &mut Running) -> Result<Duration, DbErr> {
        let inner = &self.outbox.inner;
        let lease = Duration::from_secs(std::cmp::max(inner.settings.lease_secs, 1));
        self.flush().await?;
        if !self.hold().await? {
            return Ok(lease / 2);
        }
        let slots = std::cmp::max(inner.settings.concurrency, 1);
        if running.keys.len() >= slots {
            // Nothing could start: a finished task brings the next round.
            return Ok(lease / 2);
        }
        let started = Instant::now();
        let mut select = Query::select();
        select
            .columns([
                Col::Id,
                Col::EventId,
                Col::EventType,
                Col::Endpoint,
                Col::OrderKey,
                Col::Body,
                Col::Attempts,
                Col::NextAttemptMs,
            ])
            .from(Col::table(&inner.table))
            .and_where(Expr::col(Col::Parked).eq(false))
            .order_by(Col::Id, sea_orm::Order::Asc)
            .limit(ROUND);
        let rows = self.db.query_all(&select).await?;
        // Groups in the order of their oldest event, but for those running.
        let busy = running.busy();
        let mut groups: Vec<(Key, Vec<Row>)> = Vec::new();
        let mut index: HashMap<Key, usize> = HashMap::new();
        for row in &rows {
            let row = Row::read(row)?;
            let key = (row.endpoint.clone(), row.order_key.clone());
            if busy.contains(&key) {
                continue;
            }
            let at = *index.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[at].1.push(row);
        }
        drop(busy);
        let now = now_ms();
        // When the first event of a waiting group is due again.
        let next_due = groups.iter().map(|g| g.1[0].next_attempt_ms).filter(|&due| due > now).min();
        // Each task stops well before the lease runs out, so that it is
        // renewed in time.
        let deadline = started + lease / 2;
        for (key, group) in groups.into_iter().filter(|g| g.1[0].next_attempt_ms <= now) {
            if running.keys.len() >= slots {
                break;
            }
            let this = self.clone();
            let task = running.tasks.spawn(async move { this.send_group(group, deadline).await });
            running.keys.insert(task.id(), key);
        }
        // Renew the lease in time even when nothing happens.
        let wait = match next_due {
            Some(due) => Duration::from_millis((due - now) as u64).min(IDLE),
            None => IDLE,
        };
        Ok(wait.min(lease / 2))
    }

    /// Sends a group's events in order until one fails (and is not parked)
    /// or the round's time is up.
    async fn send_group(&self, group: Vec<Row>, deadline: Instant) {
        for row in group {
            if Instant::now() >= deadline || row.next_attempt_ms > now_ms() {
                return;
            }
            let outcome = self.attempt(&row).await;
            let recorded = match &outcome {
                Ok(()) => {
                    self.sent.lock().expect("not poisoned").push(row.id);
                    Ok(None)
                }
                Err(why) => self.failed(&row, why).await,
            };
            match (outcome, recorded) {
                (Ok(()), Ok(_)) => self.delivered.increment(1),
                // Parked: the next event of the group may go.
                (Err(_), Ok(None)) => {}
                // Due again later; the round then starts the group again.
                (Err(_), Ok(Some(_))) => return,
                (_, Err(error)) => {
                    tracing::warn!(%error, "webhooks: cannot record an attempt; it will be repeated");
                    return;
                }
            }
        }
    }

    async fn attempt(&self, row: &Row) -> Result<(), String> {
        let inner = &self.outbox.inner;
        if !inner.endpoints.contains(&row.endpoint) {
            return Err("the endpoint is no longer configured".into());
        }
        let signature = sign::header_value(
            inner.settings.secret.expose().as_bytes(),
            now_secs(),
            row.body.as_bytes(),
        );
        let request = self
            .client
            .post(&row.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("tern-event-id", &row.event_id)
            .header("tern-event-type", &row.event_type)
            .header("tern-delivery-attempt", (row.attempts + 1).to_string())
            .header(sign::HEADER, signature)
            .body(row.body.clone());
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) if error.is_timeout() => Err("timed out".into()),
            Err(error) if error.is_connect() => Err(format!("cannot connect: {}", causes(&error))),
            Err(error) => Err(causes(&error)),
        }
    }

    /// Deletes the rows delivered since the last flush.
    async fn flush(&self) -> Result<(), DbErr> {
        let sent = std::mem::take(&mut *self.sent.lock().expect("not poisoned"));
        for (i, chunk) in sent.chunks(500).enumerate() {
            let mut delete = Query::delete();
            delete
                .from_table(Col::table(&self.outbox.inner.table))
                .and_where(Expr::col(Col::Id).is_in(chunk.iter().copied()));
            if let Err(error) = self.db.execute(&delete).await {
                // Kept for the next flush.
                self.sent.lock().expect("not poisoned").extend_from_slice(&sent[i * 500..]);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Records a failed attempt; when the event is due again, or `None`
    /// when it is now parked.
    async fn failed(&self, row: &Row, why: &str) -> Result<Option<i64>, DbErr> {
        let settings = &self.outbox.inner.settings;
        let attempts = row.attempts + 1;
        let parked = attempts as u32 >= settings.max_attempts;
        self.failed.increment(1);
        if parked {
            self.parked.increment(1);
            tracing::warn!(event = %row.event_id, endpoint = %row.endpoint, attempts, error = why,
                "webhooks: event parked");
        } else {
            tracing::debug!(event = %row.event_id, endpoint = %row.endpoint, attempts, error = why,
                "webhooks: attempt failed");
        }
        let next = now_ms() + backoff(settings, attempts as usize).as_millis() as i64;
        let mut update = Query::update();
        update
            .table(Col::table(&self.outbox.inner.table))
            .values([
                (Col::Attempts, attempts.into()),
                (Col::NextAttemptMs, next.into()),
                (Col::Parked, parked.into()),
                (Col::LastError, why.into()),
            ])
            .and_where(Expr::col(Col::Id).eq(row.id));
        self.db.execute(&update).await?;
        Ok((!parked).then_some(next))
    }
}

/// An error with its causes (reqwest's own text names only the URL; the
/// cause says what went wrong: refused, a bad certificate, …).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The wait after the `failures`-th failure: doubling from the minimum,
/// capped at the maximum, plus up to as much again of jitter.
fn backoff(settings: &crate::Settings, failures: usize) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(settings.min_backoff_ms))
        .with_max_delay(Duration::from_millis(std::cmp::max(
            settings.max_backoff_ms,
            settings.min_backoff_ms,
        )))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1))
        .unwrap_or(Duration::from_millis(settings.max_backoff_ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_and_stops_at_the_maximum() {
        let settings =
            crate::Settings { min_backoff_ms: 100, max_backoff_ms: 1_000, ..Default::default() };
        let first = super::backoff(&settings, 1).as_millis();
        let third = super::backoff(&settings, 3).as_millis();
        let tenth = super::backoff(&settings, 10).as_millis();
        // Jitter adds up to the delay itself.
        assert!((100..=200).contains(&first), "{first}");
        assert!((400..=800).contains(&third), "{third}");
        assert!((1_000..=2_000).contains(&tenth), "{tenth}");
    }
}
