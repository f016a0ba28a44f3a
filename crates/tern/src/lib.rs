//! Tern in one process: the gateway plus the auth, group, message and
//! offline services, on SQLite under one data folder, with the in-process
//! bus and presence. The services are the same library code the separate
//! binaries run; only the adapters differ.
//!
//! The gateway and the services reach each other through the same client
//! types as in distributed mode, bound to the services in this process
//! ([`tern_proto::clients::Local`]): a call is a method call on the service
//! with the request as it is, nothing encoded and no socket.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, sync::Arc};
use tern_bus::{InProcessBus, InProcessPresence};
use tern_proto::{
    clients::{AuthClient, GroupClient, Local, MessageClient, OfflineClient, WebhookClient},
    pb::{
        auth::auth_service_server::{AuthService, AuthServiceServer},
        group::group_service_server::{GroupService, GroupServiceServer},
        message::message_service_server::{MessageService, MessageServiceServer},
        offline::offline_service_server::{OfflineService, OfflineServiceServer},
        webhook::webhook_admin_server::WebhookAdmin,
    },
};
use tern_runtime::{
    Secret,
    objects::{AttachmentSettings, Objects},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::Routes};

/// Settings of the all-in-one server (`TERN__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the web app, HTTP API and WebSocket endpoint listen.
    pub http_addr: String,
    /// When set, the four services' gRPC APIs (with health and reflection)
    /// are also served here, for internal backends. Off by default: the
    /// gRPC API trusts its callers, so only bind it where only they reach.
    pub grpc_addr: Option<String>,
    /// The credential callers of `grpc_addr` must present
    /// (`authorization: Bearer <token>`); required when `grpc_addr` is set.
    pub service_token: Secret,
    /// Folder for the SQLite databases and the generated JWT key. Service
    /// `database_url`s left at their defaults are placed here.
    pub data_dir: PathBuf,
    pub auth: tern_auth::Settings,
    pub group: tern_group::Settings,
    pub message: tern_message::Settings,
    pub offline: tern_offline::Settings,
    pub gateway: tern_gateway::Settings,
    /// Attachments: a folder under `data_dir` unless set.
    pub attachments: AttachmentSettings,
    /// Signed webhooks (`TERN__WEBHOOKS__*`): off unless `urls` is set.
    pub webhooks: tern_webhook::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "0.0.0.0:8080".into(),
            grpc_addr: None,
            service_token: Secret::default(),
            data_dir: PathBuf::from("data"),
            auth: Default::default(),
            group: Default::default(),
            message: Default::default(),
            offline: Default::default(),
            gateway: Default::default(),
            attachments: Default::default(),
            webhooks: Default::default(),
        }
    }
}

impl Settings {
    /// Points default database URLs into `data_dir` and makes sure a JWT
    /// key exists (generated once, kept in `data_dir/jwt.key`, so tokens
    /// survive restarts).
    fn resolve(mut self) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&self.data_dir)?;
        let dir = self.data_dir.display().to_string();
        let place = |url: &mut String, default: String, name: &str| {
            if *url == default {
                *url = format!("sqlite://{dir}/{name}.db");
            }
        };
        place(&mut self.auth.database_url, tern_auth::Settings::default().database_url, "auth");
        place(&mut self.group.database_url, tern_group::Settings::default().database_url, "group");
        place(
            &mut self.message.database_url,
            tern_message::Settings::default().database_url,
            "message",
        );
        place(
            &mut self.offline.database_url,
            tern_offline::Settings::default().database_url,
            "offline",
        );
        if self.attachments.store == AttachmentSettings::default().store {
            self.attachments.store = self.data_dir.join("attachments").display().to_string();
        }
        if self.auth.jwt.key.secret.is_empty() {
            let path = self.data_dir.join("jwt.key");
            let key = match std::fs::read_to_string(&path) {
                Ok(key) if key.trim().len() >= 32 => key.trim().to_string(),
                Ok(_) => anyhow::bail!(
                    "{} holds no usable key (at least 32 bytes); fix or delete it",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut bytes = [0u8; 32];
                    rand::rng().fill_bytes(&mut bytes);
                    let key = hex::encode(bytes);
                    write_private(&path, &key)?;
                    key
                }
                Err(e) => return Err(e.into()),
            };
            self.auth.jwt.key.secret = Secret::new(key);
        }
        Ok(self)
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Builds every service, wires them in-process and serves the gateway on
/// `listener` until `shutdown`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut settings = settings.resolve()?;
    // The gateway checks access tokens itself with the auth service's key.
    if settings.gateway.jwt.secret.expose().is_empty() {
        settings.gateway.jwt = settings.auth.jwt.key.clone();
    }
    let bus = Arc::new(InProcessBus::new());
    let presence = Arc::new(InProcessPresence::new());

    // Services call each other's code directly. They call each other in a
    // cycle (message → group → offline → message → …), so every caller gets
    // its handle first and the handles are bound once the services exist.
    let auth_local = Local::<dyn AuthService>::unbound();
    let group_local = Local::<dyn GroupService>::unbound();
    let message_local = Local::<dyn MessageService>::unbound();
    let offline_local = Local::<dyn OfflineService>::unbound();

    // Presence events come from the gateway, through the auth service.
    let webhooks = &settings.webhooks;
    settings.gateway.presence_events |=
        webhooks.sends("user.online") || webhooks.sends("user.offline");
    let auth = tern_auth::build(&settings.auth, webhooks, bus.clone()).await?;
    let group = tern_group::build(
        &settings.group,
        webhooks,
        tern_group::Peers {
            auth: AuthClient::Local(auth_local.clone()),
            offline: OfflineClient::Local(offline_local.clone()),
            message: MessageClient::Local(message_local.clone()),
        },
    )
    .await?;
    let offline = tern_offline::build(
        &settings.offline,
        tern_offline::Peers { message: MessageClient::Local(message_local.clone()) },
    )
    .await?;
    let message = tern_message::build(
        &settings.message,
        &settings.attachments,
        webhooks,
        tern_message::Peers {
            auth: AuthClient::Local(auth_local.clone()),
            group: GroupClient::Local(group_local.clone()),
            offline: OfflineClient::Local(offline_local.clone()),
            bus: bus.clone(),
            presence: presence.clone(),
        },
    )
    .await?;
    auth_local.bind(Arc::new(auth.clone()));
    group_local.bind(Arc::new(group.clone()));
    offline_local.bind(Arc::new(offline.clone()));
    message_local.bind(Arc::new(message.clone()));
    // One admin API over the three outboxes.
    let outboxes = auth.webhooks().and(group.webhooks()).and(message.webhooks());
    let webhooks_local = Local::<dyn WebhookAdmin>::unbound();
    webhooks_local.bind(Arc::new(outboxes.clone()));

    if let Some(addr) = &settings.grpc_addr {
        tern_runtime::credential::validate(&settings.service_token).map_err(|why| {
            anyhow::anyhow!("grpc_addr is set, so service_token is required: {why}")
        })?;
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "gRPC API for internal backends");
        let routes = Routes::new(AuthServiceServer::new(auth))
            .add_service(GroupServiceServer::new(group))
            .add_service(tern_message::server(message, &settings.message))
            .add_service(OfflineServiceServer::new(offline))
            .add_service(tern_webhook::server(outboxes));
        let names = [
            <AuthServiceServer<tern_auth::Auth> as NamedService>::NAME,
            <GroupServiceServer<tern_group::Groups> as NamedService>::NAME,
            <MessageServiceServer<tern_message::Messages> as NamedService>::NAME,
            <OfflineServiceServer<tern_offline::Offline> as NamedService>::NAME,
            tern_webhook::SERVICE_NAME,
        ];
        let (stop, token) = (shutdown.clone(), settings.service_token.clone());
        // While the gateway closes its sockets, backends are told through
        // health that this process is going away, as by a service's drain.
        let drain = std::time::Duration::from_secs(settings.gateway.shutdown_grace_secs);
        let descriptors = tern_proto::FILE_DESCRIPTOR_SET;
        tokio::spawn(async move {
            let serving = tern_runtime::grpc::serve_all(
                routes,
                &names,
                descriptors,
                listener,
                stop,
                drain,
                &token,
            );
            if let Err(error) = serving.await {
                tracing::error!(%error, "gRPC server failed");
            }
        });
    }

    let services = tern_gateway::Services {
        auth: AuthClient::Local(auth_local),
        group: GroupClient::Local(group_local),
        message: MessageClient::Local(message_local),
        offline: OfflineClient::Local(offline_local),
        bus,
        presence,
        files: Objects::open(&settings.attachments)?,
        webhooks: vec![WebhookClient::Local(webhooks_local)],
    };
    tern_gateway::run(settings.gateway, services, listener, shutdown).await
}
