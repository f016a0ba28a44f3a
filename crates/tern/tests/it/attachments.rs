//! Attachments end to end against a real `tern`: on the embedded default
//! (files under the data folder, bytes through the gateway) and on a real
//! S3-compatible server (`s3s-fs`, started here; presigned URLs).

use crate::common;

use common::{Client, Server, User, s3::S3};
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};

/// A 3×2 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x13, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x08, 0x1b, 0x18, 0x80, 0x34, 0x00, 0x4c, 0xa9, 0x07, 0xf9, 0xeb, 0x69, 0x9c, 0x2d, 0x00,
    0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// An absolute URL for what the server answered (relative on the embedded store).
fn absolute(s: &Server, url: &str) -> String {
    if url.starts_with('/') { s.url(url) } else { url.to_string() }
}

/// Starts an upload; the whole answer.
async fn create(
    s: &Server,
    user: &User,
    conversation: &str,
    name: &str,
    kind: &str,
    size: usize,
) -> (u16, Value) {
    let body = json!({ "conversation_id": conversation, "name": name, "size": size, "content_type": kind });
    s.post("/api/attachments", Some(&user.token), body).await
}

/// PUTs `bytes` to an upload URL; status and body.
async fn put(s: &Server, url: &str, kind: &str, bytes: &[u8]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(absolute(s, url))
        .header("content-type", kind)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads and checks a file; the checked attachment.
async fn upload(
    s: &Server,
    user: &User,
    conversation: &str,
    name: &str,
    kind: &str,
    bytes: &[u8],
) -> Value {
    let (status, created) = create(s, user, conversation, name, kind, bytes.len()).await;
    assert_eq!(status, 201, "{created}");
    let (status, body) = put(s, created["upload_url"].as_str().unwrap(), kind, bytes).await;
    assert!(status == 200 || status == 204, "upload: {status} {body}");
    let id = created["attachment_id"].as_str().unwrap();
    let (status, done) =
        s.post(&format!("/api/attachments/{id}/complete"), Some(&user.token), json!({})).await;
    assert_eq!(status, 200, "{done}");
    done
}

/// GETs a download URL: status, headers and bytes.
async fn fetch(s: &Server, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let response = reqwest::get(absolute(s, url)).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// The next frame that is not a heartbeat answer.
async fn frame(client: &mut Client) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] != 99 {
            return frame;
        }
    }
}

fn dm(a: &User, b: &User) -> String {
    format!("dm:{}:{}", a.id.min(b.id), a.id.max(b.id))
}

/// The whole path of an image and a text file, and who may fetch them.
async fn round_trip(s: &Server) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let conversation = dm(&alice, &bob);
    let mut bob_ws = s.connect(&bob).await.registered().await;
    let mut alice_ws = s.connect(&alice).await.registered().await;

    let image = upload(s, &alice, &conversation, "../cat \"1\".png", "image/png", PNG).await;
    assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(3), Some(2)), "{image}");
    assert_eq!(image["content_type"], "image/png");
    assert_eq!(image["name"], "cat 1.png", "no path, no quotes: {image}");
    assert_eq!(image["state"], "ready");
    let id = image["attachment_id"].as_str().unwrap();

    // Before it is sent, only its uploader may fetch it.
    let (status, body) = s.get(&format!("/api/attachments/{id}"), Some(&bob.token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");

    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "client_msg_id": "img-1",
                      "content": { "text": "look", "attachment": { "id": id } } }))
        .await;
    let ack = frame(&mut alice_ws).await;
    assert_eq!(ack["type"], 30, "{ack}");
    let delivered = frame(&mut bob_ws).await;
    assert_eq!(delivered["content"]["text"], "look");
    let attachment = &delivered["content"]["attachment"];
    assert_eq!(attachment["id"], id);
    assert_eq!(attachment["name"], "cat 1.png");
    assert_eq!(attachment["size"], PNG.len());
    assert_eq!(attachment["content_type"], "image/png");
    assert_eq!((attachment["width"].as_u64(), attachment["height"].as_u64()), (Some(3), Some(2)));

    // History carries the same metadata.
    let (_, history) =
        s.get(&format!("/api/conversations/{conversation}/messages"), Some(&bob.token)).await;
    assert_eq!(history["messages"][0]["content"]["attachment"]["id"], id, "{history}");

    // Bob downloads it; Carol, not in the conversation, may not.
    let (status, got) = s.get(&format!("/api/attachments/{id}"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["state"], "sent");
    let (status, headers, bytes) = fetch(s, got["download_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, PNG);
    if headers.contains_key("content-disposition") {
        assert_eq!(headers["content-type"], "image/png");
        let disposition = headers["content-disposition"].to_str().unwrap();
        assert!(disposition.starts_with("inline; filename=\"cat 1.png\""), "{disposition}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let (status, body) = s.get(&format!("/api/attachments/{id}"), Some(&carol.token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");

    // A text file, downloaded as an attachment under its name.
    let text = "1. milk\n2. bread — the good one\n".as_bytes();
    let list = upload(s, &alice, &conversation, "list.txt", "text/plain", text).await;
    let list_id = list["attachment_id"].as_str().unwrap();
    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "content": { "attachment": { "id": list_id } } }))
        .await;
    assert_eq!(frame(&mut alice_ws).await["type"], 30);
    assert_eq!(frame(&mut bob_ws).await["content"]["attachment"]["name"], "list.txt");
    let (_, got) = s.get(&format!("/api/attachments/{list_id}"), Some(&bob.token)).await;
    let (status, headers, bytes) = fetch(s, got["download_url"].as_str().unwrap()).await;
    assert_eq!((status, bytes.as_slice()), (200, text));
    if let Some(disposition) = headers.get("content-disposition") {
        assert!(disposition.to_str().unwrap().starts_with("attachment; filename=\"list.txt\""));
    }
}

#[tokio::test]
async fn files_travel_through_the_embedded_store() {
    let s = Server::start().await;
    round_trip(&s).await;
    // The bytes are under the data folder.
    let stored = walk(&s.data_path().join("attachments"));
    assert_eq!(stored.len(), 2, "{stored:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[tokio::test]
async fn uploads_that_break_the_rules_are_refused() {
    let s = Server::start_with(&[("TERN__ATTACHMENTS__MAX_BYTES", "1000")]).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let conversation = dm(&alice, &bob);

    // Over the limit, a type not allowed, no bytes, a conversation one is not in.
    let (status, body) = create(&s, &alice, &conversation, "big.png", "image/png", 1001).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    let (status, body) = create(&s, &alice, &conversation, "x.svg", "image/svg+xml", 10).await;
    assert_eq!((status, body["error"]["code"].as_str()), (415, Some("unsupported_type")), "{body}");
    let (status, body) = create(&s, &alice, &conversation, "empty.txt", "text/plain", 0).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = create(&s, &carol, &conversation, "x.txt", "text/plain", 10).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");

    // More bytes than declared.
    let (_, created) = create(&s, &alice, &conversation, "a.txt", "text/plain", 4).await;
    let (status, body) =
        put(&s, created["upload_url"].as_str().unwrap(), "text/plain", b"12345").await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");

    // Text disguised as a PNG: refused by its bytes, and gone.
    let fake = b"<script>alert(1)</script> not a picture";
    let (_, created) = create(&s, &alice, &conversation, "evil.png", "image/png", fake.len()).await;
    let (status, body) = put(&s, created["upload_url"].as_str().unwrap(), "image/png", fake).await;
    assert_eq!((status, body["error"]["code"].as_str()), (415, Some("unsupported_type")), "{body}");
    let fake_id = created["attachment_id"].as_str().unwrap().to_string();

    // Upload URLs: only for their attachment, not an access token, not twice.
    let (_, created) = create(&s, &alice, &conversation, "b.txt", "text/plain", 2).await;
    let id = created["attachment_id"].as_str().unwrap().to_string();
    let forged = format!("/api/attachments/{id}/content?token={}", alice.token);
    let (status, body) = put(&s, &forged, "text/plain", b"hi").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = put(&s, created["upload_url"].as_str().unwrap(), "text/plain", b"hi").await;
    assert_eq!(status, 200);
    let (status, body) =
        put(&s, created["upload_url"].as_str().unwrap(), "text/plain", b"ho").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");

    // Messages naming uploads they may not: someone else's, one for
    // another conversation, a refused one, one that does not exist.
    let mut bob_ws = s.connect(&bob).await.registered().await;
    let mut carol_ws = s.connect(&carol).await.registered().await;
    carol_ws
        .send(json!({ "type": 1, "to": bob.id, "client_msg_id": "steal",
                      "content": { "attachment": { "id": id } } }))
        .await;
    let refused = frame(&mut carol_ws).await;
    assert_eq!(
        (refused["type"].as_u64(), refused["code"].as_str()),
        (Some(3), Some("forbidden")),
        "{refused}"
    );
    let mut alice_ws = s.connect(&alice).await.registered().await;
    alice_ws
        .send(json!({ "type": 1, "to": carol.id, "client_msg_id": "elsewhere",
                      "content": { "attachment": { "id": id } } }))
        .await;
    let refused = frame(&mut alice_ws).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    for (missing, cmid) in [(fake_id.as_str(), "fake"), ("no-such-id", "none")] {
        alice_ws
            .send(json!({ "type": 1, "to": bob.id, "client_msg_id": cmid,
                          "content": { "attachment": { "id": missing } } }))
            .await;
        let refused = frame(&mut alice_ws).await;
        assert_eq!(refused["code"], "not_found", "{refused}");
    }
    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "content": { "attachment": "just a string" } }))
        .await;
    assert_eq!(frame(&mut alice_ws).await["code"], "bad_request");

    // None of it reached Bob; the one good send does, once.
    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "client_msg_id": "ok",
                      "content": { "attachment": { "id": id } } }))
        .await;
    assert_eq!(frame(&mut alice_ws).await["type"], 30);
    let delivered = frame(&mut bob_ws).await;
    assert_eq!(
        (delivered["seq"].as_u64(), &delivered["content"]["attachment"]["id"]),
        (Some(1), &json!(id))
    );
    bob_ws.quiet(300).await;
}

#[tokio::test]
async fn download_links_expire_and_recalls_remove_the_file() {
    // A URL's expiry is in whole seconds (see `presigned_urls_expire`).
    let s = Server::start_with(&[("TERN__ATTACHMENTS__URL_TTL_SECS", "3")]).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = dm(&alice, &bob);
    let done = upload(&s, &alice, &conversation, "a.txt", "text/plain", b"hello").await;
    let id = done["attachment_id"].as_str().unwrap();
    let mut alice_ws = s.connect(&alice).await.registered().await;
    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "client_msg_id": "m",
                      "content": { "attachment": { "id": id } } }))
        .await;
    let ack = frame(&mut alice_ws).await;
    let (_, got) = s.get(&format!("/api/attachments/{id}"), Some(&bob.token)).await;
    let url = got["download_url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&s, &url).await.0, 200);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let (status, _, body) = fetch(&s, &url).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("expired"));

    // A recalled message takes its file with it.
    alice_ws
        .send(json!({ "type": 60, "conversation_id": conversation, "seq": ack["seq"], "client_msg_id": "r" }))
        .await;
    assert_eq!(frame(&mut alice_ws).await["type"], 30);
    let (status, body) = s.get(&format!("/api/attachments/{id}"), Some(&bob.token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
}

#[tokio::test]
async fn uploads_never_sent_are_swept() {
    let s = Server::start_with(&[
        ("TERN__ATTACHMENTS__UNREFERENCED_TTL_SECS", "1"),
        ("TERN__ATTACHMENTS__SWEEP_INTERVAL_SECS", "1"),
    ])
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = dm(&alice, &bob);
    let kept = upload(&s, &alice, &conversation, "kept.txt", "text/plain", b"kept").await;
    let mut alice_ws = s.connect(&alice).await.registered().await;
    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "content": { "attachment": { "id": kept["attachment_id"] } } }))
        .await;
    assert_eq!(frame(&mut alice_ws).await["type"], 30);
    let dropped = upload(&s, &alice, &conversation, "dropped.txt", "text/plain", b"dropped").await;
    let dropped_id = dropped["attachment_id"].as_str().unwrap();
    let folder = s.data_path().join("attachments");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while walk(&folder).len() > 1 {
        assert!(std::time::Instant::now() < deadline, "not swept: {:?}", walk(&folder));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = walk(&folder);
    assert!(
        left[0].to_string_lossy().contains(kept["attachment_id"].as_str().unwrap()),
        "{left:?}"
    );
    let (status, _) = s.get(&format!("/api/attachments/{dropped_id}"), Some(&alice.token)).await;
    assert_eq!(status, 404);
}

async fn on_s3(s3: &S3, extra: &[(&str, &str)]) -> Server {
    let env = s3.env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Server::start_with(&all).await
}

#[tokio::test]
async fn files_travel_through_an_s3_store_with_presigned_urls() {
    let s3 = S3::start().await;
    let s = on_s3(&s3, &[]).await;
    let dora = s.user("dora").await;
    let ed = s.user("ed").await;
    let (_, created) = create(&s, &dora, &dm(&dora, &ed), "a.png", "image/png", PNG.len()).await;
    let url = created["upload_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://127.0.0.1:{}/tern/uploads/", s3.port)), "{url}");
    assert!(url.contains("X-Amz-Signature="), "presigned: {url}");
    // Without the signature the store refuses.
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(put(&s, unsigned, "image/png", PNG).await.0, 403);
    round_trip(&s).await;
    // The bytes are in the bucket, not on the gateway.
    assert!(walk(&s.data_path().join("attachments")).is_empty());
    let in_bucket = walk(&s3.root.path().join("tern/uploads"));
    assert!(in_bucket.iter().any(|p| p.ends_with("cat_1.png")), "{in_bucket:?}");
    assert!(in_bucket.iter().any(|p| p.ends_with("list.txt")), "{in_bucket:?}");
}

#[tokio::test]
async fn presigned_urls_expire() {
    let s3 = S3::start().await;
    // Presigned URLs carry their signing time in whole seconds, so a URL
    // of a TTL of n seconds may live as little as n - 1: 3 leaves the
    // upload and the first download room on a busy machine.
    let s = on_s3(&s3, &[("TERN__ATTACHMENTS__URL_TTL_SECS", "3")]).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let done = upload(&s, &alice, &dm(&alice, &bob), "a.txt", "text/plain", b"hello").await;
    let id = done["attachment_id"].as_str().unwrap();
    let (_, got) = s.get(&format!("/api/attachments/{id}"), Some(&alice.token)).await;
    let url = got["download_url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&s, &url).await.0, 200);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(fetch(&s, &url).await.0, 403, "an expired presigned URL");
}

#[tokio::test]
async fn a_store_that_is_down_fails_uploads_and_chat_goes_on() {
    let mut s3 = S3::start().await;
    let s = on_s3(&s3, &[]).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = dm(&alice, &bob);
    let (_, created) = create(&s, &alice, &conversation, "a.txt", "text/plain", 5).await;
    assert_eq!(
        put(&s, created["upload_url"].as_str().unwrap(), "text/plain", b"hello").await.0,
        200
    );
    let id = created["attachment_id"].as_str().unwrap();

    s3.stop();
    let complete = format!("/api/attachments/{id}/complete");
    let (status, body) = s.post(&complete, Some(&alice.token), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    // Chat does not need the store.
    let mut bob_ws = s.connect(&bob).await.registered().await;
    let mut alice_ws = s.connect(&alice).await.registered().await;
    let ack = alice_ws.send_to(bob.id, "still here", "c1").await;
    assert_eq!(ack["type"], 30, "{ack}");
    assert_eq!(frame(&mut bob_ws).await["content"]["text"], "still here");

    // Back up: the same upload completes and is sent; nothing was lost.
    s3.spawn().await;
    let (status, body) = s.post(&complete, Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    alice_ws
        .send(json!({ "type": 1, "to": bob.id, "client_msg_id": "c2", "content": { "attachment": { "id": id } } }))
        .await;
    assert_eq!(frame(&mut alice_ws).await["type"], 30);
    let delivered = frame(&mut bob_ws).await;
    assert_eq!(delivered["seq"], 2);
    let (_, got) = s.get(&format!("/api/attachments/{id}"), Some(&bob.token)).await;
    let (status, _, bytes) = fetch(&s, got["download_url"].as_str().unwrap()).await;
    assert_eq!((status, bytes.as_slice()), (200, b"hello".as_slice()));
    let (_, history) =
        s.get(&format!("/api/conversations/{conversation}/messages"), Some(&bob.token)).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2, "{history}");
}

#[tokio::test]
async fn the_embedded_store_down_answers_unavailable() {
    let s = Server::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let conversation = dm(&alice, &bob);
    let (_, created) = create(&s, &alice, &conversation, "a.txt", "text/plain", 5).await;
    // The folder becomes a file: every write and read of the store fails.
    let folder = s.data_path().join("attachments");
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::write(&folder, b"not a folder").unwrap();
    let (status, body) =
        put(&s, created["upload_url"].as_str().unwrap(), "text/plain", b"hello").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    let mut bob_ws = s.connect(&bob).await.registered().await;
    let mut alice_ws = s.connect(&alice).await.registered().await;
    assert_eq!(alice_ws.send_to(bob.id, "chat still works", "c1").await["type"], 30);
    assert_eq!(frame(&mut bob_ws).await["content"]["text"], "chat still works");
}

#[tokio::test]
async fn group_files_reach_members_and_only_members() {
    let s = Server::start().await;
    let (owner, member, outsider) =
        (s.user("olga").await, s.user("max").await, s.user("otto").await);
    let group = s.group(&owner, &[&member]).await;
    let conversation = format!("group:{group}");
    // Not a member: no upload into the group.
    let (status, body) = create(&s, &outsider, &conversation, "x.txt", "text/plain", 3).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_member")), "{body}");

    let done = upload(&s, &owner, &conversation, "plan.pdf.txt", "text/plain", b"the plan").await;
    let id = done["attachment_id"].as_str().unwrap();
    let mut owner_ws = s.connect(&owner).await.registered().await;
    owner_ws
        .send(json!({ "type": 2, "group_id": group, "client_msg_id": "g1",
                      "content": { "attachment": { "id": id } } }))
        .await;
    assert_eq!(frame(&mut owner_ws).await["type"], 30);
    let (status, got) = s.get(&format!("/api/attachments/{id}"), Some(&member.token)).await;
    assert_eq!(status, 200, "{got}");
    let url = got["download_url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&s, &url).await.2, b"the plan");
    let (status, _) = s.get(&format!("/api/attachments/{id}"), Some(&outsider.token)).await;
    assert_eq!(status, 403);

    // Removed from the group, the member's link stops working at once.
    let (status, _) =
        s.delete(&format!("/api/groups/{group}/members/{}", member.id), Some(&owner.token)).await;
    assert_eq!(status, 200);
    let (status, _, _) = fetch(&s, &url).await;
    assert_eq!(status, 403, "a link checks membership at every use");
}
