//! The HTTP API against a real `tern` process.

use crate::common;

use common::Server;

use serde_json::json;

#[tokio::test]
async fn register_and_login() {
    let s = Server::start().await;
    let (status, body) = s
        .post("/api/register", None, json!({ "username": "alice", "password": "correct horse" }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["username"], "alice");
    let id = body["user_id"].as_u64().unwrap();

    let (status, body) = s
        .post("/api/login", None, json!({ "username": "alice", "password": "correct horse" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], id);
    assert!(body["token"].as_str().unwrap().split('.').count() == 3, "a JWT: {body}");
    assert!(body["expires_in"].as_u64().unwrap() > 0);

    // The refresh token buys a new pair once.
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    let (status, again) = s.post("/api/refresh", None, json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], id);
    let (status, body) = s.post("/api/refresh", None, json!({ "refresh_token": refresh })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
}

#[tokio::test]
async fn credential_errors_have_the_right_status() {
    let s = Server::start().await;
    s.user("bob").await;
    let cases = [
        (
            "/api/register",
            json!({ "username": "bob", "password": "another pass" }),
            409,
            "conflict",
        ),
        (
            "/api/login",
            json!({ "username": "bob", "password": "wrong password" }),
            401,
            "unauthenticated",
        ),
        (
            "/api/login",
            json!({ "username": "nobody", "password": "whatever1" }),
            401,
            "unauthenticated",
        ),
        ("/api/register", json!({ "username": "", "password": "password1" }), 400, "bad_request"),
        ("/api/register", json!({ "username": "carol", "password": "" }), 400, "bad_request"),
        (
            "/api/register",
            json!({ "username": "x".repeat(33), "password": "password1" }),
            400,
            "bad_request",
        ),
        (
            "/api/register",
            json!({ "username": "carol", "password": "p".repeat(73) }),
            400,
            "bad_request",
        ),
        (
            "/api/register",
            json!({ "username": "has space", "password": "password1" }),
            400,
            "bad_request",
        ),
        ("/api/register", json!({ "username": "carol" }), 400, "bad_request"),
        ("/api/login", json!({ "username": "", "password": "" }), 400, "bad_request"),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, answer) = s.post(path, None, body.clone()).await;
        assert_eq!(status, want_status, "{path} {body} → {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{path} {body} → {answer}");
    }
    // Not JSON at all.
    let r = s.http.post(s.url("/api/register")).body("{nope").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The failed attempts created nothing: carol can still register.
    let (status, _) = s
        .post("/api/register", None, json!({ "username": "carol", "password": "password1" }))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn groups_over_http() {
    let s = Server::start().await;
    let (a, b, c) = (s.user("a").await, s.user("b").await, s.user("c").await);

    let (status, body) =
        s.post("/api/groups", None, json!({ "name": "g", "member_ids": [] })).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s
        .post("/api/groups", Some(&a.token), json!({ "name": "g", "member_ids": [b.id, 9999] }))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_user")), "{body}");
    let (status, body) =
        s.post("/api/groups", Some(&a.token), json!({ "name": "", "member_ids": [] })).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = s
        .post("/api/groups", Some(&a.token), json!({ "name": "team", "member_ids": [b.id] }))
        .await;
    assert_eq!(status, 201, "{body}");
    let g = body["group_id"].as_u64().unwrap();
    assert_eq!(body["owner_id"], a.id);
    assert_eq!(body["member_ids"], json!([a.id, b.id]));

    // Members are visible to members only.
    let (status, body) = s.get(&format!("/api/groups/{g}/members"), Some(&c.token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_member")), "{body}");
    let (status, body) = s.post(&format!("/api/groups/{g}/join"), Some(&c.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get(&format!("/api/groups/{g}/members"), Some(&c.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["member_ids"], json!([a.id, b.id, c.id]));

    let (status, body) = s.post("/api/groups/424242/join", Some(&c.token), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_group")), "{body}");
    let (status, _) = s.post(&format!("/api/groups/{g}/leave"), Some(&a.token), json!({})).await;
    assert_eq!(status, 403, "the owner cannot leave");
    let (status, body) = s.post(&format!("/api/groups/{g}/leave"), Some(&b.token), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["member_ids"], json!([a.id, c.id]));
}

#[tokio::test]
async fn health_stats_and_unknown_routes() {
    let s = Server::start().await;
    assert_eq!(s.get("/health", None).await.0, 200);
    assert_eq!(s.get("/ready", None).await.0, 200);
    let (status, stats) = s.get("/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["node_id"], "local");
    assert_eq!(stats["connections"], 0);
    let (status, body) = s.get("/api/nope", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    // The conformance echo endpoint is off unless configured.
    assert_eq!(s.get("/ws/echo", None).await.0, 404);
    // Wrong method, malformed path id or query: still our error shape.
    let (status, body) = s.get("/api/register", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some("bad_request")), "{body}");
    let alice = s.user("alice").await;
    let (status, body) =
        s.post("/api/groups/abc/join", Some(&alice.token), serde_json::json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) =
        s.get("/api/conversations/dm:1:2/messages?after_seq=x", Some(&alice.token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
}

#[tokio::test]
async fn the_demo_page_is_served_at_the_root() {
    let s = Server::start().await;
    let r = s.http.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains("new WebSocket("), "the page speaks the WebSocket protocol");
}

#[tokio::test]
async fn a_reused_refresh_token_ends_the_whole_login() {
    let s = Server::start().await;
    s.user("alice").await;
    let (_, login) = s
        .post("/api/login", None, json!({ "username": "alice", "password": "correct horse" }))
        .await;
    let first = login["refresh_token"].as_str().unwrap().to_string();
    let (status, second) = s.post("/api/refresh", None, json!({ "refresh_token": first })).await;
    assert_eq!(status, 200);
    let second = second["refresh_token"].as_str().unwrap().to_string();
    // The spent token comes back (a thief, or the owner after theft) ...
    let (status, _) = s.post("/api/refresh", None, json!({ "refresh_token": first })).await;
    assert_eq!(status, 401);
    // ... and the newer token of the same login is dead too.
    let (status, _) = s.post("/api/refresh", None, json!({ "refresh_token": second })).await;
    assert_eq!(status, 401);
    // Another login of the same user is unaffected.
    let (_, other) = s
        .post("/api/login", None, json!({ "username": "alice", "password": "correct horse" }))
        .await;
    let (status, _) =
        s.post("/api/refresh", None, json!({ "refresh_token": other["refresh_token"] })).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn logout_revokes_tokens_and_closes_sockets() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let eve = s.user("eve").await;
    let (_, login) = s
        .post("/api/login", None, json!({ "username": "alice", "password": "correct horse" }))
        .await;
    let token = login["token"].as_str().unwrap().to_string();
    let refresh = login["refresh_token"].as_str().unwrap().to_string();
    let mut socket = s.connect(&common::User { id: alice.id, token: token.clone() }).await;
    socket.send(json!({ "type": 99 })).await;
    assert_eq!(socket.recv().await["type"], 99);
    // Another device, signed in with another token of hers.
    let mut tablet = s.connect_device(&alice, "tablet").await;

    // Someone else cannot end alice's login with her refresh token.
    let (status, _) =
        s.post("/api/logout", Some(&eve.token), json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 401);

    let (status, body) =
        s.post("/api/logout", Some(&token), json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{body}");
    // The logout ends every session of hers.
    for socket in [&mut socket, &mut tablet] {
        let kicked = socket.recv().await;
        assert_eq!(
            (kicked["type"].as_i64(), kicked["content"]["reason"].as_str()),
            (Some(100), Some("logged out"))
        );
        assert_eq!(socket.closed().await.code, 4001);
    }
    // Old access tokens, the refresh token, and new sockets are refused.
    assert_eq!(s.get("/api/groups", Some(&token)).await.0, 401);
    assert_eq!(s.get("/api/groups", Some(&alice.token)).await.0, 401);
    assert_eq!(s.post("/api/refresh", None, json!({ "refresh_token": refresh })).await.0, 401);
    assert!(tokio_tungstenite::connect_async(s.ws_url(&token)).await.is_err());
    // Logging in again works at once.
    let again = s.login("alice").await;
    assert_eq!(s.get("/api/groups", Some(&again.token)).await.0, 200);
}

#[tokio::test]
async fn only_the_owner_manages_members() {
    let s = Server::start().await;
    let (owner, member, outsider, newcomer) = (
        s.user("owner").await,
        s.user("member").await,
        s.user("outsider").await,
        s.user("newcomer").await,
    );
    let (_, group) = s
        .post("/api/groups", Some(&owner.token), json!({ "name": "g", "member_ids": [member.id] }))
        .await;
    let g = group["group_id"].as_u64().unwrap();
    let members = format!("/api/groups/{g}/members");

    // Neither a member nor an outsider may add or remove.
    for who in [&member, &outsider] {
        let (status, body) =
            s.post(&members, Some(&who.token), json!({ "member_ids": [newcomer.id] })).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
        let (status, _) = s.delete(&format!("{members}/{}", member.id), Some(&who.token)).await;
        assert_eq!(status, 403);
    }
    // The owner may.
    let (status, body) =
        s.post(&members, Some(&owner.token), json!({ "member_ids": [newcomer.id] })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["member_ids"], json!([owner.id, member.id, newcomer.id]));
    let mut removed = s.connect(&member).await;
    // The addition is the group's first entry, which the member is sent.
    let added = removed.recv().await;
    assert_eq!(
        (added["kind"].as_str(), added["content"]["change"].as_str()),
        (Some("membership"), Some("added"))
    );
    let (status, _) = s.delete(&format!("{members}/{}", member.id), Some(&owner.token)).await;
    assert_eq!(status, 200);
    // The removed member neither receives nor may send; the owner finds
    // both changes in the group.
    let mut o = s.connect(&owner).await;
    let changes = o.deliveries(2).await;
    assert_eq!(
        changes[1]["content"],
        json!({ "change": "removed", "user_ids": [member.id], "by": owner.id })
    );
    assert_eq!(o.send_group(g, "after removal", "1").await["seq"], 3);
    removed.quiet(300).await;
    assert_eq!(removed.send_group(g, "still here?", "2").await["code"], "not_member");
    // Nobody removes the owner.
    assert_eq!(s.delete(&format!("{members}/{}", owner.id), Some(&owner.token)).await.0, 403);
}

/// The operators' credential the admin tests configure.
const ADMIN: &str = "an-admin-token-for-the-tests-0123456789";

#[tokio::test]
async fn the_admin_api_is_off_without_its_token() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let (status, body) =
        s.post(&format!("/api/admin/users/{}/ban", alice.id), Some(ADMIN), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    assert_eq!(s.post("/api/login", None, login_body("alice")).await.0, 200);
}

fn login_body(name: &str) -> serde_json::Value {
    json!({ "username": name, "password": "correct horse" })
}

#[tokio::test]
async fn admins_ban_unban_and_revoke_and_user_tokens_never_open_the_admin_api() {
    let s = Server::start_with(&[("TERN__GATEWAY__ADMIN_TOKEN", ADMIN)]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let ban = format!("/api/admin/users/{}/ban", alice.id);
    let online = format!("/api/admin/online?ids={},{}", alice.id, bob.id);

    // A user's own access token, a wrong token or none: refused, nothing done.
    for token in [Some(alice.token.as_str()), Some("an-admin-token-for-the-tests-012345678X"), None]
    {
        let (status, body) = s.post(&ban, token, json!({})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
        assert_eq!(s.get(&online, token).await.0, 401);
    }
    let (status, body) = s.post("/api/admin/users/987654/ban", Some(ADMIN), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_user")), "{body}");

    // Alice sends bob a message, acknowledged before she is banned.
    let mut phone = s.connect(&alice).await;
    let mut bobs = s.connect(&bob).await;
    let ack = phone.send_to(bob.id, "before the ban", "m1").await;
    assert_eq!(bobs.deliveries(1).await[0]["content"]["text"], "before the ban");
    let (status, body) = s.get(&online, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["online"].as_array().unwrap().len(), 2, "{body}");
    assert!(!body["online"][0]["nodes"].as_array().unwrap().is_empty(), "{body}");

    // The ban closes her session, refuses her tokens and her logins.
    let (status, body) = s.post(&ban, Some(ADMIN), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["banned"], true);
    assert!(body["banned_at_ms"].as_i64().unwrap() > 0, "{body}");
    let kicked = phone.recv().await;
    assert_eq!(kicked["type"], 100, "{kicked}");
    assert_eq!(phone.closed().await.code, 4001);
    assert_eq!(s.get("/api/groups", Some(&alice.token)).await.0, 401);
    assert!(tokio_tungstenite::connect_async(s.ws_url(&alice.token)).await.is_err());
    let (status, body) = s.post("/api/login", None, login_body("alice")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert_eq!(body["error"]["message"], "this account is banned");
    // Banning twice changes nothing.
    assert_eq!(s.post(&ban, Some(ADMIN), json!({})).await.0, 200);
    // Bob's copy of what she sent is still there.
    let conversation = ack["conversation_id"].as_str().unwrap();
    let (status, history) =
        s.get(&format!("/api/conversations/{conversation}/messages"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messages"][0]["content"]["text"], "before the ban", "{history}");
    assert_eq!(s.get("/api/groups", Some(&bob.token)).await.0, 200, "bob is not affected");

    // Lifted: she logs in again.
    let (status, body) = s.delete(&ban, Some(ADMIN)).await;
    assert_eq!((status, body["banned"].as_bool()), (200, Some(false)), "{body}");
    let again = s.login("alice").await;

    // Revoking ends her logins without a ban.
    let mut tablet = s.connect(&again).await;
    let (status, body) =
        s.post(&format!("/api/admin/users/{}/revoke", alice.id), Some(ADMIN), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["tokens_valid_after_ms"].as_i64().unwrap() > 0, "{body}");
    assert_eq!(tablet.recv().await["type"], 100);
    assert_eq!(tablet.closed().await.code, 4001);
    assert_eq!(s.get("/api/groups", Some(&again.token)).await.0, 401);
    assert_eq!(s.get("/api/groups", Some(&s.login("alice").await.token)).await.0, 200);
}

#[tokio::test]
async fn admins_send_system_messages_to_a_user_and_to_a_group() {
    let s = Server::start_with(&[("TERN__GATEWAY__ADMIN_TOKEN", ADMIN)]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut bobs = s.connect(&bob).await;
    let notice = json!({ "to": bob.id, "content": { "text": "maintenance at noon" }, "client_msg_id": "notice-1" });
    // A user cannot send as the system.
    let (status, _) = s.post("/api/admin/messages", Some(&alice.token), notice.clone()).await;
    assert_eq!(status, 401);
    bobs.quiet(200).await;

    let (status, sent) = s.post("/api/admin/messages", Some(ADMIN), notice.clone()).await;
    assert_eq!(status, 201, "{sent}");
    let got = bobs.deliveries(1).await.remove(0);
    assert_eq!((got["type"].as_i64(), got["from"].as_u64()), (Some(1), Some(0)), "{got}");
    assert_eq!(got["content"]["text"], "maintenance at noon");
    assert_eq!(got["message_id"], sent["message_id"]);
    // A retry is answered with the original and not delivered again.
    let (status, again) = s.post("/api/admin/messages", Some(ADMIN), notice).await;
    assert_eq!((status, again["duplicate"].as_bool()), (200, Some(true)), "{again}");
    assert_eq!(again["message_id"], sent["message_id"]);
    bobs.quiet(200).await;

    let g = s.group(&alice, &[&bob]).await;
    let (status, sent) = s
        .post(
            "/api/admin/messages",
            Some(ADMIN),
            json!({ "group_id": g, "content": { "text": "all hands" } }),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let history = format!("/api/conversations/group:{g}/messages");
    for reader in [&alice, &bob] {
        let (_, got) = s.get(&history, Some(&reader.token)).await;
        let last = got["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!((last["from"].as_u64(), last["seq"].clone()), (Some(0), sent["seq"].clone()));
        assert_eq!(last["content"]["text"], "all hands");
    }

    // Bad requests are refused with their codes.
    for (bad, status, code) in [
        (json!({ "to": bob.id, "group_id": g, "content": 1 }), 400, "bad_request"),
        (json!({ "content": 1 }), 400, "bad_request"),
        (json!({ "to": 987654, "content": 1 }), 404, "unknown_user"),
        (json!({ "group_id": 987654, "content": 1 }), 404, "unknown_group"),
    ] {
        let (got, body) = s.post("/api/admin/messages", Some(ADMIN), bad.clone()).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{bad}: {body}");
    }
}

#[tokio::test]
async fn admins_recall_any_message_and_both_users_see_it() {
    let s = Server::start_with(&[("TERN__GATEWAY__ADMIN_TOKEN", ADMIN)]).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let (mut a, mut b) = (s.connect(&alice).await, s.connect(&bob).await);
    let kept = a.send_to(bob.id, "kept", "m1").await;
    let ack = a.send_to(bob.id, "something unlawful", "m2").await;
    assert_eq!(b.deliveries(2).await.len(), 2);
    let conversation = ack["conversation_id"].as_str().unwrap();
    let recall = format!("/api/admin/conversations/{conversation}/messages/2/recall");

    // Bob, who may not recall alice's message, cannot through the admin API.
    let (status, _) = s.post(&recall, Some(&bob.token), json!({})).await;
    assert_eq!(status, 401);
    let (status, body) = s.post(&recall, Some(ADMIN), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["ref_seq"].as_u64(), body["seq"].as_u64()), (Some(2), Some(3)), "{body}");
    // Both users get the recall entry, from user 0.
    for socket in [&mut a, &mut b] {
        let got = socket.deliveries(1).await.remove(0);
        assert_eq!((got["kind"].as_str(), got["ref_seq"].as_u64()), (Some("recall"), Some(2)));
        assert_eq!(got["from"].as_u64(), Some(0), "{got}");
    }
    // The content is gone from storage; the other message is untouched.
    let (_, history) =
        s.get(&format!("/api/conversations/{conversation}/messages"), Some(&bob.token)).await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages[0]["content"]["text"], "kept");
    assert_eq!(messages[0]["message_id"], kept["message_id"]);
    assert!(messages[1]["content"].is_null(), "{history}");
    assert!(!history.to_string().contains("unlawful"), "{history}");

    let (status, body) = s.post(&recall, Some(ADMIN), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    let missing = format!("/api/admin/conversations/{conversation}/messages/99/recall");
    let (status, body) = s.post(&missing, Some(ADMIN), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
}

#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_answers() {
    let s = Server::start().await;
    let response = s.http.get(s.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let login = &doc["paths"]["/api/login"]["post"];
    assert!(login.is_object(), "POST /api/login is in the document");
    assert!(doc["paths"]["/api/admin/online"]["get"]["security"][0]["admin_token"].is_array());

    // What it says is what the server answers: a real login has every
    // field the document requires of it, and no other.
    let reference = login["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .expect("the login answer is a named schema");
    let schema = doc.pointer(reference.trim_start_matches('#')).expect("the reference resolves");
    s.user("alice").await;
    let (status, body) = s.post("/api/login", None, login_body("alice")).await;
    assert_eq!(status, 200, "{body}");
    let mut required: Vec<&str> =
        schema["required"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let mut answered: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    required.sort_unstable();
    answered.sort_unstable();
    assert_eq!(answered, required, "{body}");
}
