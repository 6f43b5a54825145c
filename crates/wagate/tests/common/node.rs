//! Runs a `node --test` file of `interop/` against this build of `wagate` and the simulator
//! binary beside it (both built by `cargo test --workspace`).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// Fails unless the npm package `package` is installed in `interop/`.
pub fn require_package(package: &str) {
    assert!(
        interop_dir().join("node_modules").join(package).is_dir(),
        "{package} is not installed: run `npm ci --prefix interop` (scripts/test.sh does it)"
    );
}

pub fn wagate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wagate"))
}

/// Runs `node --test test/<file>` with `WAGATE_BIN`, `WAGATE_SIM_BIN` and `env`; fails with
/// node's output unless tests ran and every one passed.
pub fn run_node_test(file: &str, env: &[(&str, &OsStr)]) {
    let wagate = wagate_bin();
    let sim = wagate.with_file_name("wagate-sim");
    assert!(sim.exists(), "{} is missing: build it with `cargo build -p wagate-sim`", sim.display());
    let output = Command::new("node")
        // Baileys leaves timers behind (its event buffer flushes after 30 s): exit once the
        // tests are done instead of waiting for them.
        .args(["--test", "--test-force-exit", &format!("test/{file}")])
        .current_dir(interop_dir())
        .env("WAGATE_BIN", &wagate)
        .env("WAGATE_SIM_BIN", &sim)
        .envs(env.iter().copied())
        .output()
        .expect("node runs (Node 20 is required for the interop tests)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{file} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("# fail 0") && stdout.contains("# skipped 0"), "unexpected summary:\n{stdout}");
    assert!(!stdout.contains("# pass 0"), "no test ran:\n{stdout}");
}
