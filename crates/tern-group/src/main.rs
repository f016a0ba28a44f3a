//! `tern-group`: the group service as its own process.

/// mimalloc, as in the other binaries: each call allocates many small
/// buffers (protobuf, HTTP/2 frames, rows), where it is markedly cheaper
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tern_proto::clients::{AuthClient, MessageClient, OfflineClient};
use tern_runtime::{grpc::remote, service::ServiceBase};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Settings {
    #[serde(flatten)]
    base: ServiceBase,
    /// Where the auth service answers.
    auth_url: String,
    /// Where the offline service answers.
    offline_url: String,
    /// Where the message service answers.
    message_url: String,
    group: tern_group::Settings,
    /// Where `group.*` events go (`TERN__WEBHOOKS__*`).
    webhooks: tern_webhook::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base: ServiceBase::on_port(50052),
            auth_url: "http://127.0.0.1:50051".into(),
            offline_url: "http://127.0.0.1:50054".into(),
            message_url: "http://127.0.0.1:50053".into(),
            group: Default::default(),
            webhooks: Default::default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::memory::small_pages();
    let settings: Settings = tern_runtime::settings::load_or_exit("group");
    let _telemetry = tern_runtime::telemetry::init("tern-group");
    let started = settings.base.start().await?;
    let token = &settings.base.service_token;
    let peers = tern_group::Peers {
        auth: AuthClient::remote(remote(&settings.auth_url, token)?),
        offline: OfflineClient::remote(remote(&settings.offline_url, token)?),
        message: MessageClient::remote(remote(&settings.message_url, token)?),
    };
    tern_group::run(settings.group, settings.webhooks, peers, started).await
}
