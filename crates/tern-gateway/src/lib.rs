//! The gateway: Tern's stateless edge. It terminates WebSockets (protocol
//! v1, docs/protocol.md), serves the HTTP API (same document), and turns client frames into
//! gRPC calls to the auth, group, message and offline services. Messages for
//! its users arrive on its own bus channel.
//!
//! **Architecture Invariant:** the gateway is the only crate that knows
//! WebSocket frames and JSON. It holds no state that must survive it: a
//! restarted gateway loses only live sockets, and clients resync.

mod acks;
mod api;
mod batch_writer;
mod contacts;
mod echo;
mod error;
mod limits;
mod protocol;
mod pusher;
mod reader;
mod registry;
mod stats;
mod sync_reads;
mod tokens;
mod ws;

use axum::{Router, routing::MethodRouter};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};
use tern_bus::{Bus, Presence};
use tern_proto::{
    clients::{AuthClient, GroupClient, MessageClient, OfflineClient},
    pb::message::Message,
};
use tern_runtime::grpc::GrpcChannel;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use api::openapi_json;
pub use limits::LimitSettings;
pub use protocol::close as close_codes;

/// Settings of a gateway node (`TERN__GATEWAY__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// This node's id: its bus channel and its name in presence.
    pub node_id: String,
    /// Largest whole client message (all fragments together), in bytes.
    /// Anything bigger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// A socket that sends nothing for this long is closed. Clients send a
    /// heartbeat every 30 s, so 90 s allows two to be lost.
    pub idle_timeout_secs: u64,
    /// Frames a session may have queued. When a client stops reading and
    /// its queue fills, it is disconnected and resyncs on reconnect.
    pub outbound_queue: usize,
    /// Messages per page when syncing a conversation.
    pub sync_page: u32,
    /// A write to a client that takes longer than this means it stopped
    /// reading (its socket buffers are full): the session is closed, so
    /// a stalled client costs the node only its bounded queue. It resyncs
    /// on reconnect.
    pub write_timeout_secs: u64,
    /// Sends this node may have waiting on the message service at once.
    /// Beyond that a send is refused at once with a retryable
    /// `unavailable` error: a saturated message service or database
    /// pushes back on clients instead of growing a queue here.
    pub max_inflight_sends: usize,
    /// Sends one session may have waiting at once (read from the socket
    /// but not yet answered). They go to the message service in batches,
    /// in order; with the window full the session stops reading its socket
    /// until answers come back, so a fast sender is slowed, not the node.
    pub send_window: usize,
    /// Delivery acks are coalesced per (user, conversation) and written
    /// every this many milliseconds; a crash of the node loses at most this
    /// much cursor movement, which means redelivery, never loss.
    pub ack_flush_ms: u64,
    /// Coalesced acks that trigger a write before `ack_flush_ms` is up.
    pub ack_buffer_max: usize,
    /// How long a send may wait for the message service. Past it the
    /// client gets a retryable `unavailable` error: the message may or may
    /// not be stored, and retrying with the same `client_msg_id` is safe.
    pub send_timeout_ms: u64,
    /// How long shutdown waits for sessions to close after sending 1001.
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, how long `/ready` fails while the node still serves,
    /// before it stops accepting and closes sockets (load balancer drain).
    pub drain_secs: u64,
    /// Browser origins allowed to open WebSockets, comma separated, e.g.
    /// `https://chat.example.com`. Empty allows any (development). Clients
    /// that send no `Origin` (native apps) are always allowed.
    pub allowed_origins: String,
    /// Sessions one user may hold at once, across all nodes (one per
    /// device or tab); past it the oldest is closed with 4001.
    pub max_sessions: usize,
    /// One session per user: a new one closes every other (the limit is
    /// then 1 whatever `max_sessions` says).
    pub single_session: bool,
    /// Abuse limits.
    pub limits: LimitSettings,
    /// Serve `/ws/echo`, an unauthenticated echo over the gateway's own
    /// frame stack, for WebSocket conformance runs. Never in production.
    pub echo_endpoint: bool,
    /// The auth service's token key (`secret`, `issuer`, `audience`, the
    /// same values as `TERN__AUTH__JWT__*`). With it the node checks access
    /// tokens itself and caches each user's revocation watermark, so a
    /// connect costs no call to the auth service; with no secret every
    /// check asks the auth service.
    pub jwt: tern_runtime::access::TokenKey,
    /// The operators' credential for `/api/admin/…` (`Authorization:
    /// Bearer <token>`, at least 32 bytes). Empty turns the admin API off:
    /// its routes answer 404. A user's access token never opens it.
    pub admin_token: tern_runtime::Secret,
    /// Report users coming online (first session anywhere) and going
    /// offline (last session ended) to the auth service, for the
    /// `user.online` and `user.offline` webhook events: one call per such
    /// connect and disconnect. The all-in-one server sets it when its
    /// webhooks want those events.
    pub presence_events: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_id: "local".into(),
            max_message_bytes: 64 * 1024,
            idle_timeout_secs: 90,
            outbound_queue: 1024,
            sync_page: 200,
            write_timeout_secs: 10,
            max_inflight_sends: 1024,
            send_window: 32,
            ack_flush_ms: 50,
            ack_buffer_max: 4096,
            send_timeout_ms: 5000,
            shutdown_grace_secs: 10,
            drain_secs: 0,
            allowed_origins: String::new(),
            max_sessions: 5,
            single_session: false,
            limits: LimitSettings::default(),
            echo_endpoint: false,
            jwt: Default::default(),
            admin_token: Default::default(),
            presence_events: false,
        }
    }
}

/// The services and adapters a gateway talks to.
#[derive(Clone)]
pub struct Services {
    pub auth: AuthClient<GrpcChannel>,
    pub group: GroupClient<GrpcChannel>,
    pub message: MessageClient<GrpcChannel>,
    pub offline: OfflineClient<GrpcChannel>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    /// Attachments' store: the gateway carries the bytes of one that signs
    /// no URLs.
    pub files: tern_runtime::objects::Objects,
    /// The webhook outboxes' admin APIs (auth, group and message; one in
    /// the all-in-one server).
    pub webhooks: Vec<tern_proto::clients::WebhookClient<GrpcChannel>>,
}

/// What a session's writer is asked to send. Every variant holds at most
/// one pointer, so the enum is 16 bytes: each session's queue allocates
/// its first block of 32 slots when the session opens, and the variants
/// that are not a live message are rare enough to be boxed.
pub enum Outbound {
    /// A ready JSON frame (ack, error, heartbeat answer).
    Text(Box<String>),
    /// The answer to the client's own send. The seq is noted so the next
    /// message of the conversation does not look like a gap: a device never
    /// receives its own messages as deliveries.
    /// Boxed: every session's outbound queue allocates slots for this enum.
    SendAck(Box<SendAnswer>),
    /// A live message from the bus; the writer orders and deduplicates it.
    Deliver(Arc<Delivery>),
    /// The answer to a ping.
    Pong(Box<Vec<u8>>),
    /// Close the socket with this code and reason.
    Close(Box<(u16, &'static str)>),
    /// Send type 100 with this reason, then close.
    Kick(Box<String>),
    /// Live messages may have been missed: read storage for everything
    /// beyond what was pushed.
    Resync,
    /// A message sent back unchanged (the conformance echo endpoint only).
    Echo(Box<reader::Message>),
}

impl Outbound {
    pub fn text(frame: String) -> Self {
        Self::Text(Box::new(frame))
    }

    pub fn close(code: u16, reason: &'static str) -> Self {
        Self::Close(Box::new((code, reason)))
    }
}

// The size the queue's slots are counted with above.
const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

/// The ack frame of a send, with what the writer notes of it.
pub struct SendAnswer {
    pub frame: String,
    pub conversation_id: String,
    pub seq: u64,
}

/// A live message as every recipient on this node gets it: encoded once,
/// the same bytes written to each socket.
pub struct Delivery {
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: u64,
    /// The sender's device, which is not sent its own message.
    pub sender_device: String,
    pub created_at_ms: i64,
    /// The type 1 or 2 frame.
    pub frame: Box<[u8]>,
}

impl Delivery {
    pub fn new(message: &Message) -> Self {
        Self {
            conversation_id: message.conversation_id.clone(),
            seq: message.seq,
            sender_id: message.sender_id,
            sender_device: message.sender_device.clone(),
            created_at_ms: message.created_at_ms,
            frame: protocol::delivered(message).into_bytes().into_boxed_slice(),
        }
    }
}

/// Shared by every handler of a node. Every field is a handle, so a clone
/// is small: each session's future holds one.
#[derive(Clone)]
pub struct AppState {
    settings: Arc<Settings>,
    services: Arc<Services>,
    registry: Arc<registry::Registry>,
    stats: Arc<stats::Stats>,
    /// Every session task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Cancelled when shutdown starts; `/ready` then fails.
    draining: CancellationToken,
    limits: Arc<limits::Limits>,
    /// Permits for sends in flight to the message service.
    sends: Arc<tokio::sync::Semaphore>,
    /// Delivery acks not yet written.
    acks: Arc<acks::AckBuffer>,
    /// Backlog listings, batched across sessions, and pulls.
    sync_reads: Arc<sync_reads::SyncReads>,
    /// Access token checks.
    tokens: Arc<tokens::Tokens>,
    /// URLs of attachment bytes this node carries.
    urls: Arc<api::UrlSigner>,
}

impl AppState {
    pub fn new(settings: Settings, services: Services) -> anyhow::Result<Self> {
        if !settings.admin_token.is_empty() {
            tern_runtime::credential::validate_named("gateway admin_token", &settings.admin_token)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(Self {
            tokens: Arc::new(tokens::Tokens::new(&settings.jwt)?),
            urls: Arc::new(api::UrlSigner::new(
                settings.jwt.secret.expose(),
                services.files.url_ttl().as_secs(),
            )),
            sync_reads: sync_reads::SyncReads::new(services.offline.clone()),
            services: Arc::new(services),
            registry: Arc::default(),
            stats: Arc::default(),
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            limits: limits::Limits::new(settings.limits.clone()),
            sends: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight_sends.max(1))),
            acks: Arc::new(acks::AckBuffer::new(settings.ack_buffer_max)),
            settings: Arc::new(settings),
        })
    }
}

/// Every route of the gateway, listed once: [`app`] is built from this
/// table, and tests check that docs/protocol.md documents each path and
/// that the OpenAPI document lists each method of each path (but those in
/// [`NOT_IN_OPENAPI`]) and nothing else.
fn routes() -> Vec<(&'static str, Vec<route::Endpoint>)> {
    use route::{delete, get, post, put};
    vec![
        ("/", vec![get(web::index)]),
        ("/ws", vec![get(ws::upgrade)]),
        ("/ws/echo", vec![get(echo::echo)]),
        ("/health", vec![get(api::health)]),
        ("/ready", vec![get(api::ready)]),
        ("/stats", vec![get(api::stats)]),
        ("/metrics", vec![get(api::metrics)]),
        ("/api/openapi.json", vec![get(api::openapi_document)]),
        ("/api/register", vec![post(api::register)]),
        ("/api/login", vec![post(api::login)]),
        ("/api/refresh", vec![post(api::refresh)]),
        ("/api/logout", vec![post(api::logout)]),
        ("/api/users", vec![get(api::users)]),
        ("/api/users/{username}", vec![get(api::find_user)]),
        ("/api/groups", vec![post(api::create_group), get(api::list_groups)]),
        ("/api/groups/{group_id}/join", vec![post(api::join_group)]),
        ("/api/groups/{group_id}/leave", vec![post(api::leave_group)]),
        ("/api/groups/{group_id}/members", vec![get(api::group_members), post(api::add_members)]),
        ("/api/groups/{group_id}/members/{user_id}", vec![delete(api::remove_member)]),
        ("/api/presence", vec![get(api::presence)]),
        ("/api/conversations", vec![get(api::conversations)]),
        ("/api/conversations/{conversation_id}/messages", vec![get(api::history)]),
        ("/api/conversations/{conversation_id}/reads", vec![get(api::reads)]),
        ("/api/attachments", vec![post(api::create_upload)]),
        ("/api/attachments/{attachment_id}", vec![get(api::get_attachment)]),
        ("/api/attachments/{attachment_id}/complete", vec![post(api::complete_upload)]),
        (
            "/api/attachments/{attachment_id}/content",
            vec![get(api::get_content), put(api::put_content)],
        ),
        ("/api/admin/users/{user_id}/ban", vec![post(api::ban), delete(api::unban)]),
        ("/api/admin/users/{user_id}/revoke", vec![post(api::revoke)]),
        ("/api/admin/online", vec![get(api::online)]),
        ("/api/admin/messages", vec![post(api::system_message)]),
        (
            "/api/admin/conversations/{conversation_id}/messages/{seq}/recall",
            vec![post(api::recall)],
        ),
        ("/api/admin/webhooks/parked", vec![get(api::parked_webhooks)]),
        ("/api/admin/webhooks/retry", vec![post(api::retry_webhooks)]),
    ]
}

/// Routes the OpenAPI document leaves out, with every method: they are
/// not JSON over HTTP. `/` is the web app's page; `/ws` and `/ws/echo`
/// upgrade to WebSockets, whose frames docs/protocol.md describes.
#[cfg(test)]
const NOT_IN_OPENAPI: &[&str] = &["/", "/ws", "/ws/echo"];

/// A route's methods, each with its handler, so that [`routes`] names the
/// methods it serves (the `MethodRouter` axum builds from them does not
/// tell).
mod route {
    use crate::AppState;
    use axum::{
        handler::Handler,
        http::Method,
        routing::{MethodFilter, MethodRouter, on},
    };

    /// One method of a route and its handler.
    pub type Endpoint = (Method, MethodRouter<AppState>);

    fn endpoint<H: Handler<T, AppState>, T: 'static>(method: Method, handler: H) -> Endpoint {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        (method, on(filter, handler))
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(handler: H) -> Endpoint {
        endpoint(Method::GET, handler)
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(handler: H) -> Endpoint {
        endpoint(Method::POST, handler)
    }

    pub fn put<H: Handler<T, AppState>, T: 'static>(handler: H) -> Endpoint {
        endpoint(Method::PUT, handler)
    }

    pub fn delete<H: Handler<T, AppState>, T: 'static>(handler: H) -> Endpoint {
        endpoint(Method::DELETE, handler)
    }
}

/// The gateway's routes.
pub fn app(state: AppState) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, endpoints)| {
            let route = endpoints
                .into_iter()
                .fold(MethodRouter::new(), |route, (_, handler)| route.merge(handler));
            router.route(path, route)
        })
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), api::client_ip_and_rate))
        .with_state(state)
}

#[cfg(test)]
mod route_docs {
    use super::{NOT_IN_OPENAPI, routes};
    use serde_json::Value;
    use std::collections::BTreeSet;

    /// docs/protocol.md names every route as `METHOD /path` (followed by a
    /// backtick, or by `?` and its query).
    #[test]
    fn every_route_is_documented() {
        let docs = include_str!("../../../docs/protocol.md");
        let missing: Vec<&str> = routes()
            .into_iter()
            .map(|(path, _)| path)
            .filter(|path| {
                !docs.contains(&format!(" {path}`")) && !docs.contains(&format!(" {path}?"))
            })
            .collect();
        assert!(missing.is_empty(), "routes missing from docs/protocol.md: {missing:?}");
    }

    fn openapi() -> Value {
        serde_json::from_str(super::openapi_json()).expect("the OpenAPI document is JSON")
    }

    /// `(path, METHOD)` of every operation in the OpenAPI document.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        const METHODS: [&str; 8] =
            ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
        let paths = doc["paths"].as_object().expect("the document has paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("a path item is an object");
                item.keys()
                    .filter(|key| METHODS.contains(&key.as_str()))
                    .map(|method| (path.clone(), method.to_uppercase()))
            })
            .collect()
    }

    /// The OpenAPI document lists exactly the methods and paths that
    /// `routes()` serves, but for the routes in `NOT_IN_OPENAPI`, which it
    /// must not list.
    #[test]
    fn openapi_lists_exactly_the_routes() {
        let documented = documented(&openapi());
        let routes = routes();
        let served: BTreeSet<(String, String)> = routes
            .iter()
            .filter(|(path, _)| !NOT_IN_OPENAPI.contains(path))
            .flat_map(|(path, endpoints)| {
                endpoints.iter().map(|(method, _)| (path.to_string(), method.to_string()))
            })
            .collect();
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(missing.is_empty(), "routes missing from the OpenAPI document: {missing:?}");
        assert!(extra.is_empty(), "the OpenAPI document lists routes not served: {extra:?}");
        for excluded in NOT_IN_OPENAPI {
            assert!(
                routes.iter().any(|(path, _)| path == excluded),
                "{excluded} is excluded from the OpenAPI document but is no route"
            );
        }
    }

    /// It is OpenAPI 3.1, every user route asks for the access token and
    /// every admin route for the admin token, and every `$ref` resolves.
    #[test]
    fn openapi_document_is_sound() {
        let doc = openapi();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemes = &doc["components"]["securitySchemes"];
        for scheme in ["access_token", "admin_token"] {
            assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
        }
        // Open to anyone: the account routes that hand out tokens, the
        // signed attachment URLs, and this document.
        let open = [
            "/api/register",
            "/api/login",
            "/api/refresh",
            "/api/attachments/{attachment_id}/content",
            "/api/openapi.json",
        ];
        for (path, method) in documented(&doc) {
            let operation = &doc["paths"][&path][method.to_lowercase()];
            let security: Vec<&str> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|requirement| requirement.as_object().unwrap().keys())
                .map(String::as_str)
                .collect();
            let expected: &[&str] = if path.starts_with("/api/admin/") {
                &["admin_token"]
            } else if path.starts_with("/api/") && !open.contains(&path.as_str()) {
                &["access_token"]
            } else {
                &[]
            };
            assert_eq!(security, expected, "security of {method} {path}");
        }
        let text = super::openapi_json();
        for reference in text.split("\"$ref\": \"").skip(1) {
            let target = &reference[..reference.find('"').unwrap()];
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/`: the parsers of untrusted
/// input, and nothing else.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::protocol::{ClientFrame, parse as parse_client_frame};

    /// The close code the gateway answers a client's close payload with.
    pub fn answer_to_close(payload: &[u8]) -> u16 {
        crate::reader::answer_to_close(payload).0
    }

    /// Whether `s` is one JSON value.
    pub fn is_json(s: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
    }
}

mod web {
    use axum::response::Html;

    /// The built-in demo page.
    pub async fn index() -> Html<&'static str> {
        Html(include_str!("../web/index.html"))
    }
}

/// How long a starting node waits for the auth service's list of
/// revocations (see [`tokens`]).
const LEARN_REVOCATIONS_WITHIN: Duration = Duration::from_secs(2);

/// Serves a gateway node on `listener` until `shutdown`; then stops
/// accepting, closes every WebSocket with 1001 and waits (up to the grace
/// period) for sessions to end.
pub async fn run(
    settings: Settings,
    services: Services,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let state = AppState::new(settings, services)?;
    let node = state.settings.node_id.clone();
    let dispatcher = registry::dispatcher(
        state.registry.clone(),
        state.stats.clone(),
        state.services.presence.clone(),
        state.tokens.clone(),
        state.services.auth.clone(),
        node.clone(),
    );
    let _subscription = state.services.bus.subscribe(&node, dispatcher).await?;
    state.tokens.listening();
    // An auth service that is down delays the start by at most this; the
    // node asks on meanwhile.
    let learning = tokio::spawn({
        let (tokens, auth) = (state.tokens.clone(), state.services.auth.clone());
        async move { tokens.learn_revocations(&auth).await }
    });
    let _ = tokio::time::timeout(LEARN_REVOCATIONS_WITHIN, learning).await;
    let acks_done = CancellationToken::new();
    let ack_writer = tokio::spawn(acks::run(
        state.acks.clone(),
        state.services.offline.clone(),
        Duration::from_millis(state.settings.ack_flush_ms.max(1)),
        acks_done.clone(),
    ));
    // Renew this node's liveness, so routes reach it only while it runs.
    let presence = state.services.presence.clone();
    let alive = tokio::spawn({
        let node = node.clone();
        async move {
            loop {
                if let Err(error) = presence.keep_node_alive(&node).await {
                    tracing::warn!(%error, "node liveness not renewed");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    });
    tracing::info!(
        node_id = %state.settings.node_id,
        addr = %listener.local_addr()?,
        tokens_checked_here = state.tokens.checks_locally(),
        "gateway listening"
    );

    let draining = state.draining.clone();
    let registry = state.registry.clone();
    let drain = Duration::from_secs(state.settings.drain_secs);
    let make = app(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Frames are small and latency matters: no Nagle delay on client sockets.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, make)
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            // Fail readiness first and keep serving for a moment, so the
            // load balancer stops sending new clients here.
            draining.cancel();
            tokio::time::sleep(drain).await;
            // Upgraded sockets are outside axum's graceful shutdown: close
            // them ourselves so clients reconnect elsewhere at once.
            for session in registry.all() {
                let _ = session
                    .tx
                    .try_send(Outbound::close(close_codes::GOING_AWAY, "server shutting down"));
            }
        })
        .await?;
    state.tracker.close();
    if tokio::time::timeout(grace, state.tracker.wait()).await.is_err() {
        tracing::warn!("sessions still open after the grace period; exiting anyway");
    }
    alive.abort();
    // Sessions are closed: write their last acks.
    acks_done.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), ack_writer).await;
    if let Err(error) = state.services.presence.node_gone(&node).await {
        tracing::warn!(%error, "could not mark the node gone; it expires on its own");
    }
    Ok(())
}
