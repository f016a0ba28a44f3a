//! `tern-auth`: the auth service as its own process.

/// mimalloc, as in the other binaries: each call allocates many small
/// buffers (protobuf, HTTP/2 frames, rows), where it is markedly cheaper
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use tern_bus::{Names, RedisBus};
use tern_runtime::{service::ServiceBase, settings::EXIT_BAD_CONFIG};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    #[serde(flatten)]
    base: ServiceBase,
    /// Redis, whose Pub/Sub carries logouts to the gateway nodes.
    redis_url: String,
    /// Prefix of every Redis key and channel, to share one Redis.
    redis_prefix: String,
    auth: tern_auth::Settings,
    /// Where `user.*` events go (`TERN__WEBHOOKS__*`).
    webhooks: tern_webhook::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base: ServiceBase::on_port(50051),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: String::new(),
            auth: Default::default(),
            webhooks: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::memory::small_pages();
    let settings: Settings = tern_runtime::settings::load_or_exit("auth");
    let _telemetry = tern_runtime::telemetry::init("tern-auth");
    if settings.auth.jwt.key.secret.expose().len() < 32 {
        eprintln!("TERN__AUTH__JWT__SECRET must be set to at least 32 bytes");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    let started = settings.base.start().await?;
    let (client, conn) = tern_bus::connect_redis(&settings.redis_url).await?;
    let bus = Arc::new(RedisBus::new(client, conn, Names::new(settings.redis_prefix.clone())));
    tern_auth::run(settings.auth, settings.webhooks, bus, started).await
}
