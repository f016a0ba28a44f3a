//! What the integration tests share, on top of the test kit
//! (`tern-testkit`), which starts the binaries and speaks the protocol: a
//! [`Server`] (embedded `tern`) and a [`cluster::Cluster`] (the distributed
//! topology) whose helpers panic instead of returning errors, a [`Client`]
//! that asserts as it reads, and an S3 server ([`s3`]).

pub mod cluster;
pub mod s3;

use futures::SinkExt;
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};
use tern_testkit::{
    api::Api,
    client::{self, Read, Ws},
    topology::{Database, Embedded, Options},
};
use tokio_tungstenite::tungstenite::Message;

pub use tern_testkit::{api::User, client::Closed, topology::SERVICE_TOKEN};

/// How long a test waits for a frame or for a process to come up.
pub const WAIT: Duration = Duration::from_secs(10);

/// A tonic interceptor that presents [`SERVICE_TOKEN`], as an internal
/// backend does.
pub fn with_token(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let value = format!("Bearer {SERVICE_TOKEN}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// A connected channel to a gRPC address.
pub async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

/// A running embedded `tern` process, with a fresh data folder. Its
/// services store their data in SQLite there, or, with
/// `TERN_TEST_DATABASE=mysql` or `postgres`, in four fresh databases on
/// that server, so the whole suite runs on each backend.
pub struct Server {
    /// Its HTTP and WebSocket port.
    pub port: u16,
    /// A client for requests the helpers do not cover.
    pub http: reqwest::Client,
    api: Api,
    tern: Embedded,
    /// Where its output goes when started with `CAPTURE_LOGS`.
    logs: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts with the default settings.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts with extra `TERN__*` variables; with `CAPTURE_LOGS` among
    /// them, its output goes to [`Server::log_path`].
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let logs =
            env.iter().any(|(k, _)| *k == "CAPTURE_LOGS").then(|| tempfile::tempdir().unwrap());
        let options = Options {
            database: Database::from_env().unwrap(),
            ready_path: "/health",
            ready_within: WAIT,
            log_dir: logs.as_ref().map(|d| d.path().to_path_buf()),
            ..Options::default()
        }
        .with_env(env);
        let tern = Embedded::start(&options).await.expect("tern starts");
        let api = tern.api();
        Server { port: tern.port, http: api.http().clone(), api, tern, logs }
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.tern.proc.sample().rss_bytes / 1024
    }

    /// SIGTERM, wait for exit, start again on the same port and data.
    pub async fn restart(&mut self) {
        self.tern.restart().await.expect("tern restarts");
    }

    /// SIGKILL (a crash: nothing is flushed, no session is closed), wait
    /// for the exit, keep it down for `down`, and start again on the same
    /// port and data.
    pub async fn crash_and_restart(&mut self, down: Duration) {
        self.tern.crash_and_restart(down).await.expect("tern restarts");
    }

    /// SIGTERM and wait for the process to exit.
    pub fn stop(&mut self) {
        self.tern.proc.signal("TERM", true).expect("tern exits after SIGTERM");
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// The WebSocket URL for `token`.
    pub fn ws_url(&self, token: &str) -> String {
        self.tern.ws_url(token)
    }

    /// Where the process's output goes when started with `CAPTURE_LOGS`.
    pub fn log_path(&self) -> PathBuf {
        self.logs.as_ref().expect("started with CAPTURE_LOGS").path().join("tern.log")
    }

    /// Its data folder.
    pub fn data_path(&self) -> PathBuf {
        self.tern.data.path().to_path_buf()
    }

    /// `POST` JSON; the status and the JSON answer.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.api.post(path, token, &body).await.unwrap()
    }

    /// `GET`; the status and the JSON answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.api.get(path, token).await.unwrap()
    }

    /// `DELETE`; the status and the JSON answer.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.api.delete(path, token).await.unwrap()
    }

    /// Registers and logs in.
    pub async fn user(&self, name: &str) -> User {
        self.api.register(name).await.unwrap()
    }

    /// Logs a registered user in.
    pub async fn login(&self, name: &str) -> User {
        self.api.login(name).await.unwrap()
    }

    /// A session of `user`, as it comes (backlog first).
    pub async fn connect(&self, user: &User) -> Client {
        Client::connect(&self.ws_url(&user.token)).await
    }

    /// A session of `user` as `device`, registered once it returns (its
    /// heartbeat was answered).
    pub async fn connect_device(&self, user: &User, device: &str) -> Client {
        let url = client::ws_url(self.port, &user.token, Some(device));
        Client::connect(&url).await.registered().await
    }

    /// Creates a group owned by `owner`; returns its id.
    pub async fn group(&self, owner: &User, members: &[&User]) -> u64 {
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        self.api.group(owner, "team", &ids).await.unwrap()
    }
}

/// A WebSocket client speaking protocol v1 that panics on what a test
/// does not expect.
pub struct Client {
    /// The socket, for frames the helpers do not cover.
    pub ws: Ws,
    /// Whether presence news (type 50) is returned; by default it is
    /// skipped, since any test's users come and go as contacts.
    presence: bool,
}

impl Client {
    /// Opens a session at `url`.
    pub async fn connect(url: &str) -> Client {
        Client::over(client::connect(url, None).await.expect("upgrade succeeds"))
    }

    /// A client over a socket opened elsewhere.
    pub fn over(ws: Ws) -> Client {
        Client { ws, presence: false }
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.ws.send(client::text(&frame)).await.unwrap();
    }

    /// Sends a text frame as it is.
    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    /// Waits for a heartbeat's answer: the session is registered (and its
    /// backlog, which comes first, was read).
    pub async fn registered(mut self) -> Client {
        self.ws.send(client::heartbeat()).await.unwrap();
        loop {
            if self.recv().await["type"] == client::HEARTBEAT {
                return self;
            }
        }
    }

    /// The next JSON frame; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(closed) => panic!("socket closed: {closed:?}"),
        }
    }

    /// Returns presence news (type 50) from now on, instead of skipping it.
    pub fn watch_presence(&mut self) {
        self.presence = true;
    }

    /// Whether `text` is a frame this client skips.
    fn skipped(&self, text: &str) -> bool {
        !self.presence
            && serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == client::PRESENCE)
    }

    /// The next JSON frame, or how the socket closed; panics on timeout.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        loop {
            let deadline = tokio::time::Instant::now() + WAIT;
            match client::read(&mut self.ws, deadline).await.into_result()? {
                None => panic!("no frame within {WAIT:?}"),
                Some(t) if self.skipped(&t) => continue,
                Some(t) => return Ok(serde_json::from_str(&t).unwrap()),
            }
        }
    }

    /// Waits for the close frame, skipping data frames.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(closed) = self.next().await {
                return closed;
            }
        }
    }

    /// Asserts nothing (but skipped presence news) arrives for `ms`
    /// milliseconds.
    pub async fn quiet(&mut self, ms: u64) {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match client::read(&mut self.ws, until).await {
                Read::Text(t) if self.skipped(&t) => continue,
                Read::TimedOut | Read::Ended | Read::Failed(_) => return,
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Sends a 1:1 message and returns the ack (type 30).
    pub async fn send_to(&mut self, to: u64, text: &str, client_msg_id: &str) -> Value {
        let frame = client::single(to, client_msg_id, &json!({ "text": text }));
        self.ws.send(frame).await.unwrap();
        let ack = self.recv().await;
        assert_eq!(ack["type"], client::ACK, "{ack}");
        ack
    }

    /// Sends a group message and returns the answer (ack or error).
    pub async fn send_group(&mut self, group: u64, text: &str, client_msg_id: &str) -> Value {
        let frame = client::group(group, client_msg_id, &json!({ "text": text }));
        self.ws.send(frame).await.unwrap();
        self.recv().await
    }

    /// Acknowledges delivery up to `seq`.
    pub async fn ack(&mut self, conversation_id: &str, seq: u64) {
        self.ws.send(client::ack(conversation_id, seq)).await.unwrap();
    }

    /// Receives `n` delivered messages (types 1/2).
    pub async fn deliveries(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.recv().await;
            match frame["type"].as_i64() {
                Some(client::SINGLE | client::GROUP) => out.push(frame),
                _ => panic!("expected a delivery, got {frame}"),
            }
        }
        out
    }
}

/// Texts of delivered frames, in order.
pub fn texts(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["content"]["text"].as_str().unwrap_or_default().to_string()).collect()
}

/// Seqs of delivered frames, in order.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}
