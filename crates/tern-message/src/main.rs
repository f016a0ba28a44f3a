//! `tern-message`: the message service as its own process, routing through
//! Redis presence and Pub/Sub.

/// mimalloc: the hot paths allocate many small buffers, where it is
/// markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use tern_bus::{Names, RedisBus, RedisPresence};
use tern_proto::clients::{AuthClient, GroupClient, OfflineClient};
use tern_runtime::{grpc::remote, service::ServiceBase};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    #[serde(flatten)]
    base: ServiceBase,
    /// Where the auth service answers.
    auth_url: String,
    /// Where the group service answers.
    group_url: String,
    /// Where the offline service answers.
    offline_url: String,
    /// Redis for presence and Pub/Sub.
    redis_url: String,
    /// Prefix of every Redis key and channel, to share one Redis.
    redis_prefix: String,
    message: tern_message::Settings,
    /// Attachments' store and rules (`TERN__ATTACHMENTS__*`).
    attachments: tern_runtime::objects::AttachmentSettings,
    /// Where `message.stored` events go (`TERN__WEBHOOKS__*`).
    webhooks: tern_webhook::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base: ServiceBase::on_port(50053),
            auth_url: "http://127.0.0.1:50051".into(),
            group_url: "http://127.0.0.1:50052".into(),
            offline_url: "http://127.0.0.1:50054".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: String::new(),
            message: Default::default(),
            attachments: Default::default(),
            webhooks: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::memory::small_pages();
    let settings: Settings = tern_runtime::settings::load_or_exit("message");
    let _telemetry = tern_runtime::telemetry::init("tern-message");
    let started = settings.base.start().await?;
    let token = &settings.base.service_token;
    let (client, conn) = tern_bus::connect_redis(&settings.redis_url).await?;
    let names = Names::new(settings.redis_prefix.clone());
    let peers = tern_message::Peers {
        auth: AuthClient::remote(remote(&settings.auth_url, token)?),
        group: GroupClient::remote(remote(&settings.group_url, token)?),
        offline: OfflineClient::remote(remote(&settings.offline_url, token)?),
        bus: Arc::new(RedisBus::new(client, conn.clone(), names.clone())),
        presence: Arc::new(RedisPresence::new(conn, names)),
    };
    tern_message::run(settings.message, settings.attachments, settings.webhooks, peers, started)
        .await
}
