//! Session lifecycle: token expiry and graceful shutdown.

use crate::common;

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

/// Each binary's settings as it prints them (`--print-settings`: every
/// `TERN__*` variable it reads, with its default) are the lists committed
/// in deploy/settings/, which the deployment checks compare with the
/// manifests. A setting added, renamed or given a new default fails here
/// until the list (and so the manifests' checks) follows.
#[test]
fn every_binary_reads_the_settings_committed_in_deploy() {
    let binaries =
        ["tern", "tern-auth", "tern-group", "tern-message", "tern-offline", "tern-gateway"];
    for name in binaries {
        let out = std::process::Command::new(tern_testkit::procs::bin(name).unwrap())
            .arg("--print-settings")
            .env("TERN__SERVICE_TOKEN", "not printed")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let printed = String::from_utf8(out.stdout).unwrap();
        let path = format!("{}/../../deploy/settings/{name}.env", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            printed, committed,
            "{path} is out of date: run `target/debug/{name} --print-settings > deploy/settings/{name}.env`"
        );
        assert!(printed.contains("TERN__SERVICE_TOKEN=\n") || name == "tern", "{printed}");
        assert!(!printed.contains("not printed"), "the environment leaked into {name}'s defaults");
    }
}
