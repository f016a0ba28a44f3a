//! Signed webhooks against a real HTTP receiver in the test: signatures
//! checked with an HMAC computed here, retries after failures, order per
//! conversation, nothing lost across a crash of Tern, chat unaffected by a
//! receiver that hangs, parked events shown to operators and retried.

use crate::common::Server;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const SECRET: &str = "webhook-secret-0123456789abcdef0123456789";
const ADMIN: &str = "admin-token-0123456789abcdef0123456789ab";

/// What the receiver answers.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Accept,
    /// 503 to everything.
    Fail,
    /// Never answers.
    Hang,
}

/// One request the receiver saw.
#[derive(Clone, Debug)]
struct Hit {
    accepted: bool,
    signature_ok: bool,
    header_id: String,
    attempt: u32,
    body: Value,
}

#[derive(Default)]
struct Seen {
    mode: Option<Mode>,
    /// Requests to fail (503) before `mode` applies.
    fail_first: usize,
    /// Events of this conversation hang, whatever the mode.
    hang_conversation: Option<String>,
    hits: Vec<Hit>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    async fn start(mode: Mode, fail_first: usize) -> Receiver {
        let seen = Arc::new(Mutex::new(Seen { mode: Some(mode), fail_first, ..Seen::default() }));
        let app = Router::new().route("/hook", post(receive)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, seen }
    }

    fn set(&self, mode: Mode) {
        self.seen.lock().unwrap().mode = Some(mode);
    }

    fn hits(&self) -> Vec<Hit> {
        self.seen.lock().unwrap().hits.clone()
    }

    /// Bodies accepted, in order of acceptance, each event once (the first
    /// acceptance: deliveries are at least once).
    fn delivered(&self) -> Vec<Value> {
        let mut ids = std::collections::HashSet::new();
        self.hits()
            .into_iter()
            .filter(|h| h.accepted && ids.insert(h.body["id"].as_str().unwrap_or("").to_string()))
            .map(|h| h.body)
            .collect()
    }

    /// Waits until `done` holds for the delivered events.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {delivered:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The receiver's own check of `Tern-Signature: t=…,v1=…`: HMAC-SHA256 over
/// `"<t>.<body>"`, as docs/protocol.md tells receivers to compute it.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("tern-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_string()),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let fresh = t.parse::<u64>().is_ok_and(|t| t.abs_diff(now.as_secs()) <= 300);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    fresh && mac.verify_slice(&v1).is_ok()
}

async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mode = {
        let mut seen = seen.lock().unwrap();
        let failing = seen.fail_first > 0;
        seen.fail_first = seen.fail_first.saturating_sub(1);
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let hang = (seen.hang_conversation.as_ref())
            .is_some_and(|c| parsed["data"]["conversation_id"] == *c);
        let mode = match seen.mode.unwrap_or(Mode::Accept) {
            _ if hang => Mode::Hang,
            _ if failing => Mode::Fail,
            mode => mode,
        };
        let header = |name: &str| {
            headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
        };
        seen.hits.push(Hit {
            accepted: mode == Mode::Accept,
            signature_ok: signature_ok(&headers, &body),
            header_id: header("tern-event-id"),
            attempt: header("tern-delivery-attempt").parse().unwrap_or(0),
            body: parsed,
        });
        mode
    };
    match mode {
        Mode::Accept => StatusCode::NO_CONTENT,
        Mode::Fail => StatusCode::SERVICE_UNAVAILABLE,
        Mode::Hang => std::future::pending().await,
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The seqs of `message.stored` events of `conversation`, in delivery order.
fn stored_seqs(events: &[Value], conversation: &str) -> Vec<u64> {
    of_type(events, "message.stored")
        .into_iter()
        .filter(|e| e["data"]["conversation_id"] == conversation)
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect()
}

async fn start(receiver: &Receiver, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("TERN__WEBHOOKS__URLS", receiver.url.as_str()),
        ("TERN__WEBHOOKS__SECRET", SECRET),
        ("TERN__WEBHOOKS__MIN_BACKOFF_MS", "50"),
        ("TERN__WEBHOOKS__MAX_BACKOFF_MS", "200"),
        ("TERN__WEBHOOKS__LEASE_SECS", "2"),
        ("TERN__GATEWAY__ADMIN_TOKEN", ADMIN),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&env).await
}

#[tokio::test]
async fn events_are_signed_retried_in_order_and_survive_a_crash() {
    // The first five attempts fail: the first events are retried.
    let receiver = Receiver::start(Mode::Accept, 5).await;
    let mut s = start(&receiver, &[]).await;
    let a = s.user("hook_a").await;
    let b = s.user("hook_b").await;
    let group = s.group(&a, &[&b]).await;
    let mut client = s.connect(&a).await;
    let mut conversation = String::new();
    for i in 1..=10 {
        let ack = client.send_to(b.id, &format!("m{i}"), &format!("hook-{i}")).await;
        conversation = ack["conversation_id"].as_str().unwrap().to_string();
    }
    let events = receiver
        .wait_for("10 messages, 2 users, the group", |events| {
            stored_seqs(events, &conversation).len() == 10
                && of_type(events, "user.registered").len() == 2
                && !of_type(events, "group.created").is_empty()
        })
        .await;
    // In seq order, each once, whatever was retried.
    assert_eq!(stored_seqs(&events, &conversation), (1..=10).collect::<Vec<_>>());
    let first = of_type(&events, "message.stored")[0];
    assert_eq!(first["data"]["sender_id"], a.id);
    assert_eq!(first["data"]["to_user_id"], b.id);
    assert_eq!(first["data"]["content"], json!({ "text": "m1" }));
    assert_eq!(first["data"]["kind"], "message");
    // Two users are two order keys: their events may arrive either way.
    let mut registered: Vec<u64> = of_type(&events, "user.registered")
        .iter()
        .map(|e| e["data"]["user_id"].as_u64().unwrap())
        .collect();
    registered.sort_unstable();
    assert_eq!(registered, vec![a.id, b.id]);
    let created = of_type(&events, "group.created")[0];
    assert_eq!(created["data"]["group_id"], group);
    assert_eq!(created["data"]["owner_id"], a.id);
    // Every request was signed, named its event in the header, and the
    // failed ones were tried again.
    let hits = receiver.hits();
    assert!(hits.iter().all(|h| h.signature_ok), "{hits:#?}");
    assert!(hits.iter().all(|h| h.header_id == h.body["id"].as_str().unwrap()));
    assert_eq!(hits.iter().filter(|h| !h.accepted).count(), 5);
    assert!(hits.iter().any(|h| h.accepted && h.attempt > 1), "nothing was retried");

    // Events written while the receiver is down survive a crash of Tern.
    receiver.set(Mode::Fail);
    for i in 11..=15 {
        client.send_to(b.id, &format!("m{i}"), &format!("hook-{i}")).await;
    }
    drop(client);
    // The failing attempts have started before the crash.
    let before = receiver.hits().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.hits().len() == before {
        assert!(Instant::now() < deadline, "no attempt while the receiver failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.crash_and_restart(Duration::from_millis(100)).await;
    receiver.set(Mode::Accept);
    let events = receiver
        .wait_for("the 5 messages sent before the crash", |events| {
            stored_seqs(events, &conversation).len() == 15
        })
        .await;
    assert_eq!(stored_seqs(&events, &conversation), (1..=15).collect::<Vec<_>>());
    assert!(receiver.hits().iter().all(|h| h.signature_ok));
}

#[tokio::test]
async fn presence_events_tell_when_a_user_comes_and_goes() {
    let receiver = Receiver::start(Mode::Accept, 0).await;
    let s = start(&receiver, &[("TERN__WEBHOOKS__EVENTS", "user.online,user.offline")]).await;
    let a = s.user("presence_hook").await;
    let client = s.connect(&a).await.registered().await;
    receiver.wait_for("user.online", |e| !of_type(e, "user.online").is_empty()).await;
    drop(client);
    let events =
        receiver.wait_for("user.offline", |e| !of_type(e, "user.offline").is_empty()).await;
    // Only the configured types are sent.
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user.online", "user.offline"]);
    assert_eq!(events[0]["data"]["user_id"], a.id);
    assert_eq!(events[1]["data"]["user_id"], a.id);
}

#[tokio::test]
async fn a_hanging_receiver_never_slows_chat_and_failed_events_park_until_retried() {
    let receiver = Receiver::start(Mode::Hang, 0).await;
    let s = &start(
        &receiver,
        &[
            ("TERN__WEBHOOKS__TIMEOUT_MS", "2000"),
            ("TERN__WEBHOOKS__MAX_ATTEMPTS", "2"),
            ("TERN__WEBHOOKS__EVENTS", "message.stored"),
        ],
    )
    .await;
    let a = s.user("hang_a").await;
    let b = s.user("hang_b").await;
    let mut client = s.connect(&a).await;
    // While every webhook call hangs, each send is still answered at once.
    let mut slowest = Duration::ZERO;
    let mut conversation = String::new();
    for i in 1..=20 {
        let started = Instant::now();
        let ack = client.send_to(b.id, &format!("h{i}"), &format!("hang-{i}")).await;
        slowest = slowest.max(started.elapsed());
        conversation = ack["conversation_id"].as_str().unwrap().to_string();
    }
    assert!(!receiver.hits().is_empty(), "the receiver was never called");
    assert!(slowest < Duration::from_secs(1), "a send waited {slowest:?} for a hanging webhook");

    // Two timed-out attempts park the first event; the rest of the
    // conversation then goes on, to a receiver that now fails them too.
    let parked = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (status, body) = s.get("/api/admin/webhooks/parked?limit=1000", Some(ADMIN)).await;
            assert_eq!(status, 200, "{body}");
            let parked = body["events"].as_array().unwrap().clone();
            if parked.len() >= n {
                return parked;
            }
            assert!(Instant::now() < deadline, "{} parked, not {n}", parked.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(parked(1).await[0]["last_error"], "timed out");
    receiver.set(Mode::Fail);
    let parked = parked(20).await;
    assert_eq!(parked[0]["event_type"], "message.stored");
    assert_eq!(parked[0]["outbox"], "message");
    assert_eq!(parked[0]["attempts"], 2);
    assert_eq!(parked[0]["last_error"], "timed out");
    assert_eq!(parked[19]["last_error"], "HTTP 503 Service Unavailable");
    assert_eq!(parked[0]["event"]["data"]["seq"], 1);
    // Nothing was delivered meanwhile.
    assert!(receiver.delivered().is_empty());

    // The admin API is the operators' alone.
    let a_token = a.token.clone();
    let (status, _) = s.get("/api/admin/webhooks/parked", Some(&a_token)).await;
    assert_eq!(status, 401);
    let refs: Vec<Value> =
        parked.iter().map(|p| json!({ "outbox": p["outbox"], "id": p["id"] })).collect();
    let (status, body) =
        s.post("/api/admin/webhooks/retry", Some(&a_token), json!({ "events": refs })).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) =
        s.post("/api/admin/webhooks/retry", Some(ADMIN), json!({ "events": "all" })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    // Retried once the receiver is back: every event arrives, in order.
    receiver.set(Mode::Accept);
    let (status, body) =
        s.post("/api/admin/webhooks/retry", Some(ADMIN), json!({ "events": refs })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"], 20);
    let events = receiver
        .wait_for("the 20 retried events", |e| stored_seqs(e, &conversation).len() == 20)
        .await;
    assert_eq!(stored_seqs(&events, &conversation), (1..=20).collect::<Vec<_>>());
    let (_, body) = s.get("/api/admin/webhooks/parked", Some(ADMIN)).await;
    assert_eq!(body["events"], json!([]));
}

#[tokio::test]
async fn every_service_of_the_distributed_topology_sends_its_events() {
    let receiver = Receiver::start(Mode::Accept, 3).await;
    let c = crate::common::cluster::Cluster::start_with(
        2,
        &[
            ("TERN__WEBHOOKS__URLS", receiver.url.as_str()),
            ("TERN__WEBHOOKS__SECRET", SECRET),
            ("TERN__WEBHOOKS__MIN_BACKOFF_MS", "50"),
            ("TERN__WEBHOOKS__MAX_BACKOFF_MS", "200"),
            ("TERN__GATEWAY__PRESENCE_EVENTS", "true"),
            ("TERN__GATEWAY__ADMIN_TOKEN", ADMIN),
        ],
    )
    .await;
    let a = c.user("dist_hook_a").await;
    let b = c.user("dist_hook_b").await;
    let (status, body) = c
        .post(1, "/api/groups", Some(&b.token), json!({ "name": "hooks", "member_ids": [a.id] }))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut client = c.connect(0, &a).await;
    let mut conversation = String::new();
    for i in 1..=5 {
        let ack = client.send_to(b.id, &format!("d{i}"), &format!("dist-{i}")).await;
        conversation = ack["conversation_id"].as_str().unwrap().to_string();
    }
    // From the auth service, the group service, the message service, and
    // the gateway by way of auth.
    let events = receiver
        .wait_for("events of every service", |events| {
            of_type(events, "user.registered").len() == 2
                && of_type(events, "group.created").len() == 1
                && of_type(events, "user.online").len() == 1
                && stored_seqs(events, &conversation).len() == 5
        })
        .await;
    assert_eq!(stored_seqs(&events, &conversation), (1..=5).collect::<Vec<_>>());
    assert_eq!(of_type(&events, "user.online")[0]["data"]["user_id"], a.id);
    assert!(receiver.hits().iter().all(|h| h.signature_ok));
    // The gateway asks the three outboxes; nothing is parked.
    let (status, body) = c.get_as(1, "/api/admin/webhooks/parked", ADMIN).await;
    assert_eq!((status, &body["events"]), (200, &json!([])), "{body}");
}

#[tokio::test]
async fn a_conversation_whose_events_hang_holds_up_only_itself() {
    let receiver = Receiver::start(Mode::Accept, 0).await;
    let s = start(&receiver, &[("TERN__WEBHOOKS__EVENTS", "message.stored")]).await;
    let a = s.user("slow_a").await;
    let b = s.user("slow_b").await;
    let c = s.user("slow_c").await;
    let mut client = s.connect(&a).await;
    let stuck = client.send_to(b.id, "stuck", "slow-1").await;
    let stuck = stuck["conversation_id"].as_str().unwrap().to_string();
    receiver.seen.lock().unwrap().hang_conversation = Some(stuck.clone());
    // Stuck from its second event on (the first may have gone already).
    client.send_to(b.id, "stuck too", "slow-2").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !receiver.hits().iter().any(|h| h.body["data"]["conversation_id"] == stuck && !h.accepted)
    {
        assert!(Instant::now() < deadline, "the stuck conversation's event was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While that request hangs (for the default 10 s timeout), another
    // conversation's events keep flowing.
    let mut free = String::new();
    for i in 1..=5 {
        let ack = client.send_to(c.id, &format!("free {i}"), &format!("free-{i}")).await;
        free = ack["conversation_id"].as_str().unwrap().to_string();
    }
    let started = Instant::now();
    let events =
        receiver.wait_for("the free conversation", |e| stored_seqs(e, &free).len() == 5).await;
    assert!(started.elapsed() < Duration::from_secs(5), "held up for {:?}", started.elapsed());
    assert_eq!(stored_seqs(&events, &free), (1..=5).collect::<Vec<_>>());
}
