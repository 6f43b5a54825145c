//! The native API's answers to bad input and its rules.

mod common;

use common::{link, start_gateway, start_sim, Api};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));

    let expect_error = |status: u16, body: &serde_json::Value, expected: u16, what: &str| {
        assert_eq!(status, expected, "{what}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: no error text in {body}");
    };
    let (status, body) = api.get("/v1/sessions/nope").await;
    expect_error(status, &body, 404, "unknown session");
    assert_eq!(body["error"], "Session not found");
    for bad in ["has space", "..", "", &"x".repeat(65), "semi;colon"] {
        let (status, body) = api.post("/v1/sessions", json!({ "id": bad })).await;
        expect_error(status, &body, 400, &format!("id {bad:?}"));
    }
    let (status, body) = api.post("/v1/sessions", json!({ "id": "WA-X", "webhook": { "url": "ftp://erp" } })).await;
    expect_error(status, &body, 400, "webhook url");
    let (status, body) = api.post("/v1/sessions", json!({ "nope": 1 })).await;
    expect_error(status, &body, 400, "missing id");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sessions", api.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("JSON"), "{body}");
    let (status, body) = api.post("/v1/sessions/nope/start", json!({})).await;
    expect_error(status, &body, 404, "start unknown");
    let (status, body) = api.delete("/v1/sessions/nope").await;
    expect_error(status, &body, 404, "delete unknown");

    link(&api, &control, "WA-Q", "15553000001").await;
    let (status, body) = api.get("/v1/sessions/WA-Q/qr").await;
    expect_error(status, &body, 409, "QR of a connected session");
    let (status, body) = api.get("/v1/sessions/WA-Q/qr?format=jpeg").await;
    expect_error(status, &body, 400, "unknown QR format");
    let (status, body) = api.post("/v1/sessions/WA-Q/pair-code", json!({ "phone": "abc" })).await;
    expect_error(status, &body, 400, "bad phone");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_comes_in_every_format_and_create_is_idempotent() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    let (status, _) = api.post("/v1/sessions", json!({ "id": "WA-Img" })).await;
    assert_eq!(status, 201);
    let view = api.wait_state("WA-Img", "awaiting_scan").await;
    let (status, again) = api.post("/v1/sessions", json!({ "id": "WA-Img" })).await;
    assert_eq!(status, 200, "the same create again returns the current state");
    assert_eq!(again["state"], "awaiting_scan");
    assert_eq!(again["qr"], view["qr"], "and the same QR");

    let fetch = |format: &'static str| {
        let base = api.base.clone();
        async move {
            let response = reqwest::get(format!("{base}/v1/sessions/WA-Img/qr?format={format}")).await.unwrap();
            assert_eq!(response.status(), 200, "{format}");
            let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
            (content_type, response.bytes().await.unwrap())
        }
    };
    let (kind, png) = fetch("png").await;
    assert_eq!(kind, "image/png");
    assert!(png.starts_with(b"\x89PNG"));
    let (kind, svg) = fetch("svg").await;
    assert_eq!(kind, "image/svg+xml");
    assert!(String::from_utf8_lossy(&svg).contains("<svg"));
    let (_, text) = fetch("text").await;
    assert!(String::from_utf8_lossy(&text).contains('█'));
    let (_, raw) = fetch("raw").await;
    assert_eq!(raw, view["qr"].as_str().unwrap().as_bytes());

    let (status, list) = api.get("/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, deleted) = api.delete("/v1/sessions/WA-Img").await;
    assert_eq!(status, 200, "{deleted}");
    let (status, _) = api.get("/v1/sessions/WA-Img").await;
    assert_eq!(status, 404);
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_unlinks_on_whatsapp_and_delete_forgets() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let jid = link(&api, &control, "WA-Out", "15553000002").await;
    let second = link(&api, &control, "WA-Del", "15553000003").await;

    let (status, view) = api.post("/v1/sessions/WA-Out/logout", json!({})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "logged_out");
    assert_eq!(view["reason"], "logout_requested");
    assert!(!common::has_engine_keys(data.path(), "WA-Out"), "keys deleted");
    let devices = control.get("/control/devices").await.1;
    assert!(!devices.as_array().unwrap().iter().any(|d| d["jid"] == jid), "the phone no longer lists it: {devices}");

    let (status, _) = api.delete("/v1/sessions/WA-Del").await;
    assert_eq!(status, 200);
    let devices = control.get("/control/devices").await.1;
    assert!(!devices.as_array().unwrap().iter().any(|d| d["jid"] == second), "{devices}");
    let (status, _) = api.get("/v1/sessions/WA-Del").await;
    assert_eq!(status, 404);
    let (_, list) = api.get("/v1/sessions").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    gateway.stop().await;
    sim.stop().await;
}
