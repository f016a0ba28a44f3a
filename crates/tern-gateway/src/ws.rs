//! The WebSocket endpoint: authentication at the upgrade, then the reading
//! side of a session (frames in, gRPC calls out, answers queued to the
//! [`Pusher`]).

use crate::{
    AppState, Outbound,
    error::ApiError,
    frames::{self, ClientFrame, FrameError, SendTarget},
    pusher::Pusher,
    reader::{self, FrameLimits},
    registry::SessionHandle,
};
use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use fastwebsockets::{Frame, Payload, WebSocketRead, upgrade::IncomingUpgrade};
use serde::Deserialize;
use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};
use tern_bus::{BusEvent, Event, Kick};
use tern_proto::{
    ErrorCode, error_code_of,
    pb::{
        auth::VerifyTokenRequest,
        message::{SendRequest, send_request::Target},
        offline::AckRequest,
    },
};
use tokio::{io::AsyncRead, sync::mpsc};
use tokio_util::sync::CancellationToken;

/// Query string of `GET /ws`.
#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
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
    let Some(token) = query.token.as_deref().or_else(|| bearer(&headers)) else {
        return ApiError::new(ErrorCode::Unauthenticated, "missing token").into_response();
    };
    let verified = state
        .services
        .auth
        .clone()
        .verify_token(VerifyTokenRequest { access_token: token.to_string() })
        .await;
    let identity = match verified {
        Ok(r) => r.into_inner(),
        Err(status) => return ApiError::from(status).into_response(),
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
    let tracked = state.clone();
    state.tracker.spawn(async move {
        match socket.await {
            Ok(ws) => serve(tracked, ws, identity.user_id, identity.expires_at).await,
            Err(error) => tracing::debug!(%error, "upgrade did not complete"),
        }
    });
    response.into_response()
}

/// Largest message the echo endpoint takes: the conformance suite sends
/// up to 16 MiB.
const ECHO_MAX_MESSAGE: usize = 16 * 1024 * 1024 + 1024;

/// `GET /ws/echo`, only with `echo_endpoint`: echoes every message through
/// the same frame stack as `/ws` (with a larger size limit), for WebSocket
/// conformance runs. Unauthenticated, so off by default.
pub async fn echo(
    State(state): State<AppState>,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    if !state.settings.echo_endpoint {
        return ApiError::new(ErrorCode::NotFound, "no such route").into_response();
    }
    let Ok(Ok((response, socket))) = upgrade.map(IncomingUpgrade::upgrade) else {
        return ApiError::bad_request("expected a WebSocket upgrade (version 13)").into_response();
    };
    let idle = Duration::from_secs(state.settings.idle_timeout_secs);
    state.tracker.spawn(async move {
        if let Ok(ws) = socket.await {
            serve_echo(ws, idle).await;
        }
    });
    response.into_response()
}

async fn serve_echo<S>(mut ws: fastwebsockets::WebSocket<S>, idle: Duration)
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    ws.set_max_message_size(ECHO_MAX_MESSAGE + 1);
    let (read, mut write) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, tokio::io::BufWriter::new(w))
    });
    let (tx, mut rx) = mpsc::channel::<Outbound>(64);
    let writer = tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            let frame = match item {
                Outbound::Echo { binary: true, data } => Frame::binary(Payload::Owned(data)),
                Outbound::Echo { binary: false, data } => Frame::text(Payload::Owned(data)),
                Outbound::Pong(payload) => Frame::pong(Payload::Owned(payload)),
                Outbound::Close(code, reason) => {
                    let _ = write.write_frame(Frame::close(code, reason.as_bytes())).await;
                    let _ = write.flush().await;
                    return;
                }
                _ => continue,
            };
            if write.write_frame(frame).await.is_err() {
                return;
            }
            if rx.is_empty() && write.flush().await.is_err() {
                return;
            }
        }
    });
    let limits = FrameLimits { idle, max_message: ECHO_MAX_MESSAGE };
    reader::read_messages(read, limits, &tx, |m| {
        let tx = tx.clone();
        async move { tx.send(Outbound::Echo { binary: m.binary, data: m.data }).await.is_ok() }
    })
    .await;
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
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
async fn serve<S>(state: AppState, mut ws: fastwebsockets::WebSocket<S>, user: u64, expires_at: i64)
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = &state.settings;
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // The library's limit is per frame (and exclusive); the reader below
    // enforces the same limit on whole, reassembled messages.
    ws.set_max_message_size(settings.max_message_bytes + 1);
    let (read, write) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, tokio::io::BufWriter::new(w))
    });

    let session_id = uuid::Uuid::now_v7().to_string();
    let (tx, rx) = mpsc::channel(settings.outbound_queue);
    let handle = SessionHandle {
        id: session_id.clone(),
        tx: tx.clone(),
        cancel: CancellationToken::new(),
        needs_resync: Arc::default(),
    };
    if let Some(old) = state.registry.insert(user, handle.clone()) {
        old.kick("another session took over".into());
    }
    match state.services.presence.connect(user, &settings.node_id).await {
        Ok(others) => {
            for node in others {
                let kick = Kick {
                    user_id: user,
                    keep_session_id: session_id.clone(),
                    reason: "another session took over".into(),
                };
                let _ = state
                    .services
                    .bus
                    .publish(&node, BusEvent { event: Some(Event::Kick(kick)) })
                    .await;
            }
        }
        Err(error) => {
            tracing::warn!(user_id = user, %error, "presence not recorded; live pushes may miss this session")
        }
    }
    state.stats.connections_live.fetch_add(1, Relaxed);
    state.stats.connections_total.fetch_add(1, Relaxed);
    metrics::gauge!("tern_gateway_connections").increment(1.0);
    metrics::counter!("tern_gateway_connections_total").increment(1);
    tracing::debug!(user_id = user, session_id, "session open");

    let done = CancellationToken::new();
    let pusher = Pusher::new(
        write,
        user,
        state.services.offline.clone(),
        settings.sync_page,
        state.stats.clone(),
        handle.needs_resync.clone(),
        Duration::from_secs(settings.write_timeout_secs),
    );
    let mut writer = tokio::spawn(pusher.run(rx, handle.cancel.clone(), done.clone()));
    let expiry = expiry_timer(tx.clone(), expires_at);
    let reader = Reader { state: &state, user, tx };
    tokio::select! {
        _ = reader.run(read) => {}
        _ = done.cancelled() => {}
    }
    drop(reader);
    expiry.abort();
    // Unregister first, so nothing new is routed here, then drop every
    // sender: the writer drains what is queued (a close frame, say) and
    // ends. A writer stuck on a dead socket is cut off.
    let registered = state.registry.remove(user, &session_id);
    drop(handle);
    if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
    if registered {
        let presence = &state.services.presence;
        if let Err(error) = presence.disconnect(user, &settings.node_id).await {
            tracing::warn!(user_id = user, %error, "presence not cleared; it expires on its own");
        }
        // Presence is per (user, node): a new session of the same user on
        // this node may have recorded itself just before the removal above.
        // It is in the registry by then (it registers before recording
        // presence), so record it again; whichever order the two ran in,
        // the user stays reachable.
        if state.registry.get(user).is_some()
            && let Err(error) = presence.connect(user, &settings.node_id).await
        {
            tracing::warn!(user_id = user, %error, "presence not restored after a reconnect");
        }
    }
    state.stats.connections_live.fetch_sub(1, Relaxed);
    metrics::gauge!("tern_gateway_connections").decrement(1.0);
    tracing::debug!(user_id = user, session_id, "session closed");
}

/// Kicks the session when its token expires.
fn expiry_timer(tx: mpsc::Sender<Outbound>, expires_at: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let left = expires_at - frames::now_ms() / 1000;
        tokio::time::sleep(Duration::from_secs(left.max(0) as u64)).await;
        let _ = tx.send(Outbound::Kick("token expired".into())).await;
    })
}

/// The reading side of one session.
struct Reader<'a> {
    state: &'a AppState,
    user: u64,
    tx: mpsc::Sender<Outbound>,
}

impl Reader<'_> {
    async fn run<R: AsyncRead + Unpin>(&self, read: WebSocketRead<R>) {
        let limits = FrameLimits {
            idle: Duration::from_secs(self.state.settings.idle_timeout_secs),
            max_message: self.state.settings.max_message_bytes,
        };
        reader::read_messages(read, limits, &self.tx, |m| self.message(m)).await;
    }

    async fn reply(&self, text: String) -> bool {
        self.tx.send(Outbound::Text(text)).await.is_ok()
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
            return self.reply(frames::error(&error)).await;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            return false; // The reader lets only UTF-8 text through.
        };
        let answer = match frames::parse(text) {
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
                Some(frames::heartbeat())
            }
            Ok(ClientFrame::Send { target, content, client_msg_id }) => {
                return match self.send(target, content, client_msg_id).await {
                    Ok(item) => self.tx.send(item).await.is_ok(),
                    Err(error) => self.reply(error).await,
                };
            }
            Ok(ClientFrame::Ack { conversation_id, seq }) => self.ack(conversation_id, seq).await,
            Err(error) => Some(frames::error(&error)),
        };
        match answer {
            Some(text) => self.reply(text).await,
            None => true,
        }
    }

    /// Sends a message: the ack to queue, or an error frame.
    async fn send(
        &self,
        target: SendTarget,
        content: String,
        client_msg_id: Option<String>,
    ) -> Result<Outbound, String> {
        if !self.state.limits.message(self.user) {
            let error = FrameError {
                code: ErrorCode::RateLimited,
                message: "sending too fast; retry with the same client_msg_id".into(),
                client_msg_id,
            };
            return Err(frames::error(&error));
        }
        self.state.stats.messages_in.fetch_add(1, Relaxed);
        metrics::counter!("tern_gateway_messages_in_total").increment(1);
        let started = std::time::Instant::now();
        let span = tracing::info_span!("ws.send", user_id = self.user);
        let request = SendRequest {
            sender_id: self.user,
            client_msg_id: client_msg_id.clone().unwrap_or_default(),
            target: Some(match target {
                SendTarget::User(u) => Target::ToUserId(u),
                SendTarget::Group(g) => Target::GroupId(g),
            }),
            content_json: content,
            system: false,
        };
        // Bounded in-flight sends: when the message service (or its
        // database) is saturated, clients are told to retry now instead of
        // piling up here.
        let Ok(_permit) = self.state.sends.try_acquire() else {
            self.state.stats.sends_shed.fetch_add(1, Relaxed);
            metrics::counter!("tern_gateway_sends_shed_total").increment(1);
            return Err(frames::error(&FrameError {
                code: ErrorCode::Unavailable,
                message: "server busy; retry with the same client_msg_id".into(),
                client_msg_id,
            }));
        };
        let within = Duration::from_millis(self.state.settings.send_timeout_ms);
        let answer = {
            use tracing::Instrument;
            let mut message = self.state.services.message.clone();
            match tokio::time::timeout(within, message.send(request).instrument(span)).await {
                Ok(answer) => answer,
                Err(_) => Err(tonic::Status::unavailable("send timed out")),
            }
        };
        metrics::histogram!("tern_gateway_send_ack_seconds")
            .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(r) => {
                let r = r.into_inner();
                match r.message {
                    Some(message) => Ok(Outbound::SendAck {
                        frame: frames::send_ack(&message, r.duplicate),
                        conversation_id: message.conversation_id,
                        seq: message.seq,
                    }),
                    None => Err(frames::error(&FrameError {
                        code: ErrorCode::Internal,
                        message: "internal error".into(),
                        client_msg_id,
                    })),
                }
            }
            Err(status) => Err(frames::error(&status_frame(&status, client_msg_id))),
        }
    }

    async fn ack(&self, conversation_id: String, seq: u64) -> Option<String> {
        let request = AckRequest { user_id: self.user, conversation_id, seq };
        match self.state.services.offline.clone().ack(request).await {
            Ok(_) => None,
            Err(status) => Some(frames::error(&status_frame(&status, None))),
        }
    }
}

/// A service error as a type 3 frame; internal details stay in the log.
fn status_frame(status: &tonic::Status, client_msg_id: Option<String>) -> FrameError {
    let code = error_code_of(status);
    let message = match code {
        ErrorCode::Internal => "internal error".to_string(),
        ErrorCode::Unavailable => {
            "a service is unavailable; retry with the same client_msg_id".to_string()
        }
        _ => status.message().to_string(),
    };
    FrameError { code, message, client_msg_id }
}
