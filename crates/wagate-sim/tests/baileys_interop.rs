//! Runs the Baileys interop checks in `interop/` (Node, `baileys@7.0.0-rc14` from npm)
//! against this build of `wagate-sim`, so `cargo test` covers them. Install their
//! dependencies first with `npm ci --prefix interop`.

use std::path::PathBuf;
use std::process::Command;

/// Runs `node --test interop/test/<file>` with this build's simulator binary.
fn run_node_test(file: &str) {
    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    assert!(
        interop.join("node_modules/baileys").is_dir(),
        "Baileys is not installed: run `npm ci --prefix interop` (scripts/test.sh does it)"
    );
    let output = Command::new("node")
        // Baileys leaves timers behind: exit once the tests are done.
        .args(["--test", "--test-force-exit", &format!("test/{file}")])
        .current_dir(&interop)
        .env("WAGATE_SIM_BIN", env!("CARGO_BIN_EXE_wagate-sim"))
        .output()
        .expect("node runs (Node 20 is required for the interop check)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Baileys interop check {file} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("# fail 0"), "no test summary from node --test:\n{stdout}");
}

#[test]
fn baileys_links_reconnects_after_515_and_stays_connected() {
    run_node_test("baileys.test.mjs");
}

/// Baileys on a profiled account: history chunks and the app-state snapshot from the media
/// host, app-state patches, the contacts' trickle.
#[test]
fn baileys_takes_a_profiled_accounts_history_app_state_and_trickle() {
    run_node_test("profile.test.mjs");
}
