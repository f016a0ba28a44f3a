//! The gRPC contracts as an internal backend uses them: a plain tonic
//! client, no gateway, against a real `tern` process.

use crate::common;

use common::{Server, texts};
use tern_proto::{
    ErrorCode, error_code_of,
    pb::{
        auth::{
            RevokeUserRequest, SetBannedRequest, VerifyTokenRequest,
            auth_service_client::AuthServiceClient,
        },
        group::{CreateGroupRequest, group_service_client::GroupServiceClient},
        message::{
            GetConversationStatesRequest, MessageKind, PageGroup, SendRequest,
            message_service_client::MessageServiceClient, send_request::Target,
        },
        offline::{
            Backlog, ListBacklogRequest, ListBacklogResponse, ListBacklogsRequest, MarkReadRequest,
            offline_service_client::OfflineServiceClient,
        },
    },
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_backend_creates_a_group_and_sends_a_system_message() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = Server::start_with(&[
        ("TERN__GRPC_ADDR", addr.as_str()),
        ("TERN__SERVICE_TOKEN", common::SERVICE_TOKEN),
    ])
    .await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut b = s.connect(&bob).await;
    let url = format!("http://{addr}");

    let channel =
        tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "tern.auth.v1.AuthService",
        "tern.group.v1.GroupService",
        "tern.message.v1.MessageService",
        "tern.offline.v1.OfflineService",
    ] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }

    // Without the service credential nothing but health answers.
    let mut anonymous = GroupServiceClient::new(common::channel(&url).await);
    let refused = anonymous
        .create_group(CreateGroupRequest {
            owner_id: alice.id,
            name: "x".into(),
            member_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let mut groups =
        GroupServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    let group = groups
        .create_group(CreateGroupRequest {
            owner_id: alice.id,
            name: "announcements".into(),
            member_ids: vec![bob.id],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(group.member_ids, vec![alice.id, bob.id]);

    let mut messages =
        MessageServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    let system = SendRequest {
        sender_id: 0,
        client_msg_id: "maintenance-1".into(),
        target: Some(Target::GroupId(group.group_id)),
        content_json: r#"{"text":"maintenance at noon"}"#.into(),
        system: true,
        kind: 0,
        device: String::new(),
    };
    let sent = messages.send(system.clone()).await.unwrap().into_inner();
    assert!(!sent.duplicate);
    assert_eq!(sent.message.as_ref().unwrap().seq, 1);
    let got = b.recv().await;
    assert_eq!((got["type"].as_i64(), got["from"].as_u64()), (Some(2), Some(0)), "{got}");
    assert_eq!(texts(&[got]), ["maintenance at noon"]);
    // The backend's retry is deduplicated like a client's.
    assert!(messages.send(system).await.unwrap().into_inner().duplicate);
    b.quiet(200).await;

    // Errors carry the stable code.
    let refused = messages
        .send(SendRequest {
            sender_id: 424242,
            client_msg_id: "x".into(),
            target: Some(Target::GroupId(group.group_id)),
            content_json: "1".into(),
            system: false,
            kind: 0,
            device: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code_of(&refused), ErrorCode::NotMember);
    // Membership entries are the group service's: no one else writes them.
    let forged = SendRequest {
        sender_id: alice.id,
        client_msg_id: "forged".into(),
        target: Some(Target::GroupId(group.group_id)),
        content_json: r#"{"change":"left","user_ids":[2],"by":2}"#.into(),
        system: false,
        kind: MessageKind::Membership as i32,
        device: String::new(),
    };
    let refused = messages.send(forged).await.unwrap_err();
    assert_eq!(error_code_of(&refused), ErrorCode::BadRequest, "{refused:?}");
    let mut auth =
        AuthServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    let refused =
        auth.verify_token(VerifyTokenRequest { access_token: "nope".into() }).await.unwrap_err();
    assert_eq!(error_code_of(&refused), ErrorCode::Unauthenticated);
    assert_eq!(
        auth.verify_token(VerifyTokenRequest { access_token: bob.token.clone() })
            .await
            .unwrap()
            .into_inner()
            .user_id,
        bob.id
    );

    // A backend bans and unbans with the service token; a call without it
    // is refused and changes nothing.
    let ban = SetBannedRequest { user_id: bob.id, banned: true };
    let mut anonymous = AuthServiceClient::new(common::channel(&url).await);
    let refused = anonymous.set_banned(ban).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = anonymous.revoke_user(RevokeUserRequest { user_id: bob.id }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(s.get("/api/groups", Some(&bob.token)).await.0, 200);
    let banned = auth.set_banned(ban).await.unwrap().into_inner();
    assert!(banned.banned_at_ms > 0);
    assert_eq!(b.recv().await["type"], 100, "bob's session is closed");
    let login = serde_json::json!({ "username": "bob", "password": "correct horse" });
    let (status, body) = s.post("/api/login", None, login.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let refused = auth.set_banned(SetBannedRequest { user_id: 999_999, banned: true }).await;
    assert_eq!(error_code_of(&refused.unwrap_err()), ErrorCode::UnknownUser);
    auth.set_banned(SetBannedRequest { user_id: bob.id, banned: false }).await.unwrap();
    assert_eq!(s.post("/api/login", None, login).await.0, 200);
}

/// A server with its gRPC port open, and that port's URL.
async fn with_grpc() -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let s = Server::start_with(&[
        ("TERN__GRPC_ADDR", addr.as_str()),
        ("TERN__SERVICE_TOKEN", common::SERVICE_TOKEN),
    ])
    .await;
    (s, format!("http://{addr}"))
}

/// A text from `from` to `to`, to send over gRPC.
fn text(from: u64, to: u64, id: String) -> SendRequest {
    SendRequest {
        sender_id: from,
        content_json: format!(r#"{{"text":"{id}"}}"#),
        client_msg_id: id,
        target: Some(Target::ToUserId(to)),
        system: false,
        kind: 0,
        device: String::new(),
    }
}

/// A device's cursor in a conversation it has no row for starts at the
/// read marker, unless the caller (a gateway writing acks behind) names an
/// ack of that device not written yet: then it starts there, and the
/// device is sent what it was sent before but did not acknowledge.
#[tokio::test]
async fn a_device_without_a_cursor_starts_at_its_unwritten_ack_not_the_read_marker() {
    let (s, url) = with_grpc().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut messages =
        MessageServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    for n in 1..=3 {
        messages.send(text(bob.id, alice.id, format!("b{n}"))).await.unwrap();
    }
    let dm = format!("dm:{}:{}", alice.id.min(bob.id), alice.id.max(bob.id));
    let mut offline =
        OfflineServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    let read = MarkReadRequest { user_id: alice.id, conversation_id: dm.clone(), seq: 3 };
    offline.mark_read(read).await.unwrap();
    let listing = |device: &str, unwritten: Option<u64>| {
        let request = ListBacklogRequest {
            user_id: alice.id,
            include_read: true,
            device: device.into(),
            page: 10,
            unwritten_acks: unwritten.map(|seq| (dm.clone(), seq)).into_iter().collect(),
        };
        let mut offline = offline.clone();
        async move { offline.list_backlog(request).await.unwrap().into_inner().conversations }
    };
    let seqs = |b: &Backlog| b.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    // A device that never acked anything here starts at the read marker.
    let watch = listing("watch", None).await;
    assert_eq!((watch[0].acked_seq, seqs(&watch[0])), (3, vec![]));
    // One whose ack of seq 1 is still on its way starts there, and the
    // pin sticks: the next listing, without it, agrees.
    let laptop = listing("laptop", Some(1)).await;
    assert_eq!((laptop[0].acked_seq, seqs(&laptop[0])), (1, vec![2, 3]));
    let laptop = listing("laptop", None).await;
    assert_eq!((laptop[0].acked_seq, seqs(&laptop[0])), (1, vec![2, 3]));
}

/// `ListBacklogs` answers each listing as `ListBacklog` would answer it
/// alone: its own page budget, a device's pins made once when it is listed
/// twice in one call, a user without conversations listed empty; and
/// `GetConversationStates` pages each group within its own limit.
#[tokio::test]
async fn many_backlogs_in_one_call_answer_as_each_listing_alone_would() {
    let (s, url) = with_grpc().await;
    let (alice, bob, carol) = (s.user("alice").await, s.user("bob").await, s.user("carol").await);
    let mut messages =
        MessageServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    for (from, to, n) in [(&bob, &alice, 3), (&carol, &alice, 2), (&alice, &bob, 1)] {
        for i in 0..n {
            let id = format!("{}-{}-{i}", from.id, to.id);
            messages.send(text(from.id, to.id, id)).await.unwrap();
        }
    }
    let mut offline =
        OfflineServiceClient::with_interceptor(common::channel(&url).await, common::with_token);
    let listing = |user: u64, device: &str, page: u32| ListBacklogRequest {
        user_id: user,
        include_read: false,
        device: device.into(),
        page,
        unwritten_acks: Default::default(),
    };
    let requests = vec![
        listing(alice.id, "", 10),
        listing(alice.id, "phone", 2),
        listing(bob.id, "", 10),
        listing(alice.id, "phone", 2),
        listing(carol.id, "", 0),
        listing(999_999, "", 10),
    ];
    let batch = ListBacklogsRequest { requests: requests.clone() };
    let answers = offline.list_backlogs(batch).await.unwrap().into_inner().answers;
    assert_eq!(answers.len(), requests.len());
    let carried = |b: &ListBacklogResponse| b.conversations.iter().map(|c| c.messages.len()).sum();
    let totals: Vec<usize> = answers.iter().map(carried).collect();
    assert_eq!(totals, vec![6, 2, 4, 2, 0, 0], "each listing has its own page: {answers:?}");
    assert_eq!(answers[1], answers[3], "one device listed twice");
    assert_eq!(answers[4].conversations.len(), 1, "carol's own messages, not paged");
    assert!(answers[5].conversations.is_empty(), "a user in no conversation");
    for (request, answer) in requests.into_iter().zip(&answers) {
        let alone = offline.list_backlog(request).await.unwrap().into_inner();
        assert_eq!(&alone, answer);
    }

    let too_many = vec![listing(alice.id, "", 1); 1_001];
    let refused = offline.list_backlogs(ListBacklogsRequest { requests: too_many }).await;
    assert_eq!(error_code_of(&refused.unwrap_err()), ErrorCode::BadRequest);
    let malformed = ListBacklogsRequest { requests: vec![listing(alice.id, "bad device!", 1)] };
    let refused = offline.list_backlogs(malformed).await;
    assert_eq!(error_code_of(&refused.unwrap_err()), ErrorCode::BadRequest);

    let dm = |a: u64, b: u64| format!("dm:{}:{}", a.min(b), a.max(b));
    let (ab, ac) = (dm(alice.id, bob.id), dm(alice.id, carol.id));
    let states = |groups: Vec<PageGroup>| GetConversationStatesRequest {
        conversation_ids: vec![ab.clone(), ac.clone(), ab.clone()],
        after_seqs: vec![0, 0, 1],
        limit: 0,
        groups,
    };
    let group = |size, limit| PageGroup { size, limit };
    let answer = messages.get_conversation_states(states(vec![group(2, 5), group(1, 1)])).await;
    let pages: Vec<(u64, Vec<u64>)> = answer
        .unwrap()
        .into_inner()
        .states
        .iter()
        .map(|s| (s.latest_seq, s.messages.iter().map(|m| m.seq).collect()))
        .collect();
    assert_eq!(pages, vec![(4, vec![1, 2, 3, 4]), (2, vec![1]), (4, vec![2])]);
    let refused = messages.get_conversation_states(states(vec![group(2, 5)])).await;
    assert_eq!(error_code_of(&refused.unwrap_err()), ErrorCode::BadRequest);
}
