//! Faults lose nothing. Each run starts the distributed topology as
//! separate processes (four services, two gateways) on a private Redis and
//! a private MariaDB, drives a mixed 1:1 and group workload from many
//! reconnecting clients, breaks one thing on purpose (or all of them in
//! turn), lets every member resync from its cursors, and then checks the
//! whole history with the total-queue checker (`checker.rs`).
//!
//! Two runs put the server at full load instead: half as many clients,
//! each keeping a window of sends in flight (`TERN_FAULTS_WINDOW`, 16) as
//! fast as the server answers and acking every delivery as it arrives;
//! one kills the message service mid-batch in the distributed topology,
//! the other kills the embedded `tern` (SQLite) and restarts it on the
//! same data folder.
//!
//! The suite runs a short version of every fault. A longer run is the
//! same tests with a bigger scale, in release mode:
//!
//! ```text
//! cargo build --release --workspace --bins
//! TERN_FAULTS_USERS=400 TERN_FAULTS_RATE=5 TERN_FAULTS_SECS=20 \
//!   cargo test --release -p tern --test faults -- --nocapture --test-threads 1
//! ```
//!
//! Every run appends its row to `target/faults-report.md`.

mod backing;
mod checker;
mod workload;

use backing::Backing;
use checker::{Stored, Verdict};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};
use tern_testkit::{
    api::Api,
    client,
    topology::{Database, Distributed, Embedded, Options},
};
use workload::{Attempt, Delivery, FullLoad, Outcome, Participant, Shape, Target, UserLog};

/// Something the run breaks on purpose.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL gateway 1; its clients move to gateway 2. Restarted after.
    KillGateway,
    /// SIGKILL the message service, restart it a second later.
    KillMessageService,
    /// Kill Redis (no persistence: presence and subscriptions are gone)
    /// and start it again, empty.
    RestartRedis,
    /// Kill MariaDB mid-load and start it again on the same data.
    RestartMariaDb,
    /// SIGTERM gateway 2: clients get close 1001 and reconnect; the
    /// process must exit within its grace period. Restarted after.
    TermGateway,
    /// SIGKILL the embedded `tern`, restart it a second later on the same
    /// data folder (only on an embedded stage).
    KillEmbedded,
}

/// How the clients load the server.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// `TERN_FAULTS_RATE` messages per user per second, one send in flight,
    /// acks every 300 ms ([`workload::run_user`]).
    Paced,
    /// Half of `TERN_FAULTS_USERS`, each with `TERN_FAULTS_WINDOW` sends in
    /// flight, as fast as the server answers, every delivery acked as it
    /// arrives ([`workload::run_full_load_user`]).
    Full,
}

/// How big a run is; `TERN_FAULTS_*` make it bigger.
struct Scale {
    users: usize,
    groups: usize,
    group_size: usize,
    /// Messages per user per second.
    rate: f64,
    /// Load before the first fault and after each one.
    phase: Duration,
    /// Sends in flight per user at full load.
    window: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn scale() -> Scale {
    let users = env_or("TERN_FAULTS_USERS", 40usize);
    Scale {
        users,
        groups: (users / 10).max(2),
        group_size: env_or("TERN_FAULTS_GROUP_SIZE", 12usize).min(users),
        rate: env_or("TERN_FAULTS_RATE", 2.0),
        phase: Duration::from_secs(env_or("TERN_FAULTS_SECS", 3)),
        window: env_or("TERN_FAULTS_WINDOW", 16usize).max(1),
    }
}

/// Fault runs use their own MariaDB, so they run once, not once per
/// database backend of the integration suite.
fn skipped() -> bool {
    std::env::var("TERN_TEST_DATABASE").is_ok_and(|d| !d.is_empty() && d != "sqlite")
}

/// Gateway shutdown grace in the runs; SIGTERM must end the process
/// within it (plus process start-up slack).
const GRACE_SECS: u64 = 4;

/// One fault run at a time: each is a whole cluster with its own Redis and
/// MariaDB, and two at once on a small machine starve each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Rig {
    cluster: Distributed,
    redis: Backing,
    mariadb: Backing,
    /// Declared last, so it is released after everything above is down.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// The workload reconnects a lot and registers many users from one
/// address; abuse limits are not under test here.
const NO_LIMITS: [(&str, &str); 4] = [
    ("TERN__GATEWAY__LIMITS__CONNECTS_PER_USER_PER_MINUTE", "0"),
    ("TERN__GATEWAY__LIMITS__HTTP_PER_IP_PER_SECOND", "0"),
    ("TERN__GATEWAY__LIMITS__LOGINS_PER_IP_PER_MINUTE", "0"),
    ("TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND", "0"),
];

async fn rig() -> Rig {
    let turn = ONE_AT_A_TIME.lock().await;
    let redis = Backing::redis();
    let mariadb = Backing::mariadb();
    let grace = GRACE_SECS.to_string();
    // gw-1 checks tokens itself, gw-2 asks the auth service.
    let options = Options {
        database: Database::Mariadb,
        database_url: Some(mariadb.url()),
        redis_url: Some(redis.url()),
        gateways: 2,
        all_gateways_check_tokens: false,
        drain_secs: 2,
        ready_within: Duration::from_secs(30),
        ..Options::default()
    }
    .with_env(&[("TERN__GATEWAY__SHUTDOWN_GRACE_SECS", grace.as_str())])
    .with_env(&NO_LIMITS);
    let cluster = Distributed::start(&options).await.expect("cluster starts");
    Rig { cluster, redis, mariadb, _turn: turn }
}

/// The embedded `tern` (one process, SQLite in its data folder).
struct OneProcess {
    server: Embedded,
    /// Declared last, so it is released after the server is down.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

async fn embedded() -> OneProcess {
    let turn = ONE_AT_A_TIME.lock().await;
    let options = Options {
        ready_path: "/health",
        ready_within: Duration::from_secs(10),
        ..Options::default()
    }
    .with_env(&NO_LIMITS);
    let server = Embedded::start(&options).await.expect("tern starts");
    OneProcess { server, _turn: turn }
}

/// What a run loads and breaks.
enum Stage {
    Cluster(Box<Rig>),
    Embedded(Box<OneProcess>),
}

impl Stage {
    /// The HTTP API (the cluster's first gateway).
    fn api(&self) -> Api {
        match self {
            Stage::Cluster(rig) => rig.cluster.api(0),
            Stage::Embedded(e) => e.server.api(),
        }
    }

    /// Where clients connect, in the order they fail over.
    fn gateways(&self) -> Vec<u16> {
        match self {
            Stage::Cluster(rig) => rig.cluster.gateway_ports.clone(),
            Stage::Embedded(e) => vec![e.server.port],
        }
    }

    async fn inject(&mut self, fault: Fault) -> Option<String> {
        match self {
            Stage::Cluster(rig) => rig.inject(fault).await,
            Stage::Embedded(e) => {
                assert!(matches!(fault, Fault::KillEmbedded), "{fault:?} on the embedded server");
                let started = Instant::now();
                e.server.crash_and_restart(Duration::from_secs(1)).await.expect("tern restarts");
                Some(format!("SIGKILL → healthy again in {} ms", started.elapsed().as_millis()))
            }
        }
    }
}

impl Rig {
    /// Breaks `fault`, waits until the cluster is back, and returns a
    /// note for the report, if the fault has one.
    async fn inject(&mut self, fault: Fault) -> Option<String> {
        let c = &mut self.cluster;
        match fault {
            Fault::KillGateway => {
                c.gateways[0].kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                c.gateways[0].start().unwrap();
                c.wait_ready(0).await.unwrap();
                None
            }
            Fault::KillMessageService => {
                c.message.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                c.message.start().unwrap();
                c.wait_ready(0).await.unwrap();
                None
            }
            Fault::RestartRedis => {
                let redis = &mut self.redis;
                tokio::task::block_in_place(|| redis.restart(Duration::from_secs(1)));
                c.wait_ready(0).await.unwrap();
                None
            }
            Fault::RestartMariaDb => {
                let mariadb = &mut self.mariadb;
                // Down longer than the pools' 2 s acquire timeout, so sends
                // fail (retryably) rather than just wait.
                tokio::task::block_in_place(|| mariadb.restart(Duration::from_secs(4)));
                c.wait_ready(0).await.unwrap();
                None
            }
            Fault::KillEmbedded => unreachable!("the cluster has no embedded server"),
            Fault::TermGateway => {
                let started = Instant::now();
                c.gateways[1].signal("TERM", true).unwrap();
                let took = started.elapsed();
                assert!(
                    took < Duration::from_secs(GRACE_SECS + 3),
                    "gateway took {took:?} to exit after SIGTERM (grace {GRACE_SECS} s)"
                );
                c.gateways[1].start().unwrap();
                c.wait_ready(1).await.unwrap();
                Some(format!("SIGTERM → exit in {} ms", took.as_millis()))
            }
        }
    }
}

/// 1:1 partners per user in each direction round the ring.
const CONTACTS: usize = 3;

/// Registers the users and puts them in groups (each group: `group_size`
/// consecutive users, wrapping around).
async fn population(c: &Api, s: &Scale) -> (Vec<Participant>, HashMap<u64, Vec<u64>>) {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut people = Vec::new();
    for i in 0..s.users {
        let u = c.register(&format!("f{}{i}", &tag[tag.len() - 8..])).await.unwrap();
        people.push(Participant { user: u, groups: Vec::new(), contacts: Vec::new() });
    }
    // Each user's contacts: the next few users round the ring, so every
    // 1:1 conversation has traffic both ways.
    let n = people.len();
    for i in 0..n {
        let contacts = (1..=CONTACTS.min(n - 1)).map(|k| people[(i + k) % n].user.id);
        let before = (1..=CONTACTS.min(n - 1)).map(|k| people[(i + n - k) % n].user.id);
        people[i].contacts = contacts.chain(before).collect();
    }
    let mut groups = HashMap::new();
    for g in 0..s.groups {
        let members: Vec<usize> =
            (0..s.group_size).map(|k| (g * s.users / s.groups + k) % s.users).collect();
        let owner = &people[members[0]];
        let ids: Vec<u64> = members[1..].iter().map(|&m| people[m].user.id).collect();
        let group = c.group(&owner.user, &format!("g{g}"), &ids).await.unwrap();
        for &m in &members {
            people[m].groups.push(group);
        }
        groups.insert(group, members.iter().map(|&m| people[m].user.id).collect());
    }
    (people, groups)
}

/// Every conversation's full stored history, read through the HTTP API.
///
/// A 1:1 conversation exists once its first message is stored; one whose
/// every attempt ended unanswered or refused may not exist, and reads as
/// empty (the checker still flags an attempt stored in it). One with an
/// acked attempt or a delivery must be readable.
async fn storage(
    c: &Api,
    logs: &[UserLog],
    people: &[Participant],
) -> HashMap<String, Vec<Stored>> {
    let tokens: HashMap<u64, &str> =
        people.iter().map(|p| (p.user.id, p.user.token.as_str())).collect();
    // Each conversation, a member to read it as, and whether it must exist.
    let mut conversations: HashMap<String, (u64, bool)> = HashMap::new();
    for log in logs {
        for a in &log.attempts {
            let acked = matches!(a.outcome, Outcome::Acked { .. });
            let entry =
                conversations.entry(checker::conversation_of(a)).or_insert((a.sender, false));
            entry.1 |= acked;
        }
        for d in &log.deliveries {
            conversations.insert(d.conversation_id.clone(), (log.user, true));
        }
    }
    let tokens = &tokens;
    let reads = conversations.into_iter().map(|(conversation, (reader, exists))| async move {
        let mut messages: Vec<Stored> = Vec::new();
        loop {
            let after = messages.last().map(|m| m.seq).unwrap_or(0);
            let path =
                format!("/api/conversations/{conversation}/messages?after_seq={after}&limit=200");
            let (status, body) = c.get(&path, Some(tokens[&reader])).await.unwrap();
            if status == 403 && !exists && conversation.starts_with("dm:") {
                break;
            }
            assert_eq!(status, 200, "{conversation}: {body}");
            let page = body["messages"].as_array().unwrap();
            if page.is_empty() {
                break;
            }
            messages.extend(page.iter().map(|m| Stored {
                message_id: m["message_id"].as_str().unwrap().to_string(),
                seq: m["seq"].as_u64().unwrap(),
                from: m["from"].as_u64().unwrap(),
                attempt: m["content"]["a"].as_str().unwrap_or_default().to_string(),
            }));
        }
        (conversation, messages)
    });
    futures::stream::iter(reads).buffer_unordered(16).collect().await
}

/// One run: load, the faults in turn, drain, resync, check.
async fn run(label: &str, mut stage: Stage, load: Load, faults: &[Fault]) -> Verdict {
    let mut s = scale();
    if let Load::Full = load {
        // Half the users, each with a window of sends: enough to saturate
        // the server, and not so many that every send waits out the
        // gateway's 5 s send timeout on a small machine in debug builds
        // (the message service then works on calls nobody waits for).
        s.users = (s.users / 2).max(s.group_size);
        s.groups = (s.users / 10).max(2);
    }
    let api = stage.api();
    let (people, groups) = population(&api, &s).await;
    let gateways = Arc::new(stage.gateways());
    let shape = Shape { rate_per_user: s.rate, group_share: 0.3, pad: 64 };
    let full = FullLoad { window: s.window, group_share: 0.3, pad: 64 };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // Every user has a second device that receives what the first sends.
    let second_devices: Vec<_> = people
        .iter()
        .map(|p| {
            tokio::spawn(workload::run_second_device(p.clone(), gateways.clone(), stop.clone()))
        })
        .collect();
    let tasks: Vec<_> = people
        .iter()
        .map(|p| match load {
            Load::Paced => tokio::spawn(workload::run_user(
                p.clone(),
                gateways.clone(),
                shape.clone(),
                stop.clone(),
            )),
            Load::Full => tokio::spawn(workload::run_full_load_user(
                p.clone(),
                gateways.clone(),
                full.clone(),
                stop.clone(),
            )),
        })
        .collect();
    tokio::time::sleep(s.phase).await;
    let mut notes = Vec::new();
    if let Load::Full = load {
        notes.push(format!("full load, {} sends in flight per user", s.window));
    }
    for &fault in faults {
        notes.extend(stage.inject(fault).await);
        tokio::time::sleep(s.phase).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks.into_iter().chain(second_devices) {
        logs.push(t.await.expect("client task"));
    }
    let load_secs = started.elapsed().as_secs_f64();
    // Every member resyncs from its cursors on a fresh session. A send
    // that ended unknown to its client may still be committed after that
    // (by a message service still working off calls the gateway stopped
    // waiting for), so storage is read before and after each resync, and
    // everyone resyncs again until it holds still.
    let tokens: HashMap<u64, String> =
        people.iter().map(|p| (p.user.id, p.user.token.clone())).collect();
    let first = count(&storage(&api, &logs, &people).await);
    let (mut before, mut rounds) = (first, 0);
    let stored = loop {
        rounds += 1;
        logs = resync_all(logs, &tokens, &gateways).await;
        let stored = storage(&api, &logs, &people).await;
        if count(&stored) == before || rounds == RESYNC_ROUNDS {
            break stored;
        }
        before = count(&stored);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if rounds > 1 {
        let grew = count(&stored) - first;
        notes.push(format!("{grew} messages stored after the clients stopped; {rounds} resyncs"));
    }
    let verdict = checker::check(&logs, &stored, &groups);
    report(label, &verdict, load_secs, &notes);
    verdict
}

/// Most resyncs a run makes while storage keeps growing after the load.
const RESYNC_ROUNDS: usize = 10;

fn count(stored: &HashMap<String, Vec<Stored>>) -> usize {
    stored.values().map(Vec::len).sum()
}

/// Every user opens a fresh session and receives its backlog.
async fn resync_all(
    logs: Vec<UserLog>,
    tokens: &HashMap<u64, String>,
    gateways: &Arc<Vec<u16>>,
) -> Vec<UserLog> {
    let resyncs: Vec<_> = logs
        .into_iter()
        .map(|mut log| {
            let token = tokens[&log.user].clone();
            let gateways = gateways.clone();
            tokio::spawn(async move {
                let r = workload::resync(&mut log, &token, &gateways).await;
                (log, r)
            })
        })
        .collect();
    let mut logs = Vec::new();
    for t in resyncs {
        let (log, r) = t.await.unwrap();
        r.unwrap();
        logs.push(log);
    }
    logs
}

/// Prints the verdict and appends a row to `target/faults-report.md`.
fn report(label: &str, v: &Verdict, secs: f64, notes: &[String]) {
    let rate = v.acked as f64 / secs;
    let mut notes = notes.to_vec();
    notes.insert(0, format!("{secs:.0} s of load"));
    if !v.closes.is_empty() {
        notes.push(format!("closes {:?}", v.closes));
    }
    if v.gave_up > 0 {
        notes.push(format!("{} sessions abandoned after 8 s without an answer", v.gave_up));
    }
    if !v.errors.is_empty() {
        notes.push(format!("errors {:?}", v.errors));
    }
    if let Some(max) = v.ack_latencies.last() {
        let l = &v.ack_latencies;
        let ms = |d: &Duration| d.as_millis();
        notes.push(format!(
            "send → ack ms p50 {} / p99 {} / max {}",
            ms(&l[l.len() / 2]),
            ms(&l[l.len() * 99 / 100]),
            ms(max)
        ));
    }
    if v.resent > 0 {
        notes.push(format!("{} sends resent after their session died", v.resent));
    }
    if v.duplicate_acks > 0 {
        notes.push(format!("{} retries acked as duplicates", v.duplicate_acks));
    }
    if v.misordered > 0 {
        notes.push(format!("{} send answers out of order", v.misordered));
    }
    if !v.ack_errors.is_empty() {
        notes.push(format!("ack errors {:?}", v.ack_errors));
    }
    let row = format!("{} {rate:.0} | {} |", v.row(label), notes.join("; "));
    println!("{label}: {v}\n{row}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../faults-report.md");
    let fresh = !path.exists();
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        if fresh {
            let _ = writeln!(f, "{}", Verdict::HEADER);
        }
        let _ = writeln!(f, "{row}");
    }
}

/// Runs `faults` on the cluster under the paced load and asserts the
/// history is clean; `None` when skipped.
async fn assert_clean(label: &str, faults: &[Fault]) -> Option<Verdict> {
    if skipped() {
        return None;
    }
    Some(assert_run_clean(label, Stage::Cluster(Box::new(rig().await)), Load::Paced, faults).await)
}

/// Runs `fault` at full load (on the embedded server for
/// [`Fault::KillEmbedded`], else on the cluster) and asserts the history
/// is clean; `None` when skipped.
async fn assert_clean_at_full_load(label: &str, fault: Fault) -> Option<Verdict> {
    if skipped() {
        return None;
    }
    let stage = match fault {
        Fault::KillEmbedded => Stage::Embedded(Box::new(embedded().await)),
        _ => Stage::Cluster(Box::new(rig().await)),
    };
    Some(assert_run_clean(label, stage, Load::Full, &[fault]).await)
}

/// Runs `faults` on `stage` under `load` and asserts the history is clean.
async fn assert_run_clean(label: &str, stage: Stage, load: Load, faults: &[Fault]) -> Verdict {
    let v = run(label, stage, load, faults).await;
    assert!(v.clean(), "{label}: {v}");
    // Failures of a dependency reach clients as retryable `unavailable`,
    // never as `internal` (which means a bug).
    assert!(!v.errors.contains_key("internal"), "{label}: {v}");
    assert!(v.acked > 0, "{label}: nothing was acked: {v}");
    assert!(v.delivered > 0, "{label}: nothing was delivered: {v}");
    // Delivery acks only ever cover what the client was sent (or its own
    // messages): a refusal other than a dependency being down is a bug.
    assert!(v.ack_errors.keys().all(|code| code == "unavailable"), "{label}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_a_gateway() {
    if let Some(v) = assert_clean("SIGKILL gateway", &[Fault::KillGateway]).await {
        // Its clients saw the connection die and came back elsewhere.
        assert!(v.closes.contains_key(&1006) && !v.reconnects.is_empty(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_restart_the_message_service() {
    assert_clean("SIGKILL message service", &[Fault::KillMessageService]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_redis() {
    assert_clean("restart Redis", &[Fault::RestartRedis]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_mariadb() {
    if let Some(v) = assert_clean("restart MariaDB", &[Fault::RestartMariaDb]).await {
        // Sends failed fast with a retryable error while it was down.
        assert!(v.errors.get("unavailable").is_some_and(|n| *n > 0), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_a_gateway() {
    if let Some(v) = assert_clean("SIGTERM gateway", &[Fault::TermGateway]).await {
        // Its clients were told the server is going away.
        assert!(v.closes.contains_key(&1001), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_in_one_run() {
    let all = [
        Fault::KillGateway,
        Fault::KillMessageService,
        Fault::RestartRedis,
        Fault::RestartMariaDb,
        Fault::TermGateway,
    ];
    assert_clean("all faults", &all).await;
}

/// Full load through a message service crash: every client keeps its
/// window of sends in flight, so the SIGKILL cuts off `SendBatch` calls in
/// the middle; the gateway answers their sends `unavailable` and clients
/// retry them (same `client_msg_id`) once the service is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_the_message_service_at_full_load() {
    let label = "SIGKILL message service, full load";
    if let Some(v) = assert_clean_at_full_load(label, Fault::KillMessageService).await {
        // The kill hit sends in flight: they were answered with a retryable
        // error (not left hanging) and retried into storage.
        assert!(v.errors.get("unavailable").is_some_and(|n| *n > 0), "{label}: {v}");
    }
}

/// Full load through a crash of the embedded server: the SIGKILL drops
/// every session with sends in flight (answers lost: clients resend them
/// with the same `client_msg_id` after the restart) and delivery acks not
/// yet written behind (those messages are sent again and dropped by
/// `message_id`). SQLite on the same data folder must hold every acked
/// message after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_restart_embedded_tern_at_full_load() {
    let label = "SIGKILL embedded tern, full load";
    if let Some(v) = assert_clean_at_full_load(label, Fault::KillEmbedded).await {
        // Every client lost its session with sends unanswered, and came back.
        assert!(v.closes.contains_key(&1006) && !v.reconnects.is_empty(), "{label}: {v}");
        assert!(v.resent > 0, "{label}: no send was in flight at the kill: {v}");
    }
}

/// The checker itself catches each kind of violation: a history with one
/// of each must be flagged on every count.
#[test]
fn the_checker_flags_every_kind_of_violation() {
    let attempt = |id: &str, sender: u64, to: u64, outcome: Outcome| Attempt {
        id: id.into(),
        sender,
        target: Target::User(to),
        outcome,
        tries: 1,
    };
    let acked = |m: &str, seq: u64| Outcome::Acked {
        message_id: m.into(),
        conversation_id: "dm:1:2".into(),
        seq,
    };
    let delivery = |m: &str, seq: u64| Delivery {
        message_id: m.into(),
        conversation_id: "dm:1:2".into(),
        seq,
        from: 1,
    };
    let sender = UserLog {
        user: 1,
        // An answer came before the answer to an earlier send.
        misordered: 1,
        attempts: vec![
            attempt("a1", 1, 2, acked("m1", 1)),
            attempt("a2", 1, 2, acked("m2", 2)),
            attempt("a3", 1, 2, acked("m-missing", 9)),
            attempt("a4", 1, 2, Outcome::Failed("forbidden".into())),
        ],
        ..UserLog::default()
    };
    // User 2 sees m2 before m1 (order), never sees m5 (lost), and gets a
    // message nobody sent (unexpected).
    let receiver = UserLog {
        user: 2,
        deliveries: vec![
            delivery("m2", 2),
            delivery("m1", 1),
            delivery("m1", 1),
            delivery("m-ghost", 7),
        ],
        ..UserLog::default()
    };
    let stored = |m: &str, seq: u64, attempt: &str| Stored {
        message_id: m.into(),
        seq,
        from: 1,
        attempt: attempt.into(),
    };
    let storage = HashMap::from([(
        "dm:1:2".to_string(),
        vec![
            stored("m1", 1, "a1"),
            stored("m2", 2, "a2"),
            // a2 stored twice (duplicate), a4 stored although refused
            // (phantom), and seq 6 where 4 belongs (gap).
            stored("m3", 3, "a2"),
            stored("m4", 6, "a4"),
        ],
    )]);
    // User 1's second device is owed user 1's own messages too: it got m1
    // and m3, never m2 or m4.
    let second = UserLog {
        user: 1,
        device: "second".into(),
        deliveries: vec![delivery("m1", 1), delivery("m3", 3)],
        ..UserLog::default()
    };
    let v = checker::check(&[sender, receiver, second], &storage, &HashMap::new());
    assert_eq!(v.redelivered, 1, "{v}");
    assert_eq!(v.order, 1, "{v}");
    assert_eq!(v.duplicates, 1, "{v}");
    assert_eq!(v.phantom, 1, "{v}");
    assert_eq!(v.gaps, 1, "{v}");
    assert_eq!(v.misordered, 1, "{v}");
    // m-ghost is not in storage.
    assert_eq!(v.unexpected, 1, "{v}");
    // a3 acked but not stored; m3 and m4 never reached user 2, m2 and m4
    // never reached user 1's second device.
    assert_eq!(v.lost, 5, "{v}");
    assert!(!v.clean());
}

/// Regression: a Redis restart without persistence loses every presence
/// entry. Connected clients must get live pushes again without having to
/// reconnect or heartbeat (the gateway records its sessions again when its
/// subscription comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_pushes_resume_after_redis_loses_presence() {
    if skipped() {
        return;
    }
    let mut rig = rig().await;
    let api = rig.cluster.api(0);
    let (alice, bob) = (api.register("alice").await.unwrap(), api.register("bob").await.unwrap());
    let mut a = session(&rig.cluster, 0, &alice.token).await;
    let mut b = session(&rig.cluster, 1, &bob.token).await;
    rig.inject(Fault::RestartRedis).await;
    rig.cluster.wait_ready(1).await.unwrap();
    // Bob never heartbeats and never reconnects; messages must still reach
    // him live once the nodes are back on Redis. The resync that follows
    // the reconnection delivers what was sent before it, once; only live
    // pushes deliver two messages in a row within moments of their send.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut received, mut in_a_row) = (Vec::new(), 0);
    for i in 0.. {
        let text = json!({ "text": format!("after restart {i}") });
        a.send(client::single(bob.id, &format!("r{i}"), &text)).await.unwrap();
        let ack = answer(&mut a).await;
        assert_eq!(ack["type"], client::ACK, "{ack}");
        let sent = ack["seq"].as_u64().unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while received.last() != Some(&sent) {
            let client::Read::Text(frame) = client::read(&mut b, until.into()).await else {
                break;
            };
            let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(frame["type"], client::SINGLE, "{frame}");
            received.push(frame["seq"].as_u64().unwrap());
        }
        in_a_row = if received.last() == Some(&sent) { in_a_row + 1 } else { 0 };
        if in_a_row == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live pushes reached bob after the Redis restart; got {received:?}"
        );
    }
    // Everything arrived once, in order.
    assert_eq!(received, (1..=received.len() as u64).collect::<Vec<_>>());
}

/// A session for `token` on gateway `i`, proven up by a heartbeat (the
/// user has no backlog: its answer is the first frame).
async fn session(cluster: &Distributed, i: usize, token: &str) -> client::Ws {
    let mut ws = client::connect(&cluster.ws_url(i, token), None).await.unwrap();
    ws.send(client::heartbeat()).await.unwrap();
    assert_eq!(answer(&mut ws).await["type"], client::HEARTBEAT);
    ws
}

/// The next frame but presence news, within 10 s.
async fn answer(ws: &mut client::Ws) -> serde_json::Value {
    loop {
        let until = Instant::now() + Duration::from_secs(10);
        let client::Read::Text(t) = client::read(ws, until.into()).await else {
            panic!("no answer within 10 s");
        };
        let frame: serde_json::Value = serde_json::from_str(&t).unwrap();
        if frame["type"] != client::PRESENCE {
            return frame;
        }
    }
}
