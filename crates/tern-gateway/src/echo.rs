//! `GET /ws/echo`, only with `echo_endpoint`: an unauthenticated echo
//! over the same frame stack as `/ws` (reader, size and UTF-8 rules,
//! `BatchWriter`), for WebSocket conformance runs (`deploy/autobahn.sh`).
//! Off by default; never in production.

use crate::{
    AppState, Outbound,
    batch_writer::BatchWriter,
    error::ApiError,
    reader::{self, FrameLimits},
};
use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use fastwebsockets::{Frame, Payload, upgrade::IncomingUpgrade};
use std::time::Duration;
use tern_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};

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
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    ws.set_max_message_size(ECHO_MAX_MESSAGE + 1);
    let (read, mut write) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, BatchWriter::new(w))
    });
    let (tx, rx) = flume::bounded::<Outbound>(64);
    let writer = tokio::spawn(async move {
        while let Ok(item) = rx.recv_async().await {
            let frame = match item {
                Outbound::Echo(message) => match *message {
                    reader::Message { binary: true, data } => Frame::binary(Payload::Owned(data)),
                    reader::Message { binary: false, data } => Frame::text(Payload::Owned(data)),
                },
                Outbound::Pong(payload) => Frame::pong(Payload::Owned(*payload)),
                Outbound::Close(close) => {
                    let (code, reason) = *close;
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
        async move { tx.send_async(Outbound::Echo(Box::new(m))).await.is_ok() }
    })
    .await;
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}
