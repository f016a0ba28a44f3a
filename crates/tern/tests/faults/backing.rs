//! Private Redis and MariaDB servers for fault runs: each run gets its own
//! on a free port, so restarting one never disturbs another test (or the
//! machine's shared servers).

use super::free_port;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Waits until something accepts TCP connections on `port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` keeping nothing on disk: a restart loses every key,
/// as a crashed production Redis without persistence does.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer { port: free_port(), child: None };
        server.up();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/services.sh installs it)");
        self.child = Some(child);
        wait_listening(self.port, "redis-server");
    }

    /// Kills the server, keeps it down for `down`, and starts it again
    /// on the same port, empty.
    pub fn restart(&mut self, down: Duration) {
        kill(&mut self.child);
        std::thread::sleep(down);
        self.up();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A MariaDB server with its own data folder. A restart keeps the data:
/// committed rows must survive it.
pub struct MariaDb {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn mariadb_binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is installed (deploy/services.sh installs MariaDB)"))
}

impl MariaDb {
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
        let mut db = MariaDb { port: free_port(), dir, child: None };
        db.up();
        db
    }

    /// The server URL without a database (what `Databases` expects).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let d = self.dir.path();
        let child = Command::new(mariadb_binary("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-log-bin", "--max-connections=500"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M"])
            .args(current_user_arg())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        self.child = Some(child);
        wait_listening(self.port, "mariadbd");
    }

    /// Kills the server (no clean shutdown: a crash), keeps it down for
    /// `down`, and starts it again on the same data.
    pub fn restart(&mut self, down: Duration) {
        kill(&mut self.child);
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

impl Drop for MariaDb {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
