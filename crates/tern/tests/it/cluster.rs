//! The distributed topology: every service its own process, two gateways,
//! Redis presence and Pub/Sub, MariaDB.

use crate::common;

use common::{cluster::Cluster, seqs, texts};
use serde_json::json;
use std::time::{Duration, Instant};
use tern_proto::pb::{
    group::{CreateGroupRequest, group_service_client::GroupServiceClient},
    message::{
        AttachmentAccess, CreateUploadRequest, EditRequest, GetAttachmentRequest, MarkReadRequest,
        RecallRequest, SendRequest, TypingRequest, message_service_client::MessageServiceClient,
        send_request::Target, typing_request::Target as TypingTarget,
    },
};
use tern_testkit::topology::Service;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn users_on_different_gateways_chat_and_groups_fan_out_once_per_node() {
    let c = Cluster::start(2).await;
    let (a, b, x, y) = (c.user("a").await, c.user("b").await, c.user("x").await, c.user("y").await);
    let (mut ca, mut cb) = (c.connect(0, &a).await, c.connect(0, &b).await);
    let (mut cx, mut cy) = (c.connect(1, &x).await, c.connect(1, &y).await);

    // 1:1 across nodes, both directions.
    ca.send_to(x.id, "a to x", "1").await;
    let got = cx.recv().await;
    assert_eq!(
        (got["from"].as_u64(), got["content"]["text"].as_str()),
        (Some(a.id), Some("a to x"))
    );
    cx.send_to(a.id, "x to a", "2").await;
    assert_eq!(ca.recv().await["content"]["text"], "x to a");

    // A group spanning both nodes: one event per node, not per member.
    let ids = [b.id, x.id, y.id];
    let (status, body) = c
        .post(0, "/api/groups", Some(&a.token), json!({ "name": "span", "member_ids": ids }))
        .await;
    assert_eq!(status, 201, "{body}");
    let g = body["group_id"].as_u64().unwrap();
    let before = (c.bus_events(0).await, c.bus_events(1).await);
    assert_eq!(ca.send_group(g, "hello everyone", "g1").await["seq"], 1);
    for client in [&mut cb, &mut cx, &mut cy] {
        let got = client.recv().await;
        assert_eq!(
            (got["type"].as_i64(), got["content"]["text"].as_str()),
            (Some(2), Some("hello everyone"))
        );
    }
    let after = (c.bus_events(0).await, c.bus_events(1).await);
    assert_eq!(after.0 - before.0, 1, "gw-1 holds b: one event");
    assert_eq!(after.1 - before.1, 1, "gw-2 holds x and y: still one event");
    // Stored once: the conversation has exactly one message.
    let r = reqwest::Client::new()
        .get(c.url(1, &format!("/api/conversations/group:{g}/messages")))
        .bearer_auth(&x.token)
        .send()
        .await
        .unwrap();
    let history: serde_json::Value = r.json().await.unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1, "{history}");

    // Typing indicators cross nodes the same way, and are never stored.
    cx.send(json!({ "type": 40, "group_id": g })).await;
    let told =
        json!({ "type": 40, "conversation_id": format!("group:{g}"), "from": x.id, "group_id": g });
    for client in [&mut ca, &mut cb, &mut cy] {
        assert_eq!(client.recv().await, told);
    }
    ca.send(json!({ "type": 40, "to": y.id })).await;
    let dm = format!("dm:{}:{}", a.id.min(y.id), a.id.max(y.id));
    assert_eq!(cy.recv().await, json!({ "type": 40, "conversation_id": dm, "from": a.id }));

    // Read markers too: x on gw-2 reads the group message, nobody is told
    // (a group), and a on gw-1 sees the count.
    cx.send(json!({ "type": 31, "conversation_id": format!("group:{g}"), "seq": 1 })).await;
    cx.quiet(200).await;
    let (_, reads) = c.get_as(0, &format!("/api/conversations/group:{g}/reads"), &a.token).await;
    assert_eq!(reads["reads"][0], json!({ "seq": 1, "members": 1 }), "{reads}");
    assert_eq!(ca.send_group(g, "still one more", "g2").await["seq"], 2);
    for client in [&mut cb, &mut cx, &mut cy] {
        assert_eq!(client.recv().await["seq"], 2);
    }
    for client in [&mut ca, &mut cb, &mut cx, &mut cy] {
        client.quiet(200).await;
    }

    // Presence crosses nodes: a on gw-1 sees y on gw-2 online, and when x
    // (gw-2) leaves, a, its 1:1 contact, is told; b and y, who share only
    // the group with x, are not.
    let (_, presence) = c.get_as(0, &format!("/api/presence?ids={}", y.id), &a.token).await;
    assert_eq!(presence["presence"], json!([{ "user_id": y.id, "online": true }]));
    for client in [&mut ca, &mut cb, &mut cy] {
        client.watch_presence();
    }
    drop(cx);
    let news = ca.recv().await;
    assert_eq!((news["type"].as_i64(), news["user_id"].as_u64()), (Some(50), Some(x.id)), "{news}");
    assert_eq!(news["online"], false);
    for client in [&mut cb, &mut cy] {
        client.quiet(200).await;
    }
}

#[tokio::test]
async fn a_user_moving_between_gateways_is_kicked_on_the_old_node_and_loses_nothing() {
    // The single-session policy: a new session anywhere ends the old one.
    let c = Cluster::start_with(2, &[("TERN__GATEWAY__SINGLE_SESSION", "true")]).await;
    let (a, b) = (c.user("a").await, c.user("b").await);
    let mut ca = c.connect(0, &a).await;
    let mut old = c.connect(0, &b).await;
    ca.send_to(b.id, "one", "1").await;
    assert_eq!(old.recv().await["content"]["text"], "one");

    // b reconnects through the other gateway without acking: the old
    // session on gw-1 is told and closed.
    let mut new = c.connect_raw(1, &b).await;
    // The kick proves the new session is registered before "two" is sent.
    let kicked = old.recv().await;
    assert_eq!(kicked["type"], 100, "{kicked}");
    assert_eq!(old.closed().await.code, 4001);
    // b never went offline: a, b's 1:1 contact, hears nothing of the move.
    ca.watch_presence();
    ca.quiet(300).await;
    ca.send_to(b.id, "two", "2").await;
    // The new session gets the unacked "one" by sync and "two" live;
    // deduplicated by message id, nothing is missing or doubled.
    let got = new.deliveries(2).await;
    assert_eq!(texts(&got), ["one", "two"]);
    new.quiet(300).await;
}

#[tokio::test]
async fn devices_on_different_gateways_each_get_everything_and_the_limit_holds_across_nodes() {
    let c = Cluster::start_with(2, &[("TERN__GATEWAY__MAX_SESSIONS", "2")]).await;
    let (a, b) = (c.user("a").await, c.user("b").await);
    let mut phone = c.connect_device(0, &a, "phone").await;
    let mut laptop = c.connect_device(1, &a, "laptop").await;
    let mut cb = c.connect_device(1, &b, "b").await;

    cb.send_to(a.id, "hi both", "b1").await;
    for device in [&mut phone, &mut laptop] {
        assert_eq!(device.recv().await["content"]["text"], "hi both");
    }
    // The phone's message reaches b and, on the other gateway, the laptop.
    phone.send_to(b.id, "from the phone", "p1").await;
    for device in [&mut laptop, &mut cb] {
        let got = device.recv().await;
        assert_eq!((got["seq"].as_u64(), got["from"].as_u64()), (Some(2), Some(a.id)), "{got}");
    }
    phone.quiet(300).await;

    // A third session (on gw-2) closes the oldest, the phone on gw-1.
    let mut tablet = c.connect_device_raw(1, &a, "tablet").await;
    let kicked = phone.recv().await;
    assert_eq!(kicked["type"], 100, "{kicked}");
    assert_eq!(phone.closed().await.code, 4001);
    // The tablet is new: its cursor starts at the read marker (nothing was
    // read), so it gets the conversation so far, then what comes live.
    assert_eq!(seqs(&tablet.deliveries(2).await), [1, 2]);
    cb.send_to(a.id, "after the kick", "b2").await;
    for device in [&mut laptop, &mut tablet] {
        assert_eq!(device.recv().await["content"]["text"], "after the kick");
    }
}

#[tokio::test]
async fn a_logout_on_one_gateway_revokes_the_token_on_every_gateway() {
    let c = Cluster::start(2).await;
    let a = c.user("a").await;
    let creds = json!({ "username": "a", "password": "correct horse" });
    let (status, login) = c.post(1, "/api/login", None, creds).await;
    assert_eq!(status, 200, "{login}");
    let (token, refresh) = (login["token"].as_str().unwrap(), login["refresh_token"].as_str());
    // gw-1 checks tokens itself: these calls cache a's revocation watermark.
    assert_eq!(c.get_as(0, "/api/groups", token).await.0, 200);
    assert_eq!(c.get_as(0, "/api/groups", &a.token).await.0, 200);
    let mut socket = c.connect(0, &a).await;

    // The logout goes through gw-2, which asks the auth service; the auth
    // service broadcasts it, and gw-1 drops what it cached.
    let (status, body) =
        c.post(1, "/api/logout", Some(token), json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(socket.recv().await["type"], 100);
    for gateway in [0, 1] {
        for old in [token, a.token.as_str()] {
            let (status, body) = c.get_as(gateway, "/api/groups", old).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("unauthenticated")),
                "gw-{} accepted a revoked token: {body}",
                gateway + 1
            );
        }
        assert!(tokio_tungstenite::connect_async(c.ws_url(gateway, &a.token)).await.is_err());
    }
    // A new login works on both at once.
    let again = c.user_login(1, "a").await;
    assert_eq!(c.get_as(0, "/api/groups", &again.token).await.0, 200);
    assert_eq!(c.get_as(1, "/api/groups", &again.token).await.0, 200);
}

#[tokio::test]
async fn a_restarted_gateway_knows_earlier_logouts_without_asking_the_auth_service() {
    // gw-1 checks tokens itself.
    let mut c = Cluster::start(1).await;
    let (a, b) = (c.user("a").await, c.user("b").await);
    let creds = json!({ "username": "a", "password": "correct horse" });
    let (status, login) = c.post(0, "/api/login", None, creds).await;
    assert_eq!(status, 200, "{login}");
    let (token, refresh) = (login["token"].as_str().unwrap(), login["refresh_token"].as_str());
    let (status, body) =
        c.post(0, "/api/logout", Some(token), json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{body}");
    let again = c.user_login(0, "a").await;

    // The new node hears no logout that came before it: it lists them
    // from the auth service as it starts, and needs it no more after.
    c.gateways[0].kill();
    c.gateways[0].start().unwrap();
    c.wait_ready(0).await.unwrap();
    c.service(Service::Auth).kill();
    for old in [token, a.token.as_str()] {
        let (status, body) = c.get_as(0, "/api/groups", old).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
    }
    for valid in [&again, &b] {
        let (status, body) = c.get_as(0, "/api/groups", &valid.token).await;
        assert_eq!(status, 200, "a token issued before the node started was not trusted: {body}");
    }
    // A socket opens too (the heartbeat's answer proves it).
    c.connect(0, &again).await;
}

#[tokio::test]
async fn messages_for_users_of_a_killed_gateway_wait_for_them() {
    let mut c = Cluster::start(2).await;
    let (a, b) = (c.user("a").await, c.user("b").await);
    let mut ca = c.connect(0, &a).await;
    let mut cb = c.connect(1, &b).await;
    ca.send_to(b.id, "before", "1").await;
    assert_eq!(cb.recv().await["content"]["text"], "before");
    cb.ack(cb_conversation(a.id, b.id).as_str(), 1).await;
    // The ack is written behind (within `ack_flush_ms`); the other node sees
    // it once it is stored. Only then is "before" no longer owed to b.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = c.get_as(0, "/api/conversations", &b.token).await;
        assert_eq!(status, 200, "{body}");
        if body["conversations"][0]["acked_seq"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "ack never stored: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    c.gateways[1].kill();
    // Sent while b's presence still names the dead node: stored and acked.
    for (i, text) in ["during 1", "during 2"].iter().enumerate() {
        let ack = ca.send_to(b.id, text, &format!("d{i}")).await;
        assert_eq!(ack["type"], 30);
    }
    // b comes back through the surviving gateway and gets both, in order.
    let mut cb = c.connect_raw(0, &b).await;
    let got = cb.deliveries(2).await;
    assert_eq!(texts(&got), ["during 1", "during 2"]);
    // Live routing now targets gw-1.
    ca.send_to(b.id, "after", "3").await;
    assert_eq!(cb.recv().await["content"]["text"], "after");
}

fn cb_conversation(a: u64, b: u64) -> String {
    format!("dm:{}:{}", a.min(b), a.max(b))
}

#[tokio::test]
async fn a_backend_drives_the_services_directly() {
    let c = Cluster::start(2).await;
    let (a, b) = (c.user("a").await, c.user("b").await);
    let mut ca = c.connect(0, &a).await;
    let mut cb = c.connect(1, &b).await;
    let mut groups = GroupServiceClient::with_interceptor(
        common::channel(&c.grpc_url(Service::Group)).await,
        common::with_token,
    );
    let group = groups
        .create_group(CreateGroupRequest {
            owner_id: a.id,
            name: "ops".into(),
            member_ids: vec![b.id],
        })
        .await
        .unwrap()
        .into_inner();
    let mut messages = MessageServiceClient::with_interceptor(
        common::channel(&c.grpc_url(Service::Message)).await,
        common::with_token,
    );
    messages
        .send(SendRequest {
            sender_id: 0,
            client_msg_id: "deploy-1".into(),
            target: Some(Target::GroupId(group.group_id)),
            content_json: r#"{"text":"deploy at 5"}"#.into(),
            system: true,
            kind: 0,
            device: String::new(),
        })
        .await
        .unwrap();
    for client in [&mut ca, &mut cb] {
        let got = client.recv().await;
        assert_eq!(
            (got["from"].as_u64(), got["content"]["text"].as_str()),
            (Some(0), Some("deploy at 5"))
        );
    }
    // Typing over gRPC: a member's indicator reaches the other member; a
    // stranger's is refused with PERMISSION_DENIED.
    let typing = |sender_id| TypingRequest {
        sender_id,
        target: Some(TypingTarget::GroupId(group.group_id)),
    };
    let answer = messages.typing(typing(a.id)).await.unwrap().into_inner();
    assert_eq!(answer.conversation_id, format!("group:{}", group.group_id));
    assert_eq!(cb.recv().await["type"], 40);
    let stranger = c.user("stranger").await;
    let refused = messages.typing(typing(stranger.id)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Read markers over gRPC: b's (on gw-2) reaches a on gw-1 for a 1:1
    // conversation; a stranger's is refused.
    let dm = cb_conversation(a.id, b.id);
    messages
        .send(SendRequest {
            sender_id: a.id,
            client_msg_id: "dm-1".into(),
            target: Some(Target::ToUserId(b.id)),
            content_json: r#"{"text":"read me"}"#.into(),
            system: false,
            kind: 0,
            device: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(cb.recv().await["conversation_id"], dm.as_str());
    let read = |user_id| MarkReadRequest {
        user_id,
        conversation_id: dm.clone(),
        seq: 1,
        origin_session_id: String::new(),
    };
    assert_eq!(messages.mark_read(read(b.id)).await.unwrap().into_inner().read_seq, 1);
    let told = ca.recv().await;
    assert_eq!(told, json!({ "type": 31, "conversation_id": dm, "user_id": b.id, "seq": 1 }));
    // The call came from no session of b's, so b's session is told too.
    assert_eq!(cb.recv().await, told);
    let refused = messages.mark_read(read(stranger.id)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Edits and recalls over gRPC: b on gw-2 gets each as an entry of its
    // own; a stranger's recall and b's recall of a's message are refused.
    let edited = messages
        .edit(EditRequest {
            user_id: a.id,
            conversation_id: dm.clone(),
            seq: 1,
            content_json: r#"{"text":"read this"}"#.into(),
            client_msg_id: "edit-1".into(),
            device: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edited.seq, 2);
    let got = cb.recv().await;
    assert_eq!((got["kind"].as_str(), got["ref_seq"].as_u64()), (Some("edit"), Some(1)), "{got}");
    let recall = |user_id| RecallRequest {
        user_id,
        conversation_id: dm.clone(),
        seq: 1,
        client_msg_id: format!("recall-{user_id}"),
        device: String::new(),
        system: false,
    };
    for (user, code) in
        [(stranger.id, tonic::Code::PermissionDenied), (b.id, tonic::Code::PermissionDenied)]
    {
        let refused = messages.recall(recall(user)).await.unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
    }
    assert_eq!(messages.recall(recall(a.id)).await.unwrap().into_inner().seq, 3);
    assert_eq!(cb.recv().await["kind"], "recall");
    ca.quiet(200).await;
}

#[tokio::test]
async fn services_report_draining_and_gateways_report_missing_dependencies() {
    let mut c = Cluster::start(1).await;
    let channel = tonic::transport::Channel::from_shared(c.grpc_url(Service::Message))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest { service: "tern.message.v1.MessageService".into() };
    let status = health.check(check.clone()).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // SIGTERM: NOT_SERVING while it drains (2 s here), then it exits.
    c.message.signal("TERM", false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = health.check(check.clone()).await.unwrap().into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "never reported NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.message.exited() {
        assert!(Instant::now() < deadline, "message service did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // With the message service gone the gateway is alive but not ready.
    assert_eq!(c.get(0, "/health").await.0, 200);
    let (status, body) = c.get(0, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("message"), "{body}");
}

#[tokio::test]
async fn attachments_go_straight_to_s3_and_any_gateway_hands_them_out() {
    let s3 = common::s3::S3::start().await;
    let env = s3.env();
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let c = Cluster::start_with(2, &extra).await;
    let (alice, bob) = (c.user("alice").await, c.user("bob").await);
    let conversation = format!("dm:{}:{}", alice.id.min(bob.id), alice.id.max(bob.id));
    let mut b = c.connect(1, &bob).await.registered().await;
    let mut a = c.connect(0, &alice).await.registered().await;

    // An internal backend starts the upload over gRPC; the URL is the store's.
    let mut messages = MessageServiceClient::with_interceptor(
        common::channel(&c.grpc_url(Service::Message)).await,
        common::with_token,
    );
    let created = messages
        .create_upload(CreateUploadRequest {
            user_id: alice.id,
            conversation_id: conversation.clone(),
            name: "notes.txt".into(),
            size: 11,
            content_type: "text/plain".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.upload_url.contains("X-Amz-Signature="), "{}", created.upload_url);
    let put = reqwest::Client::new().put(&created.upload_url).body("hello world").send().await;
    assert_eq!(put.unwrap().status().as_u16(), 200);
    let id = created.attachment.unwrap().attachment_id;

    // Completed through gateway 2, sent through gateway 1, fetched through 2.
    let (status, done) =
        c.post(1, &format!("/api/attachments/{id}/complete"), Some(&alice.token), json!({})).await;
    assert_eq!((status, done["content_type"].as_str()), (200, Some("text/plain")), "{done}");
    a.send(json!({ "type": 1, "to": bob.id, "client_msg_id": "f1",
                   "content": { "attachment": { "id": id } } }))
        .await;
    assert_eq!(a.recv().await["type"], 30);
    let delivered = b.recv().await;
    assert_eq!(delivered["content"]["attachment"]["name"], "notes.txt", "{delivered}");
    let (status, got) = c.get_as(1, &format!("/api/attachments/{id}"), &bob.token).await;
    assert_eq!(status, 200, "{got}");
    let bytes = reqwest::get(got["download_url"].as_str().unwrap()).await.unwrap();
    assert_eq!(bytes.text().await.unwrap(), "hello world");

    // The same refusal over gRPC as over HTTP: a non-member may not download.
    let carol = c.user("carol").await;
    let refused = messages
        .get_attachment(GetAttachmentRequest {
            user_id: carol.id,
            attachment_id: id.clone(),
            access: AttachmentAccess::Download as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}
