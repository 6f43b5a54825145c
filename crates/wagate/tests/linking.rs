//! Linking: scan once and stay connected, whatever the callers do meanwhile.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{link, start_gateway, start_sim, Api};
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_once_connects_through_the_515_restart() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let control = Api::sim(&sim);

    let (status, created) = api.post("/v1/sessions", json!({ "id": "WA-Acme_Ltd" })).await;
    assert_eq!(status, 201, "{created}");
    let jid = link(&api, &control, "WA-Acme_Ltd", "15551234567").await;
    assert_eq!(jid, "15551234567:1@s.whatsapp.net");

    let (_, view) = api.get("/v1/sessions/WA-Acme_Ltd").await;
    assert_eq!(view["me"]["phone"], "15551234567", "{view}");
    assert_eq!(view["me"]["jid"], jid, "{view}");
    assert!(view["qr"].is_null(), "no QR once connected: {view}");
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], 1, "{health}");
    assert_eq!(health["status"], "healthy");

    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["pairing_connections"], 1, "{stats}");
    assert_eq!(stats["totals"]["pairings"], 1, "{stats}");
    assert_eq!(stats["devices"][&jid]["logins"], 1, "one login, right after the 515: {stats}");
    gateway.stop().await;
    sim.stop().await;
}

/// The Node service's failure: callers that keep calling "start" while the QR is up and
/// during pairing. wagate links on the first scan with one pairing and one login socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_every_200ms_never_disturbs_the_pairing() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let control = Api::sim(&sim);

    let calls_while_qr = Arc::new(AtomicU32::new(0));
    let poller = {
        let api = api.clone();
        let calls_while_qr = calls_while_qr.clone();
        tokio::spawn(async move {
            loop {
                let (status, view) = api.post("/v1/sessions", json!({ "id": "WA-Poll" })).await;
                assert!(status == 200 || status == 201, "{status} {view}");
                match view["state"].as_str() {
                    Some("awaiting_scan") => {
                        calls_while_qr.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("connected") => return,
                    Some("connecting" | "pairing") => {}
                    other => panic!("polling saw an unexpected state {other:?}: {view}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let view = api.wait_state("WA-Poll", "awaiting_scan").await;
    // Scan only after the poller has hit the session a few times while the QR was up.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while calls_while_qr.load(Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the poller stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, linked) = control.post("/control/scan", json!({ "qr": view["qr"], "phone": "15550001111" })).await;
    assert_eq!(status, 200, "{linked}");
    tokio::time::timeout(common::WAIT, poller).await.expect("connected while polling").unwrap();

    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["connections"], 2, "one pairing and one login connection: {stats}");
    assert_eq!(stats["totals"]["pairing_connections"], 1, "{stats}");
    assert_eq!(stats["totals"]["pairings"], 1, "{stats}");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_with_a_phone_number_code() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let control = Api::sim(&sim);

    api.post("/v1/sessions", json!({ "id": "WA-Code" })).await;
    let (status, answer) = api.post("/v1/sessions/WA-Code/pair-code", json!({ "phone": "+1 555 222 3333" })).await;
    assert_eq!(status, 200, "{answer}");
    let code = answer["code"].as_str().unwrap();
    assert!(code.len() == 9 && code.as_bytes()[4] == b'-', "code shown as ABCD-EFGH: {code}");
    let (status, linked) = control.post("/control/pair-code", json!({ "phone": "15552223333", "code": code })).await;
    assert_eq!(status, 200, "{linked}");
    let view = api.wait_state("WA-Code", "connected").await;
    assert_eq!(view["me"]["phone"], "15552223333", "{view}");

    let (status, answer) = api.post("/v1/sessions/WA-Code/pair-code", json!({ "phone": "15552223333" })).await;
    assert_eq!(status, 409, "a connected session needs no code: {answer}");
    gateway.stop().await;
    sim.stop().await;
}

/// A pairing code asked for after a logout starts a new connection and comes, instead of
/// waiting for the connection the logout closed until the call times out (a 503; found
/// by schemathesis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_code_after_a_logout_links() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let control = Api::sim(&sim);

    api.post("/v1/sessions", json!({ "id": "WA-Again" })).await;
    api.wait_state("WA-Again", "awaiting_scan").await;
    let (status, view) = api.post("/v1/sessions/WA-Again/logout", json!({})).await;
    assert_eq!((status, view["state"].as_str()), (200, Some("logged_out")), "{view}");

    let (status, answer) = api.post("/v1/sessions/WA-Again/pair-code", json!({ "phone": "+1 555 222 4444" })).await;
    assert_eq!(status, 200, "{answer}");
    let code = answer["code"].as_str().unwrap();
    let (status, linked) = control.post("/control/pair-code", json!({ "phone": "15552224444", "code": code })).await;
    assert_eq!(status, 200, "{linked}");
    let view = api.wait_state("WA-Again", "connected").await;
    assert_eq!(view["me"]["phone"], "15552224444", "{view}");
    gateway.stop().await;
    sim.stop().await;
}

/// Two callers asking for a code at once: one gets it, the other a 409 that says why
/// (the later request replaces the earlier, or the code is outstanding), never a 5xx as if
/// WhatsApp had failed (a 502 before; found by schemathesis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pairing_code_requests_get_one_code_and_a_conflict() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);

    api.post("/v1/sessions", json!({ "id": "WA-Twice" })).await;
    api.wait_state("WA-Twice", "awaiting_scan").await;
    let ask = || api.post("/v1/sessions/WA-Twice/pair-code", json!({ "phone": "+1 555 222 5555" }));
    let ((first, a), (second, b)) = tokio::join!(ask(), ask());
    let mut statuses = [first, second];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a} {b}");
    gateway.stop().await;
    sim.stop().await;
}

/// A page follows the session over Server-Sent Events: the QR, then connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_shows_the_qr_then_connected() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let control = Api::sim(&sim);

    api.post("/v1/sessions", json!({ "id": "WA-Live" })).await;
    let response = reqwest::get(format!("{}/v1/sessions/WA-Live/events", api.base)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut states = Vec::new();
    let mut scanned = false;
    let outcome = tokio::time::timeout(common::WAIT, async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                let view: serde_json::Value = serde_json::from_str(data).unwrap();
                states.push(view["state"].as_str().unwrap().to_string());
                if view["state"] == "awaiting_scan" && !scanned {
                    scanned = true;
                    let (status, _) =
                        control.post("/control/scan", json!({ "qr": view["qr"], "phone": "15553334444" })).await;
                    assert_eq!(status, 200);
                }
                if view["state"] == "connected" {
                    return;
                }
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "no connected event; states seen: {states:?}");
    let position = |s: &str| states.iter().position(|x| x == s);
    assert!(position("awaiting_scan") < position("pairing"), "{states:?}");
    assert!(position("pairing") < position("connected"), "{states:?}");
    gateway.stop().await;
    sim.stop().await;
}

/// Two sessions in one process: a fault in one never touches the other's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_in_one_session_leaves_the_other_alone() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let control = Api::sim(&sim);
    let first = link(&api, &control, "WA-One", "15551110001").await;
    let second = link(&api, &control, "WA-Two", "15551110002").await;

    // A drop and a 503 each make WA-One log in again; then it is replaced and stays down.
    for (logins, fault) in [(2, json!({ "kind": "drop" })), (3, json!({ "kind": "stream_error", "code": 503 }))] {
        let mut fault = fault;
        fault["jid"] = json!(first);
        let (status, answer) = control.post("/control/fault", fault.clone()).await;
        assert_eq!(status, 200, "{fault}: {answer}");
        control
            .wait_for("/control/stats", "WA-One to log in again", |s| s["devices"][&first]["logins"] == logins)
            .await;
        api.wait_state("WA-One", "connected").await;
    }
    let (status, answer) = control.post("/control/fault", json!({ "jid": first, "kind": "replaced" })).await;
    assert_eq!(status, 200, "{answer}");
    api.wait_state("WA-One", "replaced").await;
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["devices"][&second]["connections"], 2, "WA-Two kept its one login socket: {stats}");
    assert_eq!(stats["devices"][&second]["logins"], 1, "{stats}");
    let (_, view) = api.get("/v1/sessions/WA-Two").await;
    assert_eq!(view["state"], "connected", "{view}");
    gateway.stop().await;
    sim.stop().await;
}

/// A small business's account as the simulator's profile makes it: on linking, wagate takes
/// the history the phone sends, fetches the app state (contacts, mutes, pins) once, and
/// receives the contacts' messages. The app state is fetched on the connection after the
/// 515, which the library forgets to do for a business account when it is a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_business_account_takes_its_history_app_state_and_messages() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let profile = json!({ "preset": "small-business", "contacts": 20, "groups": 2, "group_size": 5, "history": 40, "trickle_per_minute": 120 });
    let (status, body) = control.post("/control/account-profile", profile).await;
    assert_eq!(status, 200, "{body}");
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    link(&api, &control, "WA-Shop", "15553000041").await;

    let stats = control
        .wait_for("/control/stats", "the history and the app state to be fetched", |s| {
            let p = &s["profile"];
            p["history_blobs_served"].as_u64() >= Some(2)
                && p["app_state_blobs_served"].as_u64() >= Some(1)
                && p["app_state_patches_served"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(stats["profile"]["app_state_snapshots_served"], 1, "one snapshot (contacts): {stats}");
    // The gateway's counter of received texts (the process's: the gateways of this test
    // share it).
    let texts = || wagate::metrics::METRICS.messages_received.with_label_values(&["text"]).get();
    let wait_texts = |at_least: u64, what: &'static str| async move {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        while texts() < at_least {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_texts(texts() + 3, "three messages from contacts").await;

    // A restart does not fetch the snapshot or the history again.
    gateway.stop().await;
    let before = texts();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    api.wait_state("WA-Shop", "connected").await;
    wait_texts(before + 1, "a message after the restart").await;
    let (_, after) = control.get("/control/stats").await;
    assert_eq!(after["profile"]["app_state_snapshots_served"], 1, "{after}");
    assert_eq!(after["profile"]["history_blobs_served"], stats["profile"]["history_blobs_served"], "{after}");
    gateway.stop().await;
    sim.stop().await;
}
