//! A WebSocket client speaking Tern's protocol v1 (JSON text frames, see
//! docs/protocol.md): opening a session with a token, the frames a client
//! sends (1:1 and group messages, cumulative delivery acks, heartbeats),
//! reading what comes back with its close codes, and a receiving session
//! that reconnects when the server asks it to try again later.

use anyhow::{Context, bail};
use futures::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{
    marker::PhantomData,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, protocol::WebSocketConfig},
};

/// An open WebSocket.
pub type Ws = WebSocketStream<TcpStream>;
/// The sending half of a split [`Ws`].
pub type Tx = SplitSink<Ws, Message>;
/// The receiving half of a split [`Ws`].
pub type Rx = SplitStream<Ws>;

/// Frame type: a 1:1 message.
pub const SINGLE: i64 = 1;
/// Frame type: a group message.
pub const GROUP: i64 = 2;
/// Frame type: an error.
pub const ERROR: i64 = 3;
/// Frame type: a send's answer from the server, a delivery ack from a client.
pub const ACK: i64 = 30;
/// Frame type: a contact came online or went offline.
pub const PRESENCE: i64 = 50;
/// Frame type: a heartbeat (answered in kind).
pub const HEARTBEAT: i64 = 99;
/// Frame types of news a client may ignore: read markers, typing, presence.
pub const NEWS: [i64; 3] = [31, 40, PRESENCE];

/// Close code asking the client to reconnect (the server could not
/// prepare the session this time).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Bytes a client reads at most per system call.
const READ_BUFFER: usize = 4096;

/// Microseconds since the Unix epoch: one clock for every process on the
/// machine.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The WebSocket URL for `token` on the front process at `port`, as
/// `device` when one is given.
pub fn ws_url(port: u16, token: &str, device: Option<&str>) -> String {
    match device {
        Some(device) => format!("ws://127.0.0.1:{port}/ws?token={token}&device={device}"),
        None => format!("ws://127.0.0.1:{port}/ws?token={token}"),
    }
}

/// Opens a WebSocket to `url` (`ws://` and a numeric `host:port`), from
/// source address `from` when given (127.0.0.x, to spread many
/// connections over more address pairs).
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

/// A 1:1 send frame: `content` to user `to`, under `client_msg_id` `id`.
pub fn single(to: u64, id: &str, content: &impl Serialize) -> Message {
    text(&serde_json::json!({ "type": SINGLE, "to": to, "client_msg_id": id, "content": content }))
}

/// A group send frame: `content` to `group`, under `client_msg_id` `id`.
pub fn group(group: u64, id: &str, content: &impl Serialize) -> Message {
    let frame = serde_json::json!({
        "type": GROUP, "group_id": group, "client_msg_id": id, "content": content
    });
    text(&frame)
}

/// A cumulative delivery ack: everything of `conversation_id` up to `seq`.
pub fn ack(conversation_id: &str, seq: u64) -> Message {
    text(&serde_json::json!({ "type": ACK, "conversation_id": conversation_id, "seq": seq }))
}

/// A heartbeat.
pub fn heartbeat() -> Message {
    Message::text(r#"{"type":99}"#)
}

/// A JSON value as a text frame.
pub fn text(frame: &serde_json::Value) -> Message {
    Message::text(frame.to_string())
}

/// How a socket ended: the close code and reason the server sent (1005
/// when it sent none, 1006 when the connection just broke).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server closed the socket: {} {}", self.code, self.reason)
    }
}

impl std::error::Error for Closed {}

/// What one read of a socket gave.
#[derive(Debug)]
pub enum Read {
    /// A text frame.
    Text(String),
    /// A close frame.
    Closed(Closed),
    /// The stream ended without one (after a close handshake).
    Ended,
    /// The connection failed.
    Failed(tungstenite::Error),
    /// Nothing came before the deadline.
    TimedOut,
}

impl Read {
    /// The read as a frame or how the socket ended (a broken or ended
    /// connection is 1006); `None` when it timed out.
    pub fn into_result(self) -> Result<Option<String>, Closed> {
        match self {
            Read::Text(t) => Ok(Some(t)),
            Read::Closed(closed) => Err(closed),
            Read::Ended => Err(Closed { code: 1006, reason: "eof".into() }),
            Read::Failed(e) => Err(Closed { code: 1006, reason: e.to_string() }),
            Read::TimedOut => Ok(None),
        }
    }
}

/// Reads the next text or close frame (skipping pings, pongs and binary
/// frames) until `deadline`.
pub async fn read<S>(rx: &mut S, deadline: tokio::time::Instant) -> Read
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => return Read::TimedOut,
            Ok(None) => return Read::Ended,
            Ok(Some(Err(e))) => return Read::Failed(e),
            Ok(Some(Ok(Message::Text(t)))) => return Read::Text(t.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame
                    .map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Read::Closed(Closed { code, reason });
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The fields of a server frame a load generator uses, with the message
/// content read as `C`.
#[derive(Debug, Deserialize)]
pub struct Frame<C> {
    /// The frame type.
    #[serde(rename = "type")]
    pub kind: i64,
    /// A delivery's or an ack's sequence number.
    #[serde(default)]
    pub seq: u64,
    /// A delivery's or an ack's conversation.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// A delivery's content.
    #[serde(default = "none")]
    pub content: Option<C>,
    /// An error's code.
    #[serde(default)]
    pub code: Option<String>,
    /// On an error answering a send: whether to send it again.
    #[serde(default)]
    pub retryable: bool,
    /// The send an ack or error answers.
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

fn none<C>() -> Option<C> {
    None
}

/// The next frame as `T`; `None` when the connection ended without a
/// close frame or `wait` passed, an error ([`Closed`]) when the server
/// closed the session.
pub async fn next_frame<T: DeserializeOwned>(
    rx: &mut Rx,
    wait: Duration,
) -> anyhow::Result<Option<T>> {
    match read(rx, tokio::time::Instant::now() + wait).await {
        Read::Text(t) => Ok(Some(serde_json::from_str(&t)?)),
        Read::Closed(closed) => Err(closed.into()),
        Read::Failed(e) => Err(e.into()),
        Read::Ended | Read::TimedOut => Ok(None),
    }
}

/// Sends a heartbeat and waits for its answer: for a session with no
/// backlog, it proves the session is registered. A backlog (left by an
/// earlier, failed run) is acknowledged and skipped, and news ignored.
pub async fn handshake(tx: &mut Tx, rx: &mut Rx) -> anyhow::Result<()> {
    tx.send(heartbeat()).await?;
    loop {
        let frame: Option<Frame<serde::de::IgnoredAny>> =
            next_frame(rx, Duration::from_secs(30)).await?;
        match frame {
            Some(f) if f.kind == HEARTBEAT => return Ok(()),
            Some(f) if NEWS.contains(&f.kind) => {}
            Some(f) if f.kind == SINGLE || f.kind == GROUP => {
                tx.send(ack(f.conversation_id.as_deref().unwrap_or_default(), f.seq)).await?;
            }
            Some(f) => bail!("expected a heartbeat answer, got type {}", f.kind),
            None => bail!("socket closed before the heartbeat answer"),
        }
    }
}

/// How a [`Session`] acknowledges, like the web app, which acks each
/// message it shows: frames that arrived in the same read share one
/// cumulative ack.
pub const ACK_POLICY: &str =
    "after every delivered frame (one cumulative ack for frames already received together)";

/// Reconnects a [`Session`] makes before a close counts as a failure.
const MAX_RECONNECTS: u64 = 5;

/// A receiving session that behaves as protocol v1 asks of clients: it
/// acks what it shows (see [`ACK_POLICY`]), and when the server closes it
/// with [`TRY_AGAIN_LATER`] it reconnects, and the server replays
/// everything beyond the last ack. Message contents are read as `C`.
pub struct Session<C> {
    url: String,
    /// The sending half, for frames of the caller's own.
    pub tx: Tx,
    rx: Rx,
    /// Reconnects so far.
    pub reconnects: u64,
    /// The newest delivery shown but not acked yet: `(conversation, seq)`.
    unacked: Option<(String, u64)>,
    content: PhantomData<C>,
}

impl<C: DeserializeOwned> Session<C> {
    /// Opens the socket (no handshake: a backlog may come first).
    pub async fn open(url: String) -> anyhow::Result<Session<C>> {
        let (tx, rx) = connect_split(&url, None).await?;
        Ok(Session { url, tx, rx, reconnects: 0, unacked: None, content: PhantomData })
    }

    /// Opens the socket and proves the session registered (see
    /// [`handshake`]).
    pub async fn open_idle(url: String) -> anyhow::Result<Session<C>> {
        let mut s = Self::open(url).await?;
        handshake(&mut s.tx, &mut s.rx).await?;
        Ok(s)
    }

    /// Notes that a delivered frame was shown: it is acked before the
    /// session next waits for the network.
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

    /// The next frame, reconnecting after a [`TRY_AGAIN_LATER`] close.
    /// What was shown is acked first unless another frame is already
    /// waiting.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Frame<C>>> {
        use futures::FutureExt;
        if self.unacked.is_some() {
            match read(&mut self.rx, tokio::time::Instant::now()).now_or_never() {
                Some(Read::Text(t)) => return Ok(Some(serde_json::from_str(&t)?)),
                Some(Read::Closed(closed)) => return self.after_close(closed.into(), wait).await,
                Some(Read::Failed(e)) => return Err(e.into()),
                Some(Read::Ended) => return Ok(None),
                // Nothing received yet: ack, then wait.
                Some(Read::TimedOut) | None => self.ack_shown().await?,
            }
        }
        match next_frame(&mut self.rx, wait).await {
            Err(e) => self.after_close(e, wait).await,
            other => other,
        }
    }

    /// A failed read: reconnects after a [`TRY_AGAIN_LATER`] close,
    /// otherwise passes the error on.
    async fn after_close(
        &mut self,
        error: anyhow::Error,
        wait: Duration,
    ) -> anyhow::Result<Option<Frame<C>>> {
        let mut error = error;
        loop {
            match error {
                e if self.reconnects < MAX_RECONNECTS
                    && e.downcast_ref::<Closed>().is_some_and(|c| c.code == TRY_AGAIN_LATER) =>
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
