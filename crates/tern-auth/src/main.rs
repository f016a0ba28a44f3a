//! `tern-auth`: the auth service as its own process.

use tern_runtime::settings::EXIT_BAD_CONFIG;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    /// Address the gRPC server binds.
    grpc_addr: String,
    auth: tern_auth::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self { grpc_addr: "0.0.0.0:50051".into(), auth: Default::default() }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::telemetry::init("tern-auth");
    let settings: Settings = tern_runtime::settings::load("auth").unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(EXIT_BAD_CONFIG)
    });
    if settings.auth.jwt.secret.expose().len() < 32 {
        eprintln!("TERN__AUTH__JWT__SECRET must be set to at least 32 bytes");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    let listener = tokio::net::TcpListener::bind(&settings.grpc_addr).await?;
    tern_auth::run(settings.auth, listener, tern_runtime::shutdown::on_signal()).await
}
