//! Live 1:1 and group chat over real WebSockets.

use crate::common;

use common::{Server, seqs, texts};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn direct_message_is_acked_then_delivered_from_the_real_sender() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut b = s.connect(&bob).await;

    // The client forges `from`; the server must use the authenticated sender.
    a.send(json!({ "type": 1, "to": bob.id, "from": 999, "content": { "text": "hi" }, "client_msg_id": "m1" })).await;
    let ack = a.recv().await;
    assert_eq!(ack["type"], 30, "{ack}");
    assert_eq!(ack["client_msg_id"], "m1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    let conversation = format!("dm:{}:{}", alice.id.min(bob.id), alice.id.max(bob.id));
    assert_eq!(ack["conversation_id"], conversation.as_str());
    assert!(ack["message_id"].as_str().is_some_and(|id| !id.is_empty()));

    let got = b.recv().await;
    assert_eq!(got["type"], 1, "{got}");
    assert_eq!(got["from"], alice.id);
    assert_eq!(got["to"], bob.id);
    assert_eq!(got["content"], json!({ "text": "hi" }));
    assert_eq!(got["message_id"], ack["message_id"]);
    assert_eq!(got["seq"], 1);
    assert!(got["timestamp"].as_i64().unwrap() > 0);

    // The reply continues the same conversation's sequence.
    let ack = b.send_to(alice.id, "hello back", "r1").await;
    assert_eq!(ack["seq"], 2);
    assert_eq!(a.recv().await["content"]["text"], "hello back");
    // Nobody receives their own message.
    a.quiet(200).await;
    b.quiet(200).await;
}

#[tokio::test]
async fn the_original_guide_frame_without_client_msg_id_works() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut b = s.connect(&bob).await;
    a.send(json!({ "type": 1, "to": bob.id, "content": "plain text", "timestamp": 1 })).await;
    let ack = a.recv().await;
    assert_eq!(ack["type"], 30, "{ack}");
    assert!(
        ack["client_msg_id"].as_str().is_some_and(|id| !id.is_empty()),
        "server picked one: {ack}"
    );
    assert_eq!(b.recv().await["content"], "plain text");
}

#[tokio::test]
async fn a_retried_send_is_stored_and_delivered_once() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut b = s.connect(&bob).await;
    let first = a.send_to(bob.id, "once", "retry-me").await;
    let again = a.send_to(bob.id, "once", "retry-me").await;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    let next = a.send_to(bob.id, "twice", "other").await;
    assert_eq!(next["seq"], 2, "the retry did not consume a seq");

    let got = b.deliveries(2).await;
    assert_eq!(texts(&got), ["once", "twice"]);
    b.quiet(300).await;
}

#[tokio::test]
async fn group_chat_reaches_members_only_and_seq_has_no_gaps() {
    let s = Server::start().await;
    let (a, b, c, d) = (s.user("a").await, s.user("b").await, s.user("c").await, s.user("d").await);
    let g = s.group(&a, &[&b, &c]).await;
    let (mut ca, mut cb, mut cc, mut cd) =
        (s.connect(&a).await, s.connect(&b).await, s.connect(&c).await, s.connect(&d).await);

    let ack = ca.send_group(g, "hello team", "g1").await;
    assert_eq!((ack["type"].as_i64(), ack["seq"].as_u64()), (Some(30), Some(1)), "{ack}");
    assert_eq!(ack["conversation_id"], format!("group:{g}"));
    for client in [&mut cb, &mut cc] {
        let got = client.recv().await;
        assert_eq!(got["type"], 2, "{got}");
        assert_eq!(got["group_id"], g);
        assert_eq!(got["from"], a.id);
        assert_eq!(got["seq"], 1);
    }

    // A non-member is refused and nobody receives anything.
    let refused = cd.send_group(g, "let me in", "d1").await;
    assert_eq!(refused["type"], 3, "{refused}");
    assert_eq!(refused["code"], "not_member");
    assert_eq!(refused["client_msg_id"], "d1");

    // `to` is accepted as an alias of `group_id`.
    cb.send(json!({ "type": 2, "to": g, "content": { "text": "from b" }, "client_msg_id": "b1" }))
        .await;
    assert_eq!(cb.recv().await["seq"], 2);

    // d joins later (an entry of the group, seq 3, which d receives too),
    // can send, and the sequence continues without a gap.
    let (status, _) = s.post(&format!("/api/groups/{g}/join"), Some(&d.token), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(cd.recv().await["kind"], "membership");
    let ack = cd.send_group(g, "hi all", "d2").await;
    assert_eq!((ack["type"].as_i64(), ack["seq"].as_u64()), (Some(30), Some(4)), "{ack}");

    let at_a = ca.deliveries(3).await;
    assert_eq!(seqs(&at_a), [2, 3, 4]);
    assert_eq!(
        (at_a[0]["content"]["text"].as_str(), at_a[1]["kind"].as_str()),
        (Some("from b"), Some("membership"))
    );
    assert_eq!(at_a[2]["content"]["text"], "hi all");
    assert_eq!(seqs(&cc.deliveries(3).await), [2, 3, 4]);
    assert_eq!(seqs(&cb.deliveries(2).await), [3, 4]);
    // The refused message never reached anyone, and d got nothing from
    // before it joined.
    for client in [&mut ca, &mut cb, &mut cc, &mut cd] {
        client.quiet(200).await;
    }
}

#[tokio::test]
async fn heartbeat_is_answered() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let mut a = s.connect(&alice).await;
    a.send(json!({ "type": 99 })).await;
    let beat = a.recv().await;
    assert_eq!(beat["type"], 99);
    assert!(beat["timestamp"].as_i64().unwrap() > 0);
    let (_, stats) = s.get("/stats", None).await;
    assert_eq!(stats["connections"], 1);
}

#[tokio::test]
async fn under_the_single_session_policy_a_second_session_kicks_the_first() {
    let s = Server::start_with(&[("TERN__GATEWAY__SINGLE_SESSION", "true")]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut first = s.connect(&alice).await;
    // The heartbeat's answer proves the first session is registered: the
    // upgrade answer alone does not, and a second session registered
    // before it would be the one kicked.
    first.send(json!({ "type": 99 })).await;
    assert_eq!(first.recv().await["type"], 99);
    let mut second = s.connect_device(&alice, "tablet").await;
    let kicked = first.recv().await;
    assert_eq!(kicked["type"], 100, "{kicked}");
    assert!(kicked["content"]["reason"].as_str().unwrap().contains("another session"));
    assert_eq!(first.closed().await.code, 4001);

    // The new session is the one that receives.
    let mut b = s.connect(&bob).await;
    b.send_to(alice.id, "to the new one", "k1").await;
    assert_eq!(second.recv().await["content"]["text"], "to the new one");
}

#[tokio::test]
async fn each_device_gets_every_message_and_the_users_own_from_other_devices() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut phone = s.connect_device(&alice, "phone").await;
    let mut laptop = s.connect_device(&alice, "laptop").await;
    let mut b = s.connect_device(&bob, "b").await;
    let dm = format!("dm:{}:{}", alice.id.min(bob.id), alice.id.max(bob.id));

    b.send_to(alice.id, "hi both", "b1").await;
    for device in [&mut phone, &mut laptop] {
        let got = device.recv().await;
        assert_eq!((got["seq"].as_u64(), got["from"].as_u64()), (Some(1), Some(bob.id)), "{got}");
    }
    // What the phone sends reaches bob and the laptop (as alice's), never
    // the phone itself, which has its ack.
    let ack = phone.send_to(bob.id, "from the phone", "p1").await;
    assert_eq!(ack["seq"], 2);
    for device in [&mut laptop, &mut b] {
        let got = device.recv().await;
        assert_eq!((got["seq"].as_u64(), got["from"].as_u64()), (Some(2), Some(alice.id)), "{got}");
        assert_eq!(got["content"]["text"], "from the phone");
    }
    // A read marker from the phone reaches the laptop.
    phone.send(json!({ "type": 31, "conversation_id": dm, "seq": 2 })).await;
    for device in [&mut laptop, &mut b] {
        let read = device.recv().await;
        assert_eq!((read["type"].as_i64(), read["seq"].as_u64()), (Some(31), Some(2)), "{read}");
    }
    phone.quiet(300).await;

    // Each device has its own cursor: the phone acks everything, the laptop
    // only bob's message. Reconnected, the laptop gets the phone's message
    // again (it never acked it); the phone gets nothing (its own message
    // counts as delivered to it).
    phone.ack(&dm, 1).await;
    laptop.ack(&dm, 1).await;
    let gone = |mut c: common::Client| async move {
        c.send(json!({ "type": 99 })).await;
        assert_eq!(c.recv().await["type"], 99);
    };
    gone(phone).await;
    gone(laptop).await;
    b.send_to(alice.id, "while away", "b2").await;
    let device = |name: &str| format!("{}&device={name}", s.ws_url(&alice.token));
    let laptop = common::Client::connect(&device("laptop")).await;
    let phone = common::Client::connect(&device("phone")).await;
    for (mut device, want) in [(laptop, vec![2, 3]), (phone, vec![3])] {
        let got = device.deliveries(want.len()).await;
        assert_eq!(seqs(&got), want);
        device.quiet(300).await;
    }
    // A device cannot ack a conversation its user is not in.
    let carol = s.user("carol").await;
    let theirs = format!("dm:{}:{}", bob.id.min(carol.id), bob.id.max(carol.id));
    let mut phone = s.connect_device(&alice, "phone").await;
    phone.send(json!({ "type": 30, "conversation_id": theirs, "seq": 1 })).await;
    let refused = phone.recv().await;
    assert_eq!((refused["type"].as_i64(), refused["code"].as_str()), (Some(3), Some("forbidden")));
    // Unread counts come from the read marker the devices share; the list
    // reports the cursor of the device it is asked for.
    phone.ack(&dm, 3).await;
    phone.send(json!({ "type": 99 })).await;
    assert_eq!(phone.recv().await["type"], 99);
    for (device, acked) in [("phone", 3), ("laptop", 1)] {
        let path = format!("/api/conversations?device={device}");
        let (_, list) = s.get(&path, Some(&alice.token)).await;
        let conversation = &list["conversations"][0];
        assert_eq!(
            (&conversation["unread"], &conversation["acked_seq"]),
            (&json!(1), &json!(acked))
        );
    }
    let (status, _) = s.get("/api/conversations?device=not%20ok", Some(&alice.token)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn past_the_session_limit_the_oldest_session_is_closed() {
    let s = Server::start_with(&[("TERN__GATEWAY__MAX_SESSIONS", "2")]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut oldest = s.connect_device(&alice, "one").await;
    let mut second = s.connect_device(&alice, "two").await;
    let mut third = s.connect_device(&alice, "three").await;
    let kicked = oldest.recv().await;
    assert_eq!(kicked["type"], 100, "{kicked}");
    assert_eq!(oldest.closed().await.code, 4001);
    let mut b = s.connect(&bob).await;
    b.send_to(alice.id, "to both", "k1").await;
    for device in [&mut second, &mut third] {
        assert_eq!(device.recv().await["content"]["text"], "to both");
    }
    // A malformed device id is refused before the upgrade.
    let url = format!("{}&device=not%20ok", s.ws_url(&alice.token));
    let refused = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(refused.to_string().contains("400"), "{refused}");
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let s = Server::start_with(&[("TERN__GATEWAY__IDLE_TIMEOUT_SECS", "1")]).await;
    let alice = s.user("alice").await;
    let mut a = s.connect(&alice).await;
    let closed = a.closed().await;
    assert_eq!(closed.code, 1000, "{closed:?}");
    assert!(closed.reason.contains("idle"), "{closed:?}");
}

#[tokio::test]
async fn concurrent_senders_get_distinct_gap_free_seqs_and_receivers_see_them_in_order() {
    let s = Server::start().await;
    senders_and_reader(&s, 2, 40).await;
}

/// With a one-frame queue the live stream overflows under load; dropped
/// pushes must come back through the resync, still in order and once.
#[tokio::test]
async fn a_reader_whose_queue_overflows_still_gets_everything_in_order() {
    let s = Server::start_with(&[("TERN__GATEWAY__OUTBOUND_QUEUE", "1")]).await;
    senders_and_reader(&s, 16, 10).await;
    let (_, stats) = s.get("/stats", None).await;
    // The point of the test: the overflow path really ran.
    assert!(stats["queue_overflows"].as_u64().unwrap() > 0, "{stats}");
}

/// `senders` members send `each` group messages concurrently (each waits
/// for its ack before the next); one more member only reads.
async fn senders_and_reader(s: &Server, senders: usize, each: usize) {
    let mut users = Vec::new();
    for i in 0..senders {
        users.push(s.user(&format!("sender{i}")).await);
    }
    let reader_user = s.user("reader").await;
    let mut members: Vec<&common::User> = users.iter().skip(1).collect();
    members.push(&reader_user);
    let g = s.group(&users[0], &members).await;
    let mut reader = s.connect(&reader_user).await;
    let mut tasks = Vec::new();
    for user in users {
        let url = s.ws_url(&user.token);
        tasks.push(tokio::spawn(async move {
            let mut client = common::Client::connect(&url).await;
            let mut acked = Vec::new();
            for i in 0..each {
                client.send(json!({ "type": 2, "group_id": g, "content": { "text": format!("{}-{i}", user.id) }, "client_msg_id": format!("{i}") })).await;
                // Other senders' messages arrive interleaved with acks.
                loop {
                    let frame = client.recv().await;
                    if frame["type"] == 30 {
                        acked.push(frame["seq"].as_u64().unwrap());
                        break;
                    }
                    assert_eq!(frame["type"], 2, "{frame}");
                }
            }
            acked
        }));
    }
    let mut all_acked = Vec::new();
    for task in tasks {
        all_acked.extend(task.await.unwrap());
    }
    all_acked.sort_unstable();
    let expected: Vec<u64> = (1..=(senders * each) as u64).collect();
    assert_eq!(all_acked, expected, "every send got its own seq, with no gaps");

    let got = reader.deliveries(senders * each).await;
    assert_eq!(seqs(&got), expected, "delivered exactly once, in seq order");
    reader.quiet(200).await;
}

#[tokio::test]
async fn a_member_who_left_receives_nothing_and_stays_connected() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let g = s.group(&a, &[&b]).await;
    let mut ca = s.connect(&a).await;
    let mut cb = s.connect(&b).await;
    assert_eq!(ca.send_group(g, "before", "1").await["seq"], 1);
    assert_eq!(cb.recv().await["seq"], 1);

    let (status, _) = s.post(&format!("/api/groups/{g}/leave"), Some(&b.token), json!({})).await;
    assert_eq!(status, 200);
    // Sent at once, while the fan-out may still hold the old member list.
    assert_eq!(ca.send_group(g, "after", "2").await["seq"], 2);
    cb.quiet(300).await;
    cb.send(json!({ "type": 99 })).await;
    assert_eq!(cb.recv().await["type"], 99, "still connected");
    let refused = cb.send_group(g, "me too", "3").await;
    assert_eq!(refused["code"], "not_member");
}

/// A retry whose original was stored while the sender was a member still
/// gets the original's ack after the sender left: the send was authorised
/// when it was first stored, and answering `not_member` now would tell the
/// client a stored message was refused.
#[tokio::test]
async fn a_retry_after_leaving_the_group_returns_the_original() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let g = s.group(&a, &[&b]).await;
    let mut cb = s.connect(&b).await;
    let first = cb.send_group(g, "sent while a member", "b-1").await;
    assert_eq!(first["type"], 30, "{first}");
    let (status, _) = s.post(&format!("/api/groups/{g}/leave"), Some(&b.token), json!({})).await;
    assert_eq!(status, 200);
    let again = cb.send_group(g, "sent while a member", "b-1").await;
    assert_eq!(again["type"], 30, "{again}");
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], true);
    let new = cb.send_group(g, "a new one", "b-2").await;
    assert_eq!(new["code"], "not_member", "{new}");
}

#[tokio::test]
async fn a_member_who_joins_receives_live_messages_at_once_but_no_earlier_history() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let g = s.group(&a, &[]).await;
    let mut ca = s.connect(&a).await;
    assert_eq!(ca.send_group(g, "before b joined", "1").await["seq"], 1);
    let mut cb = s.connect(&b).await;
    let (status, _) = s.post(&format!("/api/groups/{g}/join"), Some(&b.token), json!({})).await;
    assert_eq!(status, 200);
    // The join is the group's entry 2, for a and for b.
    assert_eq!(ca.recv().await["kind"], "membership");
    assert_eq!(cb.recv().await["seq"], 2);
    assert_eq!(ca.send_group(g, "welcome", "2").await["seq"], 3);
    let got = cb.recv().await;
    assert_eq!((got["seq"].as_u64(), got["content"]["text"].as_str()), (Some(3), Some("welcome")));
    cb.quiet(200).await;
    // History starts where b came in, even when asked for everything.
    let (status, body) =
        s.get(&format!("/api/conversations/group:{g}/messages?after_seq=0"), Some(&b.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seqs(body["messages"].as_array().unwrap()), [2, 3]);
}

#[tokio::test]
async fn an_abruptly_dropped_socket_is_unregistered_promptly() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let mut a = s.connect(&alice).await;
    a.send(json!({ "type": 99 })).await;
    assert_eq!(a.recv().await["type"], 99, "the session is up");
    assert_eq!(s.get("/stats", None).await.1["connections"], 1);
    // Drop the TCP connection without a close frame.
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while s.get("/stats", None).await.1["connections"] != 0 {
        assert!(std::time::Instant::now() < deadline, "session still registered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Regression: presence is per (user, node), so a closing session's
/// clean-up could remove the entry that the same user's new session on the
/// node had just recorded, leaving the user unreachable for live pushes
/// (sends were stored and acked, never pushed). The old session's clean-up
/// is made slow here (its writer is stuck on a client that stopped
/// reading), so the new session registers in between.
#[tokio::test]
async fn a_user_who_reconnects_while_the_old_session_winds_down_stays_reachable() {
    let s =
        Server::start_with(&[("TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND", "0")]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut old = s.connect(&bob).await;
    // Fill the old session's socket: bob's client stops reading.
    let pad = "x".repeat(48 * 1024);
    for i in 0..200 {
        a.send_to(bob.id, &format!("{i}{pad}"), &format!("big-{i}")).await;
    }
    // Close (the close frame still goes out) and reconnect at once.
    let _ = futures::SinkExt::close(&mut old.ws).await;
    let mut new = common::Client::connect(&s.ws_url(&bob.token)).await;
    // Wait until the old session's clean-up (up to 2 s for its stuck
    // writer) has certainly run, then send live.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.send_to(bob.id, "live", "live").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // The backlog (the big ones) comes first.
            if new.recv().await["content"]["text"] == "live" {
                return;
            }
        }
    })
    .await
    .expect("the live message reached the new session");
}

#[tokio::test]
async fn typing_reaches_online_members_only_and_leaves_nothing_behind() {
    let s = Server::start().await;
    let (a, b, c, d) = (s.user("a").await, s.user("b").await, s.user("c").await, s.user("d").await);
    let g = s.group(&a, &[&b, &c]).await;
    let (mut ca, mut cb, mut cc, mut cd) =
        (s.connect(&a).await, s.connect(&b).await, s.connect(&c).await, s.connect(&d).await);

    // 1:1: the peer is told who types where; nothing is answered.
    ca.send(json!({ "type": 40, "to": b.id })).await;
    let dm = format!("dm:{}:{}", a.id.min(b.id), a.id.max(b.id));
    assert_eq!(cb.recv().await, json!({ "type": 40, "conversation_id": dm, "from": a.id }));
    // Again within a second: dropped, not repeated.
    ca.send(json!({ "type": 40, "to": b.id })).await;
    cb.quiet(300).await;

    // A group: every other member, not the typist, not a stranger.
    ca.send(json!({ "type": 40, "group_id": g })).await;
    let told =
        json!({ "type": 40, "conversation_id": format!("group:{g}"), "from": a.id, "group_id": g });
    assert_eq!(cb.recv().await, told);
    assert_eq!(cc.recv().await, told);

    // Refusals, each a type 3 frame: a group one is not in, a user who
    // does not exist, no target.
    cd.send(json!({ "type": 40, "group_id": g })).await;
    assert_eq!(cd.recv().await["code"], "not_member");
    cd.send(json!({ "type": 40, "to": 999_999_999 })).await;
    assert_eq!(cd.recv().await["code"], "unknown_user");
    cd.send(json!({ "type": 40 })).await;
    assert_eq!(cd.recv().await["code"], "missing_field");

    // Never stored: the 1:1 conversation has no message and no unread
    // count, and a message sent now takes seq 1.
    let (status, body) = s.get("/api/conversations", Some(&b.token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["conversation_id"] != dm.as_str()),
        "{body}"
    );
    assert_eq!(ca.send_to(b.id, "now for real", "t1").await["seq"], 1);
    assert_eq!(cb.deliveries(1).await[0]["seq"], 1);

    // A message ends the indicator where it arrives, so the next one is
    // passed on at once, not a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let typing = json!({ "type": 40, "conversation_id": dm, "from": a.id });
    ca.send(json!({ "type": 40, "to": b.id })).await;
    assert_eq!(cb.recv().await, typing);
    assert_eq!(ca.send_to(b.id, "and more", "t2").await["seq"], 2);
    assert_eq!(cb.deliveries(1).await[0]["seq"], 2);
    ca.send(json!({ "type": 40, "to": b.id })).await;
    assert_eq!(cb.recv().await, typing);
    for client in [&mut ca, &mut cb, &mut cc, &mut cd] {
        client.quiet(200).await;
    }
}

#[tokio::test]
async fn read_markers_are_shared_told_to_the_peer_and_counted_in_groups() {
    let mut s = Server::start().await;
    let (a, b, c, d) = (s.user("a").await, s.user("b").await, s.user("c").await, s.user("d").await);
    let g = s.group(&a, &[&b, &c]).await;
    let (mut ca, mut cb, mut cc, mut cd) =
        (s.connect(&a).await, s.connect(&b).await, s.connect(&c).await, s.connect(&d).await);
    let dm = format!("dm:{}:{}", a.id.min(b.id), a.id.max(b.id));
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        assert_eq!(ca.send_to(b.id, text, &format!("m{i}")).await["seq"], i as u64 + 1);
    }
    let got = cb.deliveries(3).await;
    cb.ack(&dm, 3).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    let view = |body: &serde_json::Value, id: &str| {
        body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conversation_id"] == id)
            .cloned()
    };

    // Delivered is not read: all three are unread.
    let (_, body) = s.get("/api/conversations", Some(&b.token)).await;
    let listed = view(&body, &dm).expect("listed");
    assert_eq!((listed["unread"].as_u64(), listed["read_seq"].as_u64()), (Some(3), Some(0)));

    // b reads up to 2: the peer is told, b's own session is not.
    cb.send(json!({ "type": 31, "conversation_id": dm, "seq": 2 })).await;
    assert_eq!(
        ca.recv().await,
        json!({ "type": 31, "conversation_id": dm, "user_id": b.id, "seq": 2 })
    );
    cb.quiet(200).await;
    let (_, body) = s.get("/api/conversations", Some(&b.token)).await;
    let listed = view(&body, &dm).expect("listed");
    assert_eq!((listed["unread"].as_u64(), listed["read_seq"].as_u64()), (Some(1), Some(2)));

    // Backwards is silent and tells nobody; beyond the head, a stranger,
    // a malformed id and a missing seq are refused.
    cb.send(json!({ "type": 31, "conversation_id": dm, "seq": 1 })).await;
    ca.quiet(200).await;
    cb.send(json!({ "type": 31, "conversation_id": dm, "seq": 9 })).await;
    assert_eq!(cb.recv().await["code"], "bad_request");
    cd.send(json!({ "type": 31, "conversation_id": dm, "seq": 1 })).await;
    assert_eq!(cd.recv().await["code"], "forbidden");
    cd.send(json!({ "type": 31, "conversation_id": "nope", "seq": 1 })).await;
    assert_eq!(cd.recv().await["code"], "bad_request");
    cd.send(json!({ "type": 31, "conversation_id": dm })).await;
    assert_eq!(cd.recv().await["code"], "missing_field");
    let (status, _) = s.get(&format!("/api/conversations/{dm}/reads"), Some(&d.token)).await;
    assert_eq!(status, 403);
    ca.quiet(100).await;

    // A group: members are not told of each other's reads; the counts
    // are one call away.
    let gc = format!("group:{g}");
    for i in 0..2 {
        ca.send_group(g, "hi all", &format!("g{i}")).await;
    }
    for client in [&mut cb, &mut cc] {
        assert_eq!(seqs(&client.deliveries(2).await), [1, 2]);
    }
    cb.send(json!({ "type": 31, "conversation_id": gc, "seq": 2 })).await;
    cc.send(json!({ "type": 31, "conversation_id": gc, "seq": 1 })).await;
    for client in [&mut ca, &mut cb, &mut cc] {
        client.quiet(300).await;
    }
    let (status, body) = s.get(&format!("/api/conversations/{gc}/reads"), Some(&a.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["reads"],
        json!([{ "seq": 2, "members": 1 }, { "seq": 1, "members": 1 }]),
        "a's own marker is not counted"
    );

    // Stored: a restart keeps every marker.
    s.restart().await;
    let (_, body) = s.get("/api/conversations", Some(&b.token)).await;
    assert_eq!(view(&body, &dm).expect("listed")["read_seq"], 2);
    assert_eq!(view(&body, &gc).expect("listed")["unread"], 0);
    let (_, body) = s.get(&format!("/api/conversations/{gc}/reads"), Some(&b.token)).await;
    assert_eq!(body["reads"], json!([{ "seq": 1, "members": 1 }, { "seq": 0, "members": 1 }]));
}

#[tokio::test]
async fn presence_reaches_contacts_and_only_those_who_share_a_conversation() {
    let s = Server::start().await;
    let (a, b, c, d) = (s.user("a").await, s.user("b").await, s.user("c").await, s.user("d").await);
    let mut ca = s.connect(&a).await;
    ca.watch_presence();
    let mut cb = s.connect(&b).await;
    // a and b become 1:1 contacts; a and c share only a group.
    ca.send_to(b.id, "hello", "p1").await;
    assert_eq!(cb.deliveries(1).await.len(), 1);
    s.group(&a, &[&c]).await;
    let presence = |ids: String, token: String| {
        let s = &s;
        async move { s.get(&format!("/api/presence?ids={ids}"), Some(&token)).await }
    };

    // b goes offline: a, its contact, is told when.
    let before = now_ms();
    drop(cb);
    // b's "online" news may come first: b's contacts are looked up after
    // its connect, and on a busy machine that can be after the message
    // above made a its contact.
    let news = loop {
        let news = ca.recv().await;
        if news["type"] != 50 || news["online"] != true {
            break news;
        }
    };
    assert_eq!((news["type"].as_i64(), news["user_id"].as_u64()), (Some(50), Some(b.id)), "{news}");
    assert_eq!(news["online"], false);
    let seen = news["last_seen"].as_i64().expect("last_seen");
    assert!(seen >= before - 1_000, "{news}");

    // b comes back: told again. c, who shares only a group, comes online
    // silently (group members are not pushed each other's presence).
    let mut cb = s.connect(&b).await;
    assert_eq!(ca.recv().await, json!({ "type": 50, "user_id": b.id, "online": true }));
    assert_eq!(cb.deliveries(1).await.len(), 1, "not acked: sent again");
    let cc = s.connect(&c).await;
    ca.quiet(300).await;

    // One call for a contact list: the contact and the group member are
    // visible, the stranger is hidden; a stranger sees nothing of a.
    let ids = format!("{},{},{},{}", a.id, b.id, c.id, d.id);
    let (status, body) = presence(ids, a.token.clone()).await;
    assert_eq!(status, 200, "{body}");
    let mut shown: Vec<(u64, bool)> = body["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["user_id"].as_u64().unwrap(), p["online"].as_bool().unwrap()))
        .collect();
    shown.sort();
    assert_eq!(shown, [(a.id, true), (b.id, true), (c.id, true)], "{body}");
    assert_eq!(body["hidden"], json!([d.id]));
    let (status, body) = presence(a.id.to_string(), d.token.clone()).await;
    assert_eq!((status, &body["presence"], &body["hidden"]), (200, &json!([]), &json!([a.id])));
    let (status, body) = presence("x".into(), a.token.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));

    // c goes offline: a is not pushed it, but sees it (and when) on asking.
    drop(cc);
    ca.quiet(300).await;
    let (_, body) = presence(c.id.to_string(), a.token.clone()).await;
    assert_eq!(body["presence"][0]["online"], false, "{body}");
    assert!(body["presence"][0]["last_seen"].as_i64().unwrap() >= before, "{body}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn recalls_and_edits_reach_everyone_in_order_and_keep_their_rules() {
    let s = Server::start_with(&[("TERN__MESSAGE__RECALL_WINDOW_SECS", "2")]).await;
    let (a, b, c, d) = (s.user("a").await, s.user("b").await, s.user("c").await, s.user("d").await);
    let g = s.group(&a, &[&b, &c]).await;
    let (mut ca, mut cb, mut cd) = (s.connect(&a).await, s.connect(&b).await, s.connect(&d).await);
    let dm = format!("dm:{}:{}", a.id.min(b.id), a.id.max(b.id));
    ca.send_to(b.id, "hello", "m1").await;
    ca.send_to(b.id, "tpyo", "m2").await;
    assert_eq!(seqs(&cb.deliveries(2).await), [1, 2]);
    let ask = async |client: &mut common::Client, frame: serde_json::Value| {
        client.send(frame).await;
        client.recv().await
    };

    // An edit and a recall are answered like sends and reach the peer as
    // entries with their own seqs, naming the message they change.
    let edit = json!({ "type": 61, "conversation_id": dm, "seq": 2, "content": { "text": "typo" }, "client_msg_id": "e1" });
    let ack = ask(&mut ca, edit).await;
    assert_eq!((ack["type"].as_i64(), ack["seq"].as_u64()), (Some(30), Some(3)), "{ack}");
    let got = cb.recv().await;
    assert_eq!(
        (got["kind"].as_str(), got["ref_seq"].as_u64(), got["seq"].as_u64()),
        (Some("edit"), Some(2), Some(3)),
        "{got}"
    );
    assert_eq!(got["content"]["text"], "typo");
    let recall = json!({ "type": 60, "conversation_id": dm, "seq": 1, "client_msg_id": "r1" });
    assert_eq!(ask(&mut ca, recall.clone()).await["seq"], 4);
    let got = cb.recv().await;
    assert_eq!((got["kind"].as_str(), got["ref_seq"].as_u64()), (Some("recall"), Some(1)), "{got}");
    assert_eq!(got["content"], serde_json::Value::Null);
    // A retry answers the stored event.
    let again = ask(&mut ca, recall).await;
    assert_eq!((again["seq"].as_u64(), again["duplicate"].as_bool()), (Some(4), Some(true)));

    // History never returns the recalled content again, and shows the edit.
    let (_, history) = s.get(&format!("/api/conversations/{dm}/messages"), Some(&b.token)).await;
    let entries = history["messages"].as_array().unwrap();
    assert_eq!(seqs(entries), [1, 2, 3, 4]);
    assert_eq!(entries[0]["content"], serde_json::Value::Null, "{history}");
    assert!(entries[0]["recalled_at"].as_i64().is_some(), "{history}");
    assert!(!history.to_string().contains("hello"), "{history}");
    assert_eq!(entries[1]["content"]["text"], "typo");
    assert!(entries[1]["edited_at"].as_i64().is_some(), "{history}");

    // Refusals, each a type 3 frame echoing the client_msg_id.
    let refused = [
        (
            'b',
            json!({ "type": 60, "conversation_id": dm, "seq": 2, "client_msg_id": "x1" }),
            "forbidden",
        ),
        (
            'b',
            json!({ "type": 61, "conversation_id": dm, "seq": 2, "content": 1, "client_msg_id": "x2" }),
            "forbidden",
        ),
        (
            'a',
            json!({ "type": 61, "conversation_id": dm, "seq": 1, "content": 1, "client_msg_id": "x3" }),
            "conflict",
        ),
        (
            'a',
            json!({ "type": 60, "conversation_id": dm, "seq": 1, "client_msg_id": "x4" }),
            "conflict",
        ),
        (
            'a',
            json!({ "type": 60, "conversation_id": dm, "seq": 3, "client_msg_id": "x5" }),
            "bad_request",
        ),
        (
            'a',
            json!({ "type": 60, "conversation_id": dm, "seq": 99, "client_msg_id": "x6" }),
            "not_found",
        ),
        (
            'd',
            json!({ "type": 60, "conversation_id": dm, "seq": 2, "client_msg_id": "x7" }),
            "not_member",
        ),
        (
            'a',
            json!({ "type": 61, "conversation_id": dm, "seq": 2, "client_msg_id": "x8" }),
            "missing_field",
        ),
    ];
    for (who, frame, code) in refused {
        let client = match who {
            'a' => &mut ca,
            'b' => &mut cb,
            _ => &mut cd,
        };
        let id = frame["client_msg_id"].clone();
        let answer = ask(client, frame).await;
        assert_eq!(
            (answer["code"].as_str(), &answer["client_msg_id"]),
            (Some(code), &id),
            "{answer}"
        );
    }
    // Past the recall window the sender may not recall any more.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let late = json!({ "type": 60, "conversation_id": dm, "seq": 2, "client_msg_id": "r2" });
    assert_eq!(ask(&mut ca, late).await["code"], "forbidden");

    // In a group the owner may recall anyone's message at any time; a
    // member who was offline finds the recall, and no content, on return.
    let gc = format!("group:{g}");
    assert_eq!(cb.send_group(g, "secret", "g1").await["seq"], 1);
    assert_eq!(ca.recv().await["seq"], 1);
    let owner = json!({ "type": 60, "conversation_id": gc, "seq": 1, "client_msg_id": "r3" });
    assert_eq!(ask(&mut ca, owner).await["seq"], 2);
    assert_eq!(cb.recv().await["kind"], "recall");
    let mut cc = s.connect(&c).await;
    let got = cc.deliveries(2).await;
    assert_eq!(seqs(&got), [1, 2]);
    assert_eq!((got[0]["content"].clone(), got[1]["kind"].clone()), (json!(null), json!("recall")));
    assert!(!serde_json::Value::Array(got).to_string().contains("secret"));
    // Recalled already: a conflict. A member who is neither the owner nor
    // the sender: forbidden.
    let again = json!({ "type": 60, "conversation_id": gc, "seq": 1, "client_msg_id": "r4" });
    assert_eq!(ask(&mut cc, again).await["code"], "conflict");
    assert_eq!(cb.send_group(g, "mine", "g2").await["seq"], 3);
    assert_eq!(ca.recv().await["seq"], 3);
    assert_eq!(cc.recv().await["seq"], 3);
    let theirs = json!({ "type": 60, "conversation_id": gc, "seq": 3, "client_msg_id": "r5" });
    assert_eq!(ask(&mut cc, theirs).await["code"], "forbidden");
    for client in [&mut ca, &mut cb, &mut cc, &mut cd] {
        client.quiet(200).await;
    }
}

#[tokio::test]
async fn membership_changes_are_entries_of_the_group_that_members_receive_in_order() {
    let s = Server::start().await;
    let (a, b, c, d) = (s.user("a").await, s.user("b").await, s.user("c").await, s.user("d").await);
    let g = s.group(&a, &[&b]).await;
    let (mut ca, mut cb, mut cc, mut cd) =
        (s.connect(&a).await, s.connect(&b).await, s.connect(&c).await, s.connect(&d).await);
    let entry = |seq: u64, change: &str, user: u64, by: u64| {
        json!({ "seq": seq, "from": 0, "kind": "membership",
                "content": { "change": change, "user_ids": [user], "by": by } })
    };
    let shape = |got: serde_json::Value| json!({ "seq": got["seq"], "from": got["from"], "kind": got["kind"], "content": got["content"] });

    // c joins: everyone, c included, gets the entry.
    let (status, _) = s.post(&format!("/api/groups/{g}/join"), Some(&c.token), json!({})).await;
    assert_eq!(status, 200);
    for client in [&mut ca, &mut cb, &mut cc] {
        assert_eq!(shape(client.recv().await), entry(1, "joined", c.id, c.id));
    }
    // The owner adds d.
    let body = json!({ "member_ids": [d.id] });
    let (status, _) = s.post(&format!("/api/groups/{g}/members"), Some(&a.token), body).await;
    assert_eq!(status, 200);
    for client in [&mut ca, &mut cb, &mut cc, &mut cd] {
        assert_eq!(shape(client.recv().await), entry(2, "added", d.id, a.id));
    }
    // d leaves, and is not told any more.
    let (status, _) = s.post(&format!("/api/groups/{g}/leave"), Some(&d.token), json!({})).await;
    assert_eq!(status, 200);
    for client in [&mut ca, &mut cb, &mut cc] {
        assert_eq!(shape(client.recv().await), entry(3, "left", d.id, d.id));
    }
    // The owner removes c while c is offline; c hears nothing more, b reads
    // it on return.
    drop(cc);
    drop(cb);
    let (status, _) = s.delete(&format!("/api/groups/{g}/members/{}", c.id), Some(&a.token)).await;
    assert_eq!(status, 200);
    assert_eq!(shape(ca.recv().await), entry(4, "removed", c.id, a.id));
    let mut cb = s.connect(&b).await;
    let got = cb.deliveries(4).await;
    assert_eq!(seqs(&got), [1, 2, 3, 4], "never acked: all sent again, in order");
    assert_eq!(shape(got[3].clone()), entry(4, "removed", c.id, a.id));
    // A change that changes nothing (joining twice) posts nothing.
    let (status, _) = s.post(&format!("/api/groups/{g}/join"), Some(&b.token), json!({})).await;
    assert_eq!(status, 200);
    for client in [&mut ca, &mut cb, &mut cd] {
        client.quiet(300).await;
    }
}
