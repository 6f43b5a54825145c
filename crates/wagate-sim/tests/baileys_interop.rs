//! Runs the Baileys interop check in `interop/` (Node, `baileys@7.0.0-rc14` from npm)
//! against this build of `wagate-sim`, so `cargo test` covers it. Install its dependencies
//! first with `npm ci --prefix interop`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn baileys_links_reconnects_after_515_and_stays_connected() {
    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    assert!(
        interop.join("node_modules/baileys").is_dir(),
        "Baileys is not installed: run `npm ci --prefix interop` (scripts/test.sh does it)"
    );
    let output = Command::new("node")
        // Baileys leaves timers behind: exit once the tests are done.
        .args(["--test", "--test-force-exit", "test/baileys.test.mjs"])
        .current_dir(&interop)
        .env("WAGATE_SIM_BIN", env!("CARGO_BIN_EXE_wagate-sim"))
        .output()
        .expect("node runs (Node 20 is required for the interop check)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Baileys interop check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("# fail 0"), "no test summary from node --test:\n{stdout}");
}
