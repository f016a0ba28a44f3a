//! The scenarios, one module each, and what they share: the context they
//! run in, the outcome they report and the delivery checker.

pub mod drain;
pub mod fanout;
pub mod files;
pub mod idle;
pub mod latency;
pub mod pairs;
pub mod storm;
pub mod throughput;

use crate::{cli::Scale, topology::Topology, users::Pool};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::{collections::BTreeMap, path::Path};

/// What a scenario runs against.
pub struct Ctx<'a> {
    pub topo: &'a mut Topology,
    pub pool: &'a mut Pool,
    pub scale: &'a Scale,
    pub out: &'a Path,
    /// S2's best delivered rate on this topology, for S4's load levels.
    pub s2_max: Option<f64>,
}

/// Delivery accounting of one case: what had to arrive and what did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Checks {
    /// Deliveries (or connections, for S1/S5) that should happen.
    pub expected: u64,
    /// Distinct deliveries that happened.
    pub delivered: u64,
    /// Expected but never seen.
    pub lost: u64,
    /// Seen more than once.
    pub duplicated: u64,
    /// Seen before an earlier message of the same stream.
    pub out_of_order: u64,
    /// Error frames or failed connects.
    pub errors: u64,
    /// Reconnects the server asked for (close 1013); allowed by protocol v1.
    pub reconnects: u64,
    /// Messages the server replayed after such a reconnect (not acked yet
    /// when the socket closed); allowed, and not counted as duplicates.
    pub redelivered: u64,
}

impl Checks {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.errors == 0
            && self.delivered == self.expected
    }

    pub fn add(&mut self, o: &Checks) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.errors += o.errors;
        self.reconnects += o.reconnects;
        self.redelivered += o.redelivered;
    }
}

/// The result of one case of one scenario on one topology.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `s0` … `s6`.
    pub scenario: String,
    pub topology: String,
    /// The case within the scenario (`group 1000`, `50%`, `1 x 10000`).
    pub case: String,
    /// Figures by name; units are in the names (`_per_sec`, `_ms`, `_kib`).
    pub metrics: BTreeMap<String, f64>,
    pub checks: Checks,
    /// Why the case could not finish, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    pub fn new(scenario: &str, topo: &Topology, case: impl Into<String>) -> Outcome {
        Outcome {
            scenario: scenario.into(),
            topology: topo.kind.name().into(),
            case: case.into(),
            metrics: BTreeMap::new(),
            checks: Checks::default(),
            error: None,
        }
    }

    pub fn set(&mut self, name: &str, value: f64) -> &mut Self {
        self.metrics.insert(name.into(), value);
        self
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// Records P50/P99/P99.9/max of `h` (microseconds) as `{prefix}_p50_ms`…
    pub fn percentiles(&mut self, prefix: &str, h: &Histogram<u64>) {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return;
        }
        self.set(&format!("{prefix}_p50_ms"), ms(h.value_at_quantile(0.50)));
        self.set(&format!("{prefix}_p99_ms"), ms(h.value_at_quantile(0.99)));
        self.set(&format!("{prefix}_p999_ms"), ms(h.value_at_quantile(0.999)));
        self.set(&format!("{prefix}_max_ms"), ms(h.max()));
    }
}

/// CPU time spent by every process of the topology during one case.
pub struct CpuMeter {
    /// Name, pid, whether Tern runs it, CPU seconds at the start.
    start: Vec<(String, u32, bool, f64)>,
    t0: std::time::Instant,
}

impl CpuMeter {
    pub fn start(topo: &Topology) -> CpuMeter {
        let start = topo
            .pids()
            .into_iter()
            .map(|(name, pid, tern)| {
                (name, pid, tern, tern_testkit::procs::Sample::of(pid).cpu_secs)
            })
            .collect();
        CpuMeter { start, t0: std::time::Instant::now() }
    }

    /// Records `cpu_pct_<process>` (100 = one core busy) and, over the
    /// processes Tern itself runs, `cpu_us_per_<unit>` for `units` units of work.
    pub fn finish(self, o: &mut Outcome, unit: &str, units: u64) {
        let secs = self.t0.elapsed().as_secs_f64().max(1e-3);
        let mut ours = 0.0;
        let mut by_name = std::collections::BTreeMap::new();
        for (name, pid, tern, before) in self.start {
            // A process that has exited since reads as 0: count nothing.
            let used = (tern_testkit::procs::Sample::of(pid).cpu_secs - before).max(0.0);
            *by_name.entry(name).or_insert(0.0) += used;
            if tern {
                ours += used;
            }
        }
        for (name, used) in by_name {
            o.set(&format!("cpu_pct_{name}"), used / secs * 100.0);
        }
        if units > 0 {
            o.set(&format!("cpu_us_per_{unit}"), ours * 1e6 / units as f64);
        }
    }
}

/// A latency histogram in microseconds, up to one hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Checks one receiver's stream from one sender: every index must arrive
/// once, and seqs of the conversation must rise by one. Indices need not
/// arrive in order: a send refused with a retryable error is sent again
/// later and takes a later seq, as it would from a real client.
#[derive(Debug, Default)]
pub struct Stream {
    seen: std::collections::HashSet<u64>,
    last_seq: Option<u64>,
    /// Set by a reconnect: replayed messages are expected until a new one.
    replaying: bool,
    pub checks: Checks,
}

impl Stream {
    /// Notes that the session reconnected (`n` reconnects in all so far).
    pub fn reconnected(&mut self, n: u64) {
        if n > self.checks.reconnects {
            self.checks.reconnects = n;
            self.replaying = true;
        }
    }

    /// Reads `session` until `expected` messages of type `kind` arrived
    /// (or it fell silent for `wait`), showing each; `new` gets the payload
    /// of each message seen for the first time.
    pub async fn receive(
        &mut self,
        session: &mut crate::client::Session,
        kind: i64,
        expected: u64,
        wait: std::time::Duration,
        mut new: impl FnMut(crate::client::Payload),
    ) -> anyhow::Result<()> {
        while self.checks.delivered < expected {
            let next = session.next(wait).await?;
            self.reconnected(session.reconnects);
            let Some(f) = next else { break };
            let Some(p) = f.content.filter(|_| f.kind == kind) else { continue };
            if self.see(p.i, f.seq) {
                new(p);
            }
            session.shown(f.conversation_id, f.seq);
        }
        Ok(())
    }

    /// Notes message `i` with `seq`; `true` when it is new.
    pub fn see(&mut self, i: u64, seq: u64) -> bool {
        if !self.seen.insert(i) {
            // After a reconnect the server replays what was not acked yet:
            // expected, and not a duplicate, until the stream catches up.
            if self.replaying {
                self.checks.redelivered += 1;
            } else {
                self.checks.duplicated += 1;
            }
            return false;
        }
        self.replaying = false;
        self.checks.delivered += 1;
        if let Some(last) = self.last_seq
            && seq != last + 1
        {
            self.checks.out_of_order += 1;
        }
        self.last_seq = Some(seq);
        true
    }

    /// Closes the books once `expected` messages were due.
    pub fn finish(&mut self, expected: u64) -> Checks {
        self.checks.expected = expected;
        self.checks.lost = expected.saturating_sub(self.checks.delivered);
        self.checks
    }
}

/// Writes one line per outcome as it completes, so long runs show progress
/// even without a terminal.
pub fn announce(o: &Outcome) {
    let figures: Vec<String> = o
        .metrics
        .iter()
        .filter(|(k, _)| !k.contains("p999") && !k.contains("p50"))
        .map(|(k, v)| format!("{k}={v:.2}"))
        .collect();
    let status = match &o.error {
        Some(e) => format!("ERROR {e}"),
        None if o.checks.ok() => "ok".into(),
        None => "CHECK FAILED".into(),
    };
    eprintln!(
        "[{} {} {}] {status} {}/{} {}",
        o.scenario,
        o.topology,
        o.case,
        o.checks.delivered,
        o.checks.expected,
        figures.join(" ")
    );
}
