//! The distributed topology as separate processes on loopback: the four
//! services and several gateways, on MariaDB and the local Redis (in a
//! namespace of its own, so runs never see each other).

use super::{Client, Databases, User, WAIT, free_port};
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One process of the cluster.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    /// Starts the process (again, after a kill).
    pub fn start(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child =
            Some(cmd.spawn().unwrap_or_else(|e| panic!("{} starts: {e}", self.bin.display())));
    }

    /// Sends `signal` (e.g. "KILL", "TERM") and, unless `wait` is false,
    /// waits for the exit.
    pub fn signal(&mut self, signal: &str, wait: bool) {
        let Some(child) = self.child.as_mut() else { return };
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        if wait {
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "{} did not exit", self.name);
                std::thread::sleep(Duration::from_millis(20));
            }
            self.child = None;
        }
    }

    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_some(),
            None => true,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running cluster.
pub struct Cluster {
    pub auth: Proc,
    pub group: Proc,
    pub message: Proc,
    pub offline: Proc,
    pub gateways: Vec<Proc>,
    pub gateway_ports: Vec<u16>,
    pub grpc_ports: [u16; 4],
    pub redis_prefix: String,
    dbs: Databases,
    http: reqwest::Client,
}

pub fn bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_tern")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

impl Cluster {
    /// Starts the four services and `gateways` gateway nodes.
    pub async fn start(gateways: usize) -> Cluster {
        Self::start_with(gateways, &[]).await
    }

    /// Like [`Cluster::start`], with extra variables for every process.
    pub async fn start_with(gateways: usize, extra: &[(&str, &str)]) -> Cluster {
        Self::start_on(gateways, extra, None, None).await
    }

    /// Like [`Cluster::start_with`], on a given Redis URL and MariaDB
    /// server URL instead of the machine's shared ones.
    pub async fn start_on(
        gateways: usize,
        extra: &[(&str, &str)],
        redis_url: Option<String>,
        mysql_url: Option<String>,
    ) -> Cluster {
        let dbs = match mysql_url {
            Some(base) => Databases::create_at("mysql", base).await,
            None => Databases::create_on("mysql").await.unwrap(),
        };
        let grpc_ports = [free_port(), free_port(), free_port(), free_port()];
        let url = |i: usize| format!("http://127.0.0.1:{}", grpc_ports[i]);
        let redis_prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
        let redis = redis_url.unwrap_or_else(|| {
            std::env::var("TERN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
        });
        let secret = uuid::Uuid::now_v7().simple().to_string().repeat(2);
        let common = |port: u16| {
            vec![
                ("TERN__GRPC_ADDR".to_string(), format!("127.0.0.1:{port}")),
                ("TERN__DRAIN_SECS".to_string(), "2".to_string()),
                ("TERN__AUTH_URL".to_string(), url(0)),
                ("TERN__GROUP_URL".to_string(), url(1)),
                ("TERN__MESSAGE_URL".to_string(), url(2)),
                ("TERN__OFFLINE_URL".to_string(), url(3)),
                ("TERN__REDIS_URL".to_string(), redis.clone()),
                ("TERN__REDIS_PREFIX".to_string(), redis_prefix.clone()),
                ("TERN__SERVICE_TOKEN".to_string(), super::SERVICE_TOKEN.to_string()),
            ]
        };
        let service = |name: &str, port: u16, extra: Vec<(String, String)>| {
            let mut env = common(port);
            env.extend(extra);
            Proc { name: name.to_string(), bin: bin(name), env, child: None }
        };
        let kv = |k: &str, v: String| (k.to_string(), v);
        let mut cluster = Cluster {
            auth: service(
                "tern-auth",
                grpc_ports[0],
                vec![
                    kv("TERN__AUTH__DATABASE_URL", dbs.url("auth")),
                    kv("TERN__AUTH__JWT__SECRET", secret.clone()),
                    kv("TERN__AUTH__BCRYPT_COST", "4".into()),
                    kv("TERN__AUTH__INSECURE_FAST_HASHING", "true".into()),
                ],
            ),
            group: service(
                "tern-group",
                grpc_ports[1],
                vec![kv("TERN__GROUP__DATABASE_URL", dbs.url("group"))],
            ),
            message: service(
                "tern-message",
                grpc_ports[2],
                vec![kv("TERN__MESSAGE__DATABASE_URL", dbs.url("message"))],
            ),
            offline: service(
                "tern-offline",
                grpc_ports[3],
                vec![kv("TERN__OFFLINE__DATABASE_URL", dbs.url("offline"))],
            ),
            gateways: Vec::new(),
            gateway_ports: Vec::new(),
            grpc_ports,
            redis_prefix: redis_prefix.clone(),
            dbs,
            http: reqwest::Client::new(),
        };
        for i in 0..gateways {
            let port = free_port();
            let mut env = common(0);
            env.retain(|(k, _)| k != "TERN__GRPC_ADDR" && k != "TERN__DRAIN_SECS");
            env.push(kv("TERN__HTTP_ADDR", format!("127.0.0.1:{port}")));
            env.push(kv("TERN__GATEWAY__NODE_ID", format!("gw-{}", i + 1)));
            // gw-1 (and every odd-numbered node) checks tokens itself with the
            // auth service's key; the others ask the auth service, so both
            // ways run in every cluster test.
            if i % 2 == 0 {
                env.push(kv("TERN__GATEWAY__JWT__SECRET", secret.clone()));
            }
            cluster.gateways.push(Proc {
                name: format!("gw-{}", i + 1),
                bin: bin("tern-gateway"),
                env,
                child: None,
            });
            cluster.gateway_ports.push(port);
        }
        let extra: Vec<(String, String)> =
            extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for p in [&mut cluster.auth, &mut cluster.offline, &mut cluster.group, &mut cluster.message]
        {
            p.env.extend(extra.clone());
            p.start();
        }
        for g in &mut cluster.gateways {
            g.env.extend(extra.clone());
            g.start();
        }
        for i in 0..gateways {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Waits until gateway `i` answers `/ready` (every dependency is up).
    pub async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            if let Ok(r) = self.http.get(self.url(i, "/ready")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "gateway {i} not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, gateway: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_ports[gateway])
    }

    pub fn grpc_url(&self, service: usize) -> String {
        format!("http://127.0.0.1:{}", self.grpc_ports[service])
    }

    pub async fn post(
        &self,
        gateway: usize,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let mut req = self.http.post(self.url(gateway, path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// `GET` with a bearer token.
    pub async fn get_as(&self, gateway: usize, path: &str, token: &str) -> (u16, Value) {
        let r = self.http.get(self.url(gateway, path)).bearer_auth(token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, gateway: usize, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(gateway, path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Registers through gateway 0 and logs in.
    pub async fn user(&self, name: &str) -> User {
        let creds = json!({ "username": name, "password": "correct horse" });
        let (status, body) = self.post(0, "/api/register", None, creds).await;
        assert_eq!(status, 201, "{body}");
        self.user_login(0, name).await
    }

    /// Logs a registered user in through gateway `i`.
    pub async fn user_login(&self, i: usize, name: &str) -> User {
        let creds = json!({ "username": name, "password": "correct horse" });
        let (status, body) = self.post(i, "/api/login", None, creds).await;
        assert_eq!(status, 200, "{body}");
        User {
            id: body["user_id"].as_u64().unwrap(),
            token: body["token"].as_str().unwrap().to_string(),
        }
    }

    /// A WebSocket session on gateway `i`, proven up by a heartbeat (so its
    /// presence is recorded before the caller goes on). For users with no
    /// backlog: the heartbeat answer must be the first frame.
    pub async fn connect(&self, i: usize, user: &User) -> Client {
        let mut client = self.connect_raw(i, user).await;
        client.send(json!({ "type": 99 })).await;
        assert_eq!(client.recv().await["type"], 99);
        client
    }

    /// A WebSocket session on gateway `i`, as it comes (backlog first).
    pub async fn connect_raw(&self, i: usize, user: &User) -> Client {
        let url = format!("ws://127.0.0.1:{}/ws?token={}", self.gateway_ports[i], user.token);
        Client::connect(&url).await
    }

    /// A session of `user` as `device` on gateway `i`, registered (its
    /// backlog, if any, skipped).
    pub async fn connect_device(&self, i: usize, user: &User, device: &str) -> Client {
        self.connect_device_raw(i, user, device).await.registered().await
    }

    /// A session of `user` as `device` on gateway `i`, as it comes.
    pub async fn connect_device_raw(&self, i: usize, user: &User, device: &str) -> Client {
        let url = format!(
            "ws://127.0.0.1:{}/ws?token={}&device={device}",
            self.gateway_ports[i], user.token
        );
        Client::connect(&url).await
    }

    /// Bus events gateway `i` has received.
    pub async fn bus_events(&self, i: usize) -> u64 {
        self.get(i, "/stats").await.1["bus_events"].as_u64().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.gateways.clear();
        for p in [&mut self.message, &mut self.group, &mut self.offline, &mut self.auth] {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.dbs.drop_all();
    }
}
