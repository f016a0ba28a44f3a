//! Tokens, passwords and message bodies never reach the logs, even at
//! debug level.

use crate::common;

use common::Server;
use serde_json::json;

#[tokio::test]
async fn logs_never_contain_secrets_or_bodies() {
    let s = Server::start_with(&[("CAPTURE_LOGS", "1"), ("RUST_LOG", "debug")]).await;
    let password = "PASSWORD-must-not-leak-7f3a";
    let body = "BODY-must-not-leak-91c2";
    for name in ["alice", "bob"] {
        let (status, _) =
            s.post("/api/register", None, json!({ "username": name, "password": password })).await;
        assert_eq!(status, 201);
    }
    let (_, a) =
        s.post("/api/login", None, json!({ "username": "alice", "password": password })).await;
    let (_, b) =
        s.post("/api/login", None, json!({ "username": "bob", "password": password })).await;
    let (token, refresh) = (a["token"].as_str().unwrap(), a["refresh_token"].as_str().unwrap());
    let alice = common::User { id: a["user_id"].as_u64().unwrap(), token: token.to_string() };
    let bob = common::User {
        id: b["user_id"].as_u64().unwrap(),
        token: b["token"].as_str().unwrap().to_string(),
    };
    // A failed login and a bad token are logged events too.
    s.post("/api/login", None, json!({ "username": "alice", "password": "wrong-PASSWORD-guess" }))
        .await;
    assert_eq!(s.get("/api/groups", Some("not-a-real-token-SECRETISH")).await.0, 401);
    let mut ca = s.connect(&alice).await;
    let mut cb = s.connect(&bob).await;
    ca.send_to(bob.id, body, "leak-check").await;
    assert_eq!(cb.recv().await["content"]["text"], body);
    s.post("/api/refresh", None, json!({ "refresh_token": refresh })).await;
    drop((ca, cb));

    let mut s = s;
    s.stop();
    let logs = std::fs::read_to_string(s.log_path()).unwrap();
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "debug logging was on: {} bytes",
        logs.len()
    );
    let key = std::fs::read_to_string(s.data_path().join("jwt.key")).unwrap();
    for secret in [
        password,
        "wrong-PASSWORD-guess",
        body,
        token,
        refresh,
        bob.token.as_str(),
        "SECRETISH",
        key.trim(),
    ] {
        assert!(!logs.contains(secret), "the logs contain {secret:?}");
    }
}
