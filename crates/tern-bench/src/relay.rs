//! S0's bare relay: axum + fastwebsockets, the same stack as the gateway,
//! speaking enough of protocol v1 for the generator (type 1 sends get a
//! type 30 ack and are forwarded with a per-pair seq; type 99 is answered)
//! but with no authentication, storage or bus. What it reaches is the
//! ceiling of this machine for the generator's traffic.

use axum::{
    Router,
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use dashmap::DashMap;
use fastwebsockets::{Frame, OpCode, Payload, upgrade::IncomingUpgrade};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Live sessions by user id, and the last seq of every pair.
#[derive(Default)]
struct Relay {
    sessions: DashMap<u64, mpsc::Sender<String>>,
    seqs: DashMap<(u64, u64), u64>,
}

#[derive(Deserialize)]
struct WsQuery {
    token: u64,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: i64,
    #[serde(default)]
    to: u64,
    #[serde(default, borrow)]
    client_msg_id: Option<&'a str>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
}

/// Serves the relay on `addr` until the process is killed.
pub async fn run(addr: &str) -> anyhow::Result<()> {
    let relay = Arc::new(Relay::default());
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ws", get(upgrade))
        .with_state(relay);
    // Small frames go out at once (no Nagle delay behind an unacknowledged
    // one): the ceiling should not wait on the kernel's ack timer.
    let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(
    State(relay): State<Arc<Relay>>,
    Query(q): Query<WsQuery>,
    upgrade: IncomingUpgrade,
) -> Response {
    let Ok((response, socket)) = upgrade.upgrade() else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    tokio::spawn(async move {
        if let Ok(ws) = socket.await {
            session(relay, ws, q.token).await;
        }
    });
    response.into_response()
}

async fn session<S>(relay: Arc<Relay>, ws: fastwebsockets::WebSocket<S>, user: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut read, mut write) = ws.split(|s| {
        let (r, w) = tokio::io::split(s);
        (r, tokio::io::BufWriter::new(w))
    });
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    relay.sessions.insert(user, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if write.write_frame(Frame::text(Payload::Owned(text.into_bytes()))).await.is_err() {
                return;
            }
            if rx.is_empty() && write.flush().await.is_err() {
                return;
            }
        }
    });
    let mut obligated = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
    while let Ok(frame) = read.read_frame(&mut obligated).await {
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text => {}
            _ => continue,
        }
        let Ok(msg) = serde_json::from_slice::<Incoming>(&frame.payload) else { continue };
        let now = crate::client::now_us() / 1000;
        match msg.kind {
            1 => {
                let (lo, hi) = (user.min(msg.to), user.max(msg.to));
                let seq = {
                    let mut e = relay.seqs.entry((user, msg.to)).or_insert(0);
                    *e += 1;
                    *e
                };
                let id = msg.client_msg_id.unwrap_or("");
                let content = msg.content.map_or("null", RawValue::get);
                let ack = format!(
                    r#"{{"type":30,"client_msg_id":"{id}","conversation_id":"dm:{lo}:{hi}","seq":{seq},"timestamp":{now}}}"#
                );
                let deliver = format!(
                    r#"{{"type":1,"conversation_id":"dm:{lo}:{hi}","seq":{seq},"from":{user},"to":{},"content":{content},"timestamp":{now}}}"#,
                    msg.to
                );
                let peer = relay.sessions.get(&msg.to).map(|s| s.clone());
                if let Some(peer) = peer {
                    let _ = peer.send(deliver).await;
                }
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
            99 if tx.send(format!(r#"{{"type":99,"timestamp":{now}}}"#)).await.is_err() => break,
            _ => {}
        }
    }
    relay.sessions.remove_if(&user, |_, s| s.same_channel(&tx));
    drop(tx);
    let _ = writer.await;
}
