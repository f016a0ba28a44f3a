//! Child processes: where the built binaries are, starting, signalling and
//! restarting one, free ports, waiting until something answers, and what
//! `/proc` says about a process (resident memory and CPU time).

use anyhow::{Context, bail};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

/// The Tern binaries the kit starts.
pub const BINARIES: [&str; 6] =
    ["tern", "tern-gateway", "tern-auth", "tern-group", "tern-message", "tern-offline"];

/// Linux reports CPU time in clock ticks of 1/100 s on every platform Tern
/// targets (`getconf CLK_TCK`).
const TICKS_PER_SEC: f64 = 100.0;

/// The folder given to [`set_bin_dir`], if any.
static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// This executable's path. When a build replaced the file while it runs,
/// Linux reports it with a ` (deleted)` suffix; the path itself still
/// holds the program.
pub fn own_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("own executable")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Takes the binaries from `dir` from now on (first call wins).
pub fn set_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// Where the binaries are: the folder given to [`set_bin_dir`], or else
/// the folder of this executable, as `cargo build` puts every binary of
/// the workspace side by side (a test binary sits one level down, in
/// `deps/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = BIN_DIR.get() {
        return Ok(dir.clone());
    }
    let exe = own_exe()?;
    let dir = exe.parent().context("executable has a folder")?;
    Ok(match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// The path of binary `name`; an error when it was not built.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, \
             with `--release` for a release run)",
            path.display()
        );
    }
    Ok(path)
}

/// A loopback port nobody listens on, never handed out twice in this
/// process: the kernel may offer a port again as soon as its probe is
/// closed, which once gave two clusters of parallel tests the same port.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits (blocking) until something accepts TCP connections on `port`.
pub fn wait_listening(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listened on port {port} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Polls `url` until it answers 2xx; fails when `within` passes or one of
/// `procs` exits first.
pub async fn wait_ok(
    http: &reqwest::Client,
    url: &str,
    within: Duration,
    procs: &mut [&mut Proc],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a process's output goes.
enum Output {
    /// Standard error to this process's, standard output dropped.
    Stderr,
    /// Both dropped.
    Null,
    /// Both appended to a file.
    File(PathBuf),
}

/// One process: how to start it, and the running child if any. It can be
/// stopped and started again with the same settings; dropping it stops it.
pub struct Proc {
    /// Its name in messages and reports (`tern`, `gw-1`, `tern-message`).
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    output: Output,
    grace: Duration,
    child: Option<Child>,
}

impl Proc {
    /// A process named `name` that runs `bin`, not started yet. Its
    /// standard error is this process's, its standard output is dropped.
    pub fn new(name: &str, bin: PathBuf) -> Proc {
        Proc {
            name: name.to_string(),
            bin,
            args: Vec::new(),
            env: Vec::new(),
            output: Output::Stderr,
            grace: Duration::ZERO,
            child: None,
        }
    }

    /// Adds command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Proc {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Adds environment variables (a later one wins over an earlier one).
    pub fn envs<K: ToString, V: ToString>(mut self, env: impl IntoIterator<Item = (K, V)>) -> Proc {
        self.env.extend(env.into_iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Appends its standard output and error to `log`.
    pub fn log_to(mut self, log: PathBuf) -> Proc {
        self.output = Output::File(log);
        self
    }

    /// Drops its standard error too.
    pub fn quiet(mut self) -> Proc {
        self.output = Output::Null;
        self
    }

    /// On drop, SIGTERM first and SIGKILL only after `grace` (so it shuts
    /// down as in production); without it, drop kills at once.
    pub fn stop_grace(mut self, grace: Duration) -> Proc {
        self.grace = grace;
        self
    }

    /// Starts it (again, after it stopped).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).env("RUST_LOG", "warn").stdin(Stdio::null());
        match &self.output {
            Output::File(log) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            Output::Stderr => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
            Output::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`…); with `wait`, waits up to
    /// 20 s for the exit.
    pub fn signal(&mut self, signal: &str, wait: bool) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else { return Ok(()) };
        Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        if wait { self.wait_exit(Duration::from_secs(20)) } else { Ok(()) }
    }

    /// Waits up to `within` for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        let deadline = Instant::now() + within;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = None;
        Ok(())
    }

    /// SIGKILL, and waits for the exit: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it is not running (never started, stopped, or exited).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Fails when it has exited on its own (it crashed or refused its
    /// settings).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited early with {status}; see its log", self.name);
        }
        Ok(())
    }

    /// Its resident memory and CPU time so far (zero when not running).
    pub fn sample(&self) -> Sample {
        self.pid().map(Sample::of).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.grace.is_zero() && self.signal("TERM", false).is_ok() {
            let _ = self.wait_exit(self.grace);
        }
        self.kill();
    }
}

/// Resident memory and CPU time of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// User plus system CPU seconds since the process started.
    pub cpu_secs: f64,
}

impl Sample {
    /// Reads process `pid`'s figures from `/proc` (zero where unreadable).
    pub fn of(pid: u32) -> Sample {
        let rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024);
        let cpu_secs = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the command name, which may hold spaces; utime
                // and stime are fields 14 and 15 of the whole line.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks as f64 / TICKS_PER_SEC)
            })
            .unwrap_or(0.0);
        Sample { rss_bytes, cpu_secs }
    }
}

/// Every process whose command name is `comm` (`mariadbd`, `redis-server`,
/// or `postgres`, which runs one process per connection).
pub fn find_by_comm(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (name.trim() == comm).then_some(pid)
        })
        .collect()
}

/// Links (or, across file systems, copies) `from` to `to`, replacing `to`.
pub fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}
