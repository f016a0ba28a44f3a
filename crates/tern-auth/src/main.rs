//! `tern-auth`: the auth service as its own process.

use tern_runtime::settings::EXIT_BAD_CONFIG;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    /// Address the gRPC server binds.
    grpc_addr: Option<String>,
    auth: tern_auth::Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::telemetry::init("tern-auth");
    let settings: Settings = tern_runtime::settings::load("auth").unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(EXIT_BAD_CONFIG)
    });
    let addr = settings.grpc_addr.unwrap_or_else(|| "0.0.0.0:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tern_auth::run(settings.auth, listener, tern_runtime::shutdown::on_signal()).await
}
