//! The `wagate` binary run as an operator runs it, with what it printed and returned.

use super::WAIT;

/// What a finished command printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Run {
    /// The stdout lines that start with `prefix` (doctor's OK / WARN / FAIL).
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    pub fn line_with(&self, words: &[&str]) -> Option<&str> {
        self.stdout.lines().find(|l| words.iter().all(|w| l.contains(w)))
    }
}

pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wagate"));
    // Only what the test passes counts, not the environment of whoever runs the tests.
    for var in ["WAGATE_URL", "WAGATE_DATA_DIR", "WAGATE_API_KEY", "WAGATE_WA_URL", "WAGATE_PROXY", "WAGATE_HOME"] {
        command.env_remove(var);
    }
    command.args(args).kill_on_drop(true);
    command
}

pub async fn wagate(args: &[&str]) -> Run {
    let output = tokio::time::timeout(WAIT, command(args).output())
        .await
        .unwrap_or_else(|_| panic!("wagate {args:?} did not finish"))
        .expect("wagate runs");
    Run {
        code: output.status.code().expect("exited normally"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
