//! wagate's engine (whatsapp-rust 0.7) against the simulator: link by QR and by pairing
//! code, the 515 restart in between, login, and a restart with saved credentials.

mod common;

use common::{start_sim, ClientEvent, Control, TestClient};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_by_qr_restarts_on_515_and_logs_in() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let mut client = TestClient::start(&sim.endpoints.ws_url, None).await;

    let qr = client
        .wait_for("a QR code", |e| match e {
            ClientEvent::Qr(code) => Some(code.clone()),
            _ => None,
        })
        .await;
    let (status, linked) = control.post("/control/scan", json!({ "qr": qr, "phone": "15551234567" })).await;
    assert_eq!(status, 200, "scan answer: {linked}");
    assert_eq!(linked["jid"], "15551234567:1@s.whatsapp.net");
    assert!(linked["lid"].as_str().unwrap().ends_with(":1@lid"), "lid: {linked}");

    client.wait_for("PairSuccess", |e| matches!(e, ClientEvent::PairSuccess).then_some(())).await;
    client.wait_connected().await;
    control
        .wait_stats("the client to confirm the phone's app-state key share", |s| {
            s["devices"]["15551234567:1@s.whatsapp.net"]["key_shares_received"] == 1
        })
        .await;

    let stats = control.get("/control/stats").await;
    let device = &stats["devices"]["15551234567:1@s.whatsapp.net"];
    assert_eq!(device["pairings"], 1, "stats: {stats}");
    assert_eq!(device["logins"], 1, "one login after the 515: {stats}");
    assert_eq!(stats["totals"]["pairing_connections"], 1, "stats: {stats}");
    let devices = control.get("/control/devices").await;
    assert_eq!(devices[0]["jid"], "15551234567:1@s.whatsapp.net");
    assert_eq!(devices[0]["connected"], true, "devices: {devices}");

    // A restarted client logs in with its saved credentials (Noise IK this time).
    let dir = client.stop().await;
    let mut again = TestClient::start_in(&sim.endpoints.ws_url, None, dir).await;
    again.wait_connected().await;
    let stats = control.get("/control/stats").await;
    assert_eq!(stats["devices"]["15551234567:1@s.whatsapp.net"]["logins"], 2, "stats: {stats}");
    assert_eq!(stats["totals"]["pairing_connections"], 1, "no new pairing: {stats}");
    assert_eq!(stats["totals"]["ik_handshakes"], 1, "the restarted client resumed with Noise IK: {stats}");
    let unknown = control.get("/control/unknown-iqs").await;
    eprintln!("iqs without a handler: {unknown}");
    again.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_by_phone_number_code() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let mut client = TestClient::start(&sim.endpoints.ws_url, Some("15557654321")).await;

    let code = client
        .wait_for("a pairing code", |e| match e {
            ClientEvent::PairCode(code) => Some(code.clone()),
            _ => None,
        })
        .await;
    let (status, linked) =
        control.post("/control/pair-code", json!({ "phone": "+1 555 765 4321", "code": code })).await;
    assert_eq!(status, 200, "pair-code answer: {linked}");
    assert_eq!(linked["jid"], "15557654321:1@s.whatsapp.net");
    client.wait_connected().await;
    client.stop().await;
    sim.stop().await;
}

/// A client that cached the static key of a simulator that has since restarted with new
/// keys (and forgotten its devices) falls back from IK to XX, then learns it is logged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_server_key_falls_back_to_xx() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (client, jid) = common::link_client(&sim, &control, "15551239999").await;
    let dir = client.stop().await;
    let addr: std::net::SocketAddr = sim.endpoints.control_url.trim_start_matches("http://").parse().unwrap();
    sim.stop().await;

    let sim = wagate_sim::Simulator::start(addr, wagate_sim::ServerKeys::generate(), Default::default())
        .await
        .expect("a new simulator on the same port");
    let control = Control::new(&sim);
    let mut client = TestClient::start_in(&sim.endpoints.ws_url, None, dir).await;
    client.wait_for("LoggedOut", |e| matches!(e, ClientEvent::LoggedOut(_)).then_some(())).await;
    let stats = control.get("/control/stats").await;
    assert!(stats["totals"]["xx_fallback_handshakes"].as_u64().unwrap() >= 1, "stats: {stats}");
    assert_eq!(stats["devices"][&jid]["login_failures"], 1, "stats: {stats}");
    client.stop().await;
    sim.stop().await;
}
