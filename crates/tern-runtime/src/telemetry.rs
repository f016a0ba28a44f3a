//! Logging setup. `RUST_LOG` picks levels (default `info`);
//! `TERN_LOG_FORMAT=json` switches to one JSON object per line.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests can call it freely.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TERN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let result = if json {
        fmt().json().with_env_filter(filter).try_init()
    } else {
        fmt().with_env_filter(filter).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
