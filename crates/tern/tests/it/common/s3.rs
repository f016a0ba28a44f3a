//! An S3-compatible server for tests: `s3s-fs` (installed by
//! deploy/services.sh) over a temporary folder, with bucket `tern`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// An `s3s-fs` server: S3 over a temporary folder.
pub struct S3 {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
}

const S3_KEY: &str = "tern-test";
const S3_SECRET: &str = "tern-test-secret-key";

impl S3 {
    pub async fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("tern")).unwrap();
        let mut s3 = S3 { child: None, port: super::free_port(), root };
        s3.spawn().await;
        s3
    }

    pub async fn spawn(&mut self) {
        let binary = std::env::var("TERN_TEST_S3S_FS").unwrap_or_else(|_| {
            let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
                format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())
            });
            let installed = PathBuf::from(cargo_home).join("bin/s3s-fs");
            if installed.exists() { installed.display().to_string() } else { "s3s-fs".into() }
        });
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary} (S3 test server) starts: {e}; deploy/services.sh installs it")
            });
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("s3s-fs did not listen");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TERN__ATTACHMENTS__STORE".into(), "s3://tern/uploads".into()),
            ("TERN__ATTACHMENTS__S3_ENDPOINT".into(), format!("http://127.0.0.1:{}", self.port)),
            ("TERN__ATTACHMENTS__S3_ACCESS_KEY_ID".into(), S3_KEY.into()),
            ("TERN__ATTACHMENTS__S3_SECRET_ACCESS_KEY".into(), S3_SECRET.into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}
