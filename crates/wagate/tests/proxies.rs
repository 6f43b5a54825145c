//! WhatsApp traffic through outbound proxies (HTTP CONNECT and SOCKS5): linking and the
//! 515 reconnect go through them, proxy problems become states with words, passwords
//! stay secret.

mod common;

use common::proxies::{Kind, TestProxy};
use common::{free_port, gateway_config, link, start_gateway_with, start_sim, Api, GatewayProcess};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_through_an_http_connect_proxy_set_for_the_gateway() {
    let sim = start_sim().await;
    let proxy = TestProxy::start(Kind::Http, "127.0.0.1:0", Some(("erp", "p4ss"))).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&sim, data.path());
    config.proxy = Some(proxy.url(Kind::Http, Some(("erp", "p4ss"))));
    let gateway = start_gateway_with(config).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    link(&api, &control, "WA-Http", "15559000001").await;
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["connections"], 2, "{stats}");
    assert_eq!(proxy.tunnels(), 2, "the pairing and the post-515 login both went through the proxy");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_can_have_its_own_socks5_proxy_and_recovers_when_it_comes_back() {
    let sim = start_sim().await;
    let proxy = TestProxy::start(Kind::Socks5, "127.0.0.1:0", Some(("erp", "s0cks"))).await;
    let proxy_addr = proxy.addr.to_string();
    let url = proxy.url(Kind::Socks5, Some(("erp", "s0cks")));
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway_with(gateway_config(&sim, data.path())).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let (status, body) = api.post("/v1/sessions", json!({ "id": "WA-Socks", "proxy": url })).await;
    assert_eq!(status, 201, "{body}");
    let view = api.wait_state("WA-Socks", "awaiting_scan").await;
    assert_eq!(view["proxy"], format!("socks5://erp:***@{proxy_addr}"), "masked: {view}");
    let (status, _) = control.post("/control/scan", json!({ "qr": view["qr"], "phone": "15559000002" })).await;
    assert_eq!(status, 200);
    api.wait_state("WA-Socks", "connected").await;
    assert_eq!(proxy.tunnels(), 2);

    // The proxy goes away: the session says so and keeps trying.
    proxy.stop();
    let view = api
        .wait_for("/v1/sessions/WA-Socks", "a proxy error", |v| {
            v["state"] == "reconnecting"
                && v["last_error"].as_str().is_some_and(|e| e.contains("cannot reach the proxy"))
        })
        .await;
    assert!(view["detail"].as_str().unwrap().contains("cannot reach the proxy"), "{view}");
    assert!(!view.to_string().contains("s0cks"), "no password in answers: {view}");
    // It comes back on the same address; the session recovers by itself.
    let proxy = TestProxy::start(Kind::Socks5, &proxy_addr, Some(("erp", "s0cks"))).await;
    api.wait_for_within("/v1/sessions/WA-Socks", "recovery", std::time::Duration::from_secs(60), |v| {
        v["state"] == "connected"
    })
    .await;
    assert_eq!(proxy.tunnels(), 1);
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proxy_credentials_are_named_and_the_password_is_never_shown() {
    let sim = start_sim().await;
    let proxy = TestProxy::start(Kind::Http, "127.0.0.1:0", Some(("erp", "right"))).await;
    let data = tempfile::tempdir().unwrap();
    let wrong = proxy.url(Kind::Http, Some(("erp", "Wr0ngPassw0rd")));
    let gateway = GatewayProcess::spawn_with(&sim, data.path(), free_port(), &["--proxy", &wrong]);
    gateway.ready().await;
    let (status, _) = gateway.api.post("/v1/sessions", json!({ "id": "WA-Auth" })).await;
    assert_eq!(status, 201);
    let view = gateway
        .api
        .wait_for("/v1/sessions/WA-Auth", "a credentials error", |v| {
            v["last_error"].as_str().is_some_and(|e| e.contains("rejected the credentials"))
        })
        .await;
    assert_eq!(view["state"], "reconnecting");
    assert!(view["last_error"].as_str().unwrap().contains("407"), "{view}");
    let log = std::fs::read_to_string(data.path().join("gateway.log")).unwrap();
    assert!(log.contains("erp:***@"), "the proxy is named, masked, in the log");
    assert!(
        !log.contains("Wr0ngPassw0rd") && !view.to_string().contains("Wr0ngPassw0rd"),
        "the password leaks nowhere"
    );
    gateway.kill_9();
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proxy_urls_are_refused() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway_with(gateway_config(&sim, data.path())).await;
    let api = Api::gateway(gateway.addr);
    for bad in ["socks4://x:1", "http://nohost", "proxy:3128", "https://tls-proxy:443"] {
        let (status, body) = api.post("/v1/sessions", json!({ "id": "WA-Bad", "proxy": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("proxy"), "{body}");
    }
    api.post("/v1/sessions", json!({ "id": "WA-Put" })).await;
    let (status, body) =
        api.call(reqwest::Method::PUT, "/v1/sessions/WA-Put", Some(json!({ "proxy": "ftp://x:1" }))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .call(reqwest::Method::PUT, "/v1/sessions/WA-Put", Some(json!({ "proxy": "socks5://u:secret@127.0.0.1:1080" })))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["proxy"], "socks5://u:***@127.0.0.1:1080");
    let (status, _) = api.call(reqwest::Method::PUT, "/v1/sessions/nope", Some(json!({ "proxy": null }))).await;
    assert_eq!(status, 404);
    gateway.stop().await;
    sim.stop().await;
}

/// Without --proxy, the standard variables apply: HTTPS_PROXY is used, NO_PROXY wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_and_no_proxy_are_honoured() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let proxy = TestProxy::start(Kind::Http, "127.0.0.1:0", None).await;
    let url = proxy.url(Kind::Http, None);
    // The tunnel count is cumulative: the first gateway opens two tunnels (pairing and the
    // post-515 login); the second, with NO_PROXY covering the simulator, opens none.
    for (env, expected_tunnels) in
        [(vec![("HTTPS_PROXY", url.as_str())], 2), (vec![("HTTPS_PROXY", url.as_str()), ("NO_PROXY", "127.0.0.1")], 2)]
    {
        let data = tempfile::tempdir().unwrap();
        let gateway = GatewayProcess::spawn_with_env(&sim, data.path(), free_port(), &[], &env);
        gateway.ready().await;
        let phone = if env.len() == 1 { "15559000011" } else { "15559000012" };
        link(&gateway.api, &control, "WA-Env", phone).await;
        assert_eq!(proxy.tunnels(), expected_tunnels, "{env:?}");
        gateway.kill_9();
    }
    sim.stop().await;
}

/// Media takes the session's way out too: the sender's upload and the receiver's download
/// of an image each go through that session's proxy to the simulator's media host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_uploads_and_downloads_go_through_the_proxy() {
    use base64::Engine as _;
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let media_host = sim.endpoints.media_url.trim_start_matches("https://").to_string();
    let http_proxy = TestProxy::start(Kind::Http, "127.0.0.1:0", Some(("erp", "p4ss"))).await;
    let socks = TestProxy::start(Kind::Socks5, "127.0.0.1:0", Some(("erp", "s0cks"))).await;
    let hooks_b = common::receiver::Receiver::start().await;
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config_a = gateway_config(&sim, data_a.path());
    config_a.proxy = Some(http_proxy.url(Kind::Http, Some(("erp", "p4ss"))));
    let (gw_a, gw_b) =
        (start_gateway_with(config_a).await, start_gateway_with(gateway_config(&sim, data_b.path())).await);
    let (api_a, api_b) = (Api::gateway(gw_a.addr), Api::gateway(gw_b.addr));
    let socks_url = socks.url(Kind::Socks5, Some(("erp", "s0cks")));
    let (status, body) =
        api_b.post("/v1/sessions", json!({ "id": "B", "webhook": { "url": hooks_b.url }, "proxy": socks_url })).await;
    assert_eq!(status, 201, "{body}");
    link(&api_a, &control, "A", "15559000021").await;
    link(&api_b, &control, "B", "15559000022").await;

    let photo: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&photo);
    let (status, sent) = api_a
        .post(
            "/v1/sessions/A/messages",
            json!({ "to": "15559000022", "image": { "base64": encoded, "mimetype": "image/png" } }),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(http_proxy.tunnels_to(&media_host), 1, "A's upload went through A's HTTP proxy");
    assert_eq!(socks.tunnels_to(&media_host), 0);

    let hooks =
        hooks_b.wait_for("B's image", common::WAIT, |r| r.iter().any(|x| x.json["data"]["type"] == "image")).await;
    let image = hooks.iter().find(|x| x.json["data"]["type"] == "image").unwrap().json["data"].clone();
    let url = image["media"]["url"].as_str().expect("a media url").to_string();
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    // A file from outside is always a download, never rendered on the gateway's origin.
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "image/png");
    assert!(header("content-disposition").starts_with("attachment;"), "{}", header("content-disposition"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(response.bytes().await.unwrap().as_ref(), photo.as_slice(), "the image B downloaded is A's");
    assert_eq!(socks.tunnels_to(&media_host), 1, "B's download went through B's SOCKS5 proxy");
    assert_eq!(http_proxy.tunnels_to(&media_host), 1);
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(
        (stats["media"]["uploads"].as_u64(), stats["media"]["downloads"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    gw_a.stop().await;
    gw_b.stop().await;
    sim.stop().await;
}
