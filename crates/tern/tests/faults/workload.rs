//! A mixed chat workload over real WebSockets for the fault runs: every
//! simulated user keeps one session (moving to another gateway when its
//! own fails), sends 1:1 and group messages with retries under the same
//! `client_msg_id`, acks what it receives, and records every send attempt
//! and every delivery. [`super::checker`] then judges the whole history.
//!
//! Two kinds of client: [`run_user`] sends at a paced rate with one send
//! in flight and acks every 300 ms; [`run_full_load_user`] keeps a window
//! of sends in flight as fast as the server answers them and acks every
//! delivered message as it arrives, like a real client.

use futures::SinkExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use tern_testkit::{
    api::User,
    client::{self, Read, Ws, ws_url},
};
use tokio_tungstenite::tungstenite::Message;

/// One simulated user.
#[derive(Clone, Debug)]
pub struct Participant {
    /// The account.
    pub user: User,
    /// Groups this user belongs to.
    pub groups: Vec<u64>,
    /// The users this one sends 1:1 messages to (real users talk to a
    /// handful of people, not to everyone).
    pub contacts: Vec<u64>,
}

/// How a send attempt ended, as the client knows it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Type 30: stored as this message.
    Acked { message_id: String, conversation_id: String, seq: u64 },
    /// Type 3 with a code that retrying cannot fix.
    Failed(String),
    /// No answer before the client gave up: stored or not, unknown.
    Unknown,
}

/// One logical message: all its tries share the `client_msg_id`.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: String,
    pub sender: u64,
    pub target: Target,
    pub outcome: Outcome,
    pub tries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    User(u64),
    Group(u64),
}

/// A message as a client received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub from: u64,
}

/// What one user saw.
#[derive(Debug, Default)]
pub struct UserLog {
    pub user: u64,
    /// The device the client connected as; empty is the default device,
    /// which is never sent its own messages. Another device is sent them.
    pub device: String,
    pub attempts: Vec<Attempt>,
    /// In arrival order, redeliveries included.
    pub deliveries: Vec<Delivery>,
    /// Time from losing a session to having a working one again.
    pub reconnects: Vec<Duration>,
    /// Close codes the server sent (1006 for a connection that just died).
    pub closes: Vec<u16>,
    /// Sessions the client abandoned because a send went unanswered for
    /// [`ANSWER_TIMEOUT`] (the send is retried on a new session).
    pub gave_up: usize,
    /// Type 3 codes received for sends.
    pub errors: HashMap<String, u64>,
    /// Sends that were unanswered when their session ended, and were sent
    /// again (same `client_msg_id`) on the next one.
    pub resent: usize,
    /// Send answers that did not come in the order of the sends (the
    /// server answers a session's sends in order).
    pub misordered: usize,
    /// Type 3 codes received for delivery acks (frames without a
    /// `client_msg_id`).
    pub ack_errors: HashMap<String, u64>,
    /// Send acks with `duplicate: true`: a retry found its message already
    /// stored (stored before a crash cut off the answer).
    pub duplicate_acks: usize,
    /// Full load: from sending an attempt's last try to its ack.
    pub ack_latencies: Vec<Duration>,
}

/// Workload shape.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Messages each user sends per second.
    pub rate_per_user: f64,
    /// Share of sends that go to one of the user's groups.
    pub group_share: f64,
    /// Content padding, bytes.
    pub pad: usize,
}

/// Codes after which the same send is retried.
fn retryable(code: &str) -> bool {
    matches!(code, "unavailable" | "rate_limited" | "internal")
}

/// How long a send may go unanswered before the session is presumed dead.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the stopping phase keeps retrying unanswered sends.
const SETTLE: Duration = Duration::from_secs(40);

/// Runs one user until `stop` is set, then settles its last send (retrying
/// it for up to [`SETTLE`]) and closes.
pub async fn run_user(
    me: Participant,
    gateways: Arc<Vec<u16>>,
    shape: Shape,
    stop: Arc<AtomicBool>,
) -> UserLog {
    let sim = Sim { s: Sender::new(me, stop), shape, pending: None };
    let mut client = Client::Paced(sim);
    reconnect_loop(&mut client, &gateways).await;
    let Client::Paced(mut sim) = client else { unreachable!() };
    if let Some(mut attempt) = sim.pending.take() {
        attempt.outcome = Outcome::Unknown;
        sim.s.log.attempts.push(attempt);
    }
    sim.s.log
}

enum SessionEnd {
    Stopped,
    Lost(u16),
    GaveUp,
}

/// Every kind of simulated client, for the loop they share.
enum Client {
    Paced(Sim),
    Full(Pipelined),
    Second(SecondDevice),
}

impl Client {
    fn parts(&mut self) -> (&Participant, &mut UserLog) {
        match self {
            Client::Paced(c) => (&c.s.me, &mut c.s.log),
            Client::Full(c) => (&c.s.me, &mut c.s.log),
            Client::Second(c) => (&c.me, &mut c.log),
        }
    }

    fn finished(&mut self) -> bool {
        match self {
            Client::Paced(c) => c.finished(),
            Client::Full(c) => c.finished(),
            Client::Second(c) => c.stop.load(Relaxed),
        }
    }

    async fn session(&mut self, ws: &mut Ws) -> SessionEnd {
        match self {
            Client::Paced(c) => c.session(ws).await,
            Client::Full(c) => c.session(ws).await,
            Client::Second(c) => c.session(ws).await,
        }
    }
}

/// A user's second device (a phone beside the laptop that sends): it only
/// receives, acks what arrived every 300 ms, and reconnects like the
/// others. It is owed every message of the user's conversations, the
/// user's own included.
struct SecondDevice {
    me: Participant,
    stop: Arc<AtomicBool>,
    log: UserLog,
}

/// Runs `me`'s second device until `stop` is set.
pub async fn run_second_device(
    me: Participant,
    gateways: Arc<Vec<u16>>,
    stop: Arc<AtomicBool>,
) -> UserLog {
    let log = UserLog { user: me.user.id, device: "second".into(), ..UserLog::default() };
    let mut client = Client::Second(SecondDevice { me, stop, log });
    reconnect_loop(&mut client, &gateways).await;
    let Client::Second(device) = client else { unreachable!() };
    device.log
}

impl SecondDevice {
    async fn session(&mut self, ws: &mut Ws) -> SessionEnd {
        let mut to_ack: HashMap<String, u64> = HashMap::new();
        let mut next_ack = Instant::now() + Duration::from_millis(300);
        loop {
            if self.stop.load(Relaxed) {
                flush_acks(ws, &mut to_ack).await;
                return SessionEnd::Stopped;
            }
            if Instant::now() >= next_ack {
                flush_acks(ws, &mut to_ack).await;
                next_ack = Instant::now() + Duration::from_millis(300);
            }
            let frame = match next_frame(ws, next_ack, None).await {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(end) => return end,
            };
            if let Some(1 | 2) = frame["type"].as_i64() {
                let delivery = delivery_of(&frame);
                let seq = to_ack.entry(delivery.conversation_id.clone()).or_default();
                *seq = (*seq).max(delivery.seq);
                self.log.deliveries.push(delivery);
            }
        }
    }
}

/// Connects, runs sessions and reconnects (to the next gateway after a
/// lost connection) until the client is finished; records every close
/// and how long each reconnect took.
async fn reconnect_loop(client: &mut Client, gateways: &[u16]) {
    let mut gateway = client.parts().0.user.id as usize % gateways.len();
    let mut lost_at: Option<Instant> = None;
    while !client.finished() {
        let token = client.parts().0.user.token.clone();
        let device = client.parts().1.device.clone();
        let Some(mut ws) = open(gateways[gateway], &token, &device).await else {
            gateway = (gateway + 1) % gateways.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if let Some(at) = lost_at.take() {
            client.parts().1.reconnects.push(at.elapsed());
        }
        match client.session(&mut ws).await {
            SessionEnd::Stopped => {
                let _ = ws.close(None).await;
            }
            SessionEnd::Lost(code) => {
                client.parts().1.closes.push(code);
                lost_at = Some(Instant::now());
                gateway = (gateway + 1) % gateways.len();
            }
            SessionEnd::GaveUp => {
                let _ = ws.close(None).await;
                client.parts().1.gave_up += 1;
                lost_at = Some(Instant::now());
            }
        }
    }
}

/// The next JSON frame, or `None` when `wake` passed (or a non-text frame
/// came) first; the session's end when it closed, or when `answer_by`
/// passed (the gateway holds the sends: give up on this session).
async fn next_frame(
    ws: &mut Ws,
    wake: Instant,
    answer_by: Option<Instant>,
) -> Result<Option<Value>, SessionEnd> {
    match client::read(ws, wake.into()).await.into_result() {
        Ok(None) if answer_by.is_some_and(|by| Instant::now() >= by) => Err(SessionEnd::GaveUp),
        Ok(text) => Ok(text.map(|t| serde_json::from_str(&t).unwrap_or_default())),
        Err(closed) => Err(SessionEnd::Lost(closed.code)),
    }
}

/// Opens a session; the backlog then arrives on it like live traffic.
async fn open(port: u16, token: &str, device: &str) -> Option<Ws> {
    let url = ws_url(port, token, Some(device).filter(|d| !d.is_empty()));
    tokio::time::timeout(Duration::from_secs(5), client::connect(&url, None)).await.ok()?.ok()
}

/// One simulated user's state across sessions.
struct Sim {
    s: Sender,
    shape: Shape,
    /// The send in flight; survives a lost session and is retried, same id.
    pending: Option<Attempt>,
}

/// What every sending client keeps across sessions.
struct Sender {
    me: Participant,
    stop: Arc<AtomicBool>,
    stopped_at: Option<Instant>,
    rng: StdRng,
    counter: u64,
    log: UserLog,
}

impl Sender {
    fn new(me: Participant, stop: Arc<AtomicBool>) -> Sender {
        Sender {
            log: UserLog { user: me.user.id, ..UserLog::default() },
            rng: StdRng::seed_from_u64(me.user.id),
            me,
            stop,
            stopped_at: None,
            counter: 0,
        }
    }

    /// After `stop`: done once `settled` (nothing is left unanswered), or
    /// [`SETTLE`] has passed.
    fn finished(&mut self, settled: bool) -> bool {
        if !self.stop.load(Relaxed) {
            return false;
        }
        let since = *self.stopped_at.get_or_insert_with(Instant::now);
        settled || since.elapsed() > SETTLE
    }

    /// The next message: to one of the user's groups with odds
    /// `group_share`, else to one of its contacts.
    fn new_attempt(&mut self, group_share: f64) -> Attempt {
        self.counter += 1;
        let (me, rng) = (&self.me, &mut self.rng);
        let target = if !me.groups.is_empty() && rng.random_bool(group_share) {
            Target::Group(me.groups[rng.random_range(0..me.groups.len())])
        } else {
            Target::User(me.contacts[rng.random_range(0..me.contacts.len())])
        };
        let id = format!("u{}-{}", me.user.id, self.counter);
        Attempt { id, sender: me.user.id, target, outcome: Outcome::Unknown, tries: 0 }
    }
}

impl Sim {
    /// After `stop`: done once the last send is answered, or [`SETTLE`]
    /// has passed.
    fn finished(&mut self) -> bool {
        self.s.finished(self.pending.is_none())
    }

    async fn session(&mut self, ws: &mut Ws) -> SessionEnd {
        let mut next_send = Instant::now();
        let mut answer_by: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        let mut to_ack: HashMap<String, u64> = HashMap::new();
        let mut next_ack = Instant::now() + Duration::from_millis(300);
        let interval = Duration::from_secs_f64(1.0 / self.shape.rate_per_user.max(0.01));
        loop {
            if self.finished() {
                flush_acks(ws, &mut to_ack).await;
                return SessionEnd::Stopped;
            }
            if answer_by.is_none() && Instant::now() >= next_send {
                let stopping = self.s.stop.load(Relaxed);
                if self.pending.is_none() && !stopping {
                    self.pending = Some(self.s.new_attempt(self.shape.group_share));
                }
                if let Some(attempt) = self.pending.as_mut() {
                    attempt.tries += 1;
                    let frame = send_frame(attempt, self.shape.pad);
                    if ws.send(frame).await.is_err() {
                        return SessionEnd::Lost(1006);
                    }
                    answer_by = Some(Instant::now() + ANSWER_TIMEOUT);
                }
            }
            if Instant::now() >= next_ack {
                flush_acks(ws, &mut to_ack).await;
                next_ack = Instant::now() + Duration::from_millis(300);
            }
            let wake = answer_by.unwrap_or(next_send).min(next_ack);
            let frame = match next_frame(ws, wake, answer_by).await {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(end) => return end,
            };
            match frame["type"].as_i64() {
                Some(1 | 2) => {
                    let delivery = delivery_of(&frame);
                    let top = to_ack.entry(delivery.conversation_id.clone()).or_default();
                    *top = (*top).max(delivery.seq);
                    self.s.log.deliveries.push(delivery);
                }
                Some(30) if is_answer(&frame, &self.pending) => {
                    let mut attempt = self.pending.take().expect("answer to a pending send");
                    attempt.outcome = Outcome::Acked {
                        message_id: str_field(&frame, "message_id"),
                        conversation_id: str_field(&frame, "conversation_id"),
                        seq: frame["seq"].as_u64().unwrap_or_default(),
                    };
                    self.s.log.attempts.push(attempt);
                    answer_by = None;
                    backoff = Duration::from_millis(50);
                    next_send = Instant::now() + jitter(&mut self.s.rng, interval);
                }
                Some(3) if is_answer(&frame, &self.pending) => {
                    let code = str_field(&frame, "code");
                    *self.s.log.errors.entry(code.clone()).or_default() += 1;
                    answer_by = None;
                    if retryable(&code) {
                        next_send = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    } else {
                        let mut attempt = self.pending.take().expect("answer to a pending send");
                        attempt.outcome = Outcome::Failed(code);
                        self.s.log.attempts.push(attempt);
                        next_send = Instant::now() + jitter(&mut self.s.rng, interval);
                    }
                }
                // Kicked (type 100): the close frame follows.
                _ => {}
            }
        }
    }
}

fn str_field(frame: &Value, name: &str) -> String {
    frame[name].as_str().unwrap_or_default().to_string()
}

fn delivery_of(frame: &Value) -> Delivery {
    Delivery {
        message_id: str_field(frame, "message_id"),
        conversation_id: str_field(frame, "conversation_id"),
        seq: frame["seq"].as_u64().unwrap_or_default(),
        from: frame["from"].as_u64().unwrap_or_default(),
    }
}

fn is_answer(frame: &Value, pending: &Option<Attempt>) -> bool {
    pending.as_ref().is_some_and(|p| frame["client_msg_id"].as_str() == Some(&p.id))
}

fn jitter(rng: &mut StdRng, interval: Duration) -> Duration {
    interval.mul_f64(rng.random_range(0.5..1.5))
}

async fn flush_acks(ws: &mut Ws, to_ack: &mut HashMap<String, u64>) {
    for (conversation_id, seq) in to_ack.drain() {
        if ws.send(client::ack(&conversation_id, seq)).await.is_err() {
            return;
        }
    }
}

fn send_frame(attempt: &Attempt, pad: usize) -> Message {
    let content = json!({ "a": attempt.id, "pad": "x".repeat(pad) });
    match attempt.target {
        Target::User(to) => client::single(to, &attempt.id, &content),
        Target::Group(g) => client::group(g, &attempt.id, &content),
    }
}

/// A full-load client: how many sends it keeps unanswered, and where they go.
#[derive(Clone, Debug)]
pub struct FullLoad {
    /// Sends in flight per session (the server's window is 32).
    pub window: usize,
    /// Share of sends that go to one of the user's groups.
    pub group_share: f64,
    /// Content padding, bytes.
    pub pad: usize,
}

/// Runs one user at full load until `stop` is set: it keeps up to
/// `load.window` sends unanswered, sending the next one as soon as an
/// answer frees a place; it acks every message delivered to it as it
/// arrives (and its own messages once everything before them has arrived);
/// it retries a send refused with a retryable code after a backoff, and
/// resends on its next session every send its last session left
/// unanswered, always with the same `client_msg_id`. After `stop` it sends
/// nothing new, settles what is left (for up to [`SETTLE`]) and closes.
pub async fn run_full_load_user(
    me: Participant,
    gateways: Arc<Vec<u16>>,
    load: FullLoad,
    stop: Arc<AtomicBool>,
) -> UserLog {
    let client = Pipelined {
        s: Sender::new(me, stop),
        load,
        outstanding: VecDeque::new(),
        retry: VecDeque::new(),
        hold: Instant::now(),
        backoff: Duration::from_millis(50),
        received: HashMap::new(),
        own: HashMap::new(),
    };
    let mut client = Client::Full(client);
    reconnect_loop(&mut client, &gateways).await;
    let Client::Full(mut client) = client else { unreachable!() };
    // Whatever is still unanswered may or may not be stored.
    let left = client.outstanding.drain(..).map(|(a, _)| a).chain(client.retry.drain(..));
    client.s.log.attempts.extend(left.map(|a| Attempt { outcome: Outcome::Unknown, ..a }));
    client.s.log
}

/// One full-load user's state across sessions.
struct Pipelined {
    s: Sender,
    load: FullLoad,
    /// Sent on the current session and not answered yet, in send order,
    /// with when each was sent.
    outstanding: VecDeque<(Attempt, Instant)>,
    /// To send again (same id) before anything new, in order.
    retry: VecDeque<Attempt>,
    /// Nothing is sent before this (backoff after a retryable refusal).
    hold: Instant,
    backoff: Duration,
    /// Per conversation, the highest seq this client has, every seq below
    /// it included (its own messages count once everything before them
    /// arrived).
    received: HashMap<String, u64>,
    /// Per conversation, seqs of its own messages beyond `received`.
    own: HashMap<String, BTreeSet<u64>>,
}

impl Pipelined {
    /// After `stop`: done once every send is answered, or [`SETTLE`] has
    /// passed.
    fn finished(&mut self) -> bool {
        self.s.finished(self.outstanding.is_empty() && self.retry.is_empty())
    }

    /// Records that this client has `seq` of `conversation` (a delivery or
    /// one of its own sends) and returns how far it may now ack.
    fn advance(&mut self, conversation: &str, seq: u64, mine: bool) -> u64 {
        let top = self.received.entry(conversation.to_string()).or_default();
        let own = self.own.entry(conversation.to_string()).or_default();
        if mine && seq > *top + 1 {
            // Something before it has not arrived yet.
            own.insert(seq);
            return *top;
        }
        *top = (*top).max(seq);
        while own.first().is_some_and(|s| *s <= *top + 1) {
            let s = own.pop_first().unwrap_or_default();
            *top = (*top).max(s);
        }
        *top
    }

    async fn session(&mut self, ws: &mut Ws) -> SessionEnd {
        // What the last session left unanswered goes first, in order.
        while let Some((attempt, _)) = self.outstanding.pop_back() {
            self.s.log.resent += 1;
            self.retry.push_front(attempt);
        }
        // The highest ack sent per conversation on this session.
        let mut acked: HashMap<String, u64> = HashMap::new();
        loop {
            if self.finished() {
                return SessionEnd::Stopped;
            }
            // Fill the window.
            while self.outstanding.len() < self.load.window && Instant::now() >= self.hold {
                let mut attempt = match self.retry.pop_front() {
                    Some(a) => a,
                    None if !self.s.stop.load(Relaxed) => self.s.new_attempt(self.load.group_share),
                    None => break,
                };
                attempt.tries += 1;
                let sent = ws.send(send_frame(&attempt, self.load.pad)).await;
                // Sent or not, the server may have it: it is resent (same id)
                // on the next session if unanswered.
                self.outstanding.push_back((attempt, Instant::now()));
                if sent.is_err() {
                    return SessionEnd::Lost(1006);
                }
            }
            let now = Instant::now();
            let answer_by = self.outstanding.front().map(|(_, at)| *at + ANSWER_TIMEOUT);
            // Wake to notice `stop`, an answer overdue, or the end of a backoff.
            let mut wake = now + Duration::from_millis(200);
            if let Some(by) = answer_by {
                wake = wake.min(by);
            }
            if self.hold > now {
                wake = wake.min(self.hold);
            }
            let frame = match next_frame(ws, wake, answer_by).await {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(end) => return end,
            };
            let mut ack = None;
            match frame["type"].as_i64() {
                Some(1 | 2) => {
                    let delivery = delivery_of(&frame);
                    let before = self.received.get(&delivery.conversation_id).copied();
                    let top = self.advance(&delivery.conversation_id, delivery.seq, false);
                    // A redelivery (after a crash lost acks written behind)
                    // is acked as what it is.
                    let upto =
                        if before.is_some_and(|b| delivery.seq <= b) { delivery.seq } else { top };
                    ack = Some((delivery.conversation_id.clone(), upto));
                    self.s.log.deliveries.push(delivery);
                }
                Some(30) => {
                    let Some(attempt) = self.answered(&frame) else { continue };
                    let (conversation_id, seq) =
                        (str_field(&frame, "conversation_id"), frame["seq"].as_u64().unwrap_or(0));
                    if frame["duplicate"] == true {
                        self.s.log.duplicate_acks += 1;
                    }
                    let top = self.advance(&conversation_id, seq, true);
                    if top >= seq {
                        ack = Some((conversation_id.clone(), top));
                    }
                    self.s.log.attempts.push(Attempt {
                        outcome: Outcome::Acked {
                            message_id: str_field(&frame, "message_id"),
                            conversation_id,
                            seq,
                        },
                        ..attempt
                    });
                    self.backoff = Duration::from_millis(50);
                }
                Some(3) if frame["client_msg_id"].is_string() => {
                    let Some(attempt) = self.answered(&frame) else { continue };
                    let code = str_field(&frame, "code");
                    *self.s.log.errors.entry(code.clone()).or_default() += 1;
                    if retryable(&code) {
                        self.retry.push_back(attempt);
                        // One backoff per refusal streak, not per refusal:
                        // a window refused at once waits once.
                        let now = Instant::now();
                        if now >= self.hold {
                            self.hold = now + self.backoff;
                            self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                        }
                    } else {
                        self.s
                            .log
                            .attempts
                            .push(Attempt { outcome: Outcome::Failed(code), ..attempt });
                    }
                }
                Some(3) => {
                    *self.s.log.ack_errors.entry(str_field(&frame, "code")).or_default() += 1;
                }
                // Heartbeats; kicked (type 100): the close frame follows.
                _ => {}
            }
            if let Some((conversation_id, seq)) = ack
                && acked.get(&conversation_id).is_none_or(|a| seq > *a)
            {
                if ws.send(client::ack(&conversation_id, seq)).await.is_err() {
                    return SessionEnd::Lost(1006);
                }
                acked.insert(conversation_id, seq);
            }
        }
    }

    /// Takes the outstanding send `frame` answers, noting an answer out of
    /// send order.
    fn answered(&mut self, frame: &Value) -> Option<Attempt> {
        let id = frame["client_msg_id"].as_str()?;
        let at = self.outstanding.iter().position(|(a, _)| a.id == id)?;
        if at != 0 {
            self.s.log.misordered += 1;
        }
        let (attempt, sent) = self.outstanding.remove(at)?;
        if frame["type"] == 30 {
            self.s.log.ack_latencies.push(sent.elapsed());
        }
        Some(attempt)
    }
}

/// The final resync: a fresh session that receives everything beyond the
/// user's cursors; the heartbeat's answer comes after the whole backlog.
pub async fn resync(log: &mut UserLog, token: &str, gateways: &[u16]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = log.user as usize;
    let mut ws = loop {
        if let Some(ws) = open(gateways[i % gateways.len()], token, &log.device).await {
            break ws;
        }
        if Instant::now() > deadline {
            return Err(format!("user {} could not reconnect for the resync", log.user));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ws.send(client::heartbeat()).await.map_err(|e| e.to_string())?;
    loop {
        let frame = match client::read(&mut ws, deadline.into()).await {
            Read::Text(t) => serde_json::from_str::<Value>(&t).unwrap_or_default(),
            other => return Err(format!("user {} resync ended early: {other:?}", log.user)),
        };
        match frame["type"].as_i64() {
            Some(1 | 2) => log.deliveries.push(delivery_of(&frame)),
            Some(99) => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
