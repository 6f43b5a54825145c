//! Several nodes on PostgreSQL (127.0.0.1:5432, a database of its own, dropped at the end):
//! `cargo bench -p wagate --features sandbox --bench cluster`
//! (`WAGATE_BENCH_SESSIONS`, default 300; `WAGATE_BENCH_LEASE_TTL`, default 15 s, the
//! default of `wagate serve`; `WAGATE_BENCH_MESSAGES`, default 300; `WAGATE_BENCH_CONCURRENCY`,
//! default 4).
//!
//! Three nodes (child processes) and the simulator run the sessions, spread by placement.
//! 1. failover: one node is killed (SIGKILL); for each of its sessions, the time from the
//!    kill until another node holds its lease, and until that node reports it connected
//!    (p50 / max). It includes waiting for the lease to lapse (about one lease time), and the
//!    take-over's pace (`--reconnect-rate`, 20 logins per second per node by default).
//! 2. hand-over: another node gets SIGTERM; the same figures for its sessions (no lease waits).
//! 3. messages/s: texts from one session to another through its owner, then through a node
//!    that forwards them to the owner.
//!
//! It also counts the simulator's simultaneous logins (two sockets for one account, or a
//! `replaced` conflict) and new pairings during the failovers. Figures only: nothing here
//! asserts a duration.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{link_many, owners, phone_of, sim_totals, spawn_node, Node};
use common::postgres::TestDatabase;
use common::receiver::Receiver;
use common::{start_sim, Api};
use serde_json::json;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

struct Settings {
    sessions: usize,
    lease_ttl: u64,
    messages: usize,
    concurrency: usize,
}

fn main() {
    let settings = Settings {
        sessions: env_number("WAGATE_BENCH_SESSIONS", 300),
        lease_ttl: env_number("WAGATE_BENCH_LEASE_TTL", 15) as u64,
        messages: env_number("WAGATE_BENCH_MESSAGES", 300),
        concurrency: env_number("WAGATE_BENCH_CONCURRENCY", 4),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench(settings));
}

const PREFIX: &str = "WA-Bench";

async fn bench(settings: Settings) {
    let database = TestDatabase::create();
    let sim = start_sim().await;
    let sim_api = Api::sim(&sim);
    let receiver = Receiver::start().await;
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| spawn_node(&sim, &database, name, settings.lease_ttl, &receiver.url))
        .collect();
    for node in &nodes {
        node.process.ready().await;
    }
    let started = Instant::now();
    let apis: Vec<&Api> = nodes.iter().map(|n| &n.process.api).collect();
    link_many(&apis, &sim_api, PREFIX, settings.sessions, 10).await;
    let spread: BTreeMap<String, usize> = owners(&database).into_values().fold(BTreeMap::new(), |mut by, owner| {
        *by.entry(owner).or_default() += 1;
        by
    });
    println!(
        "cluster: {} sessions linked over 3 nodes in {:.1} s ({spread:?}), lease time {} s",
        settings.sessions,
        started.elapsed().as_secs_f64(),
        settings.lease_ttl
    );
    let before = sim_totals(&sim_api).await;

    // 1. kill -9 of node-c.
    let mut killed = nodes.pop().expect("three nodes");
    let victims = sessions_of(&database, &killed.name);
    let at = Instant::now();
    killed.process.child.kill().expect("SIGKILL");
    let _ = killed.process.child.wait();
    let (claims, times) = until_connected_elsewhere(&database, &nodes[0].process.api, &victims, &killed.name, at).await;
    report("failover after kill -9, lease taken", &claims);
    report("failover after kill -9, connected", &times);

    // 2. SIGTERM of node-b: its sessions, its own and those it took, go to node-a.
    let stopping = nodes.pop().expect("two nodes left");
    let handed = sessions_of(&database, &stopping.name);
    let at = Instant::now();
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(stopping.process.child.id() as i32, libc::SIGTERM) }, 0);
    let (claims, times) =
        until_connected_elsewhere(&database, &nodes[0].process.api, &handed, &stopping.name, at).await;
    report("hand-over on SIGTERM, lease taken", &claims);
    report("hand-over on SIGTERM, connected", &times);
    let after = sim_totals(&sim_api).await;
    println!(
        "cluster: during both: {} new pairings (QR scans), {} simultaneous logins (two sockets or a replaced conflict)",
        after["pairings"].as_u64().unwrap_or(0) - before["pairings"].as_u64().unwrap_or(0),
        after["simultaneous_logins"].as_u64().unwrap_or(0) - before["simultaneous_logins"].as_u64().unwrap_or(0),
    );
    drop(stopping);

    // 3. Messages through the owner and through another node: a new node-b joins.
    let joined = spawn_node(&sim, &database, "node-b2", settings.lease_ttl, &receiver.url);
    joined.process.ready().await;
    let owner = &nodes[0].process.api;
    let sender = format!("{PREFIX}-0");
    let to = phone_of(PREFIX, 1);
    let (status, body) =
        owner.post(&format!("/v1/sessions/{sender}/messages"), json!({ "to": to, "text": "warm-up" })).await;
    assert_eq!(status, 200, "warm-up: {body}");
    for (path, api) in [("through the owner", owner), ("through another node", &joined.process.api)] {
        let (count, took) = send_many(api, &sender, &to, settings.messages, settings.concurrency).await;
        println!(
            "cluster: {count} texts {path} with {} concurrent callers in {:.2} s: {:.0} messages/s",
            settings.concurrency,
            took.as_secs_f64(),
            count as f64 / took.as_secs_f64()
        );
    }
}

/// The sessions whose live lease `node` holds.
fn sessions_of(database: &TestDatabase, node: &str) -> Vec<String> {
    owners(database).into_iter().filter(|(_, owner)| owner == node).map(|(session, _)| session).collect()
}

/// For each session, how long after `since` another node held its lease (from the
/// database), and how long until a node other than `gone` reported it connected (polled
/// on the cluster-wide list of `api`).
async fn until_connected_elsewhere(
    database: &TestDatabase,
    api: &Api,
    sessions: &[String],
    gone: &str,
    since: Instant,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut waiting: BTreeSet<&String> = sessions.iter().collect();
    let mut unclaimed: BTreeSet<&String> = sessions.iter().collect();
    let mut times = Vec::with_capacity(sessions.len());
    let mut claims = Vec::with_capacity(sessions.len());
    let deadline = since + Duration::from_secs(600);
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "{} sessions never came back: {waiting:?}", waiting.len());
        if !unclaimed.is_empty() {
            let owned = owners(database);
            unclaimed.retain(|session| match owned.get(*session) {
                Some(owner) if owner != gone => {
                    claims.push(since.elapsed());
                    false
                }
                _ => true,
            });
        }
        let (status, listed) = api.get("/v1/sessions").await;
        if status == 200 {
            for view in listed.as_array().into_iter().flatten() {
                let back = view["state"] == "connected" && view["node"].as_str().is_some_and(|n| n != gone);
                if back && view["id"].as_str().is_some_and(|id| waiting.iter().any(|w| w.as_str() == id)) {
                    let id = view["id"].as_str().unwrap_or_default().to_string();
                    waiting.retain(|w| **w != id);
                    times.push(since.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (claims, times)
}

fn report(what: &str, times: &[Duration]) {
    let mut seconds: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    if seconds.is_empty() {
        println!("cluster: {what}: no sessions");
        return;
    }
    let at = |q: f64| seconds[((seconds.len() as f64 * q).ceil() as usize).clamp(1, seconds.len()) - 1];
    println!("cluster: {what}: {} sessions, p50 {:.2} s, max {:.2} s", seconds.len(), at(0.5), at(1.0));
}

/// Sends `count` texts from `session` to `to` through `api`, `concurrency` at a time;
/// how many and how long.
async fn send_many(api: &Api, session: &str, to: &str, count: usize, concurrency: usize) -> (usize, Duration) {
    let started = Instant::now();
    let per_worker = count.div_ceil(concurrency);
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (api, session, to) = (api.clone(), session.to_string(), to.to_string());
            tokio::spawn(async move {
                for n in 0..per_worker {
                    let body = json!({ "to": to, "text": format!("bench {worker}-{n}") });
                    let (status, answer) = api.post(&format!("/v1/sessions/{session}/messages"), body).await;
                    assert_eq!(status, 200, "{answer}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a sender");
    }
    (per_worker * concurrency, started.elapsed())
}
