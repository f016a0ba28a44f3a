//! The offline service: per-member, per-conversation delivery cursors.
//!
//! A cursor is the highest seq a member has acknowledged; only client acks
//! move it. "Offline messages" are not a queue: they are the messages beyond
//! the cursor, read from the message service on demand (docs/protocol.md, *Delivery guarantees*). The
//! cursor rows double as the index of which conversations a user is in.
//!
//! **Architecture Invariant:** offline never copies messages; it owns the
//! `cursors` table and reads messages through the message service's client.

mod error;
mod migration;
mod service;
mod store;

use serde::{Deserialize, Serialize};
use tern_proto::{
    clients::MessageClient, pb::offline::offline_service_server::OfflineServiceServer,
};
use tern_runtime::grpc::GrpcChannel;

pub use error::OfflineError;
pub use service::Offline;

/// Settings of the offline service (`TERN__OFFLINE__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// SQL URL of the database holding cursors.
    pub database_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self { database_url: "sqlite://data/offline.db".into() }
    }
}

/// The services offline calls.
#[derive(Clone)]
pub struct Peers {
    /// Where the messages and conversation heads live.
    pub message: MessageClient<GrpcChannel>,
}

/// Connects the database, applies migrations and builds the service.
pub async fn build(settings: &Settings, peers: Peers) -> anyhow::Result<Offline> {
    let db = tern_runtime::db::connect(&settings.database_url, 8).await?;
    migration::apply(&db).await?;
    Ok(Offline::new(db, peers))
}

/// Serves the offline service until the shutdown signal.
pub async fn run(
    settings: Settings,
    peers: Peers,
    started: tern_runtime::service::Started,
) -> anyhow::Result<()> {
    let service = OfflineServiceServer::new(build(&settings, peers).await?);
    started.serve(service, tern_proto::FILE_DESCRIPTOR_SET).await?;
    Ok(())
}
