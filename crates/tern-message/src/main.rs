//! `tern-message`: the message service as its own process, routing through
//! Redis presence and Pub/Sub.

use std::{sync::Arc, time::Duration};
use tern_bus::{Names, RedisBus, RedisPresence};
use tern_proto::pb::{
    auth::auth_service_client::AuthServiceClient, group::group_service_client::GroupServiceClient,
    offline::offline_service_client::OfflineServiceClient,
};
use tern_runtime::{grpc::remote, settings::EXIT_BAD_CONFIG};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    /// Address the gRPC server binds.
    grpc_addr: String,
    /// The shared credential every call to and from the services carries
    /// (required).
    service_token: tern_runtime::Secret,
    /// Where `/metrics` (Prometheus) is served; unset means not at all.
    metrics_addr: Option<String>,
    /// Seconds between turning NOT_SERVING and stopping, on SIGTERM.
    drain_secs: u64,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: "0.0.0.0:50053".into(),
            service_token: Default::default(),
            metrics_addr: None,
            drain_secs: 5,
            auth_url: "http://127.0.0.1:50051".into(),
            group_url: "http://127.0.0.1:50052".into(),
            offline_url: "http://127.0.0.1:50054".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: String::new(),
            message: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tern_runtime::telemetry::init("tern-message");
    let settings: Settings = tern_runtime::settings::load("message").unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(EXIT_BAD_CONFIG)
    });
    if let Err(why) = tern_runtime::credential::validate(&settings.service_token) {
        eprintln!("TERN__SERVICE_TOKEN: {why}");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    let (client, conn) = tern_bus::connect_redis(&settings.redis_url).await?;
    let names = Names::new(settings.redis_prefix.clone());
    let peers = tern_message::Peers {
        auth: AuthServiceClient::new(remote(&settings.auth_url, &settings.service_token)?),
        group: GroupServiceClient::new(remote(&settings.group_url, &settings.service_token)?),
        offline: OfflineServiceClient::new(remote(&settings.offline_url, &settings.service_token)?),
        bus: Arc::new(RedisBus::new(client, conn.clone(), names.clone())),
        presence: Arc::new(RedisPresence::new(conn, names)),
    };
    let listener = tokio::net::TcpListener::bind(&settings.grpc_addr).await?;
    let shutdown = tern_runtime::shutdown::on_signal();
    if let Some(addr) = &settings.metrics_addr {
        let metrics = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(tern_runtime::grpc::serve_metrics(metrics, shutdown.clone()));
    }
    let drain = Duration::from_secs(settings.drain_secs);
    tern_message::run(settings.message, peers, listener, shutdown, drain, &settings.service_token)
        .await
}
