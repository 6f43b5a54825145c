//! Each fault kind of `/control/fault`, seen from a real whatsapp-rust client.

mod common;

use common::{link_client, other_named, start_sim, ClientEvent, Control};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_and_drops_make_the_client_log_in_again() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (client, jid) = link_client(&sim, &control, "15551230001").await;
    let mut logins = 1;
    for fault in [
        json!({ "jid": jid, "kind": "stream_error", "code": 503 }),
        json!({ "jid": jid, "kind": "stream_error", "code": 515 }),
        json!({ "jid": jid, "kind": "drop" }),
    ] {
        let (status, answer) = control.post("/control/fault", fault.clone()).await;
        assert_eq!(status, 200, "{fault} -> {answer}");
        logins += 1;
        control.wait_logins(&jid, logins).await;
    }
    let stats = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["pairing_connections"], 1, "no new pairing: {stats}");
    client.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_is_reported_to_the_client() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (mut client, jid) = link_client(&sim, &control, "15551230002").await;
    let (status, answer) = control.post("/control/fault", json!({ "jid": jid, "kind": "replaced" })).await;
    assert_eq!(status, 200, "{answer}");
    client.wait_for("StreamReplaced", other_named("StreamReplaced")).await;
    control.wait_disconnected(&jid).await;
    client.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_apply_at_the_next_login() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (mut client, jid) = link_client(&sim, &control, "15551230003").await;

    // A temporary ban: the next login gets <failure reason="402" expire=..>.
    let (status, answer) =
        control.post("/control/fault", json!({ "jid": jid, "kind": "failure", "reason": 402, "expire": 3600 })).await;
    assert_eq!(status, 200, "{answer}");
    assert!(control.is_connected(&jid).await, "a failure waits for the next login");
    control.post("/control/fault", json!({ "jid": jid, "kind": "drop" })).await;
    client.wait_for("TemporaryBan", other_named("TemporaryBan")).await;
    let stats = control.get("/control/stats").await;
    assert_eq!(stats["devices"][&jid]["login_failures"], 1, "{stats}");

    let (status, answer) =
        control.post("/control/fault", json!({ "jid": jid, "kind": "failure", "reason": 499 })).await;
    assert_eq!(status, 400, "{answer}");
    client.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_failure_logs_the_client_out() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (mut client, jid) = link_client(&sim, &control, "15551230004").await;
    control.post("/control/fault", json!({ "jid": jid, "kind": "failure", "reason": 401 })).await;
    control.post("/control/fault", json!({ "jid": jid, "kind": "stream_error", "code": 503 })).await;
    client.wait_for("LoggedOut", |e| matches!(e, ClientEvent::LoggedOut(_)).then_some(())).await;
    client.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_makes_the_client_give_up_and_reconnect() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (client, jid) = link_client(&sim, &control, "15551230005").await;
    let (status, answer) =
        control.post("/control/fault", json!({ "jid": jid, "kind": "silence", "seconds": 600 })).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = control.post("/control/fault", json!({ "jid": jid, "kind": "silence", "seconds": -1 })).await;
    assert_eq!(status, 400);
    // The client's keepalive goes unanswered, so it opens a new connection and logs in
    // again; that socket is not silenced.
    control
        .wait_stats_for(&format!("a new login of {jid}"), std::time::Duration::from_secs(90), |s| {
            s["devices"][&jid]["logins"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    client.stop().await;
    sim.stop().await;
}
