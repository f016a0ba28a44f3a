//! The generator's WebSocket client (protocol v1, JSON text frames) and the
//! frames it reads. Every sent message carries its index and its intended
//! send time, so receivers check order and measure latency on their own.

use anyhow::{Context, bail};
use futures::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use serde::{Deserialize, Serialize};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// Bytes each client reads at most per system call.
const READ_BUFFER: usize = 4096;

pub type Ws = WebSocketStream<TcpStream>;
pub type Tx = SplitSink<Ws, Message>;
pub type Rx = SplitStream<Ws>;

/// Microseconds since the Unix epoch: one clock for every generator
/// process on the machine.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What a benchmark message carries as `content`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Payload {
    /// Index of the message in its sender's stream, from 0.
    pub i: u64,
    /// Intended send time, [`now_us`].
    pub t: u64,
}

/// The fields of a server frame the generator uses.
#[derive(Debug, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: i64,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub content: Option<Payload>,
    #[serde(default)]
    pub code: Option<String>,
    /// On an error answering a send: whether to send it again.
    #[serde(default)]
    pub retryable: bool,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

pub const SINGLE: i64 = 1;
pub const GROUP: i64 = 2;
pub const ERROR: i64 = 3;
pub const ACK: i64 = 30;
pub const HEARTBEAT: i64 = 99;
/// Ephemeral news a client may ignore: read markers, typing, presence.
pub const NEWS: [i64; 3] = [31, 40, 50];

/// Opens a WebSocket to `url`, from source address `from` (127.0.0.x, to
/// spread many connections over more address pairs).
pub async fn connect(url: &str, from: Option<Ipv4Addr>) -> anyhow::Result<Ws> {
    let rest = url.strip_prefix("ws://").context("ws:// URL")?;
    let host = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr = host.parse().context("numeric host:port")?;
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    // tungstenite zeroes its whole read buffer (128 KiB by default) before
    // every read, even one that finds nothing: with thousands of sockets
    // that memset was a tenth of the machine's CPU. Frames here are small.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// Opens a WebSocket and splits it.
pub async fn connect_split(url: &str, from: Option<Ipv4Addr>) -> anyhow::Result<(Tx, Rx)> {
    Ok(connect(url, from).await?.split())
}

/// A 1:1 send frame.
pub fn single(to: u64, id: &str, payload: Payload) -> Message {
    Message::text(
        serde_json::json!({ "type": 1, "to": to, "client_msg_id": id, "content": payload })
            .to_string(),
    )
}

/// A group send frame.
pub fn group(group: u64, id: &str, payload: Payload) -> Message {
    Message::text(
        serde_json::json!({ "type": 2, "group_id": group, "client_msg_id": id, "content": payload })
            .to_string(),
    )
}

/// A cumulative delivery ack.
pub fn ack(conversation_id: &str, seq: u64) -> Message {
    Message::text(
        serde_json::json!({ "type": 30, "conversation_id": conversation_id, "seq": seq })
            .to_string(),
    )
}

pub fn heartbeat() -> Message {
    Message::text(r#"{"type":99}"#)
}

/// The server ended a session with a close frame.
#[derive(Debug)]
pub struct ServerClosed {
    pub code: u16,
    pub reason: String,
}

impl std::fmt::Display for ServerClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server closed the socket: {} {}", self.code, self.reason)
    }
}

impl std::error::Error for ServerClosed {}

/// Close code asking the client to reconnect (the gateway's sync failed).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// A receiving session that behaves as protocol v1 asks of clients: when
/// the server closes it with 1013 (try again later), it reconnects, and
/// the server replays everything beyond the last ack. Reconnects are
/// counted, so a run shows how often the server asked for one.
pub struct Session {
    url: String,
    pub tx: Tx,
    rx: Rx,
    /// Reconnects so far.
    pub reconnects: u64,
    /// The newest delivery shown but not acked yet: `(conversation, seq)`.
    unacked: Option<(String, u64)>,
}

/// How receivers acknowledge, printed in every report: like the web app,
/// which acks each message it shows. Frames that arrived in the same read
/// share one cumulative ack.
pub const ACK_POLICY: &str =
    "after every delivered frame (one cumulative ack for frames already received together)";

/// Reconnects allowed per session before the close counts as a failure.
const MAX_RECONNECTS: u64 = 5;

impl Session {
    /// Opens the socket (no handshake: a backlog may come first).
    pub async fn open(url: String) -> anyhow::Result<Session> {
        let (tx, rx) = connect_split(&url, None).await?;
        Ok(Session { url, tx, rx, reconnects: 0, unacked: None })
    }

    /// Opens the socket and proves the session registered (no backlog).
    pub async fn open_idle(url: String) -> anyhow::Result<Session> {
        let mut s = Self::open(url).await?;
        handshake(&mut s.tx, &mut s.rx).await?;
        Ok(s)
    }

    /// Notes that a delivered frame was shown: it is acked before the
    /// session next waits for the network, so frames that are already
    /// received share one cumulative ack (see [`ACK_POLICY`]).
    pub fn shown(&mut self, conversation_id: Option<String>, seq: u64) {
        if let Some(conversation) = conversation_id {
            self.unacked = Some((conversation, seq));
        }
    }

    /// Sends the pending cumulative ack, if any.
    pub async fn ack_shown(&mut self) -> anyhow::Result<()> {
        if let Some((conversation, seq)) = self.unacked.take() {
            self.tx.send(ack(&conversation, seq)).await?;
        }
        Ok(())
    }

    /// The next frame, reconnecting after a 1013 close. What was shown is
    /// acked first unless another frame is already waiting.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Frame>> {
        use futures::FutureExt;
        if self.unacked.is_some() {
            match self.rx.next().now_or_never() {
                Some(Some(Ok(Message::Text(t)))) => return Ok(Some(serde_json::from_str(&t)?)),
                Some(Some(Ok(Message::Close(frame)))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return self.after_close(ServerClosed { code, reason }.into(), wait).await;
                }
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) => return Ok(None),
                // Pings, pongs or nothing received yet: ack, then wait.
                Some(Some(Ok(_))) | None => self.ack_shown().await?,
            }
        }
        match next_frame(&mut self.rx, wait).await {
            Err(e) => self.after_close(e, wait).await,
            other => other,
        }
    }

    /// A failed read: reconnects after a 1013 close (the server replays
    /// everything beyond the last ack), otherwise passes the error on.
    async fn after_close(
        &mut self,
        error: anyhow::Error,
        wait: Duration,
    ) -> anyhow::Result<Option<Frame>> {
        let mut error = error;
        loop {
            match error {
                e if self.reconnects < MAX_RECONNECTS
                    && e.downcast_ref::<ServerClosed>()
                        .is_some_and(|c| c.code == TRY_AGAIN_LATER) =>
                {
                    tokio::time::sleep(Duration::from_millis(50 << self.reconnects)).await;
                    (self.tx, self.rx) = connect_split(&self.url, None).await?;
                    self.reconnects += 1;
                    self.unacked = None;
                    match next_frame(&mut self.rx, wait).await {
                        Err(e) => error = e,
                        other => return other,
                    }
                }
                e => return Err(e),
            }
        }
    }

    /// Acks what was shown, then closes.
    pub async fn close(mut self) {
        let _ = self.ack_shown().await;
        let _ = self.tx.close().await;
    }
}

/// The next JSON frame; `None` when the connection ended without a close
/// frame or `wait` passed, an error when the server closed the session.
pub async fn next_frame(rx: &mut Rx, wait: Duration) -> anyhow::Result<Option<Frame>> {
    loop {
        let msg = match tokio::time::timeout(wait, rx.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Ok(None),
            Ok(Some(m)) => m?,
        };
        match msg {
            Message::Text(t) => return Ok(Some(serde_json::from_str(&t)?)),
            // The generator never ends a session while reading it.
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Err(ServerClosed { code, reason }.into());
            }
            _ => continue,
        }
    }
}

/// Sends a heartbeat and waits for its answer: for sessions with no
/// backlog, it proves the session is registered. A backlog left by an
/// earlier, failed case is acknowledged and skipped, so one failure does
/// not spill into the next case.
pub async fn handshake(tx: &mut Tx, rx: &mut Rx) -> anyhow::Result<()> {
    tx.send(heartbeat()).await?;
    loop {
        match next_frame(rx, Duration::from_secs(30)).await? {
            Some(f) if f.kind == HEARTBEAT => return Ok(()),
            // A contact's presence, a read marker, typing: news to ignore.
            Some(f) if NEWS.contains(&f.kind) => {}
            Some(f) if f.kind == SINGLE || f.kind == GROUP => {
                tx.send(ack(f.conversation_id.as_deref().unwrap_or_default(), f.seq)).await?;
            }
            Some(f) => bail!("expected a heartbeat answer, got type {}", f.kind),
            None => bail!("socket closed before the heartbeat answer"),
        }
    }
}
