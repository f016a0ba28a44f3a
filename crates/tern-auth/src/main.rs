//! `tern-auth`: the auth service as its own process.

use tern_runtime::settings::EXIT_BAD_CONFIG;

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
    auth: tern_auth::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: "0.0.0.0:50051".into(),
            service_token: Default::default(),
            metrics_addr: None,
            drain_secs: 5,
            auth: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tern_runtime::telemetry::init("tern-auth");
    let settings: Settings = tern_runtime::settings::load("auth").unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(EXIT_BAD_CONFIG)
    });
    if let Err(why) = tern_runtime::credential::validate(&settings.service_token) {
        eprintln!("TERN__SERVICE_TOKEN: {why}");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    if settings.auth.jwt.secret.expose().len() < 32 {
        eprintln!("TERN__AUTH__JWT__SECRET must be set to at least 32 bytes");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    let settings_drain = settings.drain_secs;
    let listener = tokio::net::TcpListener::bind(&settings.grpc_addr).await?;
    let shutdown = tern_runtime::shutdown::on_signal();
    if let Some(addr) = &settings.metrics_addr {
        let metrics = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(tern_runtime::grpc::serve_metrics(metrics, shutdown.clone()));
    }
    tern_auth::run(
        settings.auth,
        listener,
        shutdown,
        std::time::Duration::from_secs(settings_drain),
        &settings.service_token,
    )
    .await
}
