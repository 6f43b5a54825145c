//! Several wagate nodes (child processes) on one test database, for the cluster's tests and
//! its benchmark.

use std::collections::BTreeMap;
use std::time::Duration;

use wagate_sim::Simulator;

use super::postgres::TestDatabase;
use super::{free_port, Api, GatewayProcess};

/// Generous: nodes are child processes on a shared, noisy machine.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(90);

pub struct Node {
    pub name: String,
    pub process: GatewayProcess,
    pub dir: tempfile::TempDir,
}

/// A failed test shows the end of each node's log.
impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the end of {}'s log:", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn spawn_node(sim: &Simulator, database: &TestDatabase, name: &str, ttl_secs: u64, webhook: &str) -> Node {
    spawn_node_via(sim, &database.url(), name, ttl_secs, webhook)
}

/// A node that reaches the database at `url` (through a proxy the test controls, say).
pub fn spawn_node_via(sim: &Simulator, url: &str, name: &str, ttl_secs: u64, webhook: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let ttl = ttl_secs.to_string();
    let process = GatewayProcess::spawn_with(
        sim,
        dir.path(),
        free_port(),
        &["--database", url, "--node-id", name, "--lease-ttl", &ttl, "--webhook-url", webhook],
    );
    Node { name: name.to_string(), process, dir }
}

/// Which node holds each session's live lease, from the database.
pub fn owners(database: &TestDatabase) -> BTreeMap<String, String> {
    database
        .query("SELECT session, owner FROM wagate_leases WHERE expires_at > now()")
        .into_iter()
        .map(|row| (row[0].clone().unwrap(), row[1].clone().unwrap()))
        .collect()
}

/// The phone number session `n` of `prefix` is linked as.
pub fn phone_of(prefix: &str, n: usize) -> String {
    format!("4930{:07}", n + prefix.len() * 1000)
}

/// Links `count` sessions named `prefix-<n>`, each created through node `n % nodes`,
/// `together` at a time (new sessions go to the node with the most room: a burst created
/// together lands on the same one).
pub async fn link_many(nodes: &[&Api], sim: &Api, prefix: &str, count: usize, together: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    for chunk in ids.chunks(together).enumerate().map(|(c, ids)| (c * together, ids)) {
        let (offset, ids) = chunk;
        let links = ids.iter().enumerate().map(|(i, id)| {
            let node = nodes[(offset + i) % nodes.len()];
            let phone = phone_of(prefix, offset + i);
            async move { super::link(node, sim, id, &phone).await }
        });
        futures_util::future::join_all(links).await;
    }
    ids
}

/// Waits until `node` holds the session's lease.
pub async fn wait_owner(database: &TestDatabase, session: &str, node: &str, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let owner = owners(database).get(session).cloned();
        if owner.as_deref() == Some(node) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{session} is still owned by {owner:?}, not {node}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn sim_totals(sim: &Api) -> serde_json::Value {
    sim.get("/control/stats").await.1["totals"].clone()
}
