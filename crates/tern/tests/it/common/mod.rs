//! Test harness: runs the real `tern` binary on a free port with a fresh
//! data folder, and talks to it with real HTTP and WebSocket clients.

#![allow(dead_code)]

pub mod backing;
pub mod checker;
pub mod cluster;
pub mod s3;
pub mod workload;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame},
};

pub const WAIT: Duration = Duration::from_secs(10);

/// The service credential test servers are given.
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789abcdef0123";

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

/// A running `tern` process.
pub struct Server {
    pub port: u16,
    pub data: tempfile::TempDir,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub http: reqwest::Client,
    /// Databases made for this server on MySQL/MariaDB or PostgreSQL.
    databases: Option<Databases>,
}

/// Which SQL server the services use: SQLite in the data folder by default;
/// `TERN_TEST_DATABASE=mysql` or `postgres` gives every server four fresh
/// databases there (`TERN_TEST_MYSQL_URL`, `TERN_TEST_POSTGRES_URL` point
/// at the server), so the whole suite runs on each backend.
pub struct Databases {
    admin_url: String,
    base_url: String,
    names: Vec<String>,
}

impl Databases {
    pub async fn create() -> Option<Databases> {
        Self::create_on(&std::env::var("TERN_TEST_DATABASE").ok()?).await
    }

    /// Four fresh databases on `kind` (`mysql` or `postgres`).
    pub async fn create_on(kind: &str) -> Option<Databases> {
        let base_url = match kind {
            "mysql" => std::env::var("TERN_TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
            "postgres" => std::env::var("TERN_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
            "sqlite" | "" => return None,
            other => panic!("unknown TERN_TEST_DATABASE {other}"),
        };
        Some(Self::create_at(kind, base_url).await)
    }

    /// Four fresh databases on the server at `base_url` (a URL without a
    /// database; the admin connection uses `test` on PostgreSQL and the
    /// always-present `mysql` schema on MariaDB/MySQL).
    pub async fn create_at(kind: &str, base_url: String) -> Databases {
        let admin_db = if kind == "postgres" { "test" } else { "mysql" };
        let admin_url = format!("{base_url}/{admin_db}");
        let admin =
            sea_orm::Database::connect(&admin_url).await.expect("test database server reachable");
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let mut names = Vec::new();
        for service in ["auth", "grp", "msg", "off"] {
            let name = format!("tern_t_{}_{service}", &tag[tag.len() - 12..]);
            sea_orm::ConnectionTrait::execute_unprepared(
                &admin,
                &format!("CREATE DATABASE {name}"),
            )
            .await
            .unwrap();
            names.push(name);
        }
        admin.close().await.ok();
        Databases { admin_url, base_url, names }
    }

    /// The URL of the database for `service` (auth, group, message, offline).
    pub fn url(&self, service: &str) -> String {
        let i = ["auth", "group", "message", "offline"].iter().position(|s| *s == service).unwrap();
        format!("{}/{}", self.base_url, self.names[i])
    }

    fn env(&self) -> Vec<(String, String)> {
        ["AUTH", "GROUP", "MESSAGE", "OFFLINE"]
            .iter()
            .zip(&self.names)
            .map(|(svc, name)| {
                (format!("TERN__{svc}__DATABASE_URL"), format!("{}/{name}", self.base_url))
            })
            .collect()
    }

    /// Drops the databases (from a fresh thread: this runs in `Drop`).
    pub fn drop_all(&self) {
        let (admin_url, names) = (self.admin_url.clone(), self.names.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(admin) = sea_orm::Database::connect(&admin_url).await {
                    for name in names {
                        let _ = sea_orm::ConnectionTrait::execute_unprepared(
                            &admin,
                            &format!("DROP DATABASE IF EXISTS {name}"),
                        )
                        .await;
                    }
                    admin.close().await.ok();
                }
            })
        })
        .join();
    }
}

/// A port no process listens on, never handed out twice in this test
/// process: tests run in parallel, and the kernel may offer a port again as
/// soon as its probe is closed, which once gave two clusters' services the
/// same port (one then answered the other's calls with `unimplemented`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts with extra `TERN__*` variables.
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let mut server = Server {
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            http: reqwest::Client::new(),
            databases: Databases::create().await,
        };
        if let Some(dbs) = &server.databases {
            server.env.extend(dbs.env());
        }
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.env("TERN__HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("TERN__DATA_DIR", self.data.path())
            .env("TERN__AUTH__BCRYPT_COST", "4")
            .env("TERN__AUTH__INSECURE_FAST_HASHING", "true")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.env.iter().any(|(k, _)| k == "CAPTURE_LOGS") {
            let file = std::fs::File::create(self.log_path()).unwrap();
            cmd.stderr(file.try_clone().unwrap()).stdout(file);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("tern binary starts"));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(self.url("/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "tern did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id, to read its memory use.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// SIGTERM, wait for exit, start again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// SIGKILL (a crash: nothing is flushed, no session is closed), wait
    /// for the exit, keep it down for `down`, and start again on the same
    /// port and data.
    pub async fn crash_and_restart(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        tokio::time::sleep(down).await;
        self.spawn().await;
    }

    /// SIGTERM and wait for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL; a graceful stop needs SIGTERM.
            terminate(child.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "tern did not exit after SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.port)
    }

    /// Where the process's output goes when started with `CAPTURE_LOGS`.
    pub fn log_path(&self) -> PathBuf {
        self.data.path().join("tern.log")
    }

    pub fn data_path(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        Self::call(self.http.post(self.url(path)).json(&body), token).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        Self::call(self.http.get(self.url(path)), token).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        Self::call(self.http.delete(self.url(path)), token).await
    }

    async fn call(mut req: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Registers and logs in; returns (user_id, access token).
    pub async fn user(&self, name: &str) -> User {
        register(name, async |path, body| self.post(path, None, body).await).await
    }

    pub async fn login(&self, name: &str) -> User {
        let (status, body) = self
            .post("/api/login", None, json!({ "username": name, "password": "correct horse" }))
            .await;
        assert_eq!(status, 200, "{body}");
        User {
            id: body["user_id"].as_u64().unwrap(),
            token: body["token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn connect(&self, user: &User) -> Client {
        Client::connect(&self.ws_url(&user.token)).await
    }

    /// A session of `user` as `device`, registered once it returns (its
    /// heartbeat was answered).
    pub async fn connect_device(&self, user: &User, device: &str) -> Client {
        let url = format!("{}&device={device}", self.ws_url(&user.token));
        Client::connect(&url).await.registered().await
    }

    /// Creates a group owned by `owner`; returns its id.
    pub async fn group(&self, owner: &User, members: &[&User]) -> u64 {
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let (status, body) = self
            .post("/api/groups", Some(&owner.token), json!({ "name": "team", "member_ids": ids }))
            .await;
        assert_eq!(status, 201, "{body}");
        body["group_id"].as_u64().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dbs) = &self.databases {
            dbs.drop_all();
        }
    }
}

fn terminate(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: u64,
    pub token: String,
}

/// A WebSocket client speaking protocol v1.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    /// Whether presence news (type 50) is returned; by default it is
    /// skipped, since any test's users come and go as contacts.
    presence: bool,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) =
            connect_async(url.into_client_request().unwrap()).await.expect("upgrade succeeds");
        Client::over(ws)
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    /// Waits for a heartbeat's answer: the session is registered (and its
    /// backlog, which comes first, was read).
    pub async fn registered(mut self) -> Client {
        self.send(json!({ "type": 99 })).await;
        loop {
            if self.recv().await["type"] == 99 {
                return self;
            }
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    /// The next JSON frame; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(closed) => panic!("socket closed: {closed:?}"),
        }
    }

    /// A client over a socket opened elsewhere.
    pub fn over(ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>) -> Client {
        Client { ws, presence: false }
    }

    /// Returns presence news (type 50) from now on, instead of skipping it.
    pub fn watch_presence(&mut self) {
        self.presence = true;
    }

    /// Whether `text` is a frame this client skips.
    fn skipped(&self, text: &str) -> bool {
        !self.presence
            && serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == protocol::PRESENCE)
    }

    /// The next JSON frame, or how the socket closed.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        loop {
            let msg =
                tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame within the wait");
            match msg {
                Some(Ok(Message::Text(t))) if self.skipped(&t) => continue,
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(Closed { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Closed { code: 1006, reason: e.to_string() });
                }
                None => {
                    return Err(Closed { code: 1006, reason: "eof".into() });
                }
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
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, self.ws.next()).await {
            if !matches!(&msg, Message::Text(t) if self.skipped(t)) {
                panic!("expected silence, got {msg:?}");
            }
        }
    }

    /// Sends a 1:1 message and returns the ack (type 30).
    pub async fn send_to(&mut self, to: u64, text: &str, client_msg_id: &str) -> Value {
        self.send(json!({ "type": 1, "to": to, "content": { "text": text }, "client_msg_id": client_msg_id })).await;
        let ack = self.recv().await;
        assert_eq!(ack["type"], 30, "{ack}");
        ack
    }

    /// Sends a group message and returns the answer (ack or error).
    pub async fn send_group(&mut self, group: u64, text: &str, client_msg_id: &str) -> Value {
        self.send(json!({ "type": 2, "group_id": group, "content": { "text": text }, "client_msg_id": client_msg_id })).await;
        self.recv().await
    }

    /// Acknowledges delivery up to `seq`.
    pub async fn ack(&mut self, conversation_id: &str, seq: u64) {
        self.send(json!({ "type": 30, "conversation_id": conversation_id, "seq": seq })).await;
    }

    /// Receives `n` delivered messages (types 1/2).
    pub async fn deliveries(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.recv().await;
            match frame["type"].as_i64() {
                Some(1 | 2) => out.push(frame),
                _ => panic!("expected a delivery, got {frame}"),
            }
        }
        out
    }
}

/// Frame types the tests name.
pub mod protocol {
    /// Presence news.
    pub const PRESENCE: i64 = 50;
}

/// Texts of delivered frames, in order.
pub fn texts(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["content"]["text"].as_str().unwrap_or_default().to_string()).collect()
}

/// Seqs of delivered frames, in order.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

/// Registers `name` and logs in through `post` (path, JSON body → status,
/// JSON answer), whichever server it talks to.
pub async fn register(name: &str, post: impl AsyncFn(&str, Value) -> (u16, Value)) -> User {
    let creds = json!({ "username": name, "password": "correct horse" });
    let (status, body) = post("/api/register", creds.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post("/api/login", creds).await;
    assert_eq!(status, 200, "{body}");
    User {
        id: body["user_id"].as_u64().unwrap(),
        token: body["token"].as_str().unwrap().to_string(),
    }
}
