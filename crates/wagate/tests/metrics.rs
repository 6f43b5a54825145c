//! `/metrics`, read by a Prometheus text-format parser: counters move when sessions link,
//! messages go and come, and webhooks are delivered.

mod common;

use common::receiver::Receiver;
use common::{link, start_gateway, start_sim, Api};
use serde_json::json;

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            _ => 0.0,
        })
        .sum()
}

async fn scrape(api: &Api) -> prometheus_parse::Scrape {
    let text = reqwest::get(format!("{}/metrics", api.base)).await.unwrap().text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic() {
    let sim = start_sim().await;
    let hooks = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let before = scrape(&api).await;

    api.post("/v1/sessions", json!({ "id": "M-A", "webhook": { "url": hooks.url } })).await;
    api.post("/v1/sessions", json!({ "id": "M-B", "webhook": { "url": hooks.url } })).await;
    link(&api, &control, "M-A", "15550100001").await;
    link(&api, &control, "M-B", "15550100002").await;
    let (status, _) = api.post("/v1/sessions/M-A/messages", json!({ "to": "15550100002", "text": "metered" })).await;
    assert_eq!(status, 200);
    hooks.wait_for("the upsert", common::WAIT, |r| r.iter().any(|x| x.json["event"] == "messages.upsert")).await;

    let after = scrape(&api).await;
    let moved = |name: &str, label: Option<(&str, &str)>| sample(&after, name, label) - sample(&before, name, label);
    assert_eq!(sample(&after, "wagate_sessions", Some(("state", "connected"))), 2.0);
    assert!(moved("wagate_pairings_total", None) >= 2.0);
    assert!(moved("wagate_reconnects_total", Some(("reason", "restart_required"))) >= 2.0, "the 515s");
    assert!(moved("wagate_messages_sent_total", Some(("type", "text"))) >= 1.0);
    assert!(moved("wagate_messages_received_total", Some(("type", "text"))) >= 1.0);
    assert!(moved("wagate_send_seconds", None) >= 1.0, "a send latency was observed");
    assert!(moved("wagate_webhook_deliveries_total", Some(("result", "delivered"))) >= 4.0);
    assert!(moved("wagate_webhook_seconds", None) >= 4.0);
    assert!(moved("wagate_webhook_delivery_seconds", None) >= 4.0, "each delivery's wait was observed");
    assert!(sample(&after, "wagate_process_resident_memory_bytes", None) > 1_000_000.0);
    assert!(after.samples.iter().any(|s| s.metric == "wagate_webhook_outbox_pending"));
    gateway.stop().await;
    sim.stop().await;
}
