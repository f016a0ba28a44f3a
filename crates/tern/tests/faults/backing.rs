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

/// A private Redis or MariaDB server on a port of its own.
pub struct Backing {
    url: String,
    port: u16,
    proc: Proc,
    /// MariaDB's data folder; declared last, so removed once it is down.
    _dir: Option<tempfile::TempDir>,
}

impl Backing {
    /// A `redis-server` keeping nothing on disk: a restart loses every
    /// key, as a crashed production Redis without persistence does.
    pub fn redis() -> Backing {
        let port = free_port();
        let proc = Proc::new("redis-server", PathBuf::from("redis-server"))
            .args(&["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(&["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        Backing::start(format!("redis://127.0.0.1:{port}"), port, proc, None)
    }

    /// A MariaDB server with its own data folder. A restart keeps the
    /// data: committed rows must survive it. Its URL names no database
    /// (what the kit's topologies take).
    pub fn mariadb() -> Backing {
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
        let mut args = vec![
            "--no-defaults".to_string(),
            arg("datadir", "data"),
            arg("socket", "sock"),
            arg("pid-file", "pid"),
            arg("log-error", "error.log"),
            format!("--port={port}"),
        ];
        args.extend(current_user_arg());
        let proc = Proc::new("mariadbd", mariadb_binary("mariadbd"))
            .args(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .args(&["--bind-address=127.0.0.1", "--skip-log-bin", "--max-connections=500"])
            .args(&["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M"]);
        Backing::start(format!("mysql://root@127.0.0.1:{port}"), port, proc, Some(dir))
    }

    fn start(url: String, port: u16, proc: Proc, dir: Option<tempfile::TempDir>) -> Backing {
        let mut server = Backing { url, port, proc: proc.quiet(), _dir: dir };
        server.up();
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn up(&mut self) {
        let name = self.proc.name.clone();
        self.proc
            .start()
            .unwrap_or_else(|e| panic!("{name} starts: {e:#} (deploy/services.sh installs it)"));
        wait_listening(self.port, START).expect("the server listens");
    }

    /// Kills the server (no clean shutdown: a crash), keeps it down for
    /// `down`, and starts it again on the same port (and data).
    pub fn restart(&mut self, down: Duration) {
        self.proc.kill();
        std::thread::sleep(down);
        self.up();
    }
}

fn mariadb_binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is installed (deploy/services.sh installs MariaDB)"))
}

/// MariaDB refuses to run as root unless told to.
fn current_user_arg() -> Vec<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root { vec!["--user=root".into()] } else { Vec::new() }
}
