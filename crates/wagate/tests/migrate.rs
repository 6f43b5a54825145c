//! `wagate migrate`: a SQLite data directory with linked sessions, copied into PostgreSQL by
//! the real binary, runs there with the same pairings (no QR code, the same devices log in
//! again), its Signal sessions intact (messages go both ways), and its undelivered webhook
//! event delivered. Refused while a gateway runs on the directory, and into a database that
//! already has the sessions.

mod common;

use std::path::Path;
use std::time::Duration;

use common::postgres::TestDatabase;
use common::receiver::{Answer, Receiver};
use common::{link, start_gateway_with, start_sim, Api, WAIT};
use serde_json::{json, Value};
use wacore::store::traits::SignalStore;
use wagate::config::DatabaseSettings;
use wagate::engine::postgres::PgEngine;
use wagate::engine::shards::{self, ShardStore};
use wagate_sim::Simulator;

/// Runs `wagate migrate --from DIR --to URL`; returns whether it succeeded, and its output.
async fn migrate(dir: &Path, url: &str) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wagate"))
        .arg("migrate")
        .arg("--from")
        .arg(dir)
        .args(["--to", url])
        .env_remove("WAGATE_DATABASE_URL")
        .output()
        .await
        .expect("wagate migrate runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// A gateway on the data directory's SQLite (whatever store the test run uses otherwise).
async fn sqlite_gateway(sim: &Simulator, dir: &Path) -> wagate::server::Gateway {
    let mut config = common::gateway_config(sim, dir);
    config.database = None;
    start_gateway_with(config).await
}

/// A gateway on PostgreSQL that keeps using `dir` for its files.
async fn postgres_gateway(sim: &Simulator, dir: &Path, url: &str) -> wagate::server::Gateway {
    let mut config = common::gateway_config(sim, dir);
    config.database = Some(DatabaseSettings {
        url: url.to_string(),
        node_id: Some("migrated".into()),
        advertise_url: None,
        lease_ttl: Duration::from_secs(15),
    });
    start_gateway_with(config).await
}

/// Waits until session `id` is connected; fails if it shows a QR code on the way.
async fn connects_without_qr(api: &Api, id: &str) -> Value {
    let path = format!("/v1/sessions/{id}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, view) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {view}");
        assert_ne!(view["state"], "awaiting_scan", "{id} asks for a QR code after the migration: {view}");
        if view["state"] == "connected" {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} did not connect: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The texts of the messages.upsert events a receiver answered 2xx.
fn delivered_texts(hooks: &Receiver) -> Vec<String> {
    hooks
        .received()
        .iter()
        .filter(|r| r.json["event"] == "messages.upsert" && r.answered.is_some_and(|s| (200..300).contains(&s)))
        .filter_map(|r| r.json["data"]["text"].as_str().map(str::to_string))
        .collect()
}

/// The Signal sessions of `session` in PostgreSQL are those of its shard, byte for byte (a
/// message alone would not tell: a sender without a session makes a new one from the
/// recipient's prekeys).
async fn assert_signal_sessions_copied(dir: &Path, database: &TestDatabase, session: &str) {
    let addresses = database.query(&format!(
        "SELECT s.address FROM wagate_engine_sessions s JOIN wagate_engine_devices d ON d.device = s.device \
         WHERE d.session = '{session}'"
    ));
    assert!(!addresses.is_empty(), "{session} has Signal sessions in PostgreSQL");
    let engine = PgEngine::connect(&database.url(), 1).await.unwrap();
    let copy = engine.open_device(session, false, None).await.unwrap().expect("the copied device");
    let store = ShardStore::new(dir.join("engine"), session);
    let original = shards::open_device(&store, false).await.unwrap().expect("the device in its shard");
    for address in addresses.iter().map(|row| row[0].clone().unwrap()) {
        let (copied, kept) = (copy.get_session(&address).await.unwrap(), original.get_session(&address).await.unwrap());
        assert!(copied.is_some() && copied == kept, "{session}'s Signal session with {address}");
    }
}

/// Waits until the SQLite outbox of `dir` holds an undelivered event of `session` that
/// mentions `text`.
async fn wait_pending(dir: &Path, session: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let path = dir.join("wagate.db");
    loop {
        let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let pending: i64 = db
            .query_row(
                "SELECT count(*) FROM webhook_events WHERE session = ?1 AND status = 'pending' AND instr(body, ?2) > 0",
                [session, text],
                |row| row.get(0),
            )
            .unwrap();
        if pending > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no pending event of {session} with {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(api: &Api, from: &str, to: &str, text: &str) {
    let (status, body) = api.post(&format!("/v1/sessions/{from}/messages"), json!({ "to": to, "text": text })).await;
    assert_eq!(status, 200, "{from} sends {text:?}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_sessions_move_to_postgres_and_reconnect_without_qr() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let (hooks_a, hooks_b) = (Receiver::start().await, Receiver::start().await);
    let data = tempfile::tempdir().unwrap();
    let database = TestDatabase::create();
    let url = database.url();

    // Two sessions linked on SQLite, with Signal sessions both ways.
    let gateway = sqlite_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    for (id, hooks) in [("A", &hooks_a), ("B", &hooks_b)] {
        let (status, body) = api.post("/v1/sessions", json!({ "id": id, "webhook": { "url": hooks.url } })).await;
        assert_eq!(status, 201, "{body}");
    }
    let jid_a = link(&api, &control, "A", "15557000001").await;
    let jid_b = link(&api, &control, "B", "15557000002").await;
    send(&api, "A", "15557000002", "hello B").await;
    hooks_b.wait_for("B gets A's text", WAIT, |_| delivered_texts(&hooks_b).contains(&"hello B".into())).await;
    // A's receiver goes down: B's answer is received, and its event waits in A's outbox
    // (behind any other event of A's that came after).
    hooks_a.script(vec![], Answer::Status(503));
    send(&api, "B", "15557000001", "hello A").await;
    wait_pending(data.path(), "A", "hello A").await;

    // Refused while the gateway runs on the directory; nothing is written to the target.
    let (ok, output) = migrate(data.path(), &url).await;
    assert!(!ok && output.contains("the gateway is running on"), "{output}");
    assert!(database.query("SELECT 1 FROM pg_tables WHERE tablename = 'sessions'").is_empty(), "{output}");
    gateway.stop().await;

    // What a run interrupted after the keys would have left: a device of A, unregistered.
    let engine = PgEngine::connect(&url, 1).await.unwrap();
    drop(engine.open_device("A", true, None).await.unwrap());
    drop(engine);

    let (ok, output) = migrate(data.path(), &url).await;
    assert!(ok, "wagate migrate failed:\n{output}");
    println!("{output}");
    for expected in [
        "removed the keys an interrupted migrate had left",
        &format!("A: keys copied and checked (linked as {jid_a})"),
        &format!("B: keys copied and checked (linked as {jid_b})"),
        "signal sessions",
        "webhook_events",
        "Next: wagate serve",
        "stay in",
    ] {
        assert!(output.contains(expected), "no {expected:?} in:\n{output}");
    }
    let pending = database.query("SELECT count(*) FROM webhook_events WHERE session = 'A' AND status = 'pending'");
    assert_ne!(pending[0][0].as_deref(), Some("0"), "A's undelivered events were copied:\n{output}");
    assert_signal_sessions_copied(data.path(), &database, "A").await;
    assert_signal_sessions_copied(data.path(), &database, "B").await;
    // The SQLite files are not run again by mistake: that would link A and B twice.
    let mut config = common::gateway_config(&sim, data.path());
    config.database = None;
    let refused = wagate::server::Gateway::start(config).await.err().expect("a gateway on the migrated SQLite files");
    assert!(format!("{refused:#}").contains("copied to PostgreSQL by `wagate migrate`"), "{refused:#}");

    // On PostgreSQL: the same devices log in again, no new pairing.
    hooks_a.script(vec![], Answer::Status(200));
    let gateway = postgres_gateway(&sim, data.path(), &url).await;
    let api = Api::gateway(gateway.addr);
    let view_a = connects_without_qr(&api, "A").await;
    let view_b = connects_without_qr(&api, "B").await;
    assert_eq!((view_a["me"]["jid"].as_str(), view_b["me"]["jid"].as_str()), (Some(&*jid_a), Some(&*jid_b)));
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["pairings"], 2, "no new pairing: {stats}");
    for jid in [&jid_a, &jid_b] {
        assert_eq!(stats["devices"][jid]["logins"], 2, "{jid} logged in again with its keys: {stats}");
    }

    // The event that waited is delivered, and the copied Signal sessions carry new messages.
    hooks_a.wait_for("the event that waited in the outbox", WAIT, |_| delivered_texts(&hooks_a) == ["hello A"]).await;
    send(&api, "A", "15557000002", "from postgres").await;
    hooks_b.wait_for("B gets A's text", WAIT, |_| delivered_texts(&hooks_b).contains(&"from postgres".into())).await;
    send(&api, "B", "15557000001", "back from postgres").await;
    hooks_a.wait_for("A gets B's text", WAIT, |_| delivered_texts(&hooks_a) == ["hello A", "back from postgres"]).await;
    gateway.stop().await;

    // Again into the same database: refused, naming the sessions.
    let (ok, output) = migrate(data.path(), &url).await;
    assert!(!ok && output.contains("already has the session(s) A, B"), "{output}");
    sim.stop().await;
}
