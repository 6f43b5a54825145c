//! The disconnect policy end to end: each fault the simulator can inject leads to the
//! right state and reconnect behaviour (PROTOCOL.md section 8).

mod common;

use common::{has_engine_keys, link, start_gateway, start_sim, Api};
use serde_json::{json, Value};

async fn fault(control: &Api, body: Value) {
    let (status, answer) = control.post("/control/fault", body.clone()).await;
    assert_eq!(status, 200, "{body}: {answer}");
}

async fn logins(control: &Api, jid: &str) -> u64 {
    control.get("/control/stats").await.1["devices"][jid]["logins"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_required_and_server_errors_reconnect_without_a_new_link() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-A", "15552000001").await;
    for (expected_logins, code) in [(2u64, 515u16), (3, 503), (4, 500)] {
        fault(&control, json!({ "jid": jid, "kind": "stream_error", "code": code })).await;
        control
            .wait_for("/control/stats", &format!("a login after {code}"), |s| {
                s["devices"][&jid]["logins"] == expected_logins
            })
            .await;
        api.wait_state("WA-A", "connected").await;
    }
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["pairings"], 1, "never a new link: {stats}");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_does_not_fight_back() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-R", "15552000002").await;
    let connections_before = control.get("/control/stats").await.1["devices"][&jid]["connections"].clone();
    fault(&control, json!({ "jid": jid, "kind": "replaced" })).await;
    let view = api.wait_state("WA-R", "replaced").await;
    assert_eq!(view["code"], 440, "{view}");
    let next = chrono::DateTime::parse_from_rfc3339(view["next_attempt_at"].as_str().unwrap()).unwrap();
    let wait = next.signed_duration_since(chrono::Utc::now());
    assert!(wait >= chrono::Duration::seconds(25), "no quick reconnect after replaced: next attempt in {wait}");
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["devices"][&jid]["connections"], connections_before, "no new socket: {stats}");
    // An explicit start is the operator's decision: it reconnects at once.
    let (status, _) = api.post("/v1/sessions/WA-R/start", json!({})).await;
    assert_eq!(status, 200);
    api.wait_state("WA-R", "connected").await;
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_from_the_phone_logs_out_wipes_keys_and_relinks_with_a_new_qr() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-U", "15552000003").await;
    assert!(has_engine_keys(data.path(), "WA-U"));
    let (status, _) = control.post("/control/unlink", json!({ "jid": jid })).await;
    assert_eq!(status, 200);
    let view = api.wait_state("WA-U", "logged_out").await;
    assert!(view["me"].is_null(), "{view}");
    assert!(!has_engine_keys(data.path(), "WA-U"), "the session's keys are deleted");
    let logins_before = logins(&control, &jid).await;
    // No retry of its own.
    let (_, view) = api.get("/v1/sessions/WA-U").await;
    assert_eq!(view["state"], "logged_out");
    assert_eq!(logins(&control, &jid).await, logins_before);

    let (status, _) = api.post("/v1/sessions/WA-U/start", json!({})).await;
    assert_eq!(status, 200);
    let view = api.wait_state("WA-U", "awaiting_scan").await;
    let (status, linked) = control.post("/control/scan", json!({ "qr": view["qr"], "phone": "15552000003" })).await;
    assert_eq!(status, 200, "{linked}");
    api.wait_state("WA-U", "connected").await;
    assert_eq!(linked["jid"], "15552000003:2@s.whatsapp.net", "a new device");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_become_states() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let banned = link(&api, &control, "WA-Ban", "15552000004").await;
    let outdated = link(&api, &control, "WA-Old", "15552000005").await;
    let refused = link(&api, &control, "WA-401", "15552000006").await;

    fault(&control, json!({ "jid": banned, "kind": "failure", "reason": 402, "expire": 3600 })).await;
    fault(&control, json!({ "jid": banned, "kind": "drop" })).await;
    let view = api.wait_state("WA-Ban", "banned").await;
    let until = chrono::DateTime::parse_from_rfc3339(view["banned_until"].as_str().unwrap()).unwrap();
    assert!(until.signed_duration_since(chrono::Utc::now()) > chrono::Duration::minutes(55), "{view}");

    fault(&control, json!({ "jid": outdated, "kind": "failure", "reason": 405 })).await;
    fault(&control, json!({ "jid": outdated, "kind": "drop" })).await;
    let view = api.wait_state("WA-Old", "outdated").await;
    assert!(view["detail"].as_str().unwrap().contains("Update wagate"), "{view}");

    fault(&control, json!({ "jid": refused, "kind": "failure", "reason": 403 })).await;
    fault(&control, json!({ "jid": refused, "kind": "drop" })).await;
    let view = api.wait_state("WA-401", "logged_out").await;
    assert_eq!(view["code"], 403, "{view}");

    // None of them tries again on its own; a start on the banned one is refused by waiting.
    let (_, view) = api.post("/v1/sessions/WA-Ban/start", json!({})).await;
    assert_eq!(view["state"], "banned", "no reconnect before the ban ends: {view}");
    gateway.stop().await;
    sim.stop().await;
}

/// With WhatsApp unreachable the session retries with growing delays, and comes back
/// by itself once it is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_back_off_and_recover() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-D", "15552000007").await;

    fault(&control, json!({ "jid": jid, "kind": "silence", "seconds": 600 })).await;
    // Silence: the client's keepalive notices, the supervisor reconnects (a new socket is
    // not silenced).
    control
        .wait_for_within("/control/stats", "a reconnect after silence", std::time::Duration::from_secs(90), |s| {
            s["devices"][&jid]["logins"] == 2
        })
        .await;
    api.wait_state("WA-D", "connected").await;

    // Now WhatsApp goes away entirely: attempts are spaced out more and more.
    let addr: std::net::SocketAddr = sim.endpoints.control_url.trim_start_matches("http://").parse().unwrap();
    sim.stop().await;
    let mut attempts_seen = Vec::new();
    let view = api
        .wait_for("/v1/sessions/WA-D", "three reconnect attempts", |v| {
            v["state"] == "reconnecting" && v["attempt"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    attempts_seen.push(view["attempt"].as_u64().unwrap());
    let next = chrono::DateTime::parse_from_rfc3339(view["next_attempt_at"].as_str().unwrap()).unwrap();
    let since = chrono::DateTime::parse_from_rfc3339(view["since"].as_str().unwrap()).unwrap();
    assert!(next > since, "{view}");
    assert_eq!(view["reason"], "connection_lost", "{view}");

    // WhatsApp is back (a fresh server that remembers nothing: the device is unknown there).
    let sim = wagate_sim::Simulator::start(addr, wagate_sim::ServerKeys::generate(), Default::default()).await.unwrap();
    let view = api
        .wait_for_within(
            "/v1/sessions/WA-D",
            "the session to reach the server again",
            std::time::Duration::from_secs(60),
            |v| v["state"] == "logged_out",
        )
        .await;
    assert_eq!(view["code"], 401, "the new server does not know the device: {view}");
    gateway.stop().await;
    sim.stop().await;
}
