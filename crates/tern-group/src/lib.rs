//! The group service: groups, owners and membership.
//!
//! Membership changes are mirrored to the offline service's delivery
//! cursors (a new member's cursor starts at the group's latest message), so
//! every call that adds or removes members also calls offline.
//!
//! Every change of membership is also posted into the group's conversation
//! as a system entry (`MessageKind::Membership`), through the message
//! service, after the change is stored.
//!
//! **Architecture Invariant:** group knows nothing about how messages are
//! stored or delivered, nor about sockets; it reaches auth, offline and
//! message only through their gRPC clients.

mod error;
mod migration;
mod service;
mod store;

use serde::{Deserialize, Serialize};
use tern_proto::{
    clients::{AuthClient, MessageClient, OfflineClient},
    pb::group::group_service_server::GroupServiceServer,
};
use tern_runtime::grpc::GrpcChannel;

pub use error::GroupError;
pub use service::Groups;

/// Settings of the group service (`TERN__GROUP__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// SQL URL of the database holding groups and members.
    pub database_url: String,
    /// Largest group allowed.
    pub max_members: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { database_url: "sqlite://data/group.db".into(), max_members: 100_000 }
    }
}

/// The services group calls.
#[derive(Clone)]
pub struct Peers {
    /// To check that member ids exist.
    pub auth: AuthClient<GrpcChannel>,
    /// To start and drop delivery cursors.
    pub offline: OfflineClient<GrpcChannel>,
    /// To post membership changes into the group's conversation.
    pub message: MessageClient<GrpcChannel>,
}

/// Connects the database, applies migrations and builds the service;
/// `group.*` events go to the webhooks `webhooks` configures.
pub async fn build(
    settings: &Settings,
    webhooks: &tern_webhook::Settings,
    peers: Peers,
) -> anyhow::Result<Groups> {
    let outbox = tern_webhook::Outbox::new("group", webhooks)?;
    let db = tern_runtime::db::connect(&settings.database_url, 8).await?;
    migration::apply(&db).await?;
    outbox.start(db.clone());
    Ok(Groups::new(db, peers, settings.max_members, outbox))
}

/// Serves the group service, and its webhook outbox's admin API, until the
/// shutdown signal.
pub async fn run(
    settings: Settings,
    webhooks: tern_webhook::Settings,
    peers: Peers,
    started: tern_runtime::service::Started,
) -> anyhow::Result<()> {
    let groups = build(&settings, &webhooks, peers).await?;
    let routes = tonic::service::Routes::new(tern_webhook::server(groups.webhooks()))
        .add_service(GroupServiceServer::new(groups));
    let names = [
        <GroupServiceServer<Groups> as tonic::server::NamedService>::NAME,
        tern_webhook::SERVICE_NAME,
    ];
    started.serve_routes(routes, &names, tern_proto::FILE_DESCRIPTOR_SET).await?;
    Ok(())
}
