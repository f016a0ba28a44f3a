//! The message service: authorise a send, assign its id and seq, store it,
//! acknowledge, then route it to the gateway nodes holding its recipients.
//!
//! **Architecture Invariant:** message knows nothing about WebSockets or
//! JSON framing; it stores `content_json` as opaque text, except that it
//! fills in `content.attachment` of a message that names an attachment. It reaches users,
//! groups and cursors only through the auth, group and offline clients, and
//! gateways only through the bus.

mod attachments;
mod error;
mod migration;
mod router;
mod service;
mod store;

use attachments::Attachments;
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};
use tern_bus::{Bus, Presence};
use tern_proto::{
    clients::{AuthClient, GroupClient, OfflineClient},
    pb::message::message_service_server::MessageServiceServer,
};
use tern_runtime::{
    grpc::GrpcChannel,
    objects::{AttachmentSettings, Objects},
};

pub use error::MessageError;
pub use service::Messages;

/// Settings of the message service (`TERN__MESSAGE__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// SQL URL of the database holding conversations and messages.
    pub database_url: String,
    /// Largest `content_json` accepted, in bytes.
    pub max_content_bytes: usize,
    /// Database connections. SQLite serialises writers anyway; a few
    /// connections let reads proceed beside the writer.
    pub max_connections: u32,
    /// How long after sending a sender may recall a message (a group's
    /// owner may recall any message of the group at any time).
    pub recall_window_secs: u64,
    /// How long after sending a sender may edit a message.
    pub edit_window_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "sqlite://data/message.db".into(),
            max_content_bytes: 64 * 1024,
            max_connections: 8,
            recall_window_secs: 120,
            edit_window_secs: 900,
        }
    }
}

/// What the message service calls.
#[derive(Clone)]
pub struct Peers {
    /// To check that a 1:1 recipient exists.
    pub auth: AuthClient<GrpcChannel>,
    /// Group membership, for authorisation and fan-out.
    pub group: GroupClient<GrpcChannel>,
    /// To start both cursors of a new 1:1 conversation.
    pub offline: OfflineClient<GrpcChannel>,
    /// Where stored messages are published, one event per target node.
    pub bus: Arc<dyn Bus>,
    /// Which nodes hold which users.
    pub presence: Arc<dyn Presence>,
}

/// Connects the database, applies migrations and builds the service.
///
/// Attachments' bytes go to the store `files` names; the sweep of uploads
/// never sent runs beside the service.
/// Every stored message is also a `message.stored` event for the webhooks
/// `webhooks` configures.
pub async fn build(
    settings: &Settings,
    files: &AttachmentSettings,
    webhooks: &tern_webhook::Settings,
    peers: Peers,
) -> anyhow::Result<Messages> {
    let outbox = tern_webhook::Outbox::new("message", webhooks)?;
    let db = tern_runtime::db::connect(&settings.database_url, settings.max_connections).await?;
    migration::apply(&db).await?;
    let writer = tern_runtime::db::connect_writer(&settings.database_url).await?;
    let attachments = Attachments::new(db.clone(), Objects::open(files)?, files);
    tokio::spawn(attachments.clone().sweep_every(Duration::from_secs(files.sweep_interval_secs)));
    outbox.start(db.clone());
    Ok(Messages::new(db, writer, peers, settings, attachments, outbox))
}

/// `messages` as a gRPC server, taking requests that carry up to
/// `max_content_bytes` of content.
pub fn server(messages: Messages, settings: &Settings) -> MessageServiceServer<Messages> {
    MessageServiceServer::new(messages)
        .max_decoding_message_size(settings.max_content_bytes + 16 * 1024)
}

/// Serves the message service until the shutdown signal.
/// Serves the message service, and its webhook outbox's admin API, until
/// the shutdown signal.
pub async fn run(
    settings: Settings,
    files: AttachmentSettings,
    webhooks: tern_webhook::Settings,
    peers: Peers,
    started: tern_runtime::service::Started,
) -> anyhow::Result<()> {
    let messages = build(&settings, &files, &webhooks, peers).await?;
    let routes = tonic::service::Routes::new(tern_webhook::server(messages.webhooks()))
        .add_service(server(messages, &settings));
    let names = [
        <MessageServiceServer<Messages> as tonic::server::NamedService>::NAME,
        tern_webhook::SERVICE_NAME,
    ];
    started.serve_routes(routes, &names, tern_proto::FILE_DESCRIPTOR_SET).await?;
    Ok(())
}
