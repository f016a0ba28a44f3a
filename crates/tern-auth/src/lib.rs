//! The auth service: users, password login (bcrypt) and tokens (HS256 JWT
//! access tokens, opaque single-use refresh tokens).
//!
//! **Architecture Invariant:** auth knows nothing about groups, messages or
//! WebSockets; it owns the `users` and `refresh_tokens` tables and nothing else.

mod error;
mod migration;
mod service;
mod store;
mod tokens;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tern_bus::Bus;
use tern_proto::pb::auth::auth_service_server::AuthServiceServer;
use tern_runtime::access::TokenKey;

pub use error::AuthError;
pub use service::Auth;

/// The lowest bcrypt cost accepted outside tests.
pub const MIN_BCRYPT_COST: u32 = 10;

/// Settings of the auth service (`TERN__AUTH__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// SQL URL of the database holding users and refresh tokens.
    pub database_url: String,
    /// bcrypt cost. 12 takes ~250 ms per hash on a laptop core; tests lower
    /// it to 4 so they stay fast. Never below 10 in production.
    pub bcrypt_cost: u32,
    /// Allow a bcrypt cost below 10, which is too cheap to slow down an
    /// attacker holding the hashes. For test suites only.
    pub insecure_fast_hashing: bool,
    /// Token settings.
    pub jwt: JwtSettings,
}

/// How tokens are signed and how long they live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtSettings {
    /// The HS256 key (`secret`: must be set, at least 32 bytes, for a
    /// standalone service; the embedded server generates one and keeps it
    /// under its data folder), and the `iss` and `aud` claims. A gateway
    /// given the same three checks tokens itself.
    #[serde(flatten)]
    pub key: TokenKey,
    /// Access token lifetime in seconds.
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in seconds.
    pub refresh_ttl_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "sqlite://data/auth.db".into(),
            bcrypt_cost: 12,
            insecure_fast_hashing: false,
            jwt: JwtSettings::default(),
        }
    }
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self { key: TokenKey::default(), access_ttl_secs: 3600, refresh_ttl_secs: 30 * 24 * 3600 }
    }
}

/// Connects the database, applies migrations and builds the service.
/// `bus` carries logouts to the gateway nodes; `user.*` events go to the
/// webhooks `webhooks` configures.
pub async fn build(
    settings: &Settings,
    webhooks: &tern_webhook::Settings,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<Auth> {
    let outbox = tern_webhook::Outbox::new("auth", webhooks)?;
    if settings.bcrypt_cost < MIN_BCRYPT_COST && !settings.insecure_fast_hashing {
        anyhow::bail!(
            "bcrypt_cost {} is below {MIN_BCRYPT_COST}; raise it (TERN__AUTH__BCRYPT_COST), or for tests \
             only set TERN__AUTH__INSECURE_FAST_HASHING=true",
            settings.bcrypt_cost
        );
    }
    if settings.jwt.key.secret.expose().len() < 32 {
        anyhow::bail!("jwt.secret must be at least 32 bytes (set TERN__AUTH__JWT__SECRET)");
    }
    let db = tern_runtime::db::connect(&settings.database_url, 8).await?;
    migration::apply(&db).await?;
    outbox.start(db.clone());
    Auth::new(db, settings, bus, outbox)
}

/// Serves the auth service, and its webhook outbox's admin API, until the
/// shutdown signal.
pub async fn run(
    settings: Settings,
    webhooks: tern_webhook::Settings,
    bus: Arc<dyn Bus>,
    started: tern_runtime::service::Started,
) -> anyhow::Result<()> {
    let auth = build(&settings, &webhooks, bus).await?;
    let routes = tonic::service::Routes::new(tern_webhook::server(auth.webhooks()))
        .add_service(AuthServiceServer::new(auth));
    let names = [
        <AuthServiceServer<Auth> as tonic::server::NamedService>::NAME,
        tern_webhook::SERVICE_NAME,
    ];
    started.serve_routes(routes, &names, tern_proto::FILE_DESCRIPTOR_SET).await?;
    Ok(())
}
