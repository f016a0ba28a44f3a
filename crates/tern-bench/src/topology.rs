//! Starting what is measured: the bare relay (S0), embedded Tern (one
//! `tern` process on SQLite) or distributed Tern (four services and N
//! gateways on MariaDB or PostgreSQL and Redis), each on free loopback
//! ports, through the test kit.

use crate::cli::Database;
use std::{path::Path, time::Duration};
use tern_testkit::{
    procs::{Proc, Sample, find_by_comm, free_port, wait_ok},
    topology::{self, Distributed, Embedded, Options},
};

/// Which system a scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The bare fastwebsockets relay of S0: no auth, storage or bus.
    Relay,
    /// The all-in-one `tern` process on SQLite.
    Embedded,
    /// Four services plus gateways on MariaDB and Redis.
    Distributed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Relay => "relay",
            Kind::Embedded => "embedded",
            Kind::Distributed => "distributed",
        }
    }
}

/// Rate limits raised (0 disables each) so the generator is never
/// throttled.
const BENCH_ENV: [(&str, &str); 6] = [
    ("TERN__GATEWAY__LIMITS__LOGINS_PER_USER_PER_MINUTE", "0"),
    ("TERN__GATEWAY__LIMITS__LOGINS_PER_IP_PER_MINUTE", "0"),
    ("TERN__GATEWAY__LIMITS__HTTP_PER_IP_PER_SECOND", "0"),
    ("TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND", "0"),
    ("TERN__GATEWAY__LIMITS__CONNECTS_PER_USER_PER_MINUTE", "0"),
    ("TERN__GATEWAY__SHUTDOWN_GRACE_SECS", "1"),
];

/// The database server's URL: `TERN_BENCH_MYSQL_URL` or
/// `TERN_BENCH_POSTGRES_URL` when set, else the test suite's variables
/// (so the smoke test finds the same server as the other tests).
fn database_url(database: Database) -> Option<String> {
    let (var, kit) = match database {
        Database::Mariadb => ("TERN_BENCH_MYSQL_URL", topology::Database::Mariadb),
        Database::Postgres => ("TERN_BENCH_POSTGRES_URL", topology::Database::Postgres),
    };
    std::env::var(var).ok().or_else(|| kit.default_url())
}

/// The processes of a running system.
enum System {
    Relay(Proc),
    Embedded(Embedded),
    Distributed(Box<Distributed>),
}

/// A running system under test.
pub struct Topology {
    pub kind: Kind,
    /// Ports clients connect to: the relay, the `tern` process, or each
    /// gateway.
    pub ports: Vec<u16>,
    system: System,
    /// The database server of the distributed topology.
    database: Database,
    /// Attachments of the distributed topology, shared by the message
    /// service and the gateways.
    _data: tempfile::TempDir,
    /// Whether [`Topology::quiesce`] waits (off only to reproduce a race).
    pub settle: bool,
}

impl Topology {
    /// Starts `kind`; logs go to `out/<kind>-<process>.log`.
    pub async fn start(
        kind: Kind,
        gateways: usize,
        database: Database,
        out: &Path,
    ) -> anyhow::Result<Topology> {
        let data = tempfile::tempdir()?;
        let mut options = Options {
            log_dir: Some(out.to_path_buf()),
            log_prefix: format!("{}-", kind.name()),
            stop_grace: Duration::from_secs(10),
            ..Options::default()
        }
        .with_env(&BENCH_ENV);
        let (system, ports) = match kind {
            Kind::Relay => {
                let port = free_port();
                let addr = format!("127.0.0.1:{port}");
                let mut p = Proc::new("relay", crate::procs::tool()?)
                    .args(&["relay", "--addr", &addr])
                    .log_to(out.join("relay-relay.log"))
                    .stop_grace(options.stop_grace);
                p.start()?;
                let url = format!("http://{addr}/health");
                let http = reqwest::Client::new();
                wait_ok(&http, &url, Duration::from_secs(20), &mut [&mut p]).await?;
                (System::Relay(p), vec![port])
            }
            Kind::Embedded => {
                let e = Embedded::start(&options).await?;
                let port = e.port;
                (System::Embedded(e), vec![port])
            }
            Kind::Distributed => {
                options.database = match database {
                    Database::Mariadb => topology::Database::Mariadb,
                    Database::Postgres => topology::Database::Postgres,
                };
                options.database_url = database_url(database);
                options.redis_url = std::env::var("TERN_BENCH_REDIS_URL").ok();
                options.gateways = gateways.max(1);
                options.ready_within = Duration::from_secs(90);
                // One folder for the message service and the gateways,
                // which carry the bytes of a store without presigned URLs.
                let store = data.path().join("attachments").display().to_string();
                options = options.with_env(&[("TERN__ATTACHMENTS__STORE", &store)]);
                let d = Distributed::start(&options).await?;
                let ports = d.gateway_ports.clone();
                (System::Distributed(Box::new(d)), ports)
            }
        };
        Ok(Topology { kind, ports, system, database, _data: data, settle: true })
    }

    /// The processes that hold client sockets (relay, `tern`, gateways).
    pub fn front(&self) -> Vec<&Proc> {
        match &self.system {
            System::Relay(p) => vec![p],
            System::Embedded(e) => vec![&e.proc],
            System::Distributed(d) => d.gateways.iter().collect(),
        }
    }

    /// The services behind the gateways (distributed only).
    fn back(&self) -> Vec<&Proc> {
        match &self.system {
            System::Distributed(d) => vec![&d.auth, &d.offline, &d.group, &d.message],
            _ => vec![],
        }
    }

    /// The WebSocket URL of front process `i` (wrapping) for `token`.
    pub fn ws_url(&self, i: usize, token: &str) -> String {
        tern_testkit::client::ws_url(self.ports[i % self.ports.len()], token, None)
    }

    /// The HTTP base URL of front process `i` (wrapping).
    pub fn http_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i % self.ports.len()])
    }

    /// Waits (up to 10 s) until no session of an earlier case is still open
    /// on any front process (`/stats` connections at 0), so the next case's
    /// sessions never overlap the teardown of the last one's. The gateway
    /// clears a user's presence when a session ends, per node rather than
    /// per session, so a session closing just as the same user reconnects
    /// can leave the new one unrouted (see BENCHMARKS.md, server bugs).
    pub async fn quiesce(&self) {
        if self.kind == Kind::Relay || !self.settle {
            return;
        }
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for i in 0..self.ports.len() {
            let url = format!("{}/stats", self.http_url(i));
            while std::time::Instant::now() < deadline {
                let open = match http.get(&url).send().await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["connections"].as_u64()),
                    Err(_) => None,
                };
                if open == Some(0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Saves each front process's `/metrics` (Prometheus text; counters and
    /// histograms since the process started) as
    /// `out/metrics/<kind>-<label>-<i>.prom`, where the server's own
    /// timings (store, commit, checkpoint, send ack) can be read beside the
    /// client-side figures of the same case.
    pub async fn save_metrics(&self, out: &Path, label: &str) {
        if self.kind == Kind::Relay {
            return;
        }
        let dir = out.join("metrics");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        for i in 0..self.ports.len() {
            let url = format!("{}/metrics", self.http_url(i));
            let Ok(response) = reqwest::get(&url).await else { continue };
            let Ok(text) = response.text().await else { continue };
            let file = dir.join(format!("{}-{label}-{i}.prom", self.kind.name()));
            let _ = std::fs::write(file, text);
        }
    }

    /// Memory and CPU of every front process, in order.
    pub fn front_samples(&self) -> Vec<Sample> {
        self.front().into_iter().map(Proc::sample).collect()
    }

    /// Memory and CPU of every process, named.
    pub fn all_samples(&self) -> Vec<(String, Sample)> {
        self.front().into_iter().chain(self.back()).map(|p| (p.name.clone(), p.sample())).collect()
    }

    /// Every process a case costs CPU in, named, and whether Tern runs it:
    /// ours, plus the database server and Redis in the distributed topology
    /// (several processes may share a name: PostgreSQL runs one per
    /// connection).
    pub fn pids(&self) -> Vec<(String, u32, bool)> {
        let mut all: Vec<(String, u32, bool)> = (self.front().into_iter().chain(self.back()))
            .filter_map(|p| Some((p.name.clone(), p.pid()?, true)))
            .collect();
        if self.kind == Kind::Distributed {
            let database = match self.database {
                Database::Mariadb => ("mariadb", "mariadbd"),
                Database::Postgres => ("postgres", "postgres"),
            };
            for (name, comm) in [database, ("redis", "redis-server")] {
                for pid in find_by_comm(comm) {
                    all.push((name.to_string(), pid, false));
                }
            }
        }
        all
    }

    /// Fails when any process has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.system {
            System::Relay(p) => p.check_alive(),
            System::Embedded(e) => e.proc.check_alive(),
            System::Distributed(d) => d.procs().try_for_each(Proc::check_alive),
        }
    }

    /// Stops every process (SIGTERM, then SIGKILL after 10 s) and drops
    /// the databases.
    pub async fn stop(self) {
        let Topology { system, .. } = self;
        tokio::task::spawn_blocking(move || drop(system)).await.ok();
    }
}
