//! End-to-end tests of `tern-cli` against the real `tern` server binary:
//! real processes, real HTTP and WebSocket connections, no mocks.
//!
//! The server binary is not built by this test: run
//! `cargo build --workspace --bins` (or `cargo build -p tern --bin tern`)
//! first.

use serde_json::Value;
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct-horse-battery";

/// The CLI under test.
fn cli_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tern-cli"))
}

/// A running `tern` server on a free port with a fresh data folder, killed
/// when dropped.
struct Server {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let binary = Path::new(env!("CARGO_BIN_EXE_tern-cli")).with_file_name("tern");
        assert!(
            binary.exists(),
            "the server binary {} is missing: run `cargo build --workspace --bins` first",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = tempfile::tempdir().unwrap();
        // Webhooks to a port nobody listens on: every registration's event
        // fails its one attempt and is parked, for `admin parked`.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .env("TERN__WEBHOOKS__URLS", format!("http://127.0.0.1:{closed}/hook"))
            .env("TERN__WEBHOOKS__SECRET", ADMIN)
            .env("TERN__WEBHOOKS__EVENTS", "user.registered")
            .env("TERN__WEBHOOKS__MAX_ATTEMPTS", "1")
            .env("TERN__HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("TERN__DATA_DIR", data.path())
            .env("TERN__AUTH__BCRYPT_COST", "4")
            .env("TERN__AUTH__INSECURE_FAST_HASHING", "true")
            .env("TERN__GATEWAY__ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tern server starts");
        let server = Server { child, port, _data: data };
        let deadline = Instant::now() + WAIT;
        while !server.healthy() {
            assert!(Instant::now() < deadline, "tern did not answer /health within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /health` answers 200.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }

    /// A `tern-cli` command against this server, with no ambient
    /// `TERN_*` settings.
    fn cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new(cli_path());
        command
            .env_remove("TERN_TOKEN")
            .env_remove("TERN_PASSWORD")
            .env_remove("TERN_DEVICE")
            .env_remove("TERN_ADMIN_TOKEN")
            .env("TERN_SERVER", self.url())
            .args(args)
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a spawned CLI when dropped (a failed assertion included).
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) -> Output {
    command.output().expect("tern-cli runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs and asserts success; returns stdout.
fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}): stdout {:?} stderr {:?}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs and asserts exit status 1 with an `error:` line; returns stderr.
fn fails(command: &mut Command) -> String {
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{command:?}: {output:?}");
    let err = stderr(&output);
    assert!(err.lines().any(|l| l.starts_with("error: ")), "no error line: {err:?}");
    assert!(output.stdout.is_empty(), "nothing on stdout on failure: {output:?}");
    err
}

/// Sends SIGINT (what Ctrl-C sends) and expects a successful exit.
fn interrupt(mut spawned: Spawned) {
    let pid = spawned.0.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
    assert!(sent.success(), "kill -INT {pid}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = spawned.0.try_wait().unwrap() {
            assert!(status.success(), "follow after Ctrl-C: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "follow did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// Lines of a pipe, as they come, on a channel.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line matching `wanted`; panics with what came instead.
fn wait_for(lines: &mpsc::Receiver<String>, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no {what} within {WAIT:?}; got {seen:?}"),
        }
    }
}

#[test]
fn every_subcommand_has_help() {
    for command in [
        vec![],
        vec!["register"],
        vec!["login"],
        vec!["send"],
        vec!["conversations"],
        vec!["follow"],
        vec!["history"],
        vec!["admin"],
        vec!["admin", "ban"],
        vec!["admin", "unban"],
        vec!["admin", "revoke"],
        vec!["admin", "online"],
        vec!["admin", "message"],
        vec!["admin", "recall"],
        vec!["admin", "parked"],
        vec!["admin", "retry"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let output = run(Command::new(cli_path()).args(&args));
        assert!(output.status.success(), "{args:?}: {output:?}");
        let text = stdout(&output);
        assert!(text.contains("Usage: tern-cli"), "{args:?}: {text}");
    }
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    let err = fails(
        Command::new(cli_path())
            .args(["--server", &server, "login", "alice"])
            .env("TERN_PASSWORD", PASSWORD),
    );
    assert!(err.contains("cannot reach the Tern server"), "{err}");
    let err = fails(
        Command::new(cli_path())
            .args(["--server", &server, "--token", "t", "send", "--to", "2", "hi"]),
    );
    assert!(err.contains("cannot open a WebSocket"), "{err}");
}

/// The operators' token the test server is started with.
const ADMIN: &str = "an-admin-token-for-the-cli-tests-0123456789";

#[test]
fn operators_ban_revoke_message_and_recall() {
    let server = Server::start();
    let login = |name: &str| {
        json(&ok(server.cli(&["--json", "login", name]).env("TERN_PASSWORD", PASSWORD)))
    };
    ok(server.cli(&["register", "alice"]).env("TERN_PASSWORD", PASSWORD));
    ok(server.cli(&["register", "bob"]).env("TERN_PASSWORD", PASSWORD));
    let (alice, bob) = (login("alice"), login("bob"));
    let alice_id = alice["user_id"].as_u64().unwrap().to_string();
    let bob_id = bob["user_id"].as_u64().unwrap().to_string();
    let (alice_token, bob_token) =
        (alice["token"].as_str().unwrap().to_string(), bob["token"].as_str().unwrap().to_string());
    let admin = |args: &[&str]| {
        let mut command = server.cli(args);
        command.env("TERN_ADMIN_TOKEN", ADMIN);
        command
    };

    // No admin token, or a user's access token in its place: refused.
    let err = fails(&mut server.cli(&["admin", "ban", &alice_id]));
    assert!(err.contains("no admin token"), "{err}");
    let err = fails(server.cli(&["admin", "ban", &alice_id]).env("TERN_ADMIN_TOKEN", &alice_token));
    assert!(err.starts_with("error: unauthenticated: "), "{err}");

    // A system message to bob, in his history as from user 0; then recalled.
    let sent = json(&ok(&mut admin(&["--json", "admin", "message", "--to", &bob_id, "at noon"])));
    let conversation = sent["conversation_id"].as_str().unwrap().to_string();
    let history = |token: &str| {
        json(&ok(server
            .cli(&["--json", "history", &conversation, "--after-seq", "0"])
            .env("TERN_TOKEN", token)))
    };
    let page = history(&bob_token);
    assert_eq!(
        (page["messages"][0]["from"].as_u64(), page["messages"][0]["seq"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(page["messages"][0]["content"]["text"], "at noon");
    let out = ok(&mut admin(&["admin", "recall", &conversation, "1"]));
    assert_eq!(out.trim(), format!("{conversation} #1 recalled"));
    assert!(history(&bob_token)["messages"][0]["content"].is_null());
    let out = ok(&mut admin(&["admin", "online", &alice_id, &bob_id]));
    assert_eq!(out.trim(), "none of them is online");

    // A ban refuses alice's login until it is lifted; a revoke ends her tokens.
    assert_eq!(
        ok(&mut admin(&["admin", "ban", &alice_id])).trim(),
        format!("user {alice_id} banned")
    );
    let err = fails(server.cli(&["login", "alice"]).env("TERN_PASSWORD", PASSWORD));
    assert!(err.starts_with("error: forbidden: this account is banned"), "{err}");
    let err = fails(server.cli(&["conversations"]).env("TERN_TOKEN", &alice_token));
    assert!(err.starts_with("error: unauthenticated: "), "{err}");
    ok(&mut admin(&["admin", "unban", &alice_id]));
    let again = login("alice")["token"].as_str().unwrap().to_string();
    ok(server.cli(&["conversations"]).env("TERN_TOKEN", &again));
    ok(&mut admin(&["admin", "revoke", &alice_id]));
    let err = fails(server.cli(&["conversations"]).env("TERN_TOKEN", &again));
    assert!(err.starts_with("error: unauthenticated: "), "{err}");

    // The two registrations' webhook events, parked (their endpoint refuses
    // connections), then put back in line.
    let deadline = Instant::now() + WAIT;
    let parked = loop {
        let parked = json(&ok(&mut admin(&["--json", "admin", "parked"])));
        if parked["events"].as_array().is_some_and(|e| e.len() == 2) {
            break parked;
        }
        assert!(Instant::now() < deadline, "not parked: {parked}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(parked["events"][0]["event_type"], "user.registered");
    let id = parked["events"][0]["id"].to_string();
    let out = ok(&mut admin(&["admin", "parked"]));
    let first = out.lines().next().unwrap();
    assert!(first.starts_with(&format!("auth:{id} user.registered to http://")), "{out}");
    assert!(first.contains("after 1 attempts: cannot connect"), "{out}");
    let err = fails(&mut admin(&["admin", "retry", "nonsense"]));
    assert!(err.contains("is not <outbox>:<id>"), "{err}");
    let out = ok(&mut admin(&["admin", "retry", &format!("auth:{id}")]));
    assert_eq!(out.trim(), "events due again: 1");
    let retried = json(&ok(&mut admin(&["--json", "admin", "retry", "--all"])));
    assert!(retried["retried"].as_u64().is_some_and(|n| (1..=2).contains(&n)), "{retried}");
}

#[test]
fn talks_to_a_real_server() {
    let server = Server::start();

    // Register: the password from the environment, or from stdin.
    let token_a = ok(server.cli(&["register", "alice"]).env("TERN_PASSWORD", PASSWORD));
    assert!(token_a.trim().len() > 20, "a token: {token_a:?}");
    assert_eq!(token_a.lines().count(), 1, "the token alone: {token_a:?}");
    let mut register_b = server
        .cli(&["register", "bob", "--password-stdin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    register_b.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let output = register_b.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let bob = json(&stdout(&output));
    assert_eq!(bob["username"], "bob");
    let bob_id = bob["user_id"].as_u64().expect("user_id");

    // Log in: plain prints the token alone; --json the server's answer.
    let token_b = ok(server.cli(&["login", "bob"]).env("TERN_PASSWORD", PASSWORD));
    let token_b = token_b.trim().to_string();
    assert!(!token_b.contains(char::is_whitespace) && token_b.len() > 20, "{token_b:?}");
    let alice = json(&ok(server.cli(&["login", "alice", "--json"]).env("TERN_PASSWORD", PASSWORD)));
    let token_a = alice["token"].as_str().expect("token").to_string();
    let alice_id = alice["user_id"].as_u64().expect("user_id");

    // A wrong password: exit 1 and the server's code on stderr.
    let err = fails(server.cli(&["login", "alice"]).env("TERN_PASSWORD", "wrong-password-1"));
    assert!(err.starts_with("error: unauthenticated: "), "{err}");

    // Send from alice to bob, waiting for the server's ack.
    let to = bob_id.to_string();
    let ack = json(&ok(server
        .cli(&["--json", "send", "--to", &to, "hello bob"])
        .env("TERN_TOKEN", &token_a)));
    assert_eq!(ack["type"], 30);
    assert_eq!(ack["seq"], 1);
    let conversation = ack["conversation_id"].as_str().expect("conversation_id").to_string();
    let (low, high) = (alice_id.min(bob_id), alice_id.max(bob_id));
    assert_eq!(conversation, format!("dm:{low}:{high}"));
    let plain = ok(server.cli(&["send", "--to", &to, "second"]).env("TERN_TOKEN", &token_a));
    assert!(plain.starts_with(&format!("sent to {conversation} as #2 (message_id ")), "{plain}");

    // A refused send: the error frame on stderr, exit 1.
    let err = fails(server.cli(&["send", "--to", "999999", "anyone?"]).env("TERN_TOKEN", &token_a));
    assert!(err.starts_with("error: unknown_user: "), "{err}");
    // No token at all.
    let err = fails(&mut server.cli(&["send", "--to", &to, "hi"]));
    assert!(err.contains("not logged in"), "{err}");

    // Bob follows: the backlog first, then a live message; each printed
    // once as its delivered frame.
    let (follow, out, err) = spawn_follow(&mut server.cli(&["follow", "--json"]), &token_b);
    let first = json(&wait_for(&out, "first message", |_| true));
    assert_eq!(first["type"], 1);
    assert_eq!(first["content"]["text"], "hello bob");
    assert_eq!(first["from"], alice_id);
    assert_eq!(first["conversation_id"], conversation.as_str());
    let second = json(&wait_for(&out, "second message", |_| true));
    assert_eq!(second["content"]["text"], "second");
    assert_eq!(second["seq"], 2);
    wait_for(&err, "the connected line", |l| l.starts_with("connected"));
    ok(server.cli(&["send", "--to", &to, "live one"]).env("TERN_TOKEN", &token_a));
    let live = json(&wait_for(&out, "the live message", |_| true));
    assert_eq!(live["content"]["text"], "live one");
    assert_eq!(live["seq"], 3);
    // Ctrl-C: a clean exit, every printed message acked.
    interrupt(follow);

    // Everything was acked: a new follow of the same device gets nothing
    // old, so the next line is the next message (plain this time).
    let (follow, out, err) =
        spawn_follow(&mut server.cli(&["follow", "--conversation", &conversation]), &token_b);
    wait_for(&err, "the connected line", |l| l.starts_with("connected"));
    ok(server.cli(&["send", "--to", &to, "fourth"]).env("TERN_TOKEN", &token_a));
    let line = wait_for(&out, "the fourth message", |_| true);
    assert_eq!(line, format!("[{conversation} #4] alice: fourth"));
    drop(follow);

    // Conversations: the server's JSON, and a table.
    let list = json(&ok(server.cli(&["conversations", "--json"]).env("TERN_TOKEN", &token_a)));
    let items = list["conversations"].as_array().expect("a list");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["conversation_id"], conversation.as_str());
    assert_eq!(items[0]["kind"], "direct");
    assert_eq!(items[0]["user_id"], bob_id);
    assert_eq!(items[0]["latest_seq"], 4);
    let table = ok(server.cli(&["conversations"]).env("TERN_TOKEN", &token_a));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].starts_with("CONVERSATION"), "{table}");
    assert!(rows[1].starts_with(&conversation), "{table}");
    assert!(rows[1].contains("bob") && rows[1].contains("alice: fourth"), "{table}");

    // History: the latest two, and the JSON page.
    let history =
        ok(server.cli(&["history", &conversation, "--limit", "2"]).env("TERN_TOKEN", &token_b));
    assert_eq!(
        history.lines().collect::<Vec<_>>(),
        [
            format!("[{conversation} #3] alice: live one"),
            format!("[{conversation} #4] alice: fourth")
        ]
    );
    let page =
        json(&ok(server.cli(&["history", &conversation, "--json"]).env("TERN_TOKEN", &token_b)));
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"]["text"].as_str())
        .collect();
    assert_eq!(texts, ["hello bob", "second", "live one", "fourth"]);

    // A bad token: the server's 401 as an error line.
    let err = fails(server.cli(&["conversations"]).env("TERN_TOKEN", "not-a-token"));
    assert!(err.starts_with("error: unauthenticated: "), "{err}");
    let err = fails(server.cli(&["follow"]).env("TERN_TOKEN", "not-a-token"));
    assert!(err.starts_with("error: unauthenticated"), "{err}");
}

/// Starts `follow` as `token`'s user; its stdout and stderr as lines.
fn spawn_follow(
    command: &mut Command,
    token: &str,
) -> (Spawned, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = command
        .env("TERN_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    (Spawned(child), lines_of(out), lines_of(err))
}
