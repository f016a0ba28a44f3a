//! Signed webhooks from a durable outbox.
//!
//! A service that produces events (auth, group, message) keeps an outbox
//! table in its own database, `webhook_outbox_<service>`, and writes each
//! event into it **in the same transaction** as the change the event
//! reports: an event exists exactly when its change was committed, and a
//! restart or a crash loses none. A dispatcher task of the service then
//! sends each event to every configured endpoint as a signed JSON POST
//! ([`sign`]), deletes it once an endpoint answered 2xx, and otherwise
//! tries again later with exponential backoff. Events that share an order
//! key (a conversation, a user, a group) are sent one at a time in the
//! order they were written, so a receiver sees them in that order; after
//! `max_attempts` failures an event is *parked*: kept, shown to operators
//! ([`Admin`]), and no longer holding back the events behind it.
//!
//! Chat never waits for a webhook: the only cost on the send path is the
//! row written with the message. Endpoints are called by the dispatcher
//! alone, with a timeout.
//!
//! **Architecture Invariant:** this crate knows no Tern service and no
//! domain type; services hand it events as JSON.

mod admin;
mod dispatch;
mod migration;
pub mod sign;

use sea_orm::{ConnectionTrait, DbErr, sea_query::Query};
use serde::{Deserialize, Serialize};
use std::{collections::HashSet, sync::Arc};
use tern_runtime::{Secret, clock::now_ms};
use tokio::sync::Notify;

pub use admin::Admin;
pub use tern_proto::pb::webhook::webhook_admin_server::WebhookAdminServer;

/// `admin` as a gRPC service.
pub fn server(admin: Admin) -> WebhookAdminServer<Admin> {
    WebhookAdminServer::new(admin)
}

/// The gRPC name of the admin service, for health reporting.
pub const SERVICE_NAME: &str = <WebhookAdminServer<Admin> as tonic::server::NamedService>::NAME;
pub use migration::migration;

/// Every event type Tern sends.
pub const EVENT_TYPES: &[&str] = &[
    "message.stored",
    "user.registered",
    "user.online",
    "user.offline",
    "group.created",
    "group.changed",
];

/// Webhook settings (`TERN__WEBHOOKS__*`), the same for every process that
/// produces events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Endpoints, comma-separated (`http://` or `https://`); empty turns
    /// webhooks off. Each endpoint gets every event.
    pub urls: String,
    /// The HMAC-SHA256 key the signatures are made with: at least 32 bytes
    /// when `urls` is set.
    pub secret: Secret,
    /// The event types to send, comma-separated; empty sends all of
    /// [`EVENT_TYPES`].
    pub events: String,
    /// Failed attempts after which an event is parked.
    pub max_attempts: u32,
    /// Wait after the first failure; it doubles with each failure (with
    /// jitter) up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long one attempt may take, connection included.
    pub timeout_ms: u64,
    /// Events sent at once (each to a different order key).
    pub concurrency: usize,
    /// How long a dispatcher holds its outbox before another replica of
    /// the service may take it over (it renews the lease while it runs).
    pub lease_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            urls: String::new(),
            secret: Secret::default(),
            events: String::new(),
            max_attempts: 8,
            min_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            timeout_ms: 10_000,
            concurrency: 16,
            lease_secs: 10,
        }
    }
}

/// The JSON an event is sent as.
fn body(id: &str, event: &Event, now: i64) -> String {
    serde_json::json!({
        "id": id,
        "type": event.event_type,
        "created_at_ms": now,
        "data": event.data,
    })
    .to_string()
}

impl Settings {
    /// Whether events of `event_type` are sent at all: some endpoint is
    /// configured, and the type is among `events` (or `events` is empty).
    pub fn sends(&self, event_type: &str) -> bool {
        let events = list(&self.events);
        !list(&self.urls).is_empty()
            && (events.is_empty() || events.iter().any(|e| e == event_type))
    }
}

/// The items of a comma-separated setting, trimmed, empty ones left out.
fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect()
}

/// One event, as a service reports it.
#[derive(Debug, Clone)]
pub struct Event {
    /// One of [`EVENT_TYPES`].
    pub event_type: &'static str,
    /// Events with the same key are delivered in the order they were
    /// enqueued: `conversation:<id>`, `user:<id>`, `group:<id>`.
    pub order_key: String,
    /// The event's `data` object.
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(event_type: &'static str, order_key: String, data: serde_json::Value) -> Self {
        debug_assert!(EVENT_TYPES.contains(&event_type), "unknown event type {event_type}");
        Self { event_type, order_key, data }
    }
}

/// Where, in an event's data, a number goes that only the caller's SQL
/// knows (a message's seq, assigned inside the statement that stores it):
/// put this string there and write the rows of [`Outbox::rows_with_hole`].
pub const HOLE: &str = "\u{1}hole\u{1}";

/// One outbox row for a caller that writes rows in its own SQL: the body
/// is `before`, the number, `after`.
#[derive(Debug, Clone)]
pub struct HoledRow {
    pub event_id: String,
    pub event_type: &'static str,
    pub endpoint: String,
    pub order_key: String,
    pub before: String,
    pub after: String,
    pub created_ms: i64,
}

/// A service's outbox: where its events are written, and the dispatcher
/// that sends them. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// The producing service: `auth`, `group`, `message`.
    name: String,
    table: String,
    endpoints: Vec<String>,
    /// `None`: every type.
    events: Option<HashSet<String>>,
    settings: Settings,
    /// Woken after a commit that wrote events.
    wake: Notify,
}

impl Outbox {
    /// The outbox of service `name` (`auth`, `group`, `message`), checking
    /// the settings. With no `urls` it writes nothing and sends nothing.
    pub fn new(name: &str, settings: &Settings) -> anyhow::Result<Self> {
        let endpoints = list(&settings.urls);
        for url in &endpoints {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("webhooks.urls: {url:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                anyhow::bail!("webhooks.urls: {url:?} is neither http nor https");
            }
        }
        if !endpoints.is_empty() {
            tern_runtime::credential::validate_named("webhooks.secret", &settings.secret)
                .map_err(anyhow::Error::msg)?;
        }
        let events = list(&settings.events);
        if let Some(unknown) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
            anyhow::bail!(
                "webhooks.events: unknown event type {unknown:?} (known: {EVENT_TYPES:?})"
            );
        }
        if settings.max_attempts == 0 {
            anyhow::bail!("webhooks.max_attempts must be at least 1");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                table: migration::table(name),
                endpoints,
                events: (!events.is_empty()).then(|| events.into_iter().collect()),
                settings: settings.clone(),
                wake: Notify::new(),
            }),
        })
    }

    /// Whether events of `event_type` are written at all (webhooks on, and
    /// the type among those configured). Services build an event's data
    /// only when this says yes.
    pub fn wants(&self, event_type: &str) -> bool {
        let inner = &self.inner;
        !inner.endpoints.is_empty() && inner.events.as_ref().is_none_or(|e| e.contains(event_type))
    }

    /// Writes `events` (those [`wanted`](Self::wants)) for every endpoint,
    /// on `db`: pass the transaction of the change they report. Call
    /// [`wake`](Self::wake) after it commits.
    pub async fn enqueue<C: ConnectionTrait>(
        &self,
        db: &C,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<usize, DbErr> {
        let inner = &self.inner;
        let mut insert = Query::insert();
        insert.into_table(migration::Outbox::table(&inner.table)).columns([
            migration::Outbox::EventId,
            migration::Outbox::EventType,
            migration::Outbox::Endpoint,
            migration::Outbox::OrderKey,
            migration::Outbox::Body,
            migration::Outbox::Attempts,
            migration::Outbox::NextAttemptMs,
            migration::Outbox::Parked,
            migration::Outbox::CreatedMs,
        ]);
        let now = now_ms();
        let mut rows = 0;
        for event in events.into_iter().filter(|e| self.wants(e.event_type)) {
            let id = uuid::Uuid::now_v7().to_string();
            let body = body(&id, &event, now);
            for endpoint in &inner.endpoints {
                insert.values_panic([
                    id.clone().into(),
                    event.event_type.into(),
                    endpoint.clone().into(),
                    event.order_key.clone().into(),
                    body.clone().into(),
                    0i32.into(),
                    now.into(),
                    false.into(),
                    now.into(),
                ]);
                rows += 1;
            }
        }
        if rows > 0 {
            db.execute(&insert).await?;
        }
        Ok(rows)
    }

    /// The outbox table, and its columns in the order a [`HoledRow`] fills
    /// them (then `attempts` 0, `next_attempt_ms` and `created_ms` both the
    /// row's `created_ms`, `parked` false).
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// How many rows one event makes (one per endpoint).
    pub fn rows_per_event(&self) -> usize {
        self.inner.endpoints.len()
    }

    /// The rows of `event` (one per endpoint; none unless it is
    /// [wanted](Self::wants)), its body split at the one [`HOLE`] in its
    /// data, for a caller that inserts them with its own SQL in the
    /// transaction of the change.
    pub fn rows_with_hole(&self, event: Event) -> Vec<HoledRow> {
        if !self.wants(event.event_type) {
            return Vec::new();
        }
        let now = now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let body = body(&id, &event, now);
        let hole = serde_json::Value::String(HOLE.into()).to_string();
        let (before, after) = body.split_once(&hole).expect("the event's data holds the hole");
        (self.inner.endpoints.iter())
            .map(|endpoint| HoledRow {
                event_id: id.clone(),
                event_type: event.event_type,
                endpoint: endpoint.clone(),
                order_key: event.order_key.clone(),
                before: before.to_string(),
                after: after.to_string(),
                created_ms: now,
            })
            .collect()
    }

    /// Tells the dispatcher that events were committed.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Starts the dispatcher on `db` (the database the outbox is in), when
    /// webhooks are on. Needs a Tokio runtime.
    pub fn start(&self, db: sea_orm::DatabaseConnection) {
        if !self.inner.endpoints.is_empty() {
            tokio::spawn(dispatch::run(self.clone(), db));
        }
    }

    /// The operators' view of this outbox, in `db` (`WebhookAdmin` over
    /// gRPC); [`Admin::with`] adds more outboxes to it.
    pub fn admin(&self, db: sea_orm::DatabaseConnection) -> Admin {
        Admin::default().with(self.clone(), db)
    }
}
