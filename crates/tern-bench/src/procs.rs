//! Child processes of a run, and what `/proc` says about them: resident
//! memory and CPU time, read the same way for every process under test.

use anyhow::{Context, bail};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Linux reports CPU time in clock ticks of 1/100 s on every platform Tern
/// targets (`getconf CLK_TCK`).
const TICKS_PER_SEC: f64 = 100.0;

/// The Tern binaries a run starts.
pub const TERN_BINARIES: [&str; 6] =
    ["tern", "tern-gateway", "tern-auth", "tern-group", "tern-message", "tern-offline"];

/// Where the run's binaries are, once [`snapshot`] has copied them.
static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The folder the binaries come from: `TERN_BENCH_BIN_DIR` when set (to run
/// them under a profiler through wrapper scripts, say), otherwise the one
/// `tern-bench` itself was started from, as `cargo build` puts every binary
/// of the workspace side by side.
fn source_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TERN_BENCH_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(own_exe()?.parent().context("executable has a folder")?.to_path_buf())
}

/// This executable's path. When a build replaced the file while we run,
/// Linux reports it with a ` (deleted)` suffix; the path itself still holds
/// the tool.
fn own_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("own executable")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Links (or, across file systems, copies) the Tern binaries and this tool
/// into `out/bin`, so a build that replaces them during a long run (a
/// shared target folder) cannot change what is measured halfway: builds
/// write new files, and the links keep the old ones. Binaries from `TERN_BENCH_BIN_DIR` are used
/// where they are: they may be wrapper scripts.
pub fn snapshot(out: &Path) -> anyhow::Result<()> {
    let from = source_dir()?;
    if std::env::var_os("TERN_BENCH_BIN_DIR").is_some() {
        let _ = BIN_DIR.set(from);
        return Ok(());
    }
    let to = std::path::absolute(out.join("bin"))?;
    std::fs::create_dir_all(&to)?;
    for name in TERN_BINARIES {
        let path = from.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: build every binary first (`cargo build --release --workspace`)",
                path.display()
            );
        }
        link_or_copy(&path, &to.join(name))?;
    }
    link_or_copy(&own_exe()?, &to.join("tern-bench"))?;
    let _ = BIN_DIR.set(to);
    Ok(())
}

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// The path of binary `name` (`tern-bench` for the tool itself).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match BIN_DIR.get() {
        Some(dir) => dir.clone(),
        None => source_dir()?,
    };
    // The tool itself comes from the snapshot, or is this executable: a
    // `TERN_BENCH_BIN_DIR` holds the Tern binaries only.
    let snapshot = dir.join(name);
    if name == "tern-bench" {
        return if std::env::var_os("TERN_BENCH_BIN_DIR").is_none() && snapshot.exists() {
            Ok(snapshot)
        } else {
            own_exe()
        };
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build every binary first (`cargo build --release --workspace`)",
            path.display()
        );
    }
    Ok(path)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One process started for the run; killed when dropped.
pub struct Proc {
    /// Name in reports (`tern`, `gw-1`, `tern-message`, `relay`).
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `bin` with `env`, its output appended to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        Ok(Proc { name: name.to_string(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited (it crashed or refused
    /// its settings).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}; see its log in the output folder", self.name);
        }
        Ok(())
    }

    /// Resident memory and CPU time so far.
    pub fn sample(&self) -> Sample {
        Sample::of(self.pid())
    }
}

impl Drop for Proc {
    /// SIGTERM first, so the process shuts down as in production (and a
    /// profiler wrapped around it writes its output); SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory and CPU time of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_bytes: u64,
    /// User plus system CPU seconds since the process started.
    pub cpu_secs: f64,
}

impl Sample {
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

/// Every process whose command name is `comm` (e.g. `mariadbd`, or
/// `postgres`, one process per connection): the shared database and Redis,
/// whose CPU the distributed runs also cost.
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

/// Polls `url` until it answers 2xx or `limit` passes.
pub async fn wait_http_ok(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    procs: &mut [&mut Proc],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
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
            bail!("{url} did not answer within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
