//! Starting what is measured: the bare relay (S0), embedded Tern (one
//! `tern` process on SQLite) or distributed Tern (four services and N
//! gateways on MariaDB and Redis), each on free loopback ports.

use crate::{
    cli::Database,
    procs::{Proc, Sample, bin, free_port, wait_http_ok},
};
use anyhow::Context;
use sea_orm::ConnectionTrait;
use std::{path::Path, time::Duration};

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
/// throttled, and the fast password hashing meant for tests.
fn bench_env() -> Vec<(String, String)> {
    [
        ("TERN__AUTH__BCRYPT_COST", "4"),
        ("TERN__AUTH__INSECURE_FAST_HASHING", "true"),
        ("TERN__GATEWAY__LIMITS__LOGINS_PER_USER_PER_MINUTE", "0"),
        ("TERN__GATEWAY__LIMITS__LOGINS_PER_IP_PER_MINUTE", "0"),
        ("TERN__GATEWAY__LIMITS__HTTP_PER_IP_PER_SECOND", "0"),
        ("TERN__GATEWAY__LIMITS__MESSAGES_PER_USER_PER_SECOND", "0"),
        ("TERN__GATEWAY__LIMITS__CONNECTS_PER_USER_PER_MINUTE", "0"),
        ("TERN__GATEWAY__SHUTDOWN_GRACE_SECS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Four fresh databases on a MariaDB or PostgreSQL server, dropped at the
/// end of the run.
struct Databases {
    admin: sea_orm::DatabaseConnection,
    base: String,
    names: Vec<String>,
}

impl Databases {
    async fn create(server: Database) -> anyhow::Result<Databases> {
        // The test suite's variables are honoured too, so the smoke test
        // finds the same server as the other tests.
        let (bench, test, default) = match server {
            Database::Mariadb => {
                ("TERN_BENCH_MYSQL_URL", "TERN_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
            }
            Database::Postgres => (
                "TERN_BENCH_POSTGRES_URL",
                "TERN_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432",
            ),
        };
        let base = std::env::var(bench)
            .or_else(|_| std::env::var(test))
            .unwrap_or_else(|_| default.into());
        let admin = sea_orm::Database::connect(format!("{base}/test"))
            .await
            .with_context(|| format!("{server:?} reachable ({bench})"))?;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let mut names = Vec::new();
        for service in ["auth", "group", "message", "offline"] {
            let name = format!("tern_bench_{}_{service}", &tag[tag.len() - 10..]);
            admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
            names.push(name);
        }
        Ok(Databases { admin, base, names })
    }

    fn url(&self, i: usize) -> String {
        format!("{}/{}", self.base, self.names[i])
    }

    async fn drop_all(&self) {
        for name in &self.names {
            let _ = self.admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}")).await;
        }
    }
}

/// A running system under test.
pub struct Topology {
    pub kind: Kind,
    /// Ports clients connect to: the relay, the `tern` process, or each
    /// gateway.
    pub ports: Vec<u16>,
    /// The processes that hold client sockets (relay, `tern`, gateways).
    pub front: Vec<Proc>,
    /// The services behind the gateways (distributed only).
    pub back: Vec<Proc>,
    dbs: Option<Databases>,
    /// The database server of the distributed topology.
    database: Database,
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
        let http = reqwest::Client::new();
        let log = |name: &str| out.join(format!("{}-{name}.log", kind.name()));
        let mut topo = Topology {
            kind,
            ports: vec![],
            front: vec![],
            back: vec![],
            dbs: None,
            database,
            _data: data,
            settle: true,
        };
        match kind {
            Kind::Relay => {
                let port = free_port();
                let addr = format!("127.0.0.1:{port}");
                let exe = bin("tern-bench")?;
                let mut p =
                    Proc::spawn("relay", &exe, &["relay", "--addr", &addr], &[], &log("relay"))?;
                wait_http_ok(
                    &http,
                    &format!("http://{addr}/health"),
                    Duration::from_secs(20),
                    &mut [&mut p],
                )
                .await?;
                topo.ports.push(port);
                topo.front.push(p);
            }
            Kind::Embedded => {
                let port = free_port();
                let mut env = bench_env();
                env.push(("TERN__HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
                env.push(("TERN__DATA_DIR".into(), topo._data.path().display().to_string()));
                let mut p = Proc::spawn("tern", &bin("tern")?, &[], &env, &log("tern"))?;
                let url = format!("http://127.0.0.1:{port}/ready");
                wait_http_ok(&http, &url, Duration::from_secs(60), &mut [&mut p]).await?;
                topo.ports.push(port);
                topo.front.push(p);
            }
            Kind::Distributed => {
                topo.start_distributed(gateways.max(1), database, &http, &log).await?
            }
        }
        Ok(topo)
    }

    async fn start_distributed(
        &mut self,
        gateways: usize,
        database: Database,
        http: &reqwest::Client,
        log: &dyn Fn(&str) -> std::path::PathBuf,
    ) -> anyhow::Result<()> {
        let dbs = Databases::create(database).await?;
        let grpc = [free_port(), free_port(), free_port(), free_port()];
        let url = |i: usize| format!("http://127.0.0.1:{}", grpc[i]);
        let redis = std::env::var("TERN_BENCH_REDIS_URL")
            .or_else(|_| std::env::var("TERN_TEST_REDIS_URL"))
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let mut common = bench_env();
        common.extend(
            [
                ("TERN__AUTH_URL", url(0)),
                ("TERN__GROUP_URL", url(1)),
                ("TERN__MESSAGE_URL", url(2)),
                ("TERN__OFFLINE_URL", url(3)),
                ("TERN__REDIS_URL", redis),
                ("TERN__REDIS_PREFIX", format!("bench{}:", &tag[tag.len() - 12..])),
                ("TERN__SERVICE_TOKEN", format!("bench-{tag}-{tag}")),
                ("TERN__DRAIN_SECS", "0".into()),
                // One folder for the message service and the gateways,
                // which carry the bytes of a store without presigned URLs.
                (
                    "TERN__ATTACHMENTS__STORE",
                    self._data.path().join("attachments").display().to_string(),
                ),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let services = [
            ("tern-auth", "AUTH", 0),
            ("tern-offline", "OFFLINE", 3),
            ("tern-group", "GROUP", 1),
            ("tern-message", "MESSAGE", 2),
        ];
        let jwt_secret = format!("jwt-{tag}-{tag}");
        for (name, section, i) in services {
            let mut env = common.clone();
            env.push(("TERN__GRPC_ADDR".into(), format!("127.0.0.1:{}", grpc[i])));
            env.push((format!("TERN__{section}__DATABASE_URL"), dbs.url(i)));
            if name == "tern-auth" {
                env.push(("TERN__AUTH__JWT__SECRET".into(), jwt_secret.clone()));
            }
            self.back.push(Proc::spawn(name, &bin(name)?, &[], &env, &log(name))?);
        }
        self.dbs = Some(dbs);
        let gateway = bin("tern-gateway")?;
        for n in 1..=gateways {
            let port = free_port();
            let mut env = common.clone();
            env.push(("TERN__HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
            env.push(("TERN__GATEWAY__NODE_ID".into(), format!("gw-{n}")));
            // Gateways check tokens themselves, as deployed.
            env.push(("TERN__GATEWAY__JWT__SECRET".into(), jwt_secret.clone()));
            let name = format!("gw-{n}");
            self.front.push(Proc::spawn(&name, &gateway, &[], &env, &log(&name))?);
            self.ports.push(port);
        }
        for i in 0..gateways {
            let url = format!("http://127.0.0.1:{}/ready", self.ports[i]);
            let mut all: Vec<&mut Proc> = self.back.iter_mut().collect();
            all.push(&mut self.front[i]);
            wait_http_ok(http, &url, Duration::from_secs(90), &mut all).await?;
        }
        Ok(())
    }

    /// The WebSocket URL of front process `i` (wrapping) for `token`.
    pub fn ws_url(&self, i: usize, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.ports[i % self.ports.len()])
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
        self.front.iter().map(Proc::sample).collect()
    }

    /// Memory and CPU of every process, named.
    pub fn all_samples(&self) -> Vec<(String, Sample)> {
        self.front.iter().chain(&self.back).map(|p| (p.name.clone(), p.sample())).collect()
    }

    /// Every process a case costs CPU in, named, and whether Tern runs it:
    /// ours, plus the database server and Redis in the distributed topology
    /// (several processes may share a name: PostgreSQL runs one per
    /// connection).
    pub fn pids(&self) -> Vec<(String, u32, bool)> {
        let mut all: Vec<(String, u32, bool)> =
            self.front.iter().chain(&self.back).map(|p| (p.name.clone(), p.pid(), true)).collect();
        if self.kind == Kind::Distributed {
            let database = match self.database {
                Database::Mariadb => ("mariadb", "mariadbd"),
                Database::Postgres => ("postgres", "postgres"),
            };
            for (name, comm) in [database, ("redis", "redis-server")] {
                for pid in crate::procs::find_by_comm(comm) {
                    all.push((name.to_string(), pid, false));
                }
            }
        }
        all
    }

    /// Fails when any process has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.front.iter_mut().chain(self.back.iter_mut()) {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Stops every process and drops the databases.
    pub async fn stop(mut self) {
        self.front.clear();
        self.back.clear();
        if let Some(dbs) = self.dbs.take() {
            dbs.drop_all().await;
        }
    }
}
