//! Private Redis and MariaDB servers for fault runs: each run gets its own
//! on a free port, so restarting one never disturbs another test (or the
//! machine's shared servers).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};
use tern_testkit::procs::{Proc, free_port, wait_listening};

/// How long a server may take to listen.
const START: Duration = Duration::from_secs(30);

/// A `redis-server` keeping nothing on disk: a restart loses every key,
/// as a crashed production Redis without persistence does.
pub struct RedisServer {
    port: u16,
    proc: Proc,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        let port = free_port();
        let proc = Proc::new("redis-server", PathBuf::from("redis-server"))
            .args(&["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(&["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .quiet();
        let mut server = RedisServer { port, proc };
        server.up();
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        self.proc.start().expect("redis-server is installed (deploy/services.sh installs it)");
        wait_listening(self.port, START).expect("redis-server listens");
    }

    /// Kills the server, keeps it down for `down`, and starts it again
    /// on the same port, empty.
    pub fn restart(&mut self, down: Duration) {
        self.proc.kill();
        std::thread::sleep(down);
        self.up();
    }
}

/// A MariaDB server with its own data folder. A restart keeps the data:
/// committed rows must survive it.
pub struct MariaDb {
    port: u16,
    proc: Proc,
    /// Declared last: removed once the server is down.
    _dir: tempfile::TempDir,
}

fn mariadb_binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is installed (deploy/services.sh installs MariaDB)"))
}

impl MariaDb {
    /// Makes a data folder and starts a server on it on a free port.
    pub fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new(mariadb_binary("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(current_user_arg())
            .output()
            .expect("mariadb-install-db runs");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let d = dir.path();
        let arg = |name: &str, path: &str| format!("--{name}={}", d.join(path).display());
        let args = [
            arg("datadir", "data"),
            arg("socket", "sock"),
            arg("pid-file", "pid"),
            arg("log-error", "error.log"),
            format!("--port={port}"),
        ];
        let proc = Proc::new("mariadbd", mariadb_binary("mariadbd"))
            .args(&["--no-defaults"])
            .args(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .args(&["--bind-address=127.0.0.1", "--skip-log-bin", "--max-connections=500"])
            .args(&["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M"])
            .args(&current_user_arg().iter().map(String::as_str).collect::<Vec<_>>())
            .quiet();
        let mut db = MariaDb { port, proc, _dir: dir };
        db.up();
        db
    }

    /// The server URL without a database (what the kit's topologies take).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        self.proc.start().expect("mariadbd starts");
        wait_listening(self.port, START).expect("mariadbd listens");
    }

    /// Kills the server (no clean shutdown: a crash), keeps it down for
    /// `down`, and starts it again on the same data.
    pub fn restart(&mut self, down: Duration) {
        self.proc.kill();
        std::thread::sleep(down);
        self.up();
    }
}

/// MariaDB refuses to run as root unless told to.
fn current_user_arg() -> Vec<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root { vec!["--user=root".into()] } else { Vec::new() }
}
