//! `tern-gateway`: one gateway node as its own process. It reaches the four
//! services over gRPC and other nodes through Redis.

/// mimalloc: the hot paths allocate many small buffers, where it is
/// markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use tern_bus::{Names, RedisBus, RedisPresence};
use tern_proto::clients::{AuthClient, GroupClient, MessageClient, OfflineClient, WebhookClient};
use tern_runtime::{grpc::remote, settings::EXIT_BAD_CONFIG};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    /// Where the HTTP API and WebSocket endpoint listen.
    http_addr: String,
    /// The shared credential for calls to the services (required).
    service_token: tern_runtime::Secret,
    /// Where the auth service answers.
    auth_url: String,
    /// Where the group service answers.
    group_url: String,
    /// Where the message service answers.
    message_url: String,
    /// Where the offline service answers.
    offline_url: String,
    /// Redis for presence and Pub/Sub.
    redis_url: String,
    /// Prefix of every Redis key and channel, to share one Redis.
    redis_prefix: String,
    gateway: tern_gateway::Settings,
    /// Attachments' store (`TERN__ATTACHMENTS__*`, as the message
    /// service's): this node carries the bytes of a store that signs no URLs.
    attachments: tern_runtime::objects::AttachmentSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "0.0.0.0:8080".into(),
            service_token: Default::default(),
            auth_url: "http://127.0.0.1:50051".into(),
            group_url: "http://127.0.0.1:50052".into(),
            message_url: "http://127.0.0.1:50053".into(),
            offline_url: "http://127.0.0.1:50054".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: String::new(),
            gateway: Default::default(),
            attachments: Default::default(),
        }
    }
}

/// Given as the first argument: prints the HTTP API's OpenAPI document and
/// exits.
const PRINT_OPENAPI: &str = "--print-openapi";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::memory::small_pages();
    if std::env::args().nth(1).as_deref() == Some(PRINT_OPENAPI) {
        println!("{}", tern_gateway::openapi_json());
        return Ok(());
    }
    let mut settings: Settings = tern_runtime::settings::load_or_exit("gateway");
    let _telemetry = tern_runtime::telemetry::init("tern-gateway");
    if let Err(why) = tern_runtime::credential::validate(&settings.service_token) {
        eprintln!("TERN__SERVICE_TOKEN: {why}");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    // In Kubernetes every pod is its own node: default to the pod name.
    if settings.gateway.node_id == tern_gateway::Settings::default().node_id
        && let Ok(host) = std::env::var("HOSTNAME")
    {
        settings.gateway.node_id = host;
    }
    let (client, conn) = tern_bus::connect_redis(&settings.redis_url).await?;
    let names = Names::new(settings.redis_prefix.clone());
    let services = tern_gateway::Services {
        auth: AuthClient::remote(remote(&settings.auth_url, &settings.service_token)?),
        group: GroupClient::remote(remote(&settings.group_url, &settings.service_token)?),
        message: MessageClient::remote(remote(&settings.message_url, &settings.service_token)?),
        offline: OfflineClient::remote(remote(&settings.offline_url, &settings.service_token)?),
        bus: Arc::new(RedisBus::new(client, conn.clone(), names.clone())),
        presence: Arc::new(RedisPresence::new(conn, names)),
        files: tern_runtime::objects::Objects::open(&settings.attachments)?,
        // Each producing service serves its outbox's admin API.
        webhooks: [&settings.auth_url, &settings.group_url, &settings.message_url]
            .into_iter()
            .map(|url| Ok(WebhookClient::remote(remote(url, &settings.service_token)?)))
            .collect::<Result<_, tonic::transport::Error>>()?,
    };
    let listener = tern_runtime::net::listen(&settings.http_addr).await?;
    tern_gateway::run(settings.gateway, services, listener, tern_runtime::shutdown::on_signal())
        .await
}
