//! Hostile and broken input: every case gets a clear error, and nothing
//! acknowledged is lost.

use crate::common;

use common::{Client, Server, texts};
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

#[tokio::test]
async fn bad_frames_get_type_3_and_the_socket_stays_usable() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut b = s.connect(&bob).await;

    let mut acked = vec![a.send_to(bob.id, "first", "ok-1").await];
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "malformed_frame"),
        ("[1,2,3]".into(), "malformed_frame"),
        (json!({ "to": bob.id, "content": "x" }).to_string(), "unknown_type"),
        (json!({ "type": 7, "content": "x" }).to_string(), "unknown_type"),
        (
            json!({ "type": 1, "content": "x", "client_msg_id": "no-to" }).to_string(),
            "missing_field",
        ),
        (
            json!({ "type": 1, "to": bob.id, "client_msg_id": "no-content" }).to_string(),
            "missing_field",
        ),
        (json!({ "type": 2, "content": "x" }).to_string(), "missing_field"),
        (json!({ "type": 30, "seq": 1 }).to_string(), "missing_field"),
        (
            json!({ "type": 1, "to": 987654, "content": "x", "client_msg_id": "nobody" })
                .to_string(),
            "unknown_user",
        ),
        (
            json!({ "type": 2, "group_id": 987654, "content": "x", "client_msg_id": "no-group" })
                .to_string(),
            "unknown_group",
        ),
        (
            json!({ "type": 1, "to": alice.id, "content": "me", "client_msg_id": "self" })
                .to_string(),
            "bad_request",
        ),
        (
            json!({ "type": 1, "to": bob.id, "content": "x", "client_msg_id": "c".repeat(65) })
                .to_string(),
            "bad_request",
        ),
        (json!({ "type": 30, "conversation_id": "dm:1:2", "seq": 99 }).to_string(), "bad_request"),
    ];
    for (frame, code) in &cases {
        a.send_raw(frame).await;
        let answer = a.recv().await;
        assert_eq!(answer["type"], 3, "{frame} → {answer}");
        assert_eq!(answer["code"], *code, "{frame} → {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    // Errors answering a send echo its client_msg_id.
    a.send(json!({ "type": 1, "to": 987654, "content": "x", "client_msg_id": "echo-me" })).await;
    assert_eq!(a.recv().await["client_msg_id"], "echo-me");
    // Binary frames are refused the same way.
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(a.recv().await["code"], "malformed_frame");

    acked.push(a.send_to(bob.id, "second", "ok-2").await);
    assert_eq!(acked[1]["seq"], 2, "failed sends used no seq");
    // Bob got exactly the acknowledged messages, in order, and nothing else.
    assert_eq!(texts(&b.deliveries(2).await), ["first", "second"]);
    b.quiet(300).await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_loses_nothing() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    a.send_to(bob.id, "kept", "k1").await;
    let big = "x".repeat(70 * 1024);
    a.send(json!({ "type": 1, "to": bob.id, "content": big, "client_msg_id": "big" })).await;
    assert_eq!(a.closed().await.code, 1009);

    // The limit is on the whole message: small fragments that add up to
    // too much are refused as well.
    let mut a = s.connect(&alice).await;
    let chunk = vec![b'a'; 30 * 1024];
    a.ws.send(Message::Frame(Frame::message(b"\"".to_vec(), OpCode::Data(Data::Text), false)))
        .await
        .unwrap();
    for _ in 0..3 {
        a.ws.send(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .unwrap();
    }
    a.ws.send(Message::Frame(Frame::message(b"\"".to_vec(), OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(a.closed().await.code, 1009);

    // Fragments within the limit are reassembled into one message.
    let mut a = s.connect(&alice).await;
    let frame = json!({ "type": 1, "to": bob.id, "content": { "text": "in pieces" }, "client_msg_id": "frag" }).to_string();
    let (head, tail) = frame.as_bytes().split_at(10);
    a.ws.send(Message::Frame(Frame::message(head.to_vec(), OpCode::Data(Data::Text), false)))
        .await
        .unwrap();
    a.ws.send(Message::Frame(Frame::message(tail.to_vec(), OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(a.recv().await["seq"], 2);

    let mut b = s.connect(&bob).await;
    assert_eq!(texts(&b.deliveries(2).await), ["kept", "in pieces"]);
    b.quiet(300).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let mut a = s.connect(&alice).await;
    a.ws.send(Message::Frame(Frame::message(
        vec![0xff, 0xfe, b'{'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(a.closed().await.code, 1007);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let key = std::fs::read_to_string(s.data_path().join("jwt.key")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    let sign = |claims: serde_json::Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.trim().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let claims = |exp: i64, aud: &str, typ: &str| json!({ "sub": alice.id.to_string(), "iss": "tern", "aud": aud, "iat": now - 7200, "nbf": now - 7200, "exp": exp, "typ": typ, "jti": "t" });
    let expired = sign(claims(now - 3600, "tern-clients", "access"), &key);
    let forged =
        sign(claims(now + 3600, "tern-clients", "access"), "some-other-key-of-at-least-32-bytes!");
    let wrong_audience = sign(claims(now + 3600, "someone-else", "access"), &key);
    let not_access = sign(claims(now + 3600, "tern-clients", "refresh"), &key);
    let valid = sign(claims(now + 3600, "tern-clients", "access"), &key);

    for token in [
        expired.as_str(),
        forged.as_str(),
        wrong_audience.as_str(),
        not_access.as_str(),
        "garbage",
        "",
    ] {
        let err = tokio_tungstenite::connect_async(s.ws_url(token)).await.expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status().as_u16(), 401, "{token}")
            }
            other => panic!("expected HTTP 401, got {other:?}"),
        }
    }
    // Without any token at all.
    let no_token = format!("ws://127.0.0.1:{}/ws", s.port);
    assert!(tokio_tungstenite::connect_async(no_token).await.is_err());
    // The control case: a correctly signed token gets in.
    let mut c = Client::connect(&s.ws_url(&valid)).await;
    c.send(json!({ "type": 99 })).await;
    assert_eq!(c.recv().await["type"], 99);
    // HTTP routes refuse the same tokens.
    let (status, body) = s.get("/api/groups", Some(&expired)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
}

#[tokio::test]
async fn senders_over_the_rate_get_rate_limited_and_lose_nothing_acked() {
    let s =
        Server::start_with(&[("TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND", "5")]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    // Fire 30 sends without waiting; a burst of 10 fits, the rest may not.
    for i in 0..30 {
        a.send(json!({ "type": 1, "to": bob.id, "content": { "text": format!("m{i}") }, "client_msg_id": format!("c{i}") })).await;
    }
    let (mut acked, mut limited) = (Vec::new(), 0);
    for _ in 0..30 {
        let answer = a.recv().await;
        match answer["type"].as_i64() {
            Some(30) => acked.push(answer["client_msg_id"].as_str().unwrap().to_string()),
            Some(3) => {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                assert_eq!(answer["retryable"], true);
                assert!(answer["client_msg_id"].as_str().is_some());
                limited += 1;
            }
            _ => panic!("unexpected {answer}"),
        }
    }
    assert!(limited > 0, "the limit applied");
    assert!(acked.len() >= 10, "the burst went through: {}", acked.len());
    // Exactly the acknowledged messages reach bob, in order.
    let mut b = s.connect(&bob).await;
    let got = b.deliveries(acked.len()).await;
    let got_ids: Vec<String> =
        got.iter().map(|f| f["content"]["text"].as_str().unwrap().replacen('m', "c", 1)).collect();
    assert_eq!(got_ids, acked);
    b.quiet(300).await;
}

#[tokio::test]
async fn login_guessing_is_rate_limited_per_username() {
    let s = Server::start_with(&[("TERN__GATEWAY__LIMITS__LOGINS_PER_USER_PER_MINUTE", "3")]).await;
    s.user("alice").await; // one login used
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, _) = s
            .post("/api/login", None, json!({ "username": "alice", "password": "wrong password" }))
            .await;
        codes.push(status);
    }
    assert_eq!(codes, [401, 401, 429, 429], "the fourth attempt in a minute is refused");
    let (status, body) = s
        .post("/api/login", None, json!({ "username": "alice", "password": "correct horse" }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "even the right password waits"
    );
    // Other users are unaffected.
    s.user("bob").await;
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused_at_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s =
        Server::start_with(&[("TERN__GATEWAY__ALLOWED_ORIGINS", "https://chat.example.com")]).await;
    let alice = s.user("alice").await;
    let with_origin = |origin: &str| {
        let mut request = s.ws_url(&alice.token).into_client_request().unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        request
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(
        tokio_tungstenite::connect_async(with_origin("https://chat.example.com")).await.is_ok()
    );
    // No Origin at all: a native client.
    assert!(tokio_tungstenite::connect_async(s.ws_url(&alice.token)).await.is_ok());
}
