//! The OpenAPI document against what wagate really does, with `wagate sandbox` running as
//! a newcomer runs it:
//! - the webhook bodies a linked session sends (and the examples of docs/webhooks.md)
//!   match the document's `webhooks` schemas (interop/schemathesis/validate_webhooks.py);
//! - schemathesis (interop/requirements.txt) calls every operation with generated valid
//!   and invalid input, and finds no 5xx, no status code, content type, header or body the
//!   document does not describe, no invalid input accepted, no undeclared method answered
//!   with anything but 405 (interop/schemathesis/schemathesis.toml says which checks run).
//!
//! Needs the Python packages of interop/requirements.txt (scripts/test.sh installs them).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::receiver::Receiver;
use common::sandbox::SandboxProcess;
use serde_json::json;

const CONTACT: &str = "15550100100";
/// Fixed, so that a failure can be replayed (`--seed` with the same number).
const SEED: &str = "20261203";
/// Examples per operation and phase: about 3,000 calls, under a minute here.
const EXAMPLES: &str = "60";
/// A bound on the whole run, far above its usual length, so a hang fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn interop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// Runs `python3` with these arguments in `dir` (schemathesis keeps a cache in its working
/// directory, which must not be the clone), bounded by `RUN_LIMIT`; returns whether it
/// succeeded and what it printed.
async fn python(dir: &Path, args: &[&str]) -> (bool, String) {
    let child = tokio::process::Command::new("python3")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (scripts/test.sh installs what the tests need)");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("python3 {args:?} did not end within {RUN_LIMIT:?}"))
        .expect("python3 ends");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_api_and_its_webhooks() {
    let root = tempfile::tempdir().unwrap();
    let (installed, _) = python(root.path(), &["-c", "import schemathesis, jsonschema_rs"]).await;
    assert!(installed, "schemathesis is missing: pip install -r interop/requirements.txt (scripts/test.sh does)");
    let receiver = Receiver::start().await;
    let data_dir = root.path().join("sandbox-data");
    let sandbox = SandboxProcess::start_with(&data_dir, &["--webhook", &receiver.url]).await;
    let api = &sandbox.api;

    // A linked session's events: its states, a text and a file from the contact, the
    // states of what it sent, and a test event.
    api.wait_state("demo", "awaiting_scan").await;
    let (status, scanned) = api.post("/v1/sandbox/scan", json!({ "session": "demo" })).await;
    assert_eq!(status, 200, "{scanned}{}", sandbox.log());
    api.wait_state("demo", "connected").await;
    for text in ["hello", "file"] {
        let (status, sent) =
            api.post("/v1/sessions/demo/messages", json!({ "to": format!("+{CONTACT}"), "text": text })).await;
        assert_eq!(status, 200, "{sent}");
    }
    let (status, outcome) = api.post("/v1/sessions/demo/webhook/test", json!({})).await;
    assert_eq!((status, &outcome["delivered"]), (200, &json!(true)), "{outcome}");
    let events = |received: &[common::receiver::Received], name: &str| {
        received.iter().filter(|r| r.json["event"] == name).count()
    };
    let received = receiver
        .wait_for("the events of a linked session", common::WAIT, |r| {
            events(r, "messages.upsert") >= 2
                && events(r, "message.status") >= 2
                && events(r, "connection.update") >= 3
                && events(r, "webhook.test") >= 1
        })
        .await;

    let (status, document) = api.get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["openapi"], "3.1.0");
    let document_file = root.path().join("openapi.json");
    std::fs::write(&document_file, document.to_string()).unwrap();
    let bodies_file = root.path().join("webhooks.jsonl");
    let bodies: Vec<String> = received.iter().map(|r| r.body.clone()).collect();
    std::fs::write(&bodies_file, bodies.join("\n")).unwrap();
    let docs = interop().join("../docs/webhooks.md");
    let validator = interop().join("schemathesis/validate_webhooks.py");
    let (valid, report) = python(
        root.path(),
        &[
            validator.to_str().unwrap(),
            document_file.to_str().unwrap(),
            bodies_file.to_str().unwrap(),
            docs.to_str().unwrap(),
        ],
    )
    .await;
    assert!(valid, "webhook bodies that the document does not describe:\n{report}");

    // Every operation, positive and negative examples, then stateful sequences.
    let config = interop().join("schemathesis/schemathesis.toml");
    let url = format!("{}/v1/openapi.json", api.base);
    let cli = "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()";
    let (passed, output) = python(
        root.path(),
        &[
            "-c",
            cli,
            "--no-color",
            "--config-file",
            config.to_str().unwrap(),
            "run",
            &url,
            "--seed",
            SEED,
            "--max-examples",
            EXAMPLES,
            "--workers",
            "2",
        ],
    )
    .await;
    assert!(
        passed,
        "schemathesis found defects (replay with the same seed):\n{}\n{}",
        tail(&output, 150),
        sandbox.log()
    );
    let selected = output.lines().find_map(|l| l.trim().strip_prefix("Operations:")).unwrap_or_default();
    let counts: Vec<&str> = selected.split_whitespace().filter(|w| w.parse::<u32>().is_ok()).collect();
    assert!(
        counts.len() == 2 && counts[0] == counts[1],
        "every operation was tested: {selected}\n{}",
        tail(&output, 40)
    );
}
