//! Session lifecycle: token expiry and graceful shutdown.

mod common;

use common::Server;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_socket_whose_token_expires_is_kicked() {
    let s = Server::start_with(&[("TERN__AUTH__JWT__ACCESS_TTL_SECS", "2")]).await;
    let alice = s.user("alice").await;
    let mut a = s.connect(&alice).await;
    a.send(json!({ "type": 99 })).await;
    assert_eq!(a.recv().await["type"], 99, "usable before expiry");
    let kicked = a.recv().await;
    assert_eq!(kicked["type"], 100, "{kicked}");
    assert_eq!(kicked["content"]["reason"], "token expired");
    assert_eq!(a.closed().await.code, 4001);
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_promptly() {
    let mut s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut b = s.connect(&bob).await;
    a.send_to(bob.id, "before shutdown", "s1").await;
    assert_eq!(b.recv().await["content"]["text"], "before shutdown");

    let started = Instant::now();
    s.stop();
    assert!(started.elapsed() < Duration::from_secs(10), "exited within the grace period");
    assert_eq!(a.closed().await.code, 1001);
    assert_eq!(b.closed().await.code, 1001);
}

#[test]
fn a_weak_bcrypt_cost_is_refused_outside_tests() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .env("TERN__HTTP_ADDR", "127.0.0.1:0")
        .env("TERN__DATA_DIR", data.path())
        .env("TERN__AUTH__BCRYPT_COST", "4")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bcrypt_cost 4 is below 10"), "{stderr}");
}
