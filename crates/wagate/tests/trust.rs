//! Who gets in: a request a reverse proxy forwards, or one for another site's `Host`, is
//! not local and needs the key; browsers cannot make state-changing requests for another
//! site (forms, `text/plain`, foreign `Origin`); `/health` tells outsiders only counts.

mod common;

use common::{gateway_config, start_gateway_with, start_sim};
use reqwest::Method;
use serde_json::{json, Value};
use wagate::http::trust::Access;

async fn call(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, String)>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some((kind, body)) = body {
        request = request.header("content-type", kind).body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every state-changing route, with a body that would be valid JSON for it.
fn state_changing_routes() -> Vec<(Method, &'static str, Value)> {
    vec![
        (Method::POST, "/v1/sessions", json!({ "id": "other" })),
        (Method::POST, "/v1/sessions/T/start", json!({})),
        (Method::POST, "/v1/sessions/T/logout", json!({})),
        (Method::POST, "/v1/sessions/T/pair-code", json!({ "phone": "15550001111" })),
        (Method::POST, "/v1/sessions/T/messages", json!({ "to": "15550001111", "text": "hi" })),
        (Method::POST, "/v1/sessions/T/webhook/test", json!({})),
        (Method::POST, "/v1/sessions/T/contacts/check", json!({ "phones": ["15550001111"] })),
        (Method::POST, "/v1/sessions/T/presence/subscribe", json!({ "phone": "15550001111" })),
        (Method::POST, "/v1/webhooks/deliveries/evt_X/retry", json!({})),
        (Method::PUT, "/v1/sessions/T/webhook", json!({ "url": "http://127.0.0.1:9/x" })),
        (Method::PUT, "/v1/sessions/T", json!({ "proxy": null })),
        (Method::DELETE, "/v1/sessions/T/webhook", Value::Null),
        (Method::DELETE, "/v1/sessions/T", Value::Null),
        (Method::POST, "/sessions/start", json!({ "sessionId": "T" })),
        (Method::POST, "/sessions/send", json!({ "sessionId": "T", "receiver": "15550001111", "message": "hi" })),
        (Method::POST, "/sessions/check-number", json!({ "sessionId": "T", "phone": "15550001111" })),
        (Method::POST, "/sessions/contact-info", json!({ "sessionId": "T", "phone": "15550001111" })),
        (Method::POST, "/sessions/group-metadata", json!({ "sessionId": "T", "groupId": "1@g.us" })),
        (Method::POST, "/sessions/subscribe-presence", json!({ "sessionId": "T", "phone": "15550001111" })),
        (Method::DELETE, "/sessions/T", Value::Null),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_and_foreign_hosts_need_the_key() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&sim, data.path());
    config.access = Access { api_key: Some("s3cret".into()), ..Default::default() };
    let gateway = start_gateway_with(config).await;
    let base = format!("http://{}", gateway.addr);
    let (status, _) = call(&base, Method::GET, "/v1/sessions", &[], None).await;
    assert_eq!(status, 200, "straight from this machine: no key needed");

    // What nginx or Caddy on this host forwards: loopback peer, but not local.
    for headers in [
        vec![("x-forwarded-for", "203.0.113.9")],
        vec![("forwarded", "for=203.0.113.9;proto=https")],
        vec![("x-real-ip", "203.0.113.9")],
        vec![("host", "wa.example.com")],
        vec![("host", "attacker.example:3000")],
    ] {
        for path in ["/v1/sessions", "/sessions/T/status", "/metrics"] {
            let (status, body) = call(&base, Method::GET, path, &headers, None).await;
            assert_eq!(status, 401, "{path} {headers:?}: {body}");
        }
        let mut keyed = headers.clone();
        keyed.push(("authorization", "Bearer s3cret"));
        let (status, body) = call(&base, Method::GET, "/v1/sessions", &keyed, None).await;
        assert_eq!(status, 200, "with the key: {body}");
        let (status, health) = call(&base, Method::GET, "/health", &headers, None).await;
        assert_eq!(status, 200);
        assert!(health.get("sessionList").is_none() && health.get("pid").is_none(), "{headers:?}: {health}");
        assert!(health["sessions"]["total"].is_u64(), "counts for everyone: {health}");
        // The API's description holds nothing of the sessions: the console links to it.
        let (status, document) = call(&base, Method::GET, "/v1/openapi.json", &headers, None).await;
        assert_eq!((status, &document["openapi"]), (200, &serde_json::json!("3.1.0")), "{headers:?}");
    }
    // Unknown paths and methods answer JSON too, and give nothing away.
    let (status, body) = call(&base, Method::GET, "/v1/nothing", &[("x-forwarded-for", "203.0.113.9")], None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no such path: /v1/nothing")));
    let (status, body) = call(&base, Method::DELETE, "/health", &[], None).await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (_, health) = call(&base, Method::GET, "/health", &[], None).await;
    assert!(health["sessionList"].is_array(), "local callers see the sessions: {health}");
    gateway.stop().await;

    // Without a key nothing forwarded gets in; with --allowed-hosts other names get 421.
    let mut config = gateway_config(&sim, data.path());
    config.access = Access { allowed_hosts: vec!["wa.example.com".into()], ..Default::default() };
    let gateway = start_gateway_with(config).await;
    let base = format!("http://{}", gateway.addr);
    let (status, _) = call(&base, Method::GET, "/v1/sessions", &[("x-forwarded-for", "203.0.113.9")], None).await;
    assert_eq!(status, 403);
    let (status, body) = call(&base, Method::GET, "/v1/sessions", &[("host", "attacker.example")], None).await;
    assert_eq!(status, 421, "{body}");
    let (status, _) = call(&base, Method::GET, "/health", &[("host", "attacker.example")], None).await;
    assert_eq!(status, 421, "every route");
    let (status, _) = call(&base, Method::GET, "/v1/sessions", &[("host", "wa.example.com")], None).await;
    assert_eq!(status, 403, "an allowed name is still not local");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_change_anything_for_another_site() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway_with(gateway_config(&sim, data.path())).await;
    let base = format!("http://{}", gateway.addr);
    let (status, body) =
        call(&base, Method::POST, "/v1/sessions", &[], Some(("application/json", json!({ "id": "T" }).to_string())))
            .await;
    assert_eq!(status, 201, "{body}");

    for (method, path, body) in state_changing_routes() {
        let json_body = (!body.is_null()).then(|| ("application/json", body.to_string()));
        if method == Method::POST {
            for kind in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
                let (status, answer) = call(&base, method.clone(), path, &[], Some((kind, body.to_string()))).await;
                assert_eq!(status, 415, "{method} {path} as {kind}: {answer}");
                assert!(answer["error"].is_string());
            }
            let (status, _) = call(&base, method.clone(), path, &[], None).await;
            assert_eq!(status, 415, "{method} {path} without a body or the client header");
        }
        for foreign in [
            ("origin", "https://attacker.example"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let (status, answer) = call(&base, method.clone(), path, &[foreign], json_body.clone()).await;
            assert_eq!(status, 403, "{method} {path} with {foreign:?}: {answer}");
        }
    }
    let (status, view) = call(&base, Method::GET, "/v1/sessions/T", &[], None).await;
    assert_eq!(status, 200, "nothing refused above changed anything: {view}");

    // The same requests from the page itself, or from wagate's own clients, go through.
    let own = format!("http://{}", gateway.addr);
    let same_origin = [("origin", own.as_str()), ("sec-fetch-site", "same-origin")];
    let (status, body) = call(
        &base,
        Method::POST,
        "/v1/sessions",
        &same_origin,
        Some(("application/json", json!({"id": "U"}).to_string())),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        call(&base, Method::POST, "/v1/sessions/U/logout", &[("x-wagate-client", "console")], None).await;
    assert_eq!(status, 200, "{body}");
    gateway.stop().await;
    sim.stop().await;
}
