//! The WebSocket endpoint: authentication at the upgrade, then a session:
//! one task whose futures read frames, make service calls, and write
//! through the [`Pusher`].
//!
//! Sends are pipelined: the reader queues each send into the session's
//! send window (`send_window`) and goes on reading, so heartbeats and
//! delivery acks never wait behind a send. The session's [`send_pipeline`]
//! takes whatever sends are queued, makes one `SendBatch` call for them and
//! queues their answers in the order the sends arrived; the next batch
//! goes out when that one is answered, so a session's messages keep their
//! order. With the window full the reader stops reading that socket.

use crate::{
    AppState, Outbound, SendAnswer,
    batch_writer::BatchWriter,
    contacts,
    error::{ApiError, client_message, from_status},
    protocol::{self, ClientFrame, FrameError, SendTarget},
    pusher::{Pusher, Written},
    reader::{self, FrameLimits},
    registry::{self, SessionHandle},
};
use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use fastwebsockets::{
    WebSocketRead,
    upgrade::{IncomingUpgrade, UpgradeFut},
};
use serde::Deserialize;
use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};
use tern_bus::{BusEvent, Event, Kick, SessionAt};
use tern_proto::{
    ErrorCode,
    pb::{
        message::{
            EditRequest, MarkReadRequest, MessageKind, RecallRequest, SendAck, SendBatchRequest,
            SendRequest, SendResult, TypingRequest, send_request::Target, send_result::Outcome,
            typing_request::Target as TypingTarget,
        },
        offline::AckRequest,
    },
};
use tern_runtime::clock::now_secs;
use tokio::{
    io::AsyncRead,
    sync::{OwnedSemaphorePermit, mpsc},
};
use tokio_util::sync::CancellationToken;

/// Query string of `GET /ws`.
#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    /// The client's device (or tab), which keeps its own delivery cursors.
    device: Option<String>,
}

/// The bearer token from `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// `GET /ws`: checks the token before upgrading, so a bad or expired token
/// gets a plain HTTP 401 and never a socket.
pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    let Ok(Query(query)) = query else {
        return ApiError::bad_request("malformed query string").into_response();
    };
    if !origin_allowed(&state.settings.allowed_origins, &headers) {
        return ApiError::new(ErrorCode::Forbidden, "origin not allowed").into_response();
    }
    let device = match crate::error::device(query.device) {
        Ok(device) => device,
        Err(error) => return error.into_response(),
    };
    let Some(token) = query.token.as_deref().or_else(|| bearer(&headers)) else {
        return ApiError::new(ErrorCode::Unauthenticated, "missing token").into_response();
    };
    let identity = match state.tokens.verify(&state.services.auth, token).await {
        Ok(identity) => identity,
        Err(error) => return error.into_response(),
    };
    if !state.limits.connect(identity.user_id) {
        return ApiError::new(ErrorCode::RateLimited, "too many connections; wait a minute")
            .into_response();
    }
    let Ok(upgrade) = upgrade else {
        return ApiError::bad_request("expected a WebSocket upgrade (version 13)").into_response();
    };
    let Ok((response, socket)) = upgrade.upgrade() else {
        return ApiError::bad_request("upgrade failed").into_response();
    };
    let session =
        serve(state.clone(), socket, identity.user_id, device.into(), identity.expires_at);
    state.tracker.spawn(session);
    response.into_response()
}

/// Whether a browser `Origin` may open a socket. No allowlist means any;
/// no `Origin` header means a non-browser client, which CORS-style checks
/// do not concern.
fn origin_allowed(allowed: &str, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let allowed: Vec<&str> = allowed.split(',').map(str::trim).filter(|o| !o.is_empty()).collect();
    allowed.is_empty()
        || origin.to_str().is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// Runs one session from upgrade to close.
///
/// Not an `async fn`, and neither is [`Session::run`]: an `async fn`
/// copies its arguments into its future once more when it starts, and
/// this future is what a session holds for its whole life.
#[allow(clippy::manual_async_fn)] // the point: see above
fn serve(
    state: AppState,
    socket: UpgradeFut,
    user: u64,
    device: Arc<str>,
    expires_at: i64,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let stream = match socket.await {
            Ok(ws) => ws.into_inner(),
            Err(error) => return tracing::debug!(%error, "upgrade did not complete"),
        };
        // Frames are read by fastwebsockets and written by the session's
        // own `BatchWriter`.
        let (read, write) = tokio::io::split(stream);
        let mut read = WebSocketRead::after_handshake(read, fastwebsockets::Role::Server);
        read.set_auto_close(false);
        read.set_auto_pong(false);
        // The library's limit is per frame (and exclusive); the reader
        // enforces the same limit on whole, reassembled messages.
        read.set_max_message_size(state.settings.max_message_bytes + 1);
        // A queue with nothing in it holds no memory.
        let (tx, rx) = flume::bounded(state.settings.outbound_queue);
        // Calls made once per session are boxed: inline, the largest of them
        // would size the state this future keeps while the session is idle.
        let session = Box::pin(Session::open(state, user, device, tx.clone())).await;
        let write = BatchWriter::new(write);
        let (left_here, known) = session.run(read, write, tx, rx, expires_at).await;
        Box::pin(session.close(left_here, known)).await;
    }
}

/// One client session: opened (registered on this node and in presence),
/// run (writer, reader and send pipeline), closed (unregistered, contacts
/// told when it was the user's last session anywhere).
struct Session {
    state: AppState,
    user: u64,
    device: Arc<str>,
    /// Unique across nodes.
    id: String,
    /// Cancelled to drop the session at once (see [`SessionHandle`]).
    cancel: CancellationToken,
    /// Set when a live message was dropped (see [`SessionHandle`]).
    needs_resync: Arc<AtomicBool>,
    /// The user's first session anywhere: contacts hear they came online.
    first: bool,
}

impl Session {
    /// Registers the session on this node and in presence, and closes the
    /// user's sessions beyond the limit.
    async fn open(
        state: AppState,
        user: u64,
        device: Arc<str>,
        tx: flume::Sender<Outbound>,
    ) -> Self {
        let settings = &state.settings;
        let handle = SessionHandle {
            id: uuid::Uuid::now_v7().to_string(),
            device: device.clone(),
            tx,
            cancel: CancellationToken::new(),
            needs_resync: Arc::default(),
        };
        state.registry.insert(user, handle.clone());
        let presence =
            state.services.presence.connect(user, &settings.node_id, &handle.id, &device);
        let (others, first) = match presence.await {
            Ok(others) => {
                let first = others.is_empty();
                (others, first)
            }
            Err(error) => {
                tracing::warn!(user_id = user, %error, "presence not recorded; live pushes may miss this session");
                // Only this node's sessions are known.
                let node = &settings.node_id;
                let here = state.registry.others(user, &handle.id).into_iter();
                (here.map(|session| SessionAt { node: node.clone(), session }).collect(), false)
            }
        };
        if first {
            contacts::report(&state, user, true).await;
        }
        enforce_session_limit(&state, user, &handle.id, others).await;
        state.stats.connections.up();
        state.stats.connections_total.add(1);
        tracing::debug!(user_id = user, session_id = handle.id, "session open");
        let SessionHandle { id, cancel, needs_resync, .. } = handle;
        Self { state, user, device, id, cancel, needs_resync, first }
    }

    /// Runs the writer, the reader and the send pipeline until the socket
    /// ends, the session is kicked or its token expires; then unregisters
    /// it here and lets the writer drain. How many sessions of the user are
    /// left on this node (`None` when it was no longer registered), and
    /// what was written (which names the user's 1:1 contacts).
    fn run<R, W>(
        &self,
        read: WebSocketRead<R>,
        write: BatchWriter<W>,
        tx: flume::Sender<Outbound>,
        rx: flume::Receiver<Outbound>,
        expires_at: i64,
    ) -> impl Future<Output = (Option<usize>, Written)> + Send + '_
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (state, settings, user) = (&self.state, &self.state.settings, self.user);
        let written = Written::default();
        let (synced, first_sync) = tokio::sync::oneshot::channel();
        let pusher = Pusher::new(
            write,
            user,
            self.device.clone(),
            state.sync_reads.clone(),
            written.clone(),
            state.acks.clone(),
            settings.sync_page,
            state.stats.clone(),
            self.needs_resync.clone(),
            Duration::from_secs(settings.write_timeout_secs),
        )
        .tell_when_synced(synced);
        // Once the first sync has listed every conversation, the 1:1
        // contacts are known; a session that ends before then announced
        // nothing.
        let online_news = Box::pin({
            let written = written.clone();
            async move {
                if self.first && first_sync.await.is_ok() {
                    contacts::announce(state, user, written.direct_peers(user), true).await;
                }
            }
        });
        // Writer, reader and send pipeline are futures of this one task: an
        // answer the pipeline queues, or a frame the reader answers itself,
        // is written without waking another task (or another thread). Each
        // is boxed where it is made, so this future holds three pointers
        // and never a moved-from copy of one of them.
        let mut writer = Box::pin(pusher.run(rx, self.cancel.clone()));
        // The send window and its pipeline exist from the first send on:
        // most sessions never send, and the window's queue alone is ~800
        // bytes.
        let (hand_over, window_opened) = tokio::sync::oneshot::channel();
        let pipeline = Box::pin({
            let tx = tx.clone();
            async move {
                if let Ok(queued) = window_opened.await {
                    Box::pin(send_pipeline(state, queued, tx)).await;
                }
            }
        });
        let reader = Reader {
            state,
            user,
            device: &self.device,
            session_id: &self.id,
            tx: tx.clone(),
            sends: SendWindow::new(settings.send_window.max(1), hand_over),
            written: written.clone(),
            last_typing: Default::default(),
        };
        let reading = Box::pin(reader.run(read));
        async move {
            // The token's expiry is a deadline of the session, not a task
            // of its own.
            let left = (expires_at - now_secs()).max(0) as u64;
            let expired = tokio::time::sleep(Duration::from_secs(left));
            let writer_ended = tokio::select! {
                // A writer that ends (a failed write, a kick) ends the
                // reading side with it.
                _ = &mut writer => true,
                // The pipeline ends once the reader is done and its queue
                // drained.
                _ = async { tokio::join!(reading, pipeline, online_news) } => false,
                _ = expired => {
                    registry::kick(&tx, &self.cancel, "token expired".into());
                    false
                }
            };
            // Every sender of the queue but the registry's is gone now.
            drop(tx);
            // This user may reconnect on another node, which reads cursors
            // from storage: write the acks this session left behind soon.
            state.acks.flush_soon();
            // Unregister first, so nothing new is routed here; the writer
            // then drains what is queued (a close frame, say) once the last
            // sender is gone. A writer stuck on a dead socket is cut off.
            let left_here = state.registry.remove(user, &self.id);
            if !writer_ended {
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            }
            (left_here, written)
        }
    }

    /// Clears the session from presence; when it was the user's last
    /// session anywhere, their 1:1 contacts (`known`) hear they went
    /// offline.
    async fn close(self, left_here: Option<usize>, known: Written) {
        let Self { state, user, id: session_id, device, .. } = self;
        let (session_id, node) = (&session_id, &state.settings.node_id);
        if let Some(left_here) = left_here {
            let presence = &state.services.presence;
            let last_here = left_here == 0;
            if let Err(error) =
                presence.disconnect(user, node, session_id, &device, last_here).await
            {
                tracing::warn!(user_id = user, %error, "presence not cleared; it expires on its own");
            }
            // Presence is per (user, node): a new session of the same user
            // on this node may have recorded itself just before the removal.
            // It is in the registry by then (it registers before recording
            // presence), so record the node again; whichever order the two
            // ran in, the user stays reachable.
            if left_here == 0
                && state.registry.holds(user)
                && let Err(error) = presence.refresh(user, node).await
            {
                tracing::warn!(user_id = user, %error, "presence not restored after a reconnect");
            }
            if !contacts::still_online(&state, user).await {
                contacts::announce(&state, user, known.direct_peers(user), false).await;
                contacts::report(&state, user, false).await;
            }
        }
        state.stats.connections.down();
        tracing::debug!(user_id = user, session_id, "session closed");
    }
}

/// Closes the user's sessions beyond the limit, oldest first (`others`
/// lists them oldest first, on every node), or all of them under the
/// single-session policy. Kicks on other nodes go over the bus.
async fn enforce_session_limit(
    state: &AppState,
    user: u64,
    session_id: &str,
    others: Vec<SessionAt>,
) {
    let settings = &state.settings;
    let limit = if settings.single_session { 1 } else { settings.max_sessions.max(1) };
    let excess = (others.len() + 1).saturating_sub(limit);
    let reason = "another session took over";
    for other in &others[..excess] {
        if other.node == settings.node_id {
            state.registry.kick(user, Some(&other.session), "", reason);
            continue;
        }
        let kick = Kick {
            user_id: user,
            keep_session_id: session_id.to_string(),
            reason: reason.into(),
            session_id: other.session.clone(),
        };
        let event = BusEvent { event: Some(Event::Kick(kick)) };
        if let Err(error) = state.services.bus.publish(&other.node, event).await {
            tracing::warn!(node = other.node, %error, "kick not published; the session stays open");
        }
    }
}

/// A send in the session's window, waiting for its turn. Small (the send
/// itself is boxed): the window's queue is allocated for every session.
enum Queued {
    /// Refused before it reached the message service: its error frame.
    Refused(String),
    Send(Box<PendingSend>),
}

/// A send for the message service; the permit counts it against the
/// node's `max_inflight_sends` until it is answered.
struct PendingSend {
    request: SendRequest,
    client_msg_id: Option<String>,
    _permit: OwnedSemaphorePermit,
}

/// Sends a session's queued sends to the message service, a batch at a
/// time, and queues each answer for the writer in the order the sends
/// arrived. Ends when the reader is gone and the queue is empty.
async fn send_pipeline(
    state: &AppState,
    mut queued: mpsc::Receiver<Queued>,
    tx: flume::Sender<Outbound>,
) {
    let window = state.settings.send_window.max(1);
    let within = Duration::from_millis(state.settings.send_timeout_ms);
    // Grown by the first sends, not reserved up front: most sessions are
    // idle, and a full window's worth of slots cost each ~770 bytes.
    let mut batch = Vec::new();
    let send_ack_seconds = metrics::histogram!("tern_gateway_send_ack_seconds");
    while queued.recv_many(&mut batch, window).await > 0 {
        let sends: Vec<SendRequest> = batch
            .iter_mut()
            .filter_map(|q| match q {
                Queued::Send(send) => Some(std::mem::take(&mut send.request)),
                Queued::Refused(_) => None,
            })
            .collect();
        let mut results = if sends.is_empty() {
            Ok(Vec::new().into_iter())
        } else {
            let started = std::time::Instant::now();
            let mut message = state.services.message.clone();
            let span = tracing::info_span!("ws.send", sends = sends.len());
            let call = tracing::Instrument::instrument(
                message.send_batch(SendBatchRequest { sends }),
                span,
            );
            let answer = match tokio::time::timeout(within, call).await {
                Ok(answer) => answer.map(|r| r.into_inner().results.into_iter()),
                Err(_) => Err(tonic::Status::unavailable("send timed out")),
            };
            send_ack_seconds.record(started.elapsed().as_secs_f64());
            answer
        };
        for item in batch.drain(..) {
            let out = match item {
                Queued::Refused(frame) => Outbound::text(frame),
                Queued::Send(send) => match &mut results {
                    Ok(results) => answer_frame(results.next(), send.client_msg_id),
                    Err(status) => {
                        Outbound::text(protocol::error(&status_frame(status, send.client_msg_id)))
                    }
                },
            };
            if tx.send_async(out).await.is_err() {
                return;
            }
        }
    }
}

/// The frame answering one send of a batch.
fn answer_frame(
    result: Option<tern_proto::pb::message::SendResult>,
    client_msg_id: Option<String>,
) -> Outbound {
    match result.and_then(|r| r.outcome) {
        Some(Outcome::Ack(ack)) => Outbound::SendAck(Box::new(SendAnswer {
            frame: protocol::send_ack(&ack),
            conversation_id: ack.conversation_id,
            seq: ack.seq,
        })),
        Some(Outcome::Error(error)) => {
            let code = ErrorCode::parse(&error.code).unwrap_or(ErrorCode::Internal);
            let message = client_message(code, &error.message);
            Outbound::text(protocol::error(&FrameError { code, message, client_msg_id }))
        }
        None => Outbound::text(protocol::error(&FrameError {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            client_msg_id,
        })),
    }
}

/// The queue of a session's sends, opened by the first one: it then hands
/// its receiving end to the send pipeline, which waits for it. Dropped
/// unopened, it ends the pipeline at once.
struct SendWindow {
    capacity: usize,
    open: std::sync::OnceLock<mpsc::Sender<Queued>>,
    hand_over: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<mpsc::Receiver<Queued>>>>,
}

impl SendWindow {
    fn new(
        capacity: usize,
        hand_over: tokio::sync::oneshot::Sender<mpsc::Receiver<Queued>>,
    ) -> Self {
        Self { capacity, open: Default::default(), hand_over: Some(hand_over).into() }
    }

    /// The queue, opened on first use.
    fn sender(&self) -> &mpsc::Sender<Queued> {
        self.open.get_or_init(|| {
            let (sends, queued) = mpsc::channel(self.capacity);
            if let Some(hand_over) = self.hand_over.lock().expect("window lock").take() {
                let _ = hand_over.send(queued);
            }
            sends
        })
    }
}

/// The reading side of one session.
struct Reader<'a> {
    state: &'a AppState,
    user: u64,
    device: &'a Arc<str>,
    session_id: &'a str,
    tx: flume::Sender<Outbound>,
    /// The session's send window.
    sends: SendWindow,
    /// What the writer has written, per conversation.
    written: Written,
    /// The last typing indicator passed on, and when.
    last_typing: std::sync::Mutex<Option<(SendTarget, std::time::Instant)>>,
}

/// At most one typing indicator per conversation per this interval.
const TYPING_EVERY: Duration = Duration::from_secs(1);

impl<'a> Reader<'a> {
    /// Reads until the socket ends; dropping `self` then closes the send
    /// window, which lets the pipeline finish.
    fn run<R: AsyncRead + Unpin + 'a>(
        self,
        read: WebSocketRead<R>,
    ) -> impl Future<Output = ()> + 'a {
        let limits = FrameLimits {
            idle: Duration::from_secs(self.state.settings.idle_timeout_secs),
            max_message: self.state.settings.max_message_bytes,
        };
        async move {
            // Each message's handling is boxed: inline, its largest state
            // (a service call) would size what an idle reader holds.
            let on_message = |m| Box::pin(self.message(m));
            reader::read_messages(read, limits, &self.tx, on_message).await;
        }
    }

    async fn reply(&self, text: String) -> bool {
        self.tx.send_async(Outbound::text(text)).await.is_ok()
    }

    /// Handles one whole message; `false` ends the session.
    async fn message(&self, message: reader::Message) -> bool {
        let reader::Message { binary, data } = message;
        if binary {
            let error = FrameError {
                code: ErrorCode::MalformedFrame,
                message: "binary frames are not supported; send JSON text".into(),
                client_msg_id: None,
            };
            return self.reply(protocol::error(&error)).await;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            return false; // The reader lets only UTF-8 text through.
        };
        let answer = match protocol::parse(text) {
            Ok(ClientFrame::Heartbeat) => {
                if let Err(error) = self
                    .state
                    .services
                    .presence
                    .refresh(self.user, &self.state.settings.node_id)
                    .await
                {
                    tracing::warn!(user_id = self.user, %error, "presence refresh failed");
                }
                Some(protocol::heartbeat())
            }
            Ok(ClientFrame::Send { target, content, client_msg_id }) => {
                self.typing_ended(target);
                let queued = self.send(target, content, client_msg_id);
                // A full window waits here: this socket is not read until
                // answers come back.
                return self.sends.sender().send(queued).await.is_ok();
            }
            Ok(ClientFrame::Ack { conversation_id, seq }) => self.ack(conversation_id, seq).await,
            Ok(ClientFrame::Read { conversation_id, seq }) => self.read(conversation_id, seq).await,
            Ok(ClientFrame::Recall { conversation_id, seq, client_msg_id }) => {
                let request = RecallRequest {
                    user_id: self.user,
                    conversation_id,
                    seq,
                    client_msg_id: client_msg_id.clone().unwrap_or_default(),
                    device: self.device.to_string(),
                    system: false,
                };
                let mut message = self.state.services.message.clone();
                return self.change(client_msg_id, message.recall(request)).await;
            }
            Ok(ClientFrame::Edit { conversation_id, seq, content, client_msg_id }) => {
                let request = EditRequest {
                    user_id: self.user,
                    conversation_id,
                    seq,
                    content_json: content,
                    client_msg_id: client_msg_id.clone().unwrap_or_default(),
                    device: self.device.to_string(),
                };
                let mut message = self.state.services.message.clone();
                return self.change(client_msg_id, message.edit(request)).await;
            }
            Ok(ClientFrame::Typing { target }) => self.typing(target).await,
            Err(error) => Some(protocol::error(&error)),
        };
        match answer {
            Some(text) => self.reply(text).await,
            None => true,
        }
    }

    /// Checks a send against the rate limit and the node's in-flight
    /// limit, and makes it ready for the pipeline.
    fn send(&self, target: SendTarget, content: String, client_msg_id: Option<String>) -> Queued {
        if !self.state.limits.message(self.user) {
            return Queued::Refused(too_fast(client_msg_id));
        }
        self.state.stats.messages_in.add(1);
        // Bounded in-flight sends: when the message service (or its
        // database) is saturated, clients are told to retry now instead of
        // piling up here.
        let Ok(permit) = self.state.sends.clone().try_acquire_owned() else {
            self.state.stats.sends_shed.add(1);
            return Queued::Refused(protocol::error(&FrameError {
                code: ErrorCode::Unavailable,
                message: "server busy; retry with the same client_msg_id".into(),
                client_msg_id,
            }));
        };
        let request = SendRequest {
            sender_id: self.user,
            client_msg_id: client_msg_id.clone().unwrap_or_default(),
            target: Some(match target {
                SendTarget::User(u) => Target::ToUserId(u),
                SendTarget::Group(g) => Target::GroupId(g),
            }),
            content_json: content,
            system: false,
            kind: MessageKind::Message as i32,
            device: self.device.to_string(),
        };
        Queued::Send(Box::new(PendingSend { request, client_msg_id, _permit: permit }))
    }

    /// A typing indicator: passed on at most once a second per
    /// conversation until a message is sent there (more are dropped without
    /// an answer: the indicator is already showing), and counted against the user's message rate when
    /// it names another conversation than the last one. Refusals (a group
    /// the user is not in, an unknown user) are answered with a type 3
    /// frame.
    async fn typing(&self, target: SendTarget) -> Option<String> {
        let now = std::time::Instant::now();
        {
            let mut last = self.last_typing.lock().expect("typing slot poisoned");
            match *last {
                Some((t, at)) if t == target && now.duration_since(at) < TYPING_EVERY => {
                    return None;
                }
                Some((t, _)) if t == target => {}
                _ if !self.state.limits.message(self.user) => return None,
                _ => {}
            }
            *last = Some((target, now));
        }
        let request = TypingRequest {
            sender_id: self.user,
            target: Some(match target {
                SendTarget::User(u) => TypingTarget::ToUserId(u),
                SendTarget::Group(g) => TypingTarget::GroupId(g),
            }),
        };
        match self.state.services.message.clone().typing(request).await {
            Ok(_) => None,
            Err(status) => Some(protocol::error(&status_frame(&status, None))),
        }
    }

    /// A message ends the typing it follows where it arrives, so the next
    /// indicator for that conversation is passed on at once.
    fn typing_ended(&self, target: SendTarget) {
        let mut last = self.last_typing.lock().expect("typing slot poisoned");
        if last.is_some_and(|(t, _)| t == target) {
            *last = None;
        }
    }

    /// A recall or an edit: counted against the user's message rate like a
    /// send, and answered like one (a type 30 ack naming the event's seq,
    /// or a type 3 error), except that it does not wait in the send window.
    async fn change(
        &self,
        client_msg_id: Option<String>,
        call: impl Future<Output = Result<tonic::Response<SendAck>, tonic::Status>>,
    ) -> bool {
        if !self.state.limits.message(self.user) {
            return self.reply(too_fast(client_msg_id)).await;
        }
        let out = match call.await {
            Ok(ack) => {
                let outcome = Some(Outcome::Ack(ack.into_inner()));
                answer_frame(Some(SendResult { outcome }), client_msg_id)
            }
            Err(status) => Outbound::text(protocol::error(&status_frame(&status, client_msg_id))),
        };
        self.tx.send_async(out).await.is_ok()
    }

    /// A read marker: written at once by the offline service (through the
    /// message service, which tells the peer), and counted against the
    /// user's message rate, since each one is a write.
    async fn read(&self, conversation_id: String, seq: u64) -> Option<String> {
        if !self.state.limits.message(self.user) {
            return Some(protocol::error(&FrameError {
                code: ErrorCode::RateLimited,
                message: "marking read too fast".into(),
                client_msg_id: None,
            }));
        }
        let request = MarkReadRequest {
            user_id: self.user,
            conversation_id,
            seq,
            origin_session_id: self.session_id.to_string(),
        };
        match self.state.services.message.clone().mark_read(request).await {
            Ok(_) => None,
            Err(status) => Some(protocol::error(&status_frame(&status, None))),
        }
    }

    /// A delivery ack. One that covers only what this session was sent is
    /// coalesced and written behind (see `acks`); anything else (an ack of
    /// the client's own send beyond what it was sent, or of a conversation
    /// it was never sent) is checked and written by the offline service
    /// at once, and refused there when it must be.
    async fn ack(&self, conversation_id: String, seq: u64) -> Option<String> {
        if self.written.covers(&conversation_id, seq) {
            self.state.acks.record(self.user, self.device, conversation_id, seq);
            return None;
        }
        let device = self.device.to_string();
        let request = AckRequest { user_id: self.user, conversation_id, seq, device };
        match self.state.services.offline.clone().ack(request).await {
            Ok(_) => None,
            Err(status) => Some(protocol::error(&status_frame(&status, None))),
        }
    }
}

/// A send (or recall, or edit) over the user's message rate, as a type 3
/// frame.
fn too_fast(client_msg_id: Option<String>) -> String {
    protocol::error(&FrameError {
        code: ErrorCode::RateLimited,
        message: "sending too fast; retry with the same client_msg_id".into(),
        client_msg_id,
    })
}

/// A service error as a type 3 frame; internal details stay in the log.
fn status_frame(status: &tonic::Status, client_msg_id: Option<String>) -> FrameError {
    let (code, message) = from_status(status);
    FrameError { code, message, client_msg_id }
}
