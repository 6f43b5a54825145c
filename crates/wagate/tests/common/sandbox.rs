//! `wagate sandbox` as the binary a newcomer runs, for the tests that drive it over HTTP.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::Api;

/// `wagate sandbox` as a child process; killed if the test ends early.
pub struct SandboxProcess {
    pub child: tokio::process::Child,
    pub api: Api,
    pub banner: String,
    data_dir: std::path::PathBuf,
}

impl SandboxProcess {
    /// Starts it on a free port and reads the address from its first line.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// The same, with more arguments (`--webhook <url>`, say).
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wagate"))
            .args(["sandbox", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("WAGATE_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("wagate sandbox starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The banner: the address line, then what to do; it ends with how to stop.
        let banner = tokio::time::timeout(Duration::from_secs(90), async {
            let mut banner = String::new();
            while let Some(line) = lines.next_line().await.expect("stdout reads") {
                banner.push_str(&line);
                banner.push('\n');
                if line.contains("Ctrl-C stops it") {
                    return banner;
                }
            }
            panic!("wagate sandbox ended before it was ready:\n{banner}{}", log_of(data_dir))
        })
        .await
        .unwrap_or_else(|_| panic!("wagate sandbox did not print its banner{}", log_of(data_dir)));
        let base = banner
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("wagate sandbox listening on "))
            .unwrap_or_else(|| panic!("no address line: {banner}"))
            .to_string();
        Self { child, api: Api::new(base), banner, data_dir: data_dir.to_path_buf() }
    }

    pub fn log(&self) -> String {
        log_of(&self.data_dir)
    }
}

pub fn log_of(data_dir: &Path) -> String {
    let log = std::fs::read_to_string(data_dir.join("sandbox.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    format!("\n--- sandbox.log (last lines)\n{}", tail.join("\n"))
}
