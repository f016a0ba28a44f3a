//! `tern-offline`: the offline service as its own process.

/// mimalloc, as in the other binaries: each call allocates many small
/// buffers (protobuf, HTTP/2 frames, rows), where it is markedly cheaper
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tern_proto::clients::MessageClient;
use tern_runtime::{grpc::remote, service::ServiceBase};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    #[serde(flatten)]
    base: ServiceBase,
    /// Where the message service answers.
    message_url: String,
    offline: tern_offline::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base: ServiceBase::on_port(50054),
            message_url: "http://127.0.0.1:50053".into(),
            offline: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::memory::small_pages();
    let settings: Settings = tern_runtime::settings::load_or_exit("offline");
    let _telemetry = tern_runtime::telemetry::init("tern-offline");
    let started = settings.base.start().await?;
    let channel = remote(&settings.message_url, &settings.base.service_token)?;
    let peers = tern_offline::Peers { message: MessageClient::remote(channel) };
    tern_offline::run(settings.offline, peers, started).await
}
