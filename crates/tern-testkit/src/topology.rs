//! Tern's two topologies, started from the built binaries on free
//! loopback ports: [`Embedded`] (one `tern` process) and [`Distributed`]
//! (the four services, each addressed by its [`Service`] name, and any
//! number of gateways, on Redis and a MariaDB or PostgreSQL server).

use crate::{
    api::Api,
    client::ws_url,
    procs::{Proc, bin, free_port, wait_ok},
};
use anyhow::{Context, bail};
use std::{path::PathBuf, time::Duration};

/// The service credential every process of a topology is given.
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789abcdef0123";

/// Where the services keep their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// SQLite in the data folder (the embedded topology only).
    Sqlite,
    /// Fresh databases on a MariaDB or MySQL server.
    Mariadb,
    /// Fresh databases on a PostgreSQL server.
    Postgres,
}

impl Database {
    /// The choice of `TERN_TEST_DATABASE` (`mysql`, `postgres`; SQLite when
    /// unset or `sqlite`).
    pub fn from_env() -> anyhow::Result<Database> {
        match std::env::var("TERN_TEST_DATABASE").unwrap_or_default().as_str() {
            "" | "sqlite" => Ok(Database::Sqlite),
            "mysql" | "mariadb" => Ok(Database::Mariadb),
            "postgres" => Ok(Database::Postgres),
            other => bail!("unknown TERN_TEST_DATABASE {other}"),
        }
    }

    /// The server's URL without a database: `TERN_TEST_MYSQL_URL` or
    /// `TERN_TEST_POSTGRES_URL` when set, else the local default.
    pub fn default_url(self) -> Option<String> {
        let (var, default) = match self {
            Database::Sqlite => return None,
            Database::Mariadb => ("TERN_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
            Database::Postgres => ("TERN_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
        };
        Some(std::env::var(var).unwrap_or_else(|_| default.into()))
    }
}

/// One of the four services behind the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Accounts and tokens.
    Auth,
    /// Groups and their members.
    Group,
    /// Messages and conversations.
    Message,
    /// Delivery cursors and the offline backlog.
    Offline,
}

impl Service {
    /// Every service, in the order a topology starts them.
    pub const ALL: [Service; 4] =
        [Service::Auth, Service::Offline, Service::Group, Service::Message];

    /// The binary that runs it.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Auth => "tern-auth",
            Service::Group => "tern-group",
            Service::Message => "tern-message",
            Service::Offline => "tern-offline",
        }
    }

    /// Its section in `TERN__*` variables and its part of a URL variable.
    fn section(self) -> &'static str {
        match self {
            Service::Auth => "AUTH",
            Service::Group => "GROUP",
            Service::Message => "MESSAGE",
            Service::Offline => "OFFLINE",
        }
    }
}

/// Four fresh databases, one per service, on a MariaDB or PostgreSQL
/// server; dropped when this is.
pub struct Databases {
    admin_url: String,
    base_url: String,
    names: Vec<(Service, String)>,
}

impl Databases {
    /// Creates them on `database`'s server at `server_url` (a URL without
    /// a database; [`Database::default_url`] when `None`). `None` for
    /// SQLite.
    pub async fn create(
        database: Database,
        server_url: Option<String>,
    ) -> anyhow::Result<Option<Databases>> {
        let base_url = match database {
            Database::Sqlite => return Ok(None),
            _ => server_url.or_else(|| database.default_url()).unwrap_or_default(),
        };
        // PostgreSQL has the `test` database; MariaDB always has `mysql`.
        let admin_db = if database == Database::Postgres { "test" } else { "mysql" };
        let admin_url = format!("{base_url}/{admin_db}");
        let admin = sea_orm::Database::connect(&admin_url)
            .await
            .with_context(|| format!("{database:?} reachable at {base_url}"))?;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let mut names = Vec::new();
        for service in Service::ALL {
            let name = format!("tern_t_{}_{}", &tag[tag.len() - 12..], service.section());
            let name = name.to_lowercase();
            sea_orm::ConnectionTrait::execute_unprepared(
                &admin,
                &format!("CREATE DATABASE {name}"),
            )
            .await?;
            names.push((service, name));
        }
        admin.close().await.ok();
        Ok(Some(Databases { admin_url, base_url, names }))
    }

    /// The URL of `service`'s database.
    pub fn url(&self, service: Service) -> String {
        let name = self.names.iter().find(|(s, _)| *s == service).map(|(_, n)| n.as_str());
        format!("{}/{}", self.base_url, name.unwrap_or_default())
    }

    /// The `TERN__<SERVICE>__DATABASE_URL` variable of `service`.
    fn env(&self, service: Service) -> (String, String) {
        (format!("TERN__{}__DATABASE_URL", service.section()), self.url(service))
    }
}

impl Drop for Databases {
    /// Drops the databases, from a thread of its own (this may run inside
    /// an async runtime).
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let names: Vec<String> = self.names.iter().map(|(_, n)| n.clone()).collect();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = sea_orm::Database::connect(&admin_url).await {
                    for name in names {
                        let drop = format!("DROP DATABASE IF EXISTS {name}");
                        let _ = sea_orm::ConnectionTrait::execute_unprepared(&admin, &drop).await;
                    }
                    admin.close().await.ok();
                }
            })
        })
        .join();
    }
}

/// How a topology is started. `Options::default()` is SQLite, one gateway,
/// output on this process's standard error.
#[derive(Clone, Debug)]
pub struct Options {
    /// Extra variables for every process (they win over the kit's own).
    pub env: Vec<(String, String)>,
    /// Where the services keep their data (the distributed topology needs
    /// MariaDB or PostgreSQL).
    pub database: Database,
    /// The database server's URL without a database, instead of
    /// [`Database::default_url`].
    pub database_url: Option<String>,
    /// Redis for the distributed topology, instead of
    /// `TERN_TEST_REDIS_URL` or the local one. Each topology gets a key
    /// prefix of its own, so runs never see each other.
    pub redis_url: Option<String>,
    /// Gateways of the distributed topology.
    pub gateways: usize,
    /// Whether every gateway checks tokens itself, as deployed; when false
    /// only the odd-numbered ones (gw-1, gw-3…) do and the others ask the
    /// auth service, so both ways run.
    pub all_gateways_check_tokens: bool,
    /// Seconds a service drains its calls when told to stop.
    pub drain_secs: u64,
    /// A folder for the processes' output, each appended to
    /// `<log_prefix><name>.log` there, instead of standard error.
    pub log_dir: Option<PathBuf>,
    /// See [`Options::log_dir`].
    pub log_prefix: String,
    /// The path polled until it answers 2xx before a front process counts
    /// as started (`/ready` or `/health`).
    pub ready_path: &'static str,
    /// How long a topology may take to be ready.
    pub ready_within: Duration,
    /// On drop, how long a process may take to exit after SIGTERM before
    /// it is killed; zero kills at once.
    pub stop_grace: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            env: Vec::new(),
            database: Database::Sqlite,
            database_url: None,
            redis_url: None,
            gateways: 1,
            all_gateways_check_tokens: true,
            drain_secs: 0,
            log_dir: None,
            log_prefix: String::new(),
            ready_path: "/ready",
            ready_within: Duration::from_secs(60),
            stop_grace: Duration::ZERO,
        }
    }
}

impl Options {
    /// Adds variables for every process.
    pub fn with_env(mut self, env: &[(&str, &str)]) -> Options {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// A process of binary `binary` named `name`, with its output where
    /// the options say.
    fn proc(&self, name: &str, binary: &str) -> anyhow::Result<Proc> {
        let mut p = Proc::new(name, bin(binary)?).stop_grace(self.stop_grace);
        if let Some(dir) = &self.log_dir {
            p = p.log_to(dir.join(format!("{}{name}.log", self.log_prefix)));
        }
        Ok(p)
    }
}

/// Variables every process gets: the fast password hashing meant for tests.
const FAST_HASHING: [(&str, &str); 2] =
    [("TERN__AUTH__BCRYPT_COST", "4"), ("TERN__AUTH__INSECURE_FAST_HASHING", "true")];

/// The embedded topology: one `tern` process with its own data folder.
pub struct Embedded {
    /// The `tern` process.
    pub proc: Proc,
    /// Its HTTP and WebSocket port.
    pub port: u16,
    /// Its data folder.
    pub data: tempfile::TempDir,
    ready_path: &'static str,
    ready_within: Duration,
    /// Declared last: dropped once the process is down.
    _databases: Option<Databases>,
}

impl Embedded {
    /// Starts `tern` and waits until it is ready.
    pub async fn start(options: &Options) -> anyhow::Result<Embedded> {
        let port = free_port();
        let data = tempfile::tempdir()?;
        let databases = Databases::create(options.database, options.database_url.clone()).await?;
        let mut env = vec![
            ("TERN__HTTP_ADDR".to_string(), format!("127.0.0.1:{port}")),
            ("TERN__DATA_DIR".to_string(), data.path().display().to_string()),
        ];
        env.extend(FAST_HASHING.map(|(k, v)| (k.to_string(), v.to_string())));
        if let Some(dbs) = &databases {
            env.extend(Service::ALL.map(|s| dbs.env(s)));
        }
        env.extend(options.env.iter().cloned());
        let mut embedded = Embedded {
            proc: options.proc("tern", "tern")?.envs(env),
            port,
            data,
            ready_path: options.ready_path,
            ready_within: options.ready_within,
            _databases: databases,
        };
        embedded.up().await?;
        Ok(embedded)
    }

    /// Starts the process and waits until it is ready.
    async fn up(&mut self) -> anyhow::Result<()> {
        self.proc.start()?;
        let url = self.api().url(self.ready_path);
        wait_ok(&reqwest::Client::new(), &url, self.ready_within, &mut [&mut self.proc]).await
    }

    /// SIGTERM, waits for the exit, and starts again on the same port and
    /// data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.signal("TERM", true)?;
        self.up().await
    }

    /// SIGKILL (a crash: nothing is flushed, no session is closed), keeps
    /// it down for `down`, and starts again on the same port and data.
    pub async fn crash_and_restart(&mut self, down: Duration) -> anyhow::Result<()> {
        self.proc.kill();
        tokio::time::sleep(down).await;
        self.up().await
    }

    /// Its HTTP API.
    pub fn api(&self) -> Api {
        Api::new(format!("http://127.0.0.1:{}", self.port))
    }

    /// The WebSocket URL for `token`.
    pub fn ws_url(&self, token: &str) -> String {
        ws_url(self.port, token, None)
    }
}

/// The distributed topology: the four services and the gateways, as
/// separate processes.
pub struct Distributed {
    /// The gateways, `gw-1` first.
    pub gateways: Vec<Proc>,
    /// Each gateway's HTTP and WebSocket port, in the same order.
    pub gateway_ports: Vec<u16>,
    /// The auth service.
    pub auth: Proc,
    /// The group service.
    pub group: Proc,
    /// The message service.
    pub message: Proc,
    /// The offline service.
    pub offline: Proc,
    /// The Redis key prefix of this topology.
    pub redis_prefix: String,
    grpc_ports: Vec<(Service, u16)>,
    ready_within: Duration,
    http: reqwest::Client,
    /// Declared last: dropped once every process is down.
    _databases: Databases,
}

impl Distributed {
    /// Starts the services and `options.gateways` gateways, and waits
    /// until every gateway is ready.
    pub async fn start(options: &Options) -> anyhow::Result<Distributed> {
        if options.database == Database::Sqlite {
            bail!("the distributed topology needs MariaDB or PostgreSQL");
        }
        let databases = Databases::create(options.database, options.database_url.clone())
            .await?
            .context("databases for the services")?;
        let grpc_ports: Vec<(Service, u16)> = Service::ALL.map(|s| (s, free_port())).into();
        let port_of = |service: Service| grpc_ports.iter().find(|(s, _)| *s == service).unwrap().1;
        let redis = options.redis_url.clone().unwrap_or_else(|| {
            std::env::var("TERN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
        });
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let redis_prefix = format!("t{tag}:");
        let jwt_secret = tag.repeat(2);
        let mut common: Vec<(String, String)> = Service::ALL
            .map(|s| (format!("TERN__{}_URL", s.section()), grpc_url(port_of(s))))
            .into();
        common.extend([
            ("TERN__REDIS_URL".to_string(), redis),
            ("TERN__REDIS_PREFIX".to_string(), redis_prefix.clone()),
            ("TERN__SERVICE_TOKEN".to_string(), SERVICE_TOKEN.to_string()),
        ]);
        common.extend(FAST_HASHING.map(|(k, v)| (k.to_string(), v.to_string())));
        let service = |s: Service| -> anyhow::Result<Proc> {
            let mut env = common.clone();
            env.push(("TERN__GRPC_ADDR".into(), format!("127.0.0.1:{}", port_of(s))));
            env.push(("TERN__DRAIN_SECS".into(), options.drain_secs.to_string()));
            env.push(databases.env(s));
            if s == Service::Auth {
                env.push(("TERN__AUTH__JWT__SECRET".into(), jwt_secret.clone()));
            }
            env.extend(options.env.iter().cloned());
            Ok(options.proc(s.binary(), s.binary())?.envs(env))
        };
        let (auth, offline, group, message) = (
            service(Service::Auth)?,
            service(Service::Offline)?,
            service(Service::Group)?,
            service(Service::Message)?,
        );
        let mut gateways = Vec::new();
        let mut gateway_ports = Vec::new();
        for n in 1..=options.gateways {
            let port = free_port();
            let name = format!("gw-{n}");
            let mut env = common.clone();
            env.push(("TERN__HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
            env.push(("TERN__GATEWAY__NODE_ID".into(), name.clone()));
            if options.all_gateways_check_tokens || n % 2 == 1 {
                env.push(("TERN__GATEWAY__JWT__SECRET".into(), jwt_secret.clone()));
            }
            env.extend(options.env.iter().cloned());
            gateways.push(options.proc(&name, "tern-gateway")?.envs(env));
            gateway_ports.push(port);
        }
        let mut topology = Distributed {
            gateways,
            gateway_ports,
            auth,
            group,
            message,
            offline,
            redis_prefix,
            grpc_ports,
            ready_within: options.ready_within,
            http: reqwest::Client::new(),
            _databases: databases,
        };
        for s in Service::ALL {
            topology.service(s).start()?;
        }
        for g in &mut topology.gateways {
            g.start()?;
        }
        for i in 0..options.gateways {
            topology.wait_ready(i).await?;
        }
        Ok(topology)
    }

    /// The process of `service`.
    pub fn service(&mut self, service: Service) -> &mut Proc {
        match service {
            Service::Auth => &mut self.auth,
            Service::Group => &mut self.group,
            Service::Message => &mut self.message,
            Service::Offline => &mut self.offline,
        }
    }

    /// The gRPC URL of `service`.
    pub fn grpc_url(&self, service: Service) -> String {
        let port = self.grpc_ports.iter().find(|(s, _)| *s == service).map_or(0, |(_, p)| *p);
        grpc_url(port)
    }

    /// Waits until gateway `i` answers `/ready` (every dependency is up);
    /// fails if it or a service exits first.
    pub async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let url = self.api(i).url("/ready");
        let Distributed { gateways, auth, group, message, offline, .. } = self;
        let mut procs = vec![auth, group, message, offline];
        procs.push(gateways.get_mut(i).context("no such gateway")?);
        wait_ok(&self.http, &url, self.ready_within, &mut procs).await
    }

    /// The HTTP API of gateway `i`.
    pub fn api(&self, i: usize) -> Api {
        Api::with_client(format!("http://127.0.0.1:{}", self.gateway_ports[i]), self.http.clone())
    }

    /// The WebSocket URL for `token` on gateway `i`.
    pub fn ws_url(&self, i: usize, token: &str) -> String {
        ws_url(self.gateway_ports[i], token, None)
    }

    /// Every process, gateways first.
    pub fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        let Distributed { gateways, auth, group, message, offline, .. } = self;
        gateways.iter_mut().chain([auth, group, message, offline])
    }
}

fn grpc_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}
