//! `tern-auth`: the auth service as its own process.

use tern_runtime::{service::ServiceBase, settings::EXIT_BAD_CONFIG};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    #[serde(flatten)]
    base: ServiceBase,
    auth: tern_auth::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self { base: ServiceBase::on_port(50051), auth: Default::default() }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tern_runtime::telemetry::init("tern-auth");
    let settings: Settings = tern_runtime::settings::load_or_exit("auth");
    if settings.auth.jwt.secret.expose().len() < 32 {
        eprintln!("TERN__AUTH__JWT__SECRET must be set to at least 32 bytes");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    let started = settings.base.start().await?;
    tern_auth::run(settings.auth, started).await
}
