//! The binaries a run starts, fixed for the whole run: the test kit finds
//! and starts them, and this takes a snapshot of them first.

use anyhow::Context;
use std::path::{Path, PathBuf};
use tern_testkit::procs::{self, BINARIES, bin_dir, link_or_copy, own_exe, set_bin_dir};

/// The folder the binaries come from when set (to run them under a
/// profiler through wrapper scripts, say); otherwise the one `tern-bench`
/// itself was started from.
const BIN_DIR_VAR: &str = "TERN_BENCH_BIN_DIR";

/// Links (or, across file systems, copies) the Tern binaries and this tool
/// into `out/bin`, so a build that replaces them during a long run (a
/// shared target folder) cannot change what is measured halfway: builds
/// write new files, and the links keep the old ones. Binaries from
/// `TERN_BENCH_BIN_DIR` are used where they are: they may be wrapper
/// scripts.
pub fn snapshot(out: &Path) -> anyhow::Result<()> {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        set_bin_dir(PathBuf::from(dir));
        return Ok(());
    }
    let to = std::path::absolute(out.join("bin"))?;
    std::fs::create_dir_all(&to)?;
    for name in BINARIES {
        link_or_copy(&procs::bin(name)?, &to.join(name))?;
    }
    link_or_copy(&own_exe()?, &to.join("tern-bench"))?;
    set_bin_dir(to);
    Ok(())
}

/// This tool, to start its workers and the relay: from the snapshot, or
/// this executable (a `TERN_BENCH_BIN_DIR` holds the Tern binaries only).
pub fn tool() -> anyhow::Result<PathBuf> {
    let snapshot = bin_dir().context("binary folder")?.join("tern-bench");
    if std::env::var_os(BIN_DIR_VAR).is_none() && snapshot.exists() {
        Ok(snapshot)
    } else {
        own_exe()
    }
}
