//! Restarts and kill -9: a linked session comes back from the data directory without a QR
//! code, and a kill at any moment (right after pair-success included) leaves either a linked
//! session or a clean new link, never a half-state.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{engine_shard, free_port, link, start_gateway, start_sim, Api, GatewayProcess, WAIT};
use serde_json::{json, Value};
use wagate::engine::{Engine, EngineStore, WhatsAppEngine};

/// States a session never leaves by itself: reaching one of them ends a wait at once.
const DEAD_ENDS: [&str; 5] = ["logged_out", "failed", "outdated", "banned", "replaced"];

/// A temporary data directory that prints the tail of the gateway's log when the test fails.
struct DataDir(tempfile::TempDir);

impl DataDir {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("temporary directory"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Ok(log) = std::fs::read_to_string(self.path().join("gateway.log")) {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!("--- last lines of {}/gateway.log ---\n{}", self.path().display(), tail.join("\n"));
        }
    }
}

/// A `wagate serve` child process that is killed if the test ends early (a failed assert).
struct Child(Option<GatewayProcess>);

impl Child {
    async fn spawn(sim: &wagate_sim::Simulator, data_dir: &Path, port: u16) -> Self {
        let process = GatewayProcess::spawn(sim, data_dir, port);
        process.ready().await;
        Self(Some(process))
    }

    fn api(&self) -> &Api {
        &self.0.as_ref().expect("the gateway is running").api
    }

    fn kill_9(&mut self) {
        self.0.take().expect("the gateway is running").kill_9();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut process) = self.0.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

/// Polls session `id` until it is connected, shows a QR code, or reaches a dead end (or
/// [`WAIT`] passes). Returns the last view and every state seen, in order, repeats dropped.
async fn follow(api: &Api, id: &str) -> (Value, Vec<String>) {
    let path = format!("/v1/sessions/{id}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let (status, view) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {view}");
        let state = view["state"].as_str().unwrap_or("?").to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        let settled = state == "connected" || state == "awaiting_scan" || DEAD_ENDS.contains(&state.as_str());
        if settled || tokio::time::Instant::now() >= deadline {
            return (view, seen);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for session `id` to reconnect after a restart, failing if it ever shows a QR code.
async fn reconnects_without_qr(api: &Api, id: &str) -> Value {
    let (view, seen) = follow(api, id).await;
    assert!(!seen.iter().any(|s| s == "awaiting_scan"), "a QR code after the restart; states seen: {seen:?}: {view}");
    assert_eq!(view["state"], "connected", "not connected after the restart; states seen: {seen:?}: {view}");
    view
}

/// The identity the engine's store of `data_dir` (its shards, or its PostgreSQL database
/// when the tests run on PostgreSQL) holds for session `id`.
async fn stored_identity(data_dir: &Path, id: &str) -> Option<wagate::engine::Me> {
    let store = match common::postgres::for_data_dir(data_dir) {
        Some(url) => EngineStore::Postgres(wagate::engine::PgStore {
            engine: wagate::engine::postgres::PgEngine::connect(&url, 1).await.expect("the test database answers"),
            session: id.to_string(),
            fence: None,
        }),
        None => EngineStore::new(data_dir.join("engine"), id),
    };
    WhatsAppEngine::new(None, None, wagate::engine::scratch::Scratch::new(std::env::temp_dir()))
        .linked_identity(&store)
        .await
        .expect("the engine store can be read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_connected_then_restart_reconnects_without_qr() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let data = DataDir::new();
    let port = free_port();

    let mut gateway = Child::spawn(&sim, data.path(), port).await;
    let jid = link(gateway.api(), &control, "WA-Kill", "15553000001").await;
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["devices"][&jid]["logins"], 1, "{stats}");
    gateway.kill_9();

    let gateway = Child::spawn(&sim, data.path(), port).await;
    let view = reconnects_without_qr(gateway.api(), "WA-Kill").await;
    assert_eq!(view["me"]["jid"], jid, "{view}");
    assert!(view["qr"].is_null(), "{view}");

    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["pairings"], 1, "linked once: {stats}");
    assert_eq!(stats["totals"]["pairing_connections"], 1, "no QR connection after the restart: {stats}");
    assert_eq!(stats["devices"][&jid]["logins"], 2, "the same device logged in again: {stats}");
    let (_, health) = gateway.api().get("/health").await;
    assert_eq!(health["sessions"]["connected"], 1, "{health}");
    drop(gateway);
    sim.stop().await;
}

/// How a session came back from a kill right after pair-success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The credentials were on disk: it logged in as the device just linked.
    ResumedLinked,
    /// They were not: it offered a fresh QR code with no trace of the lost link.
    CleanNewLink,
}

/// When the gateway is killed during a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillAt {
    /// The moment `/control/scan` answers 200: the client signed the pairing and the
    /// simulator has sent 515.
    ScanAnswered,
    /// The moment the client's store holds the identity of pair-success, with the scan still
    /// in flight: the simulator may or may not have received the client's signature.
    CredentialsOnDisk,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_pair_success() {
    let mut outcomes = Vec::new();
    for round in 0..3 {
        outcomes.push(kill_during_link_then_restart(round, KillAt::ScanAnswered).await);
    }
    println!("kill -9 when the scan answers: outcomes {outcomes:?}");
}

/// The narrowest window of a kill right after pair-success: the engine already stored the
/// new identity, and the server may not have accepted the client's signature yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_when_pair_success_reaches_the_disk() {
    if common::postgres::for_data_dir(Path::new("/")).is_some() {
        eprintln!("watches a SQLite shard file for the pair-success write: SQLite only");
        return;
    }
    let mut outcomes = Vec::new();
    for round in 10..13 {
        outcomes.push(kill_during_link_then_restart(round, KillAt::CredentialsOnDisk).await);
    }
    println!("kill -9 when the credentials reach the disk: outcomes {outcomes:?}");
}

/// Whether the engine store at `db` holds a linked identity (read straight from
/// whatsapp-rust's SQLite schema, so it can be polled every millisecond).
fn identity_on_disk(shard: &Path, session: &str) -> rusqlite::Result<bool> {
    let conn = rusqlite::Connection::open_with_flags(shard, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.query_row(
        "SELECT count(*) FROM device d JOIN wagate_devices m ON m.device = d.id WHERE m.session = ?1 AND d.pn != ''",
        [session],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Links a new session on a child-process gateway, kills it at `kill_at`, restarts it on the
/// same data directory and checks the session comes back linked or as a clean new link.
async fn kill_during_link_then_restart(round: u32, kill_at: KillAt) -> Outcome {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let data = DataDir::new();
    let port = free_port();
    let id = format!("WA-Pair-{round}");
    let phone = format!("155530001{round:02}");

    let mut gateway = Child::spawn(&sim, data.path(), port).await;
    let (status, created) = gateway.api().post("/v1/sessions", json!({ "id": id })).await;
    assert_eq!(status, 201, "{created}");
    let view = gateway.api().wait_state(&id, "awaiting_scan").await;
    let old_qr = view["qr"].as_str().expect("a QR code").to_string();
    let scan = {
        let (control, body) = (control.clone(), json!({ "qr": old_qr, "phone": phone }));
        tokio::spawn(async move { control.post("/control/scan", body).await })
    };
    let (status, linked) = match kill_at {
        KillAt::ScanAnswered => {
            let answer = scan.await.expect("scan task");
            gateway.kill_9();
            answer
        }
        KillAt::CredentialsOnDisk => {
            let db = engine_shard(data.path(), &id);
            let session = id.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + WAIT;
                loop {
                    match identity_on_disk(&db, &session) {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        // Busy or mid-checkpoint: look again; a schema change shows at the deadline.
                        Err(e) if std::time::Instant::now() >= deadline => return Err(e.to_string()),
                        Err(_) => {}
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err("no identity was stored".to_string());
                    }
                }
            })
            .await
            .expect("poll task");
            gateway.kill_9();
            polled.unwrap_or_else(|e| panic!("round {round}: waiting for the pair-success identity on disk: {e}"));
            scan.await.expect("scan task")
        }
    };
    // With the kill racing the signature, the simulator may have dropped the link (422).
    let jid = match (kill_at, status) {
        (_, 200) => linked["jid"].as_str().map(str::to_string),
        (KillAt::CredentialsOnDisk, 422) => None,
        _ => panic!("round {round}: scan answered {status}: {linked}"),
    };
    let (_, stats) = control.get("/control/stats").await;
    let pairings_before = stats["totals"]["pairings"].as_u64().unwrap_or(0);

    let gateway = Child::spawn(&sim, data.path(), port).await;
    let api = gateway.api();
    let (view, seen) = follow(api, &id).await;
    let outcome = match view["state"].as_str() {
        Some("connected") if !seen.iter().any(|s| s == "awaiting_scan") => Outcome::ResumedLinked,
        Some("awaiting_scan") => Outcome::CleanNewLink,
        _ => panic!(
            "round {round} ({kill_at:?}, scan {status}): neither linked nor a clean new link after the restart; \
             states seen: {seen:?}: {view}"
        ),
    };
    println!("kill -9 at {kill_at:?}, round {round}: scan {status}, {outcome:?}; states after the restart: {seen:?}");

    match outcome {
        Outcome::ResumedLinked => {
            let jid = jid.unwrap_or_else(|| panic!("round {round}: connected as a device the server refused: {view}"));
            assert_eq!(view["me"]["jid"], jid, "round {round}: {view}");
            let (_, stats) = control.get("/control/stats").await;
            assert_eq!(stats["totals"]["pairings"], 1, "round {round}: {stats}");
            assert_eq!(stats["totals"]["pairing_connections"], 1, "round {round}: no QR after the restart: {stats}");
            let logins = stats["devices"][&jid]["logins"].as_u64().unwrap_or(0);
            assert!(logins >= 1, "round {round}: the linked device logged in: {stats}");
        }
        Outcome::CleanNewLink => {
            let new_qr = view["qr"].as_str().unwrap_or_default();
            assert!(!new_qr.is_empty() && new_qr != old_qr, "round {round}: a fresh QR code: {view}");
            assert!(view["me"].is_null(), "round {round}: no identity of the lost link shown: {view}");
            assert_eq!(stored_identity(data.path(), &id).await, None, "round {round}: no stale credentials on disk");
            let (status, relinked) = control.post("/control/scan", json!({ "qr": new_qr, "phone": phone })).await;
            assert_eq!(status, 200, "round {round}: scan of the new QR: {relinked}");
            // The scan's answer can come before the gateway has left awaiting_scan: wait for
            // connected itself rather than for the first settled state.
            let view = api
                .wait_for(&format!("/v1/sessions/{id}"), &format!("round {round}: the new link to connect"), |v| {
                    v["state"] == "connected"
                })
                .await;
            assert_eq!(view["me"]["jid"], relinked["jid"], "round {round}: {view}");
            let (_, stats) = control.get("/control/stats").await;
            assert_eq!(stats["totals"]["pairings"], pairings_before + 1, "round {round}: {stats}");
        }
    }
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], 1, "round {round}: {health}");
    drop(gateway);
    sim.stop().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_in_process() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let data = DataDir::new();

    let gateway = start_gateway(&sim, data.path()).await;
    assert_eq!(gateway.restored, 0);
    let jid = link(&Api::gateway(gateway.addr), &control, "WA-Graceful", "15553000201").await;
    gateway.stop().await;
    assert_eq!(stored_identity(data.path(), "WA-Graceful").await.and_then(|me| me.jid), Some(jid.clone()));

    let gateway = start_gateway(&sim, data.path()).await;
    assert_eq!(gateway.restored, 1, "the linked session is restored");
    let api = Api::gateway(gateway.addr);
    let view = reconnects_without_qr(&api, "WA-Graceful").await;
    assert_eq!(view["me"]["jid"], jid, "{view}");

    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["pairings"], 1, "{stats}");
    assert_eq!(stats["totals"]["pairing_connections"], 1, "{stats}");
    assert_eq!(stats["devices"][&jid]["logins"], 2, "{stats}");
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], 1, "{health}");
    gateway.stop().await;
    sim.stop().await;
}

/// Two sessions share an engine shard; one's credentials are damaged while the gateway is
/// stopped. After the restart that one fails with a reason naming its keys, and the other
/// reconnects without a QR code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_keys_fail_their_session_only_after_a_restart() {
    if common::postgres::for_data_dir(Path::new("/")).is_some() {
        eprintln!("damages a SQLite shard file: nothing to damage when the store is PostgreSQL");
        return;
    }
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let data = DataDir::new();
    let ids: Vec<String> = (0..)
        .map(|n| format!("WA-Shard-{n}"))
        .filter(|id| wagate::engine::shards::shard_index(id) == 0)
        .take(2)
        .collect();
    let (broken, fine) = (&ids[0], &ids[1]);
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    link(&api, &control, broken, "15553000091").await;
    let fine_jid = link(&api, &control, fine, "15553000092").await;
    gateway.stop().await;

    let shard = engine_shard(data.path(), broken);
    assert_eq!(shard, engine_shard(data.path(), fine), "both in one shard");
    let conn = rusqlite::Connection::open(&shard).unwrap();
    let damaged = conn
        .execute(
            "UPDATE device SET noise_key = x'00' WHERE id = (SELECT device FROM wagate_devices WHERE session = ?1)",
            [broken],
        )
        .unwrap();
    assert_eq!(damaged, 1);
    drop(conn);

    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let view = reconnects_without_qr(&api, fine).await;
    assert_eq!(view["me"]["jid"], fine_jid, "{view}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let view = loop {
        let (_, view) = api.get(&format!("/v1/sessions/{broken}")).await;
        if view["last_error"].as_str().is_some_and(|e| e.contains("cannot be read")) {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error about its keys: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(view["state"], "connected", "{view}");
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains(broken.as_str()) && error.contains("other sessions are not affected"), "{view}");
    gateway.stop().await;
    sim.stop().await;
}
