//! Slow consumers and saturation: a client that stops reading costs the
//! node a bounded queue and then its session, never other clients' traffic
//! or unbounded memory; a saturated message service answers with a
//! retryable error instead of queueing. Nothing acknowledged is lost.

use crate::common;

use common::{Client, Server, User};
use futures::StreamExt;
use serde_json::{Value, json};
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};
use tokio_tungstenite::tungstenite::Message;

const NO_LIMITS: (&str, &str) = ("TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND", "0");

/// Sends and waits for the ack, skipping deliveries that arrive meanwhile.
async fn send_acked(client: &mut Client, frame: Value) -> Value {
    client.send(frame).await;
    loop {
        let answer = client.recv().await;
        if answer["type"] == 30 || answer["type"] == 3 {
            return answer;
        }
    }
}

/// Sends until acked, retrying `unavailable` with the same frame (same
/// `client_msg_id`), as clients must; returns the ack.
async fn send_until_acked(client: &mut Client, frame: Value) -> Value {
    loop {
        let answer = send_acked(client, frame.clone()).await;
        if answer["type"] == 30 {
            return answer;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client whose socket receive buffer is fixed at 64 KiB. Left to
/// itself Linux grows a loopback receive buffer to tens of MiB, and a
/// client that stops reading would then still take in everything a test
/// sends it.
async fn small_window_client(s: &Server, user: &User) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], s.port).into()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(s.ws_url(&user.token), stream).await.unwrap();
    let mut client = Client::over(ws);
    client.send(json!({ "type": 99 })).await;
    assert_eq!(client.recv().await["type"], 99);
    client
}

/// Polls `/stats` until `field` is above zero.
async fn wait_stat(s: &Server, field: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = s.get("/stats", None).await;
        let n = stats[field].as_u64().unwrap();
        if n > 0 {
            return n;
        }
        assert!(Instant::now() < deadline, "{field} stayed 0: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_without_slowing_others_or_growing_memory() {
    let s = Server::start_with(&[
        ("TERN__GATEWAY__OUTBOUND_QUEUE", "8"),
        ("TERN__GATEWAY__WRITE_TIMEOUT_SECS", "2"),
        NO_LIMITS,
    ])
    .await;
    let [sender, stalled, c, d]: [User; 4] =
        [s.user("sender").await, s.user("stalled").await, s.user("c").await, s.user("d").await];
    // The stalled client connects, then never reads again.
    let mut stuck = small_window_client(&s, &stalled).await;
    let mut from = s.connect(&sender).await;
    let mut c_ws = s.connect(&c).await;
    let mut d_ws = s.connect(&d).await;
    let rss_before = s.rss_kib();

    // 400 messages of 48 KiB (about 19 MiB) for the client that does not
    // read, while another pair chats.
    const BIG: usize = 400;
    let pad = "x".repeat(48 * 1024);
    let flood = tokio::spawn(async move {
        for i in 0..BIG {
            let frame = json!({ "type": 1, "to": stalled.id, "content": { "i": i, "pad": pad }, "client_msg_id": format!("big-{i}") });
            send_until_acked(&mut from, frame).await;
        }
        stalled
    });
    for i in 0..100 {
        let frame = json!({ "type": 1, "to": d.id, "content": { "i": i }, "client_msg_id": format!("small-{i}") });
        send_until_acked(&mut c_ws, frame).await;
    }
    let got = d_ws.deliveries(100).await;
    let order: Vec<u64> = got.iter().map(|f| f["content"]["i"].as_u64().unwrap()).collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>(), "the other pair is unaffected");
    let stalled = flood.await.unwrap();

    // The node gave up on the stalled session instead of buffering for it.
    assert!(wait_stat(&s, "slow_disconnects").await >= 1);
    let grown_mib = s.rss_kib().saturating_sub(rss_before) / 1024;
    println!("gateway grew {grown_mib} MiB");
    assert!(grown_mib < 16, "gateway grew {grown_mib} MiB pushing 19 MiB at a stalled client");

    // What reached the stalled client before the cut, then everything on
    // reconnect: each message once after dedup, in order.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(5), stuck.ws.next()).await
    {
        if let Message::Text(t) = msg {
            let frame: Value = serde_json::from_str(&t).unwrap();
            if frame["type"] == 1 {
                seen.push(frame["content"]["i"].as_u64().unwrap());
            }
        }
    }
    let before_cut = seen.len();
    println!("{before_cut} of {BIG} reached the stalled client before the cut");
    assert!(before_cut < BIG, "the stalled client could not have read everything");
    let mut again = Client::connect(&s.ws_url(&stalled.token)).await;
    again.send(json!({ "type": 99 })).await;
    loop {
        let frame = again.recv().await;
        match frame["type"].as_i64() {
            Some(1) => seen.push(frame["content"]["i"].as_u64().unwrap()),
            Some(99) => break,
            _ => panic!("unexpected {frame}"),
        }
    }
    let mut first = HashSet::new();
    let deduped: Vec<u64> = seen.into_iter().filter(|i| first.insert(*i)).collect();
    assert_eq!(deduped, (0..BIG as u64).collect::<Vec<_>>(), "cut after {before_cut}");
}

#[tokio::test]
async fn a_saturated_message_service_answers_retry_instead_of_queueing() {
    // One send in flight per node: concurrent senders overflow it at once.
    let s = Server::start_with(&[("TERN__GATEWAY__MAX_INFLIGHT_SENDS", "1"), NO_LIMITS]).await;
    const SENDERS: usize = 12;
    const EACH: usize = 15;
    let mut users = Vec::new();
    for i in 0..SENDERS {
        users.push(s.user(&format!("s{i}")).await);
    }
    let reader_user = s.user("reader").await;
    let mut members: Vec<&User> = users.iter().skip(1).collect();
    members.push(&reader_user);
    let group = s.group(&users[0], &members).await;
    let mut reader = s.connect(&reader_user).await;

    let mut tasks = Vec::new();
    for user in users {
        let url = s.ws_url(&user.token);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let mut busy = Vec::new();
            for i in 0..EACH {
                let id = format!("{}-{i}", user.id);
                let frame = json!({ "type": 2, "group_id": group, "content": { "id": id }, "client_msg_id": id });
                // Retry with the same id until acked, as clients must.
                loop {
                    let answer = send_acked(&mut client, frame.clone()).await;
                    if answer["type"] == 30 {
                        break;
                    }
                    assert_eq!(answer["code"], "unavailable", "{answer}");
                    assert_eq!(answer["client_msg_id"], id.as_str(), "{answer}");
                    busy.push(answer);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            busy
        }));
    }
    let mut refusals = Vec::new();
    for t in tasks {
        refusals.extend(t.await.unwrap());
    }
    // Refusals by the in-flight cap say so; any others are the database
    // itself pushing back under load, which clients handle the same way.
    let busy: Vec<&Value> =
        refusals.iter().filter(|r| r["message"].as_str().unwrap().contains("busy")).collect();
    assert!(!busy.is_empty(), "no send was ever refused: the limit did not apply");
    assert!(busy[0]["message"].as_str().unwrap().contains("retry"), "{}", busy[0]);
    let (_, stats) = s.get("/stats", None).await;
    assert_eq!(stats["sends_shed"].as_u64().unwrap(), busy.len() as u64, "{stats}");

    // Every message stored exactly once, gap-free, in order.
    let got = reader.deliveries(SENDERS * EACH).await;
    let seqs = common::seqs(&got);
    assert_eq!(seqs, (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>());
    let ids: HashSet<&str> = got.iter().map(|f| f["content"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), SENDERS * EACH);
    reader.quiet(300).await;
}
