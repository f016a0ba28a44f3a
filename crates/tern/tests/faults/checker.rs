//! The total-queue checker: judges a whole recorded history (every send
//! attempt, every delivery per member) against what storage holds at the
//! end, after every member resynced. docs/protocol.md's delivery guarantees, as counts
//! that must all be zero:
//!
//! - **lost**: acked but not stored, or stored but never delivered to some
//!   device of a member (the sending device excepted);
//! - **unexpected**: stored or delivered, but never attempted by its sender;
//! - **duplicates**: one attempt stored as more than one message (after
//!   deduplicating deliveries by `message_id`);
//! - **phantom**: refused with a final error, yet stored;
//! - **order**: a member saw a conversation's seqs out of order;
//! - **gaps**: a conversation's stored seqs are not exactly 1..=n;
//! - **misordered**: a session's send answers came in another order than
//!   its sends (the server answers a pipelined session in order).

use super::workload::{Attempt, Outcome, Target, UserLog};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write,
    time::Duration,
};

/// A stored message, as the history API returns it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub message_id: String,
    pub seq: u64,
    pub from: u64,
    pub attempt: String,
}

/// The verdict on one run.
#[derive(Debug, Default)]
pub struct Verdict {
    pub attempted: usize,
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
    pub stored: usize,
    /// Deliveries owed: each stored message once per device of each member,
    /// but the device that sent it.
    pub owed: usize,
    /// Distinct deliveries received.
    pub delivered: usize,
    /// Frames received again (same `message_id`) after a reconnect; the
    /// client dedups them, so they are not an error.
    pub redelivered: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicates: usize,
    pub phantom: usize,
    pub order: usize,
    pub gaps: usize,
    pub reconnects: Vec<Duration>,
    pub closes: BTreeMap<u16, usize>,
    /// Sessions clients abandoned after a send went unanswered.
    pub gave_up: usize,
    pub errors: BTreeMap<String, u64>,
    /// Sends resent (same id) because their session ended unanswered.
    pub resent: usize,
    /// Send answers out of send order.
    pub misordered: usize,
    /// Type 3 codes received for delivery acks.
    pub ack_errors: BTreeMap<String, u64>,
    /// Send acks that said `duplicate` (a retry of a stored message).
    pub duplicate_acks: usize,
    /// Send-to-ack times (full-load clients only), sorted.
    pub ack_latencies: Vec<Duration>,
    /// The first few violations, for the failure message.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost
            + self.unexpected
            + self.duplicates
            + self.phantom
            + self.order
            + self.gaps
            + self.misordered
            == 0
    }

    fn flag(&mut self, example: String) {
        if self.examples.len() < 12 {
            self.examples.push(example);
        }
    }

    /// One Markdown table row: `| label | attempted | acked | … |`.
    pub fn row(&self, label: &str) -> String {
        let mut r = self.reconnects.clone();
        r.sort();
        let pct = |p: f64| {
            r.get(((r.len() as f64 * p) as usize).min(r.len().saturating_sub(1)))
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "–".into())
        };
        format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            self.attempted,
            self.acked,
            self.failed,
            self.unknown,
            self.owed,
            self.delivered,
            self.redelivered,
            self.lost,
            self.unexpected,
            self.duplicates,
            self.order + self.gaps,
            r.len(),
            pct(0.5),
            pct(0.99),
            r.last()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "–".into()),
        )
    }

    pub const HEADER: &'static str = "| run | attempted | acked | failed | unknown | deliveries owed | delivered | redelivered | lost | unexpected | duplicates | order/gaps | reconnects | reconnect ms p50 / p99 / max | acked msg/s | notes |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        let _ = write!(
            s,
            "attempted {} (acked {}, failed {}, unknown {}), stored {}, deliveries owed {}, delivered {} (+{} redelivered); \
             lost {}, unexpected {}, duplicates {}, phantom {}, order {}, gaps {}, misordered answers {}; \
             reconnects {}; closes {:?}; gave up {}; resent {}; acked as duplicates {}; errors {:?}; ack errors {:?}",
            self.attempted,
            self.acked,
            self.failed,
            self.unknown,
            self.stored,
            self.owed,
            self.delivered,
            self.redelivered,
            self.lost,
            self.unexpected,
            self.duplicates,
            self.phantom,
            self.order,
            self.gaps,
            self.misordered,
            self.reconnects.len(),
            self.closes,
            self.gave_up,
            self.resent,
            self.duplicate_acks,
            self.errors,
            self.ack_errors,
        );
        for e in &self.examples {
            let _ = write!(s, "\n  - {e}");
        }
        f.write_str(&s)
    }
}

/// The conversation an attempt goes to.
pub fn conversation_of(attempt: &Attempt) -> String {
    match attempt.target {
        Target::User(to) => {
            let (lo, hi) = (attempt.sender.min(to), attempt.sender.max(to));
            format!("dm:{lo}:{hi}")
        }
        Target::Group(g) => format!("group:{g}"),
    }
}

/// Checks `logs` against `stored` (every conversation's full history).
/// `members` gives each conversation's members; a 1:1 conversation's are
/// read off its id.
pub fn check(
    logs: &[UserLog],
    stored: &HashMap<String, Vec<Stored>>,
    group_members: &HashMap<u64, Vec<u64>>,
) -> Verdict {
    let mut v = Verdict::default();
    let attempts: HashMap<&str, &Attempt> =
        logs.iter().flat_map(|l| &l.attempts).map(|a| (a.id.as_str(), a)).collect();
    v.attempted = attempts.len();
    for a in attempts.values() {
        match a.outcome {
            Outcome::Acked { .. } => v.acked += 1,
            Outcome::Failed(_) => v.failed += 1,
            Outcome::Unknown => v.unknown += 1,
        }
    }

    // Storage: gap-free seqs, every message attempted, no attempt twice.
    let mut stored_by_attempt: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut stored_ids: HashMap<&str, (&str, &Stored)> = HashMap::new();
    for (conversation, messages) in stored {
        v.stored += messages.len();
        for (i, m) in messages.iter().enumerate() {
            if m.seq != i as u64 + 1 {
                v.gaps += 1;
                v.flag(format!("{conversation}: seq {} stored at position {}", m.seq, i + 1));
            }
            match attempts.get(m.attempt.as_str()) {
                Some(a) if a.sender == m.from && conversation_of(a) == *conversation => {}
                _ => {
                    v.unexpected += 1;
                    v.flag(format!(
                        "{conversation} seq {}: attempt {:?} was never sent by {}",
                        m.seq, m.attempt, m.from
                    ));
                }
            }
            stored_by_attempt.entry(&m.attempt).or_default().push(&m.message_id);
            stored_ids.insert(&m.message_id, (conversation, m));
        }
    }
    for (attempt, ids) in &stored_by_attempt {
        if ids.len() > 1 {
            v.duplicates += ids.len() - 1;
            v.flag(format!("attempt {attempt} stored {} times", ids.len()));
        }
    }
    for a in attempts.values() {
        let stored_as = stored_by_attempt.get(a.id.as_str());
        match &a.outcome {
            Outcome::Acked { message_id, .. }
                if !stored_as.is_some_and(|ids| ids.contains(&message_id.as_str())) =>
            {
                v.lost += 1;
                v.flag(format!("attempt {} acked as {message_id} but not stored", a.id));
            }
            Outcome::Failed(code) if stored_as.is_some() => {
                v.phantom += 1;
                v.flag(format!("attempt {} refused with {code} but stored", a.id));
            }
            _ => {}
        }
    }

    // Deliveries: per member, deduplicated by message_id, in seq order.
    for log in logs {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut last: HashMap<&str, u64> = HashMap::new();
        for d in &log.deliveries {
            if !seen.insert(&d.message_id) {
                v.redelivered += 1;
                continue;
            }
            match stored_ids.get(d.message_id.as_str()) {
                Some((conversation, m))
                    if *conversation == d.conversation_id && m.seq == d.seq && m.from == d.from => {
                }
                _ => {
                    v.unexpected += 1;
                    v.flag(format!(
                        "user {} got {} ({} seq {}), which storage does not hold",
                        log.user, d.message_id, d.conversation_id, d.seq
                    ));
                }
            }
            let prev = last.insert(&d.conversation_id, d.seq);
            if prev.is_some_and(|p| d.seq <= p) {
                v.order += 1;
                v.flag(format!(
                    "user {} saw {} seq {} after seq {}",
                    log.user,
                    d.conversation_id,
                    d.seq,
                    prev.unwrap_or_default()
                ));
            }
        }
        v.delivered += seen.len();
        v.reconnects.extend(log.reconnects.iter().copied());
        v.gave_up += log.gave_up;
        for code in &log.closes {
            *v.closes.entry(*code).or_default() += 1;
        }
        for (code, n) in &log.errors {
            *v.errors.entry(code.clone()).or_default() += n;
        }
        for (code, n) in &log.ack_errors {
            *v.ack_errors.entry(code.clone()).or_default() += n;
        }
        v.resent += log.resent;
        v.duplicate_acks += log.duplicate_acks;
        v.ack_latencies.extend(log.ack_latencies.iter().copied());
        if log.misordered > 0 {
            v.misordered += log.misordered;
            v.flag(format!("user {} got {} send answers out of order", log.user, log.misordered));
        }
    }
    v.ack_latencies.sort();
    // What each device of each user received. The default device (the one
    // that sends) is owed every message but its own; any other device of
    // the user is owed the user's own messages too.
    let mut got: HashMap<u64, Vec<(&str, HashSet<&str>)>> = HashMap::new();
    for l in logs {
        let ids = l.deliveries.iter().map(|d| d.message_id.as_str()).collect();
        got.entry(l.user).or_default().push((l.device.as_str(), ids));
    }
    for (conversation, messages) in stored {
        let members = members_of(conversation, group_members);
        for m in messages {
            for member in &members {
                let devices = got.get(member).map(Vec::as_slice).unwrap_or_default();
                for (device, ids) in devices {
                    if *member == m.from && device.is_empty() {
                        continue;
                    }
                    v.owed += 1;
                    if !ids.contains(m.message_id.as_str()) {
                        v.lost += 1;
                        v.flag(format!(
                            "user {member} (device {device:?}) never got {conversation} seq {} ({})",
                            m.seq, m.message_id
                        ));
                    }
                }
            }
        }
    }
    v
}

fn members_of(conversation: &str, group_members: &HashMap<u64, Vec<u64>>) -> Vec<u64> {
    if let Some(rest) = conversation.strip_prefix("dm:") {
        return rest.split(':').filter_map(|p| p.parse().ok()).collect();
    }
    conversation
        .strip_prefix("group:")
        .and_then(|g| g.parse().ok())
        .and_then(|g| group_members.get(&g).cloned())
        .unwrap_or_default()
}
