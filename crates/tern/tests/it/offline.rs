//! Offline delivery, cursors and restarts.

use crate::common;

use common::{Server, seqs, texts};
use serde_json::json;

#[tokio::test]
async fn offline_messages_arrive_on_connect_in_order_and_acks_stick() {
    let s = Server::start_with(&[("TERN__GATEWAY__SYNC_PAGE", "2")]).await;
    let (alice, bob, carol) = (s.user("alice").await, s.user("bob").await, s.user("carol").await);
    let g = s.group(&alice, &[&bob, &carol]).await;
    let mut a = s.connect(&alice).await;
    let mut c = s.connect(&carol).await;
    // Bob is offline for all of these; a page size of 2 forces several pages.
    for i in 1..=5 {
        a.send_to(bob.id, &format!("dm {i}"), &format!("dm-{i}")).await;
    }
    for i in 1..=3 {
        assert_eq!(a.send_group(g, &format!("group {i}"), &format!("g-{i}")).await["type"], 30);
    }
    assert_eq!(c.deliveries(3).await.len(), 3);

    let mut b = s.connect(&bob).await;
    let got = b.deliveries(8).await;
    let dm: Vec<_> = got.iter().filter(|f| f["type"] == 1).cloned().collect();
    let group: Vec<_> = got.iter().filter(|f| f["type"] == 2).cloned().collect();
    assert_eq!(texts(&dm), ["dm 1", "dm 2", "dm 3", "dm 4", "dm 5"]);
    assert_eq!(seqs(&dm), [1, 2, 3, 4, 5]);
    assert_eq!(texts(&group), ["group 1", "group 2", "group 3"]);
    assert_eq!(seqs(&group), [1, 2, 3]);
    b.quiet(200).await;

    // Ack the DMs up to 3 and the whole group, then reconnect: only DMs
    // 4 and 5 come again.
    let dm_conversation = dm[0]["conversation_id"].as_str().unwrap().to_string();
    b.ack(&dm_conversation, 3).await;
    b.ack(&format!("group:{g}"), 3).await;
    b.send(json!({ "type": 99 })).await; // acks are silent; the heartbeat answer proves they were read
    assert_eq!(b.recv().await["type"], 99);
    drop(b);

    let mut b = s.connect(&bob).await;
    let again = b.deliveries(2).await;
    assert_eq!(texts(&again), ["dm 4", "dm 5"]);
    b.quiet(300).await;

    // A stale ack never moves a cursor backwards.
    b.ack(&dm_conversation, 1).await;
    b.ack(&dm_conversation, 5).await;
    b.send(json!({ "type": 99 })).await;
    assert_eq!(b.recv().await["type"], 99);
    drop(b);
    let mut b = s.connect(&bob).await;
    b.quiet(300).await;

    // Live traffic still flows after the backlog.
    a.send_to(bob.id, "live", "live-1").await;
    let live = b.recv().await;
    assert_eq!((live["content"]["text"].as_str(), live["seq"].as_u64()), (Some("live"), Some(6)));
}

#[tokio::test]
async fn unread_counts_and_history_are_per_member() {
    let s = Server::start().await;
    let (alice, bob, eve) = (s.user("alice").await, s.user("bob").await, s.user("eve").await);
    let mut a = s.connect(&alice).await;
    a.send_to(bob.id, "one", "h1").await;
    a.send_to(bob.id, "two", "h2").await;
    let (status, body) = s.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["conversations"][0]["unread"], 2, "{body}");
    let conversation = body["conversations"][0]["conversation_id"].as_str().unwrap().to_string();

    let (status, body) =
        s.get(&format!("/api/conversations/{conversation}/messages"), Some(&bob.token)).await;
    assert_eq!(status, 200);
    assert_eq!(seqs(body["messages"].as_array().unwrap()), [1, 2]);
    // Someone else's conversation is off limits.
    let (status, body) =
        s.get(&format!("/api/conversations/{conversation}/messages"), Some(&eve.token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let mut e = s.connect(&eve).await;
    e.ack(&conversation, 2).await;
    let refused = e.recv().await;
    assert_eq!(
        (refused["type"].as_i64(), refused["code"].as_str()),
        (Some(3), Some("forbidden")),
        "{refused}"
    );
    // Bob still has both unread: eve's ack did nothing.
    let (_, body) = s.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(body["conversations"][0]["unread"], 2, "{body}");
    let first = &body["conversations"][0];
    assert_eq!(
        (first["kind"].as_str(), first["user_id"].as_u64()),
        (Some("direct"), Some(alice.id)),
        "{body}"
    );
    assert_eq!(first["last_message"]["content"]["text"], "two", "{body}");

    // Delivered is not read: acked, both are still unread.
    let mut b = s.connect(&bob).await;
    assert_eq!(b.deliveries(2).await.len(), 2);
    b.ack(&conversation, 2).await;
    b.send(json!({ "type": 99 })).await;
    assert_eq!(b.recv().await["type"], 99);
    let (_, body) = s.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(body["conversations"][0]["unread"], 2, "{body}");
    // Once read, the conversation stays in the list with nothing unread.
    b.send(json!({ "type": 31, "conversation_id": conversation, "seq": 2 })).await;
    b.send(json!({ "type": 99 })).await;
    assert_eq!(b.recv().await["type"], 99);
    let (_, body) = s.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(body["conversations"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["conversations"][0]["unread"], 0, "{body}");
    // Eve, in no conversation, has an empty list.
    let (_, body) = s.get("/api/conversations", Some(&eve.token)).await;
    assert_eq!(body["conversations"], json!([]));

    // Names for ids, for showing who a conversation is with.
    let (status, body) =
        s.get(&format!("/api/users?ids={},{},999", alice.id, bob.id), Some(&eve.token)).await;
    assert_eq!(status, 200);
    let mut names: Vec<&str> =
        body["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(s.get("/api/users?ids=x", Some(&eve.token)).await.0, 400);
}

#[tokio::test]
async fn a_restart_keeps_users_groups_messages_and_cursors() {
    let mut s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let g = s.group(&alice, &[&bob]).await;
    {
        let mut a = s.connect(&alice).await;
        let mut b = s.connect(&bob).await;
        for i in 1..=3 {
            a.send_to(bob.id, &format!("before {i}"), &format!("b{i}")).await;
        }
        assert_eq!(a.send_group(g, "group before", "gb").await["type"], 30);
        let got = b.deliveries(4).await;
        let dm = got.iter().find(|f| f["type"] == 1).unwrap()["conversation_id"]
            .as_str()
            .unwrap()
            .to_string();
        b.ack(&dm, 2).await;
        b.send(json!({ "type": 99 })).await;
        assert_eq!(b.recv().await["type"], 99);
    }

    s.restart().await;

    // The old token still works (the key is kept), and so does login.
    let bob_again = s.login("bob").await;
    assert_eq!(bob_again.id, bob.id);
    let (status, body) = s.get(&format!("/api/groups/{g}/members"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["member_ids"], json!([alice.id, bob.id]));
    // Bob acked DMs up to 2 and nothing of the group.
    let mut b = s.connect(&bob_again).await;
    let got = b.deliveries(2).await;
    let mut got_texts = texts(&got);
    got_texts.sort();
    assert_eq!(got_texts, ["before 3", "group before"]);
    // Sequences continue where they stopped.
    let mut a = s.connect(&alice).await;
    assert_eq!(a.send_to(bob.id, "after", "a1").await["seq"], 4);
    assert_eq!(b.recv().await["seq"], 4);
    // Idempotency survives too.
    assert_eq!(a.send_to(bob.id, "before 1", "b1").await["duplicate"], true);
}
