//! The WebSocket half of the client (docs/protocol.md, *WebSocket protocol
//! v1*): one send answered by its ack, and a follow loop that prints,
//! acknowledges and heartbeats until Ctrl-C.

use crate::{http::ServerError, output::Output};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use reqwest::Url;
use serde_json::Value;
use std::{collections::HashMap, time::Duration};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

/// An open protocol v1 socket.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frame types the client uses (docs/protocol.md).
mod kind {
    pub const SINGLE: i64 = 1;
    pub const GROUP: i64 = 2;
    pub const ERROR: i64 = 3;
    pub const ACK: i64 = 30;
    pub const HEARTBEAT: i64 = 99;
    pub const KICKED: i64 = 100;
}

/// Clients send a heartbeat this often; the server closes a socket silent
/// for 90 s.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// How long a send waits for its ack or error.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Close codes after which the protocol asks the client to reconnect:
/// 1001 (the server is shutting down) and 1013 (try again later).
const RECONNECT_CODES: [u16; 2] = [1001, 1013];

/// Consecutive failed reconnects after which `follow` gives up.
const MAX_RECONNECTS: u32 = 8;

/// Where and as whom to connect.
pub struct Target<'a> {
    /// The server's base URL (`http://host:port`).
    pub server: &'a Url,
    /// The access token.
    pub token: &'a str,
    /// The device to connect as (`?device=`); the default device if `None`.
    pub device: Option<&'a str>,
}

/// Opens the socket: `GET /ws` with the token as a bearer header (so it
/// stays out of URLs and logs).
async fn connect(target: &Target<'_>) -> anyhow::Result<Ws> {
    let mut url = target.server.clone();
    url.set_query(None);
    url.set_scheme("ws").map_err(|()| anyhow::anyhow!("cannot make a ws:// URL of {url}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--server {} cannot take a path", target.server))?
        .pop_if_empty()
        .push("ws");
    if let Some(device) = target.device {
        url.query_pairs_mut().append_pair("device", device);
    }
    let mut request =
        url.as_str().into_client_request().context("building the WebSocket request")?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", target.token))
        .context("the token has characters a header cannot carry")?;
    request.headers_mut().insert("authorization", bearer);
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        // Refused before the upgrade (401 bad token, 400 bad device):
        // the body is the API's error shape.
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            Err(ServerError::from_body(response.status(), body).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot open a WebSocket to the Tern server at {} (is it running? see --server)",
            target.server
        ))),
    }
}

/// The `type` of a frame (0 when missing).
fn frame_type(frame: &Value) -> i64 {
    frame.get("type").and_then(Value::as_i64).unwrap_or(0)
}

/// A type 3 frame as an error.
fn frame_error(frame: &Value) -> ServerError {
    let field = |name: &str| frame.get(name).and_then(Value::as_str).unwrap_or_default();
    ServerError { code: field("code").to_string(), message: field("message").to_string() }
}

/// A type 100 frame as an error.
fn kicked(frame: &Value) -> anyhow::Error {
    let reason = frame.pointer("/content/reason").and_then(Value::as_str).unwrap_or("no reason");
    anyhow::anyhow!("the server ended this session: {reason}")
}

/// Sends one message frame (type 1 or 2, already carrying `client_msg_id`)
/// and waits for the server's answer: the send ack (type 30) naming
/// `client_msg_id`, returned whole, or an error frame, returned as a
/// [`ServerError`]. Deliveries arriving meanwhile are left unacked, so
/// `follow` still gets them.
pub async fn send(target: &Target<'_>, frame: Value) -> anyhow::Result<Value> {
    let client_msg_id = frame.get("client_msg_id").and_then(Value::as_str).map(str::to_string);
    let mut ws = connect(target).await?;
    ws.send(Message::text(frame.to_string())).await.context("sending the message")?;
    let answer = tokio::time::timeout(SEND_TIMEOUT, async {
        loop {
            let Some(frame) = next_frame(&mut ws).await? else {
                bail!("the server closed the socket before answering the send");
            };
            let answers_us =
                frame.get("client_msg_id").and_then(Value::as_str) == client_msg_id.as_deref();
            match frame_type(&frame) {
                kind::ACK if answers_us => return Ok(frame),
                // An error naming another send cannot be ours; one naming
                // none (a malformed frame) can.
                kind::ERROR if answers_us || frame.get("client_msg_id").is_none() => {
                    return Err(frame_error(&frame).into());
                }
                kind::KICKED => return Err(kicked(&frame)),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "no answer to the send within {} s; it may or may not be stored: retry with the \
             same --client-msg-id to be sure it is sent once",
            SEND_TIMEOUT.as_secs()
        ))
    });
    // Best effort: the answer is what matters.
    let _ = ws.close(None).await;
    answer
}

/// The server closed the socket with a close frame.
#[derive(Debug)]
struct Closed {
    code: u16,
    reason: String,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server closed the socket ({} {})", self.code, self.reason)
    }
}

impl std::error::Error for Closed {}

/// The next JSON frame; `None` when the connection ended without a close
/// frame, a [`Closed`] error when the server closed it.
async fn next_frame(ws: &mut Ws) -> anyhow::Result<Option<Value>> {
    loop {
        let Some(message) = ws.next().await else { return Ok(None) };
        match message.context("reading from the socket")? {
            Message::Text(text) => {
                return serde_json::from_str(&text)
                    .map(Some)
                    .context("the server sent a frame that is not JSON");
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Err(Closed { code, reason }.into());
            }
            // Pings are answered by tungstenite; nothing else is used.
            _ => {}
        }
    }
}

/// What `follow` shows.
pub struct Follow<'a> {
    /// Only this conversation's messages (others are left unacked, so
    /// they stay pending for this device).
    pub conversation: Option<&'a str>,
}

/// Connects and prints every delivered message (type 1 and 2 frames) as
/// it arrives, acknowledging each one after printing it (a cumulative
/// delivery ack per conversation), with a heartbeat every 30 s, until
/// Ctrl-C. Reconnects when the server asks (close 1001 or 1013) or the
/// connection drops; a message delivered again is acked but not printed
/// twice.
pub async fn follow(
    target: &Target<'_>,
    options: &Follow<'_>,
    out: &mut Output<'_>,
) -> anyhow::Result<()> {
    // The highest seq shown per conversation, to drop redeliveries.
    let mut shown: HashMap<String, u64> = HashMap::new();
    let mut failures = 0u32;
    let mut ws = connect(target).await?;
    loop {
        let result = tokio::select! {
            r = session(&mut ws, options, out, &mut shown, &mut failures) => r,
            _ = tokio::signal::ctrl_c() => {
                // Everything shown is already acked.
                let _ = ws.close(None).await;
                return Ok(());
            }
        };
        let error = match result {
            Ok(()) => anyhow::anyhow!("the connection was lost"),
            Err(e) => match e.downcast_ref::<Closed>() {
                Some(c) if RECONNECT_CODES.contains(&c.code) => e,
                Some(_) => return Err(e),
                // A read error (the network) is worth a reconnect; a
                // kicked session or a bad frame is not.
                None if e.downcast_ref::<tungstenite::Error>().is_some() => e,
                None => return Err(e),
            },
        };
        // Reconnect with backoff; the server replays what was not acked.
        loop {
            failures += 1;
            if failures > MAX_RECONNECTS {
                return Err(error.context("giving up after repeated reconnects"));
            }
            let wait = Duration::from_millis(500 << failures.min(6));
            eprintln!("{error:#}; reconnecting in {:.1} s", wait.as_secs_f32());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            match connect(target).await {
                Ok(new) => {
                    ws = new;
                    break;
                }
                Err(e) if e.downcast_ref::<ServerError>().is_some() => return Err(e),
                Err(e) => eprintln!("{e:#}"),
            }
        }
    }
}

/// One connection's life: heartbeats, deliveries and acks. Returns
/// `Ok(())` when the connection ended without a close frame.
async fn session(
    ws: &mut Ws,
    options: &Follow<'_>,
    out: &mut Output<'_>,
    shown: &mut HashMap<String, u64>,
    failures: &mut u32,
) -> anyhow::Result<()> {
    // The first tick is immediate: its answer proves the session is
    // registered, and is when "connected" is announced.
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut announced = false;
    loop {
        let frame = tokio::select! {
            _ = heartbeat.tick() => {
                ws.send(Message::text(r#"{"type":99}"#)).await.context("sending a heartbeat")?;
                continue;
            }
            frame = next_frame(ws) => frame?,
        };
        let Some(frame) = frame else { return Ok(()) };
        match frame_type(&frame) {
            kind::SINGLE | kind::GROUP => {
                let Some(conversation) = frame.get("conversation_id").and_then(Value::as_str)
                else {
                    continue;
                };
                let seq = frame.get("seq").and_then(Value::as_u64).unwrap_or(0);
                if options.conversation.is_some_and(|only| only != conversation) {
                    continue;
                }
                let last = shown.entry(conversation.to_string()).or_insert(0);
                if seq > *last {
                    out.message(&frame).await?;
                    *last = seq;
                }
                // Acked only once printed (and flushed): a crash before
                // this means a redelivery, never a loss.
                let ack =
                    serde_json::json!({ "type": 30, "conversation_id": conversation, "seq": seq });
                ws.send(Message::text(ack.to_string())).await.context("sending an ack")?;
            }
            kind::HEARTBEAT if !announced => {
                announced = true;
                *failures = 0;
                let only = options.conversation.map(|c| format!(" in {c}")).unwrap_or_default();
                eprintln!("connected; waiting for messages{only} (Ctrl-C to stop)");
            }
            kind::ERROR => eprintln!("server error: {}", frame_error(&frame)),
            kind::KICKED => return Err(kicked(&frame)),
            // Heartbeat answers, read markers, typing, presence.
            _ => {}
        }
    }
}
