//! Runs one `interop/test/*.test.mjs` file with Node: wagate and Baileys 7 (npm) through the
//! simulator. Needs `npm ci --prefix interop`; uses this build of `wagate` and the simulator
//! binary beside it (built by `cargo test --workspace`).

use std::path::PathBuf;
use std::process::Command;

pub fn run_node_test(file: &str) {
    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    assert!(
        interop.join("node_modules/baileys").is_dir(),
        "Baileys is not installed: run `npm ci --prefix interop` (see README)"
    );
    let wagate = PathBuf::from(env!("CARGO_BIN_EXE_wagate"));
    let sim = wagate.with_file_name("wagate-sim");
    assert!(sim.exists(), "{} is missing: build it with `cargo build -p wagate-sim`", sim.display());
    let output = Command::new("node")
        .args(["--test", file])
        .current_dir(&interop)
        .env("WAGATE_BIN", &wagate)
        .env("WAGATE_SIM_BIN", &sim)
        .output()
        .expect("node runs (Node 20 is required for the interop check)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{file} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("# fail 0") && stdout.contains("# skipped 0"), "unexpected summary:\n{stdout}");
    assert!(!stdout.contains("# pass 0"), "no test ran:\n{stdout}");
}
