//! `tern`: the whole chat server in one process. With no configuration it
//! keeps its data under `./data/` and serves http://localhost:8080.

/// mimalloc: the hot paths allocate many small buffers, where it is
/// markedly cheaper than the system allocator. The `system-allocator`
/// feature leaves it out, for heap profilers that watch `malloc` (massif,
/// heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tern_runtime::memory::small_pages();
    let settings: tern::Settings = tern_runtime::settings::load_or_exit("tern");
    let _telemetry = tern_runtime::telemetry::init("tern");
    let listener = tern_runtime::net::listen(&settings.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Tern is up: open http://localhost:{}/", listener.local_addr()?.port());
    tern::run(settings, listener, tern_runtime::shutdown::on_signal()).await
}
