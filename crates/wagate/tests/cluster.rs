//! Several nodes on one PostgreSQL database: a dead node's sessions come back on the others
//! without a QR code, a stopping node hands its sessions over at once, no account ever has
//! two sockets, and every webhook event of a moved session arrives, in order.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cli::wagate;
use common::cluster::{
    link_many, owners, phone_of, sim_totals, spawn_node, spawn_node_via, wait_owner, Node, TAKEOVER_WAIT,
};
use common::postgres::TestDatabase;
use common::receiver::Receiver;
use common::{start_sim, Api};
use serde_json::json;

/// One cluster at a time: each node opens up to 25 connections to PostgreSQL (the store's,
/// the engine's pool, the leases'), and a few clusters at once would pass the server's
/// `max_connections` (100 by default).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every event the outbox holds for `session`, in its order (the ids).
fn outbox_ids(database: &TestDatabase, session: &str) -> Vec<String> {
    database
        .query(&format!("SELECT id FROM webhook_events WHERE session = '{session}' ORDER BY seq"))
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect()
}

/// Checks that the receiver got every event of `sessions`, each first time in the outbox's
/// order (a redelivery may repeat one: at least once).
async fn assert_every_event_in_order(receiver: &Receiver, database: &TestDatabase, sessions: &[String]) {
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        let received = receiver.received();
        let mut missing = Vec::new();
        for session in sessions {
            let expected = outbox_ids(database, session);
            let mut seen = BTreeSet::new();
            let got: Vec<String> = received
                .iter()
                .filter(|r| r.json["session"] == session.as_str())
                .map(|r| r.id().to_string())
                .filter(|id| seen.insert(id.clone()))
                .collect();
            if got != expected {
                missing.push(format!("{session}: expected {expected:?}, got {got:?}"));
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook events missing or out of order:\n{}",
            missing.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_sessions_come_back_on_the_others_without_a_qr_and_never_twice() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create();
    let sim = start_sim().await;
    let sim_api = Api::sim(&sim);
    let receiver = Receiver::start().await;
    let nodes: Vec<Node> =
        ["node-a", "node-b", "node-c"].iter().map(|name| spawn_node(&sim, &database, name, 6, &receiver.url)).collect();
    for node in &nodes {
        node.process.ready().await;
    }
    let apis: Vec<&Api> = nodes.iter().map(|n| &n.process.api).collect();
    let ids = link_many(&apis, &sim_api, "WA-Fail", 60, 10).await;

    let before = owners(&database);
    assert_eq!(before.len(), 60, "every session has an owner: {before:?}");
    let per_node: BTreeMap<&str, usize> =
        nodes.iter().map(|n| (n.name.as_str(), before.values().filter(|owner| **owner == n.name).count())).collect();
    assert!(per_node.values().all(|count| *count > 0), "spread over the nodes: {per_node:?}");
    let victims: Vec<String> = before.iter().filter(|(_, owner)| *owner == "node-c").map(|(s, _)| s.clone()).collect();
    let totals = sim_totals(&sim_api).await;
    let (pairings, simultaneous) = (totals["pairings"].clone(), totals["simultaneous_logins"].clone());
    assert_eq!(simultaneous, 0, "no account had two sockets while linking: {totals}");

    let mut nodes = nodes;
    let mut killed = nodes.pop().unwrap();
    killed.process.child.kill().expect("SIGKILL");
    let _ = killed.process.child.wait();

    // Once its leases lapse, the two others take its sessions and reconnect them.
    let survivors: Vec<&Api> = nodes.iter().map(|n| &n.process.api).collect();
    for session in &victims {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        while !matches!(owners(&database).get(session).map(String::as_str), Some("node-a" | "node-b")) {
            assert!(tokio::time::Instant::now() < deadline, "{session} was not taken over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        survivors[0]
            .wait_for_within(
                &format!("/v1/sessions/{session}"),
                &format!("{session} to be connected on a live node"),
                TAKEOVER_WAIT,
                |v| v["state"] == "connected",
            )
            .await;
    }
    let after = owners(&database);
    for session in &victims {
        assert!(
            matches!(after.get(session).map(String::as_str), Some("node-a" | "node-b")),
            "{session} is owned by {:?}",
            after.get(session)
        );
    }
    assert_eq!(after.len(), 60, "every session still has an owner");
    // Every session answers through either live node, forwarded to its owner.
    for id in ids.iter().step_by(7) {
        for api in &survivors {
            let (status, view) = api.get(&format!("/v1/sessions/{id}")).await;
            assert_eq!((status, view["state"].as_str()), (200, Some("connected")), "{id} through {}", api.base);
        }
    }
    let totals = sim_totals(&sim_api).await;
    assert_eq!(totals["pairings"], pairings, "no session needed a new QR scan: {totals}");
    assert_eq!(totals["simultaneous_logins"], simultaneous, "never two sockets for one account: {totals}");
    assert_every_event_in_order(&receiver, &database, &victims).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_hands_its_sessions_over_long_before_its_leases_could_lapse() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create();
    let sim = start_sim().await;
    let sim_api = Api::sim(&sim);
    let receiver = Receiver::start().await;
    // Two minutes: a take-over that waited for the leases to lapse would time out below.
    let a = spawn_node(&sim, &database, "node-a", 120, &receiver.url);
    let b = spawn_node(&sim, &database, "node-b", 120, &receiver.url);
    a.process.ready().await;
    b.process.ready().await;
    link_many(&[&a.process.api, &b.process.api], &sim_api, "WA-Drain", 10, 1).await;
    let moving: Vec<String> =
        owners(&database).into_iter().filter(|(_, owner)| owner == "node-b").map(|(s, _)| s).collect();
    assert!(!moving.is_empty(), "node-b runs some sessions");
    let simultaneous = sim_totals(&sim_api).await["simultaneous_logins"].clone();

    let pid = b.process.child.id() as i32;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for session in &moving {
        wait_owner(&database, session, "node-a", Duration::from_secs(60)).await;
        a.process
            .api
            .wait_for_within(
                &format!("/v1/sessions/{session}"),
                &format!("{session} on node-a"),
                Duration::from_secs(60),
                |v| v["state"] == "connected",
            )
            .await;
        assert_eq!(owners(&database).get(session).map(String::as_str), Some("node-a"));
    }
    assert_eq!(sim_totals(&sim_api).await["simultaneous_logins"], simultaneous, "never two sockets for one account");
    assert_every_event_in_order(&receiver, &database, &moving).await;
    // The session keeps working on its new node: a message to another linked account goes out.
    let to = phone_of("WA-Drain", if moving[0] == "WA-Drain-0" { 1 } else { 0 });
    let (status, sent) = a
        .process
        .api
        .post(&format!("/v1/sessions/{}/messages", moving[0]), json!({"to": to, "text": "after the move"}))
        .await;
    assert!(status == 200 || status == 201 || status == 202, "send after the move: {status} {sent}");
}

/// A TCP proxy in front of PostgreSQL that the test can pause: while paused, nothing passes
/// either way (the node's connections stay open but go silent, as across a partition).
struct PausableProxy {
    port: u16,
    paused: tokio::sync::watch::Sender<bool>,
}

impl PausableProxy {
    async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, watch.clone()));
                tokio::spawn(pipe(server_read, client_write, watch.clone()));
            }
        });
        Self { port, paused }
    }

    fn url(&self, database: &TestDatabase) -> String {
        database.url().replace("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port))
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

/// Copies one direction, holding the bytes while paused.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else { return };
        if read == 0 {
            return;
        }
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// When node `name` last renewed its heartbeat, by the database's clock (microseconds).
fn heartbeat_of(database: &TestDatabase, name: &str) -> i64 {
    database.query(&format!(
        "SELECT (EXTRACT(EPOCH FROM heartbeat_at) * 1000000)::bigint FROM wagate_nodes WHERE id = '{name}'"
    ))[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_stops_its_sessions_before_another_takes_them() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create();
    let sim = start_sim().await;
    let sim_api = Api::sim(&sim);
    let receiver = Receiver::start().await;
    let proxy = PausableProxy::start("127.0.0.1:5432").await;
    let a = spawn_node_via(&sim, &proxy.url(&database), "node-a", 6, &receiver.url);
    a.process.ready().await;
    // Linked while node-a is alone: they are all node-a's.
    let ids = link_many(&[&a.process.api], &sim_api, "WA-Cut", 4, 4).await;
    let b = spawn_node(&sim, &database, "node-b", 6, &receiver.url);
    b.process.ready().await;
    assert!(owners(&database).values().all(|owner| owner == "node-a"));
    let simultaneous = sim_totals(&sim_api).await["simultaneous_logins"].clone();

    proxy.pause(true);
    for id in &ids {
        wait_owner(&database, id, "node-b", TAKEOVER_WAIT).await;
        b.process
            .api
            .wait_for_within(&format!("/v1/sessions/{id}"), &format!("{id} on node-b"), TAKEOVER_WAIT, |v| {
                v["state"] == "connected"
            })
            .await;
    }
    assert_eq!(
        sim_totals(&sim_api).await["simultaneous_logins"],
        simultaneous,
        "node-a closed its sockets before node-b opened its own"
    );

    // Back on the database, node-a renews its heartbeat again, and leaves the sessions alone.
    let cut_at = heartbeat_of(&database, "node-a");
    proxy.pause(false);
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    while heartbeat_of(&database, "node-a") == cut_at {
        assert!(tokio::time::Instant::now() < deadline, "node-a never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, a_view) = a.process.api.get(&format!("/v1/sessions/{}", ids[0])).await;
    assert_eq!(a_view["state"], "connected", "answered for node-b, through node-a: {a_view}");
    assert!(owners(&database).values().all(|owner| owner == "node-b"), "{:?}", owners(&database));
    assert_eq!(sim_totals(&sim_api).await["simultaneous_logins"], simultaneous, "node-a did not reconnect them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erpnext_links_sends_and_hears_back_through_a_node_that_does_not_run_its_session() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create();
    let sim = start_sim().await;
    let sim_api = Api::sim(&sim);
    let erp = Receiver::start().await;
    let a = spawn_node(&sim, &database, "node-a", 15, &erp.url);
    let b = spawn_node(&sim, &database, "node-b", 15, &erp.url);
    a.process.ready().await;
    b.process.ready().await;
    // ERPNext only ever talks to node-b; with both nodes empty, the new session goes to
    // node-a (the roomiest, first by name).
    let via_b = &b.process.api;
    let start = json!({ "sessionId": "WA-Erp", "webhookUrl": erp.url, "webhookToken": "tok-b" });
    let (status, answer) = via_b.post("/sessions/start", start.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(owners(&database).get("WA-Erp").map(String::as_str), Some("node-a"), "placed on node-a");
    let view = via_b.wait_for("/v1/sessions/WA-Erp", "a QR code, through node-b", |v| v["qr"].is_string()).await;
    assert!(
        via_b.post("/sessions/start", start.clone()).await.1["qr"]
            .as_str()
            .is_some_and(|qr| qr.starts_with("data:image/png")),
        "the compat start answers with the QR image through node-b"
    );
    let (status, _) = sim_api.post("/control/scan", json!({ "qr": view["qr"], "phone": "4930111000" })).await;
    assert_eq!(status, 200);
    via_b.wait_for("/sessions/WA-Erp/status", "Connected through node-b", |v| v["status"] == "Connected").await;
    assert_eq!(owners(&database).get("WA-Erp").map(String::as_str), Some("node-a"), "still run by node-a");

    // A contact to write to, and the message sent through node-b.
    common::link(via_b, &sim_api, "WA-Contact", "4930111001").await;
    let (status, sent) = via_b
        .post("/sessions/send", json!({ "sessionId": "WA-Erp", "receiver": "4930111001", "message": "Invoice 42" }))
        .await;
    assert_eq!((status, sent["status"].as_str()), (200, Some("sent")), "{sent}");
    let received = erp
        .wait_for("the Connected webhook of WA-Erp", TAKEOVER_WAIT, |r| {
            r.iter().any(|x| x.json["sessionId"] == "WA-Erp" && x.json["status"] == "Connected")
        })
        .await;
    let connected = received.iter().find(|x| x.json["sessionId"] == "WA-Erp").unwrap();
    assert_eq!(connected.header("x-webhook-token"), Some("tok-b"), "the compat webhook, with ERPNext's token");
}

/// A session's event stream (`/v1/sessions/{id}/events`), read one state at a time.
struct Events {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

async fn follow_events(api: &Api, session: &str) -> Events {
    use futures_util::StreamExt;
    let response = reqwest::get(format!("{}/v1/sessions/{session}/events", api.base)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Events { body: response.bytes_stream().boxed(), buffer: String::new() }
}

impl Events {
    async fn next_state(&mut self) -> serde_json::Value {
        use futures_util::StreamExt;
        let next = async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let event: String = self.buffer.drain(..end + 2).collect();
                    if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                        return serde_json::from_str(data).unwrap();
                    }
                    continue;
                }
                let chunk = self.body.next().await.expect("the stream goes on").unwrap();
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        tokio::time::timeout(TAKEOVER_WAIT, next).await.expect("a state event in time")
    }
}

/// The sessions that `node` holds the live lease of.
fn sessions_of(database: &TestDatabase, node: &str) -> Vec<String> {
    owners(database).into_iter().filter(|(_, owner)| owner == node).map(|(session, _)| session).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_every_node_move_a_session_and_drain_a_node_from_any_node() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let database = TestDatabase::create();
    let sim = start_sim().await;
    let sim_api = Api::sim(&sim);
    let receiver = Receiver::start().await;
    // Two minutes: nothing below may wait for a lease to lapse.
    let nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| spawn_node(&sim, &database, name, 120, &receiver.url))
        .collect();
    for node in &nodes {
        node.process.ready().await;
    }
    let (a, b, c) = (&nodes[0].process.api, &nodes[1].process.api, &nodes[2].process.api);
    let ids = link_many(&[a, b, c], &sim_api, "WA-Ops", 6, 1).await;
    let owned = owners(&database);
    let before = sim_totals(&sim_api).await;

    // Every node lists every node, with its leases as the database has them.
    let (status, listed) = b.get("/v1/nodes").await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed.as_array().expect("a list").clone();
    let names: Vec<&str> = listed.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);
    for node in &listed {
        let name = node["id"].as_str().unwrap();
        assert_eq!(node["this"], name == "node-b", "{node}");
        assert_eq!(node["alive"], true, "{node}");
        let leases: Vec<String> = serde_json::from_value(node["leases"].clone()).unwrap();
        assert_eq!(leases, sessions_of(&database, name), "{node}");
        assert_eq!(node["sessions"], leases.len(), "{node}");
    }

    // Any node lists every session with its node; /health counts the whole cluster.
    let (_, sessions) = c.get("/v1/sessions").await;
    let sessions = sessions.as_array().expect("a list").clone();
    assert_eq!(sessions.len(), 6, "{sessions:?}");
    for session in &sessions {
        let id = session["id"].as_str().unwrap();
        assert_eq!(session["node"].as_str(), owned.get(id).map(String::as_str), "{session}");
        assert_eq!(session["state"], "connected", "{session}");
    }
    let (_, health) = a.get("/health").await;
    assert_eq!(
        (health["node"].as_str(), health["sessions"]["connected"].as_u64()),
        (Some("node-a"), Some(6)),
        "{health}"
    );
    let lines = health["sessionList"].as_array().expect("the list, for a caller on this machine");
    assert!(lines.iter().all(|l| l["node"].as_str() == owned.get(l["id"].as_str().unwrap()).map(String::as_str)));

    // A move, asked of a node that does not run the session, with the operator command.
    let moving = sessions_of(&database, "node-a")[0].clone();
    // Its live events, followed through node-b, come from node-a until it lets it go.
    let mut events = follow_events(b, &moving).await;
    assert_eq!(events.next_state().await["state"], "connected", "the current state first, through node-b");
    let run = wagate(&["sessions", "move", &moving, "--to", "node-c", "--url", &b.base]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("moved from node-a to node-c"), "{run}");
    assert_eq!(owners(&database).get(&moving).map(String::as_str), Some("node-c"), "node-c holds it once answered");
    let left = events.next_state().await;
    assert_eq!((left["state"].as_str(), left["reason"].as_str()), (Some("stopped"), Some("moved_to_another_node")));
    c.wait_for_within(&format!("/v1/sessions/{moving}"), "the moved session connected", TAKEOVER_WAIT, |v| {
        v["state"] == "connected"
    })
    .await;
    let run = wagate(&["sessions", "move", &moving, "--to", "node-c", "--url", &a.base]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("already runs on node 'node-c'") && run.stderr.contains("409"), "{run}");
    let (status, answer) = a.post(&format!("/v1/sessions/{moving}/move"), json!({ "node": "node-z" })).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no node 'node-z'"), "{answer}");
    let (status, answer) = a.post(&format!("/v1/sessions/{moving}/move"), json!({ "to": "node-b" })).await;
    assert_eq!(status, 400, "{answer}");

    // A drain of node-a asked of node-a itself: its sessions go to the others at once.
    let leaving = sessions_of(&database, "node-a");
    assert!(!leaving.is_empty(), "node-a still runs sessions: {:?}", owners(&database));
    let run = wagate(&["drain", "--url", &a.base]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains(&format!("handed {} sessions over", leaving.len())), "{run}");
    for session in &leaving {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !matches!(owners(&database).get(session).map(String::as_str), Some("node-b" | "node-c")) {
            assert!(tokio::time::Instant::now() < deadline, "{session} was not taken from the drained node");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        a.wait_for_within(&format!("/v1/sessions/{session}"), "connected elsewhere", TAKEOVER_WAIT, |v| {
            v["state"] == "connected"
        })
        .await;
    }
    let (_, listed) = c.get("/v1/nodes").await;
    let drained = listed.as_array().unwrap().iter().find(|n| n["id"] == "node-a").unwrap().clone();
    assert_eq!((drained["draining"].as_bool(), drained["sessions"].as_i64()), (Some(true), Some(0)), "{drained}");
    // A new session asked of the drained node goes elsewhere.
    common::link(a, &sim_api, "WA-Ops-new", "4930222000").await;
    assert!(matches!(owners(&database).get("WA-Ops-new").map(String::as_str), Some("node-b" | "node-c")));
    // `status` shows the nodes, and the node of each session.
    let run = wagate(&["status", "--url", &b.base]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.line_with(&["node-a", "draining", "0"]).is_some(), "{run}");
    assert!(run.line_with(&[&moving, "node-c", "connected"]).is_some(), "{run}");

    // The drain ends, asked of another node (sent on to node-a).
    let run = wagate(&["drain", "--resume", "--node", "node-a", "--url", &c.base]).await;
    assert_eq!(run.code, 0, "{run}");
    let (_, listed) = b.get("/v1/nodes").await;
    assert!(listed.as_array().unwrap().iter().any(|n| n["id"] == "node-a" && n["draining"] == false), "{listed}");

    // doctor, on the cluster's database.
    let run =
        wagate(&["doctor", "--database", &database.url(), "--url", &b.base, "--wa-url", &sim.endpoints.ws_url]).await;
    assert!(run.line_with(&["OK", "the database answers"]).is_some(), "{run}");
    assert!(run.line_with(&["OK", "schema of the store tables"]).is_some(), "{run}");
    assert!(run.line_with(&["OK", "this machine's clock", "the database's"]).is_some(), "{run}");
    assert!(run.line_with(&["OK", "node node-c", "last heartbeat"]).is_some(), "{run}");
    assert!(run.line_with(&["OK", "every one of the 7 sessions has a live lease"]).is_some(), "{run}");

    let after = sim_totals(&sim_api).await;
    assert_eq!(after["pairings"].as_u64(), before["pairings"].as_u64().map(|p| p + 1), "only the new session scanned");
    assert_eq!(after["simultaneous_logins"], before["simultaneous_logins"], "never two sockets for one account");
    assert_every_event_in_order(&receiver, &database, &ids).await;
}
