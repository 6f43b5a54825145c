//! A gateway with many linked sessions answers its API at once after a restart, and
//! reconnects them paced (`--reconnect-rate`): WhatsApp never sees a burst of logins from it.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, link, start_sim, Api, GatewayProcess, WAIT};
use futures_util::StreamExt;
use serde_json::Value;

const SESSIONS: usize = 300;
const RATE: u64 = 25;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_api_answers_at_once_and_sessions_reconnect_paced() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let first = GatewayProcess::spawn(&sim, data.path(), port);
    first.ready().await;
    let api = &first.api;
    futures_util::stream::iter(0..SESSIONS)
        .for_each_concurrent(8, |i| {
            let control = &control;
            async move {
                link(api, control, &format!("S{i:03}"), &format!("1555400{i:04}")).await;
            }
        })
        .await;
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], SESSIONS, "{health}");
    first.kill_9();

    // Logins so far (the linking's); the second they end in is left out of the per-second
    // check below, which looks only at whole seconds after the restart.
    let (_, stats) = control.get("/control/stats").await;
    let logins_before = stats["totals"]["logins"].as_u64().unwrap();
    let restarted_at = unix_now() + 1;
    let started = Instant::now();
    let rate = RATE.to_string();
    let second = GatewayProcess::spawn_with(&sim, data.path(), port, &["--reconnect-rate", &rate]);
    second.ready().await;
    let api_up = started.elapsed();
    let (status, health) = second.api.get("/health").await;
    assert_eq!(status, 200, "{health}");
    let waiting = health["sessions"]["waitingToReconnect"].as_u64().unwrap_or(0);
    println!("API up {api_up:?} after the start with {SESSIONS} linked sessions; {waiting} still waiting their turn");
    assert_eq!(health["sessions"]["total"], SESSIONS, "every session is known at once: {health}");
    assert!(waiting as usize > SESSIONS / 2, "most sessions still wait when the API answers: {health}");
    let (_, view) = second.api.get("/v1/sessions/S299").await;
    assert!(
        view["state"] == "reconnecting" && view["reason"] == "waiting_turn" || view["state"] == "connected",
        "a session waiting its turn says so: {view}"
    );

    // A session a caller needs goes first: a send from one near the end of the line connects
    // it now (the message waits in its queue meanwhile), while most others still wait.
    let (status, sent) = second
        .api
        .post("/v1/sessions/S250/messages", serde_json::json!({ "to": "15554000000", "text": "urgent" }))
        .await;
    assert!(status == 200 || status == 202, "{status} {sent}");
    second.api.wait_state("S250", "connected").await;
    let (_, health) = second.api.get("/health").await;
    let still_waiting = health["sessions"]["waitingToReconnect"].as_u64().unwrap_or(0);
    assert!(still_waiting as usize > SESSIONS / 3, "S250 connected before its turn: {health}");

    // The API keeps answering while they reconnect, and all of them do.
    let deadline = tokio::time::Instant::now() + WAIT + Duration::from_secs(SESSIONS as u64 / RATE * 2);
    let all_connected = loop {
        let (status, health) = second.api.get("/health").await;
        assert_eq!(status, 200, "{health}");
        if health["sessions"]["connected"] == SESSIONS {
            break started.elapsed();
        }
        assert!(tokio::time::Instant::now() < deadline, "not every session reconnected: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("all {SESSIONS} sessions connected {all_connected:?} after the start");
    let (_, health) = second.api.get("/health").await;
    assert_eq!(health["sessions"]["waitingToReconnect"], 0, "{health}");

    // The simulator counts logins per second: none of the seconds since the restart saw more
    // than the rate allows. One more is tolerated: a login is counted when its handshake
    // ends, so two paced starts can land in one second when the first one's was slower.
    let (_, stats) = control.get("/control/stats").await;
    let per_second: Vec<(u64, u64)> = stats["totals"]["logins_per_second"]
        .as_object()
        .expect("logins per second")
        .iter()
        .map(|(second, count): (&String, &Value)| (second.parse().unwrap(), count.as_u64().unwrap()))
        .filter(|(second, _)| *second >= restarted_at)
        .collect();
    let logins = stats["totals"]["logins"].as_u64().unwrap() - logins_before;
    assert_eq!(logins as usize, SESSIONS, "one login per session after the restart: {per_second:?}");
    let busiest = per_second.iter().map(|(_, n)| *n).max().unwrap_or(0);
    assert!(busiest <= RATE + 1, "at most {RATE} logins a second, saw {busiest}: {per_second:?}");
    sim.stop().await;
}
