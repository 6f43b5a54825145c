//! What clients may hold of the gateway: a connection that never finishes its request
//! header is cut off, connections beyond `max_connections` wait until one ends, event
//! streams beyond `max_event_streams` and sessions beyond `--max-sessions` get 503.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::footprint::{resident_kib, OpenFiles};
use common::{gateway_config, start_gateway_with, start_sim, Api};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Reads until the server closes the connection; fails if it has not within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration, what: &str) {
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "{what}: the connection is still open after {wait:?}");
}

/// Sends a request and reads the first bytes of the answer.
async fn request(stream: &mut TcpStream) {
    stream.write_all(HEALTH).await.unwrap();
    answer_within(stream, Duration::from_secs(10)).await.expect("an answer");
}

async fn answer_within(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buffer = [0u8; 4096];
    match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        Ok(_) => panic!("the connection was closed instead of answered"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_request_header_that_never_ends_is_cut_off() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&sim, dir.path());
    config.limits.header_read_timeout = Duration::from_secs(1);
    let gateway = start_gateway_with(config).await;

    let mut half = TcpStream::connect(gateway.addr).await.unwrap();
    half.write_all(b"GET /hea").await.unwrap();
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    closed_within(&mut half, Duration::from_secs(10), "half a request line").await;
    closed_within(&mut silent, Duration::from_secs(10), "a connection that sends nothing").await;

    let (status, _) = Api::gateway(gateway.addr).get("/health").await;
    assert_eq!(status, 200, "whole requests are still answered");
    gateway.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_ends() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&sim, dir.path());
    config.limits.max_connections = 2;
    config.limits.header_read_timeout = Duration::from_secs(60);
    let gateway = start_gateway_with(config).await;
    let addr: SocketAddr = gateway.addr;

    // Two kept-alive connections hold both places.
    let mut first = TcpStream::connect(addr).await.unwrap();
    request(&mut first).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    request(&mut second).await;

    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(HEALTH).await.unwrap();
    assert_eq!(
        answer_within(&mut third, Duration::from_millis(500)).await,
        None,
        "a third connection is not served while two are open"
    );

    drop(first);
    let answer = answer_within(&mut third, Duration::from_secs(10)).await.expect("served once a place is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gateway.stop().await;
}

#[tokio::test]
async fn event_streams_beyond_the_cap_get_503() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&sim, dir.path());
    config.limits.max_event_streams = 1;
    let gateway = start_gateway_with(config).await;
    let api = Api::gateway(gateway.addr);
    let (status, _) = api.post("/v1/sessions", json!({ "id": "WA-Events" })).await;
    assert_eq!(status, 201);

    let url = format!("{}/v1/sessions/WA-Events/events", api.base);
    let open = reqwest::get(&url).await.unwrap();
    assert_eq!(open.status(), 200);
    let mut events = open.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("the first event");
    assert!(first.is_some());

    let refused = reqwest::get(&url).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("at most 1"), "{body}");

    // Once the first reader goes, its place is free again.
    drop(events);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let again = reqwest::get(&url).await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed stream's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.stop().await;
}

#[tokio::test]
async fn sessions_beyond_max_sessions_are_refused_and_existing_ones_keep_working() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&sim, dir.path());
    config.sessions.max_sessions = 1;
    let gateway = start_gateway_with(config).await;
    let api = Api::gateway(gateway.addr);

    let (status, _) = api.post("/v1/sessions", json!({ "id": "WA-One" })).await;
    assert_eq!(status, 201);

    let (status, body) = api.post("/v1/sessions", json!({ "id": "WA-Two" })).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit of 1 sessions"), "{body}");
    let (status, body) = api.post("/sessions/start", json!({ "sessionId": "WA-Three" })).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit of 1 sessions"), "{body}");
    let (status, body) =
        api.post("/sessions/start", json!({ "sessionId": "WA-Four", "webhookUrl": "http://127.0.0.1:9/hook" })).await;
    assert_eq!(status, 503, "{body}");

    let (_, list) = api.get("/v1/sessions").await;
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["WA-One"], "nothing was added: {list}");

    // The session there keeps working.
    let (status, _) = api.post("/v1/sessions", json!({ "id": "WA-One" })).await;
    assert_eq!(status, 200, "creating an existing session again is not a new one");
    api.wait_state("WA-One", "awaiting_scan").await;

    // Room again once it is gone.
    let (status, _) = api.delete("/v1/sessions/WA-One").await;
    assert_eq!(status, 200);
    let (status, _) = api.post("/v1/sessions", json!({ "id": "WA-Two" })).await;
    assert_eq!(status, 201);
    gateway.stop().await;
}

/// Under the open-files limit shells give (here 256, to keep the test small), wagate fits
/// the API and as many sessions as the limit allows; the next session is refused with the
/// reason, and the API keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_open_files_limit_are_refused_and_the_api_stays_up() {
    const FILES: u64 = 256;
    let budget = wagate::open_files::FileBudget::plan(FILES, FILES, 1024);
    let sim = common::start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = common::GatewayProcess::spawn_with_open_files(&sim, data.path(), common::free_port(), FILES);
    gateway.ready().await;
    let api = &gateway.api;
    for i in 0..budget.sessions {
        let (status, body) = api.post("/v1/sessions", json!({ "id": format!("F{i}") })).await;
        assert_eq!(status, 201, "session {i} of {}: {body}", budget.sessions);
    }
    // Every one of them holds its connection (waiting for a scan) and its files.
    for i in 0..budget.sessions {
        api.wait_state(&format!("F{i}"), "awaiting_scan").await;
    }
    let (status, body) = api.post("/v1/sessions", json!({ "id": "one-too-many" })).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("open-files limit of 256") && error.contains("LimitNOFILE"), "{body}");
    let (status, health) = api.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["sessions"]["qrPending"], budget.sessions, "{health}");
    sim.stop().await;
}

/// Issue 15's case: under the 1024 files a shell gives, 400 sessions link and stay
/// connected while `/health` keeps answering; then sessions are taken until the budget is
/// spent, and the next one gets 503 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_linked_sessions_fit_under_a_shells_limit() {
    const FILES: u64 = 1024;
    const LINKED: usize = 400;
    let budget = wagate::open_files::FileBudget::plan(FILES, FILES, 1024);
    assert!(budget.sessions > LINKED, "the plan fits {LINKED} sessions: {budget:?}");
    let sim = common::start_sim().await;
    let control = Api::sim(&sim);
    let data = tempfile::tempdir().unwrap();
    let gateway = common::GatewayProcess::spawn_with_open_files(&sim, data.path(), common::free_port(), FILES);
    gateway.ready().await;
    let api = &gateway.api;

    // `/health` is asked all along; each answer that is not a 200 is counted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut asked, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = api.get("/health").await;
                asked += 1;
                if status != 200 {
                    failed.push(format!("{status} {body}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (asked, failed)
        })
    };
    futures_util::stream::iter(0..LINKED)
        .for_each_concurrent(8, |i| {
            let control = &control;
            async move {
                common::link(api, control, &format!("L{i:03}"), &format!("1555500{i:04}")).await;
            }
        })
        .await;
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], LINKED, "{health}");

    // The rest of the budget waits for a scan; one more is refused.
    for i in LINKED..budget.sessions {
        let (status, body) = api.post("/v1/sessions", json!({ "id": format!("W{i}") })).await;
        assert_eq!(status, 201, "session {i} of {}: {body}", budget.sessions);
    }
    let (status, body) = api.post("/v1/sessions", json!({ "id": "one-too-many" })).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("open-files limit of 1024"), "{body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (asked, failed) = poller.await.unwrap();
    assert!(asked > 10 && failed.is_empty(), "/health answered {asked} times, failed: {failed:?}");
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], LINKED, "the linked sessions stayed connected: {health}");
    sim.stop().await;
}

/// Accounts with history and app state download them on linking; the media connections
/// must not outlive those downloads by much, or each session would hold two or three idle
/// sockets beside its WebSocket and the open-files budget (1.25 a session) would not hold.
/// (The media client kept them 90 s; this waits 30 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_connections_do_not_outlive_the_downloads_of_a_link() {
    const SESSIONS: usize = 4;
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let profile = json!({ "preset": "small-business", "contacts": 20, "groups": 2, "group_size": 5, "history": 40, "trickle_per_minute": 0 });
    let (status, body) = control.post("/control/account-profile", profile).await;
    assert_eq!(status, 200, "{body}");
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let gateway = common::GatewayProcess::spawn(&sim, data.path(), port);
    gateway.ready().await;
    let pid = gateway.child.id();
    let before = OpenFiles::of(pid, port).sockets;
    for i in 0..SESSIONS {
        common::link(&gateway.api, &control, &format!("M{i}"), &format!("1555600{i:04}")).await;
    }
    control
        .wait_for("/control/stats", "every account's history and app state downloaded", |s| {
            s["profile"]["history_blobs_served"].as_u64() >= Some(2 * SESSIONS as u64)
                && s["profile"]["app_state_blobs_served"].as_u64() >= Some(SESSIONS as u64)
        })
        .await;
    // Once idle, a session holds one socket: its WebSocket.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let now = OpenFiles::of(pid, port);
        let added = now.sockets.saturating_sub(before);
        if added <= SESSIONS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{SESSIONS} sessions still hold {added} sockets {:?} after their downloads: {now:?}",
            common::WAIT
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sim.stop().await;
}

/// Measures what a linked, idle session costs in open files: links `WAGATE_FD_SESSIONS`
/// sessions (50) on a child-process gateway and counts its descriptors before and after.
/// Slow, so run on demand:
/// `cargo test -p wagate --all-features --test limits -- --ignored --nocapture open_files_per_linked_session`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn open_files_per_linked_session() {
    let sessions: usize = std::env::var("WAGATE_FD_SESSIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(50);
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let gateway = common::GatewayProcess::spawn(&sim, data.path(), port);
    gateway.ready().await;
    let pid = gateway.child.id();
    let control = Api::sim(&sim);
    let before = OpenFiles::of(pid, port);
    let rss_before = resident_kib(pid);
    for batch in (0..sessions).collect::<Vec<_>>().chunks(10) {
        let links = batch.iter().map(|i| {
            let (api, control) = (&gateway.api, &control);
            let link = async move { common::link(api, control, &format!("FD-{i}"), &format!("1555400{i:04}")).await };
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(link))
        });
        if futures_util::future::join_all(links).await.iter().any(Result::is_err) {
            let log = std::fs::read_to_string(data.path().join("gateway.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            panic!(
                "a link failed; the gateway's log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    // Settled: the pairing's short-lived connections are gone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = OpenFiles::of(pid, port);
    let per_session = (after.held() - before.held()) as f64 / sessions as f64;
    let rss_after = resident_kib(pid);
    println!(
        "resident memory {rss_before} KiB -> {rss_after} KiB: {} KiB per session",
        rss_after.saturating_sub(rss_before) / sessions as u64
    );
    println!(
        "{sessions} linked sessions: sockets {} -> {}, files {} -> {} (API connections {} -> {}, not counted): \
         {per_session:.2} open files per session\nfiles: {:#?}",
        before.sockets,
        after.sockets,
        before.files.len(),
        after.files.len(),
        before.api,
        after.api,
        after.files
    );
    assert!(per_session <= 1.5, "{per_session:.2} open files per session");
    sim.stop().await;
}
