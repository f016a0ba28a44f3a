//! An S3-compatible server for tests: `s3s-fs` (installed by
//! deploy/services.sh) over a temporary folder, with bucket `tern`.

use std::{path::PathBuf, time::Duration};
use tern_testkit::procs::{Proc, free_port, wait_listening};

/// An `s3s-fs` server: S3 over a temporary folder.
pub struct S3 {
    proc: Proc,
    /// Its port.
    pub port: u16,
    /// The folder it serves.
    pub root: tempfile::TempDir,
}

const S3_KEY: &str = "tern-test";
const S3_SECRET: &str = "tern-test-secret-key";

impl S3 {
    /// Starts it over a fresh folder holding bucket `tern`.
    pub async fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("tern")).unwrap();
        let port = free_port();
        let binary = std::env::var("TERN_TEST_S3S_FS").unwrap_or_else(|_| {
            let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
                format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())
            });
            let installed = PathBuf::from(cargo_home).join("bin/s3s-fs");
            if installed.exists() { installed.display().to_string() } else { "s3s-fs".into() }
        });
        let root_arg = root.path().display().to_string();
        let proc = Proc::new("s3s-fs", PathBuf::from(&binary))
            .args(&["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(&["--access-key", S3_KEY, "--secret-key", S3_SECRET, &root_arg])
            .quiet();
        let mut s3 = S3 { proc, port, root };
        s3.spawn().await;
        s3
    }

    /// Starts it (again, after [`S3::stop`]).
    pub async fn spawn(&mut self) {
        self.proc.start().unwrap_or_else(|e| {
            panic!("S3 test server starts: {e:#}; deploy/services.sh installs s3s-fs")
        });
        wait_listening(self.port, Duration::from_secs(5)).expect("s3s-fs listens");
    }

    /// Kills it.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// The variables that put a server's attachments in this store.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TERN__ATTACHMENTS__STORE".into(), "s3://tern/uploads".into()),
            ("TERN__ATTACHMENTS__S3_ENDPOINT".into(), format!("http://127.0.0.1:{}", self.port)),
            ("TERN__ATTACHMENTS__S3_ACCESS_KEY_ID".into(), S3_KEY.into()),
            ("TERN__ATTACHMENTS__S3_SECRET_ACCESS_KEY".into(), S3_SECRET.into()),
        ]
    }
}
