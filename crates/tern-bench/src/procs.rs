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

/// The folder holding the Tern binaries: the one `tern-bench` itself runs
/// from, as `cargo build` puts every binary of the workspace side by side.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("own executable")?;
    Ok(exe.parent().context("executable has a folder")?.to_path_buf())
}

/// The path of binary `name` next to this one.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
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
    fn drop(&mut self) {
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
