//! The operator commands (`status`, `doctor`, `backup`, `restore`, `sessions`, `link`) run
//! as the `wagate` binary against a gateway and the simulator, the way an operator runs them.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::cli::{command, wagate};
use common::{free_port, link, start_gateway, start_sim, Api, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A URL where nothing listens.
fn nobody() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

async fn device_stats(control: &Api, jid: &str) -> Value {
    control.get("/control/stats").await.1["devices"][jid].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_running_gateway_then_the_registry_when_stopped() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    link(&api, &control, "WA-Status", "15553000001").await;
    let gone = link(&api, &control, "WA-Gone", "15553000002").await;
    control.post("/control/unlink", json!({ "jid": gone })).await;
    api.wait_state("WA-Gone", "logged_out").await;

    // One gateway per data directory: the lock file says who holds it.
    let second = wagate::server::Gateway::start(common::gateway_config(&sim, data.path())).await;
    let error = format!("{:#}", second.err().expect("a second gateway on the same data directory is refused"));
    assert!(error.contains(&format!("another wagate (pid {}) is already using", std::process::id())), "{error}");

    // No --url: the gateway's address comes from the data directory's lock file.
    let run = wagate(&["status", "--data-dir", text(data.path())]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(&format!("wagate is running (pid {}, http://{})", std::process::id(), gateway.addr)),
        "{run}"
    );
    assert!(run.stdout.contains("up "), "uptime shown: {run}");
    assert!(run.line_with(&["SESSION", "STATE", "SINCE", "LAST REASON"]).is_some(), "{run}");
    assert!(run.line_with(&["WA-Status", "connected", "+15553000001"]).is_some(), "{run}");
    assert!(run.line_with(&["WA-Gone", "logged_out", "unlinked from the phone (401)"]).is_some(), "{run}");

    gateway.stop().await;
    let run = wagate(&["status", "--data-dir", text(data.path()), "--url", &nobody()]).await;
    assert_eq!(run.code, 3, "LSB: not running: {run}");
    assert!(run.stdout.contains("wagate is not running"), "{run}");
    assert!(run.line_with(&["WA-Status", "connected", "+15553000001"]).is_some(), "from the registry: {run}");
    assert!(run.line_with(&["WA-Gone", "logged_out", "unlinked from the phone (401)"]).is_some(), "{run}");

    // A PID file whose process has ended (scripts/start.sh's, after a crash).
    let pid_file = data.path().join("wagate.pid");
    std::fs::write(&pid_file, "999999999").unwrap();
    let run =
        wagate(&["status", "--data-dir", text(data.path()), "--url", &nobody(), "--pid-file", text(&pid_file)]).await;
    assert_eq!(run.code, 1, "LSB: stopped with a stale PID file: {run}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_a_healthy_data_directory() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    link(&api, &control, "WA-Doc", "15553000011").await;
    let gone = link(&api, &control, "WA-Unlinked", "15553000012").await;
    control.post("/control/unlink", json!({ "jid": gone })).await;
    api.wait_state("WA-Unlinked", "logged_out").await;
    let dir = text(data.path());

    let run = wagate(&["doctor", "--data-dir", dir, "--wa-url", &sim.endpoints.ws_url]).await;
    let shard = shard_name(data.path(), "WA-Doc");
    for expected in [
        "OK    data directory",
        "OK    wagate.db passes the integrity check; schema is current",
        &format!("OK    {shard} opens and is intact ("),
        "OK    the gateway is running on this data directory",
        "OK    WhatsApp TCP: connected to 127.0.0.1",
        "OK    WhatsApp WebSocket:",
        "OK    clock offset to WhatsApp's server:",
        "OK    session WA-Doc (now): connected",
    ] {
        assert!(run.stdout.contains(expected), "missing '{expected}': {run}");
    }
    // The unlinked session is the one failure, explained, with the companion-limit reminder.
    let fails = run.lines_starting("FAIL");
    assert_eq!(fails.len(), 1, "{run}");
    assert!(fails[0].contains("WA-Unlinked") && fails[0].contains("unlinked from the phone (401)"), "{run}");
    assert!(run.stdout.contains("fix: link it again: wagate link WA-Unlinked"), "{run}");
    assert!(run.stdout.contains("at most 4 companion devices"), "{run}");
    assert_eq!(run.code, 1, "{run}");

    api.delete("/v1/sessions/WA-Unlinked").await;
    let run = wagate(&["doctor", "--data-dir", dir, "--wa-url", &sim.endpoints.ws_url]).await;
    assert_eq!(run.code, 0, "healthy: {run}");
    assert!(run.lines_starting("FAIL").is_empty(), "{run}");

    // The real WhatsApp endpoint, as this machine sees it: unreachable on a closed network,
    // which doctor must say (and how to fix it) rather than hang or claim success.
    let run = wagate(&["doctor", "--data-dir", dir]).await;
    let resolves = tokio::net::lookup_host("web.whatsapp.com:443").await.is_ok();
    if resolves {
        eprintln!("web.whatsapp.com resolves here; the unreachable case is not checked");
    } else {
        let fails = run.lines_starting("FAIL");
        assert_eq!(fails.len(), 1, "{run}");
        assert!(
            fails[0].contains("WhatsApp endpoint unreachable at the DNS step (wss://web.whatsapp.com/ws/chat)"),
            "{run}"
        );
        assert!(run.stdout.contains("fix: allow outbound 443 to *.whatsapp.net"), "{run}");
        assert!(run.stdout.contains("WARN  clock offset could not be checked (WhatsApp not reachable)"), "{run}");
        assert_eq!(run.code, 1, "{run}");
    }
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_on_a_broken_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let sim = start_sim().await;
    let gateway = start_gateway(&sim, data.path()).await;
    gateway.stop().await;
    sim.stop().await;
    let dir = text(data.path());

    let run = wagate(&["doctor", "--data-dir", dir, "--url", &nobody(), "--wa-url", "ws://127.0.0.1:9/ws/chat"]).await;
    assert!(run.stdout.contains("OK    wagate.db passes the integrity check"), "{run}");
    assert!(run.stdout.contains("WARN  no gateway is running on this data directory"), "{run}");
    assert!(
        run.stdout.contains("FAIL  WhatsApp endpoint unreachable at the TCP step"),
        "nothing listens on port 9: {run}"
    );

    // Garbage over the registry.
    let db = data.path().join("wagate.db");
    for leftover in ["wagate.db-wal", "wagate.db-shm"] {
        let _ = std::fs::remove_file(data.path().join(leftover));
    }
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let run = wagate(&["doctor", "--data-dir", dir, "--url", &nobody(), "--wa-url", "ws://127.0.0.1:9/ws/chat"]).await;
    assert_eq!(run.code, 1, "{run}");
    let line = run.lines_starting("FAIL  wagate.db");
    assert_eq!(line.len(), 1, "{run}");
    assert!(run.stdout.contains("fix: stop the gateway and put back the last backup"), "{run}");

    // A data directory that is a file (root ignores permissions, so this is the
    // deterministic way to make it unusable).
    let file = data.path().join("not-a-directory");
    std::fs::write(&file, "x").unwrap();
    let run =
        wagate(&["doctor", "--data-dir", text(&file), "--url", &nobody(), "--wa-url", "ws://127.0.0.1:9/ws/chat"])
            .await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("is not a directory"), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_connected_then_restore_elsewhere_reconnects_without_a_qr() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-Back", "15553000021").await;
    let archive = work.path().join("wagate-backup.tar.gz");

    let run = wagate(&["backup", "--data-dir", text(data.path()), "--out", text(&archive)]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("[1/2] wagate.db: copied"), "{run}");
    let shard = shard_name(data.path(), "WA-Back");
    assert!(run.stdout.contains(&format!("[2/2] {shard}: copied")), "{run}");
    assert!(run.stdout.contains("1 session, 2 databases"), "{run}");
    let again = wagate(&["backup", "--data-dir", text(data.path()), "--out", text(&archive)]).await;
    assert_eq!(again.code, 1, "no overwrite without --force: {again}");
    assert!(again.stderr.contains("--force"), "{again}");

    // Not while the gateway runs on the target.
    let refused = wagate(&["restore", text(&archive), "--data-dir", text(data.path()), "--force"]).await;
    assert_eq!(refused.code, 1, "{refused}");
    assert!(refused.stderr.contains("the gateway is running on"), "{refused}");
    assert!(refused.stderr.contains(&format!("pid {}", std::process::id())), "{refused}");

    // The original gateway stops (two copies of one session would replace each other).
    gateway.stop().await;
    let before = device_stats(&control, &jid).await;
    let fresh = work.path().join("restored");
    let run = wagate(&["restore", text(&archive), "--data-dir", text(&fresh)]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains(&format!("[2/2] verified {shard} (checksum and integrity)")), "{run}");
    assert!(run.stdout.contains("restored 1 session (WA-Back)"), "{run}");

    let gateway = start_gateway(&sim, &fresh).await;
    let api = Api::gateway(gateway.addr);
    let view = api.wait_state("WA-Back", "connected").await;
    assert_eq!(view["me"]["phone"], "15553000021", "{view}");
    let after = device_stats(&control, &jid).await;
    assert_eq!(after["pairings"], before["pairings"], "no new pairing: {before} -> {after}");
    assert_eq!(after["logins"].as_u64().unwrap(), before["logins"].as_u64().unwrap() + 1, "{before} -> {after}");
    gateway.stop().await;

    // A target with data is replaced only with --force, and then kept aside.
    let refused = wagate(&["restore", text(&archive), "--data-dir", text(&fresh)]).await;
    assert_eq!(refused.code, 1, "{refused}");
    assert!(refused.stderr.contains("already holds data"), "{refused}");
    let run = wagate(&["restore", text(&archive), "--data-dir", text(&fresh), "--force"]).await;
    assert_eq!(run.code, 0, "{run}");
    let aside: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("restored.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old data moved aside: {aside:?}");
    assert!(work.path().join(&aside[0]).join("wagate.db").exists());

    // A damaged archive is refused before anything is replaced.
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes.truncate(middle);
    let broken = work.path().join("broken.tar.gz");
    std::fs::write(&broken, bytes).unwrap();
    let run = wagate(&["restore", text(&broken), "--data-dir", text(&work.path().join("never"))]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(!work.path().join("never").exists(), "nothing put in place: {run}");
    sim.stop().await;
}

/// An archive of format 1, as wagate wrote before the engine's keys moved into shards: one
/// engine file per session (`engine/<id>.db`, the library's own layout with the device as
/// id 1). Made here from a linked data directory (stopped), by copying the session's device
/// rows out of its shard, so that its keys are real ones WhatsApp knows.
fn format_1_archive(data_dir: &Path, id: &str, phone: &str, out: &Path) {
    use sha2::Digest;
    let staging = tempfile::tempdir().unwrap();
    std::fs::create_dir(staging.path().join("engine")).unwrap();
    let registry = staging.path().join("wagate.db");
    rusqlite::Connection::open(data_dir.join("wagate.db"))
        .unwrap()
        .execute("VACUUM INTO ?1", [text(&registry)])
        .unwrap();

    // The library makes the schema of its single-device file; the rows come from the shard.
    let legacy = staging.path().join(format!("engine/{id}.db"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { drop(whatsapp_rust::store::SqliteStore::new(text(&legacy)).await.unwrap()) });
    let conn = rusqlite::Connection::open(&legacy).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS shard", [text(&common::engine_shard(data_dir, id))]).unwrap();
    let device: i64 =
        conn.query_row("SELECT device FROM shard.wagate_devices WHERE session = ?1", [id], |r| r.get(0)).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut copied = 0;
    for table in tables {
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1, 'main')")
            .unwrap()
            .query_map([&table], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = if table == "device" { "id" } else { "device_id" };
        if !columns.iter().any(|c| c == key) {
            continue;
        }
        let others: Vec<String> = columns.iter().filter(|c| *c != key).map(|c| format!("\"{c}\"")).collect();
        conn.execute(&format!("DELETE FROM main.\"{table}\" WHERE {key} = 1"), []).unwrap();
        copied += conn
            .execute(
                &format!(
                    "INSERT INTO main.\"{table}\" ({cols}, {key}) SELECT {cols}, 1 FROM shard.\"{table}\" WHERE {key} = ?1",
                    cols = others.join(", ")
                ),
                [device],
            )
            .unwrap();
    }
    assert!(copied > 1, "the device row and its keys were copied ({copied} rows)");
    conn.execute_batch("DETACH DATABASE shard; PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE").unwrap();
    drop(conn);

    let files: Vec<Value> = ["wagate.db".to_string(), format!("engine/{id}.db")]
        .iter()
        .map(|path| {
            let bytes = std::fs::read(staging.path().join(path)).unwrap();
            let sha256: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            json!({ "path": path, "bytes": bytes.len(), "sha256": sha256 })
        })
        .collect();
    let schema_version: i64 =
        rusqlite::Connection::open(&registry).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let manifest = json!({
        "format": 1,
        "wagate_version": "0.1.0",
        "created_at": "2026-11-20T10:00:00Z",
        "schema_version": schema_version,
        "sessions": [{ "id": id, "linked": true, "phone": phone }],
        "files": files,
    });
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::default(),
    ));
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    tar.append_data(&mut header, "manifest.json", manifest.as_slice()).unwrap();
    for path in ["wagate.db".to_string(), format!("engine/{id}.db")] {
        tar.append_path_with_name(staging.path().join(&path), &path).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// Archives of format 1 still restore: the session's file of the older layout is put in
/// place, moves into its shard when the session starts, and it reconnects without a QR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_archive_restores_and_reconnects_without_a_qr() {
    let sim = start_sim().await;
    let (data, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-Format1", "15553000031").await;
    gateway.stop().await;
    let archive = work.path().join("format-1.tar.gz");
    let (from, into) = (data.path().to_path_buf(), archive.clone());
    tokio::task::spawn_blocking(move || format_1_archive(&from, "WA-Format1", "15553000031", &into)).await.unwrap();

    let before = device_stats(&control, &jid).await;
    let fresh = work.path().join("restored");
    let run = wagate(&["restore", text(&archive), "--data-dir", text(&fresh)]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("[2/2] verified engine/WA-Format1.db (checksum and integrity)"), "{run}");
    assert!(run.stdout.contains("restored 1 session (WA-Format1)"), "{run}");
    assert!(fresh.join("engine/WA-Format1.db").exists(), "the older layout is restored as it was");

    let gateway = start_gateway(&sim, &fresh).await;
    let api = Api::gateway(gateway.addr);
    let view = api.wait_state("WA-Format1", "connected").await;
    assert_eq!(view["me"]["phone"], "15553000031", "{view}");
    let after = device_stats(&control, &jid).await;
    assert_eq!(after["pairings"], before["pairings"], "no new pairing: {before} -> {after}");
    assert!(!fresh.join("engine/WA-Format1.db").exists(), "the file moved into its shard");
    assert!(common::has_engine_keys(&fresh, "WA-Format1"));
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_logout_and_delete() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-S1", "15553000031").await;
    api.post("/v1/sessions", json!({ "id": "WA-S2" })).await;
    api.wait_state("WA-S2", "awaiting_scan").await;
    let url = format!("http://{}", gateway.addr);

    let run = wagate(&["sessions", "list", "--url", &url]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.line_with(&["WA-S1", "connected", "+15553000031"]).is_some(), "{run}");
    assert!(run.line_with(&["WA-S2", "awaiting_scan"]).is_some(), "{run}");

    let run = wagate(&["sessions", "logout", "WA-S1", "--url", &url]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("WA-S1 logged out"), "{run}");
    assert_eq!(api.get("/v1/sessions/WA-S1").await.1["state"], "logged_out");
    let devices = control.get("/control/devices").await.1;
    assert!(!devices.as_array().unwrap().iter().any(|d| d["jid"] == jid), "unlinked on WhatsApp: {devices}");

    let run = wagate(&["sessions", "delete", "WA-S2", "--url", &url]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(api.get("/v1/sessions/WA-S2").await.0, 404);
    let run = wagate(&["sessions", "delete", "WA-S2", "--url", &url]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.to_lowercase().contains("session not found"), "{run}");

    gateway.stop().await;
    let down = nobody();
    let run = wagate(&["sessions", "logout", "WA-S1", "--url", &down]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stderr.contains("the gateway is not running"), "{run}");
    let run = wagate(&["sessions", "list", "--url", &down, "--data-dir", text(data.path())]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.line_with(&["WA-S1", "logged_out", "logged out on request"]).is_some(), "from the registry: {run}");
    assert!(!run.stdout.contains("WA-S2"), "deleted: {run}");
    sim.stop().await;
}

/// Lines a running `wagate` prints, as they come.
struct Output {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: String,
}

impl Output {
    fn follow(stdout: tokio::process::ChildStdout) -> Self {
        let (send, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = send.send(line);
            }
        });
        Self { lines, seen: String::new() }
    }

    async fn wait_for(&mut self, words: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.seen.contains(words) {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                _ => panic!("no '{words}' in the output:\n{}", self.seen),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_shows_the_qr_and_waits_until_connected() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let url = format!("http://{}", gateway.addr);

    let mut child = command(&["link", "WA-Link", "--url", &url]).stdout(Stdio::piped()).spawn().unwrap();
    let mut output = Output::follow(child.stdout.take().unwrap());
    output.wait_for("left on this code").await;
    let view = api.wait_state("WA-Link", "awaiting_scan").await;
    let qr = view["qr"].as_str().unwrap();
    let drawing = String::from_utf8(wagate::http::qr::render(qr, wagate::http::qr::QrFormat::Text).unwrap()).unwrap();
    assert!(output.seen.contains(&drawing), "the terminal shows the session's current QR:\n{}", output.seen);

    // A second `link` while the first waits leaves the pairing alone: same QR.
    let second = wagate(&["link", "WA-Link", "--url", &url, "--phone", "not a number"]).await;
    assert_eq!(second.code, 1, "{second}");
    assert_eq!(api.get("/v1/sessions/WA-Link").await.1["qr"], qr, "not restarted");

    let (status, linked) = control.post("/control/scan", json!({ "qr": qr, "phone": "15553000041" })).await;
    assert_eq!(status, 200, "{linked}");
    let exit = tokio::time::timeout(WAIT, child.wait()).await.expect("link exits once connected").unwrap();
    output.wait_for("connected as +15553000041").await;
    assert_eq!(exit.code(), Some(0), "{}", output.seen);
    assert!(output.seen.contains("paired, restarting (515, normal)"), "{}", output.seen);

    let run = wagate(&["link", "WA-Link", "--url", &url]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("already linked and connected as +15553000041"), "{run}");

    // With a phone number: a pairing code instead of a QR.
    let mut child = command(&["link", "WA-Code", "--url", &url, "--phone", "+1 555 300 0042"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = Output::follow(child.stdout.take().unwrap());
    output.wait_for("pairing code for WA-Code: ").await;
    let code = output.seen.lines().find_map(|l| l.strip_prefix("pairing code for WA-Code: ")).unwrap().to_string();
    assert!(!output.seen.contains('█'), "no QR in pairing-code mode:\n{}", output.seen);
    let (status, linked) = control.post("/control/pair-code", json!({ "phone": "15553000042", "code": code })).await;
    assert_eq!(status, 200, "{linked}");
    let exit = tokio::time::timeout(WAIT, child.wait()).await.expect("link exits once connected").unwrap();
    output.wait_for("connected as +15553000042").await;
    assert_eq!(exit.code(), Some(0), "{}", output.seen);

    gateway.stop().await;
    let run = wagate(&["link", "WA-Link", "--url", &nobody()]).await;
    assert_eq!(run.code, 3, "{run}");
    sim.stop().await;
}

/// `engine/shard-<k>.sqlite`, the engine shard of session `id`, relative to the data directory.
fn shard_name(data_dir: &std::path::Path, id: &str) -> String {
    format!("engine/{}", common::engine_shard(data_dir, id).file_name().unwrap().to_string_lossy())
}
