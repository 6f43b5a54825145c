//! Webhooks: durable, ordered per session, signed (checked by the `standardwebhooks`
//! package from PyPI), retried, dead-lettered, and independent between sessions.

mod common;

use std::time::Duration;

use common::receiver::{Answer, Receiver};
use common::{free_port, gateway_config, link, start_gateway_with, start_sim, Api, GatewayProcess};
use serde_json::json;

const SECRET: &str = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ==";

/// The webhook as a client sends it (the API never shows secrets back, so this is built by hand).
fn hook(receiver: &Receiver) -> serde_json::Value {
    json!({ "url": receiver.url, "secret": SECRET, "token": "erp-token" })
}

async fn gateway_with_timeout(
    sim: &wagate_sim::Simulator,
    data: &std::path::Path,
    timeout: Duration,
) -> wagate::server::Gateway {
    let mut config = gateway_config(sim, data);
    config.webhooks.timeout = timeout;
    start_gateway_with(config).await
}

/// Verifies captured requests with the reference implementation (Python).
fn verify_with_standardwebhooks(requests: &[common::receiver::Received]) -> Result<(), String> {
    let captured: Vec<_> = requests
        .iter()
        .map(|r| json!({ "body": r.body, "headers": r.headers.iter().cloned().collect::<std::collections::HashMap<_, _>>() }))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&captured).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks import Webhook
webhook = Webhook(sys.argv[2])
for request in json.load(open(sys.argv[1])):
    webhook.verify(request["body"], request["headers"])
print("verified")
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(file.path())
        .arg(SECRET)
        .output()
        .expect("python3 runs");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_signed_as_standard_webhooks_and_carry_the_envelope() {
    let available = std::process::Command::new("python3").args(["-c", "import standardwebhooks"]).status();
    assert!(
        available.is_ok_and(|s| s.success()),
        "the standardwebhooks package is missing for python3: run scripts/test.sh, or pip install -r interop/requirements.txt"
    );
    let sim = start_sim().await;
    let receiver = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway_with_timeout(&sim, data.path(), Duration::from_secs(5)).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let (status, body) = api.post("/v1/sessions", json!({ "id": "WA-Signed", "webhook": hook(&receiver) })).await;
    assert_eq!(status, 201, "{body}");
    // The API never shows the secret back.
    let (_, webhook) = api.get("/v1/sessions/WA-Signed/webhook").await;
    assert_eq!(webhook["has_secret"], true, "{webhook}");
    assert!(webhook.get("secret").is_none(), "{webhook}");

    link(&api, &control, "WA-Signed", "15554000001").await;
    let received = receiver
        .wait_for("the connected event", common::WAIT, |r| r.iter().any(|x| x.json["data"]["state"] == "connected"))
        .await;
    for request in &received {
        assert_eq!(request.header("x-webhook-token"), Some("erp-token"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("webhook-id"), Some(request.id()));
        let envelope = &request.json;
        assert!(envelope["id"].as_str().unwrap().starts_with("evt_"), "{envelope}");
        assert_eq!(envelope["event"], "connection.update");
        assert_eq!(envelope["session"], "WA-Signed");
        assert_eq!(envelope["v"], 1);
        assert!(envelope["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let states: Vec<_> = received.iter().map(|r| r.json["data"]["state"].as_str().unwrap().to_string()).collect();
    let awaiting = states.iter().position(|s| s == "awaiting_scan").expect("awaiting_scan sent");
    let connected = states.iter().position(|s| s == "connected").unwrap();
    assert!(awaiting < connected, "{states:?}");
    assert!(received[awaiting].json["data"]["qr"].is_string(), "the QR travels with awaiting_scan");

    verify_with_standardwebhooks(&received).expect("standardwebhooks accepts every signature");
    let mut tampered = received[0].clone();
    tampered.body = tampered.body.replace("connection.update", "connection.updatX");
    assert!(verify_with_standardwebhooks(&[tampered]).is_err(), "a changed body must not verify");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_every_event_in_order_exactly_once() {
    let sim = start_sim().await;
    let receiver = Receiver::start().await;
    receiver
        .script(vec![Answer::Status(500), Answer::Hang, Answer::TooMany(1), Answer::Status(503)], Answer::Status(200));
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway_with_timeout(&sim, data.path(), Duration::from_secs(1)).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    api.post("/v1/sessions", json!({ "id": "WA-Retry", "webhook": hook(&receiver) })).await;
    link(&api, &control, "WA-Retry", "15554000002").await;

    let wait = Duration::from_secs(60);
    let pending =
        |deliveries: &serde_json::Value| deliveries.as_array().unwrap().iter().any(|d| d["status"] == "pending");
    let deliveries = api
        .wait_for_within("/v1/webhooks/deliveries?session=WA-Retry", "every event delivered", wait, |d| !pending(d))
        .await;
    let mut in_order: Vec<&serde_json::Value> = deliveries.as_array().unwrap().iter().collect();
    in_order.reverse(); // the API lists newest first
    assert!(in_order.len() >= 4, "{deliveries}");
    assert!(in_order.iter().all(|d| d["status"] == "delivered"), "nothing dead-lettered: {deliveries}");
    assert!(in_order[0]["attempts"].as_u64().unwrap() >= 5, "the first event went through every failure: {deliveries}");
    assert_eq!(in_order[0]["last_status"], 200);

    let recorded: Vec<String> = in_order.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(receiver.delivered_ids(), recorded, "each id succeeded once, in the order recorded");
    let first = &recorded[0];
    let attempts_of_first = receiver.received().iter().filter(|r| r.id() == first).count();
    assert_eq!(attempts_of_first, 5, "the same id on every retry");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_delay_another_session() {
    let sim = start_sim().await;
    let (stuck, healthy) = (Receiver::start().await, Receiver::start().await);
    stuck.script(vec![], Answer::Hang);
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway_with_timeout(&sim, data.path(), Duration::from_secs(30)).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    api.post("/v1/sessions", json!({ "id": "WA-Stuck", "webhook": hook(&stuck) })).await;
    stuck.wait_for("the first request to hang", common::WAIT, |r| !r.is_empty()).await;

    api.post("/v1/sessions", json!({ "id": "WA-Fine", "webhook": hook(&healthy) })).await;
    link(&api, &control, "WA-Fine", "15554000003").await;
    healthy
        .wait_for("WA-Fine's connected event", Duration::from_secs(10), |r| {
            r.iter().any(|x| x.json["data"]["state"] == "connected" && x.answered == Some(200))
        })
        .await;
    assert_eq!(stuck.received().len(), 1, "WA-Stuck still waits on its first event, in order");
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_dead_letters_at_once_and_a_retry_delivers_later() {
    let sim = start_sim().await;
    let receiver = Receiver::start().await;
    receiver.script(vec![Answer::Status(404)], Answer::Status(400));
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway_with_timeout(&sim, data.path(), Duration::from_secs(5)).await;
    let api = Api::gateway(gateway.addr);
    api.post("/v1/sessions", json!({ "id": "WA-Dead", "webhook": hook(&receiver) })).await;
    let dead = api
        .wait_for("/v1/webhooks/deliveries?session=WA-Dead&status=dead", "two dead events", |d| {
            d.as_array().is_some_and(|list| list.len() >= 2)
        })
        .await;
    let oldest = dead.as_array().unwrap().last().unwrap().clone();
    assert_eq!(oldest["attempts"], 1, "no retry for a 404: {oldest}");
    assert_eq!(oldest["last_status"], 404, "{oldest}");
    assert!(oldest["last_error"].as_str().unwrap().contains("404"), "{oldest}");

    receiver.script(vec![], Answer::Status(200));
    let id = oldest["id"].as_str().unwrap();
    let (status, answer) = api.post(&format!("/v1/webhooks/deliveries/{id}/retry"), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    receiver
        .wait_for("the retried event", common::WAIT, |r| r.iter().any(|x| x.id() == id && x.answered == Some(200)))
        .await;
    // The gateway records the outcome after the receiver's answer reaches it.
    api.wait_for("/v1/webhooks/deliveries?session=WA-Dead&status=delivered", "the retried event delivered", |after| {
        after.as_array().is_some_and(|list| list.iter().any(|d| d["id"] == id))
    })
    .await;
    let (status, _) = api.post(&format!("/v1/webhooks/deliveries/{id}/retry"), json!({})).await;
    assert_eq!(status, 409, "a delivered event is not sent again");
    let (status, _) = api.post("/v1/webhooks/deliveries/evt_nope/retry", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/v1/webhooks/deliveries?status=lost").await;
    assert_eq!(status, 400);
    gateway.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_settings_and_the_test_event() {
    let sim = start_sim().await;
    let receiver = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = gateway_with_timeout(&sim, data.path(), Duration::from_secs(5)).await;
    let api = Api::gateway(gateway.addr);
    api.post("/v1/sessions", json!({ "id": "WA-Set" })).await;
    let (status, _) = api.post("/v1/sessions/WA-Set/webhook/test", json!({})).await;
    assert_eq!(status, 409, "no webhook yet");
    let (status, body) =
        api.call(reqwest::Method::PUT, "/v1/sessions/WA-Set/webhook", Some(json!({ "url": "mailto:x" }))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/v1/sessions/WA-Set/webhook",
            Some(json!({ "url": receiver.url, "secret": SECRET, "events": ["webhook.test"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["has_secret"], true);
    let (status, outcome) = api.post("/v1/sessions/WA-Set/webhook/test", json!({})).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["delivered"], true, "{outcome}");
    assert_eq!(outcome["status"], 200, "{outcome}");
    let received = receiver.received();
    let test = received.iter().find(|r| r.json["event"] == "webhook.test").expect("the test event arrived");
    verify_with_standardwebhooks(std::slice::from_ref(test)).unwrap();
    // The filter keeps connection updates away from this receiver.
    assert!(received.iter().all(|r| r.json["event"] == "webhook.test"), "{:?}", received.len());
    let (status, _) =
        api.call(reqwest::Method::PUT, "/v1/sessions/nope/webhook", Some(json!({ "url": receiver.url }))).await;
    assert_eq!(status, 404);
    gateway.stop().await;
    sim.stop().await;
}

/// kill -9 with events pending and one in flight: after the restart every event arrives;
/// only the one in flight may arrive twice, with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_kill_9() {
    let sim = start_sim().await;
    let receiver = Receiver::start().await;
    receiver.script(vec![], Answer::Hang);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = ["--webhook-url", receiver.url.as_str(), "--webhook-secret", SECRET, "--webhook-timeout", "60"];
    let gateway = GatewayProcess::spawn_with(&sim, data.path(), port, &args);
    gateway.ready().await;
    let control = Api::sim(&sim);
    link(&gateway.api, &control, "WA-Kill", "15554000004").await;
    let in_flight = receiver.wait_for("the first request", common::WAIT, |r| !r.is_empty()).await[0].id().to_string();
    let (_, before) = gateway.api.get("/v1/webhooks/deliveries?session=WA-Kill").await;
    let recorded: Vec<String> =
        before.as_array().unwrap().iter().rev().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert!(recorded.len() >= 4, "connecting, awaiting_scan, pairing, connected: {before}");
    assert_eq!(recorded[0], in_flight);
    gateway.kill_9();

    receiver.script(vec![], Answer::Status(200));
    let gateway = GatewayProcess::spawn_with(&sim, data.path(), port, &args);
    gateway.ready().await;
    let received = receiver
        .wait_for("every recorded event", common::WAIT, |r| {
            recorded.iter().all(|id| r.iter().any(|x| x.id() == id && x.answered == Some(200)))
        })
        .await;
    for id in &recorded {
        let copies = received.iter().filter(|r| r.id() == id).count();
        let expected = if *id == in_flight { 2 } else { 1 };
        assert_eq!(copies, expected, "event {id}");
    }
    let delivered = receiver.delivered_ids();
    assert_eq!(&delivered[..recorded.len()], &recorded[..], "in order");
    gateway.kill_9();
    sim.stop().await;
}

/// Bursts from several sessions at once, each session's worker running dry and starting
/// again many times: without a single failure, every event arrives exactly once, in order
/// per session (deliveries are recorded without waiting for the disk; a worker that starts
/// again must not send what its predecessor delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_failures_every_event_is_delivered_exactly_once_in_order() {
    use std::sync::Arc;
    use wagate::store::{Store, WebhookConfig};
    use wagate::webhook::{Dispatcher, Outbox, WebhookSettings};

    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let webhook = WebhookConfig {
        url: receiver.url.clone(),
        secret: None,
        events: None,
        token: None,
        format: Default::default(),
    };
    let sessions: [&'static str; 4] = ["s0", "s1", "s2", "s3"];
    for session in sessions {
        store.create_session(session, Some(&webhook)).unwrap();
    }
    let outbox = Outbox::new(store.clone(), WebhookSettings::default());
    let dispatcher = Dispatcher::spawn(outbox.clone()).unwrap();
    let per_session = 150;
    let producers: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for n in 0..per_session {
                    outbox.record(session, "connection.update", &json!({ "n": n })).await.unwrap();
                    if n % 7 == 0 {
                        // Let the worker catch up and run dry now and then.
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    let total = sessions.len() * per_session;
    receiver.wait_for("every event", common::WAIT, |r| r.len() >= total).await;
    let idle = tokio::time::Instant::now() + common::WAIT;
    while store.pending_count().unwrap() > 0 {
        assert!(tokio::time::Instant::now() < idle, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dispatcher.stop().await;
    let received = receiver.received();
    let mut ids: Vec<&str> = received.iter().map(|r| r.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(received.len(), total, "{} posts for {} distinct events", received.len(), ids.len());
    for session in sessions {
        let order: Vec<i64> = received
            .iter()
            .filter(|r| r.json["session"] == session)
            .map(|r| r.json["data"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(order, (0..per_session as i64).collect::<Vec<_>>(), "session {session} in order");
    }
}
