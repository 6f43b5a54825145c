//! One `Idempotency-Key`, one message: a caller who hangs up mid-send, or a gateway killed
//! right after WhatsApp acknowledged the message, never leaves the key stuck and never
//! makes the recipient see the message twice.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::{free_port, link, start_gateway, start_sim, Api, GatewayProcess};
use serde_json::{json, Value};

/// Texts with `text` that `receiver` got as `messages.upsert`.
fn upserts_of(receiver: &Receiver, text: &str) -> Vec<Value> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.json["event"] == "messages.upsert" && r.json["data"]["text"] == text)
        .map(|r| r.json["data"].clone())
        .collect()
}

/// Sends `text` without a key and waits until `receiver` has it: everything sent before
/// it has arrived by then (a session's messages arrive in order).
async fn barrier(api: &Api, session: &str, to: &str, receiver: &Receiver, text: &str) {
    let (status, body) = api.post(&format!("/v1/sessions/{session}/messages"), json!({ "to": to, "text": text })).await;
    assert_eq!(status, 200, "{body}");
    receiver
        .wait_for(text, common::WAIT, |r| {
            r.iter().any(|x| x.json["event"] == "messages.upsert" && x.json["data"]["text"] == text)
        })
        .await;
}

async fn keyed_send(base: &str, key: &str, text: &str, timeout: Option<Duration>) -> Result<(u16, Value), String> {
    let mut client = reqwest::Client::builder();
    if let Some(timeout) = timeout {
        client = client.timeout(timeout);
    }
    let answer = client
        .build()
        .unwrap()
        .post(format!("{base}/v1/sessions/A/messages"))
        .header("Idempotency-Key", key)
        .json(&json!({ "to": "15558000002", "text": text }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    Ok((status, answer.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_hangs_up_mid_send_gets_the_real_outcome_on_retry() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let hooks_b = Receiver::start().await;
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw_a = start_gateway(&sim, data_a.path()).await;
    let gw_b = start_gateway(&sim, data_b.path()).await;
    let (api_a, api_b) = (Api::gateway(gw_a.addr), Api::gateway(gw_b.addr));
    api_b.post("/v1/sessions", json!({ "id": "B", "webhook": { "url": hooks_b.url } })).await;
    let jid_a = link(&api_a, &control, "A", "15558000001").await;
    link(&api_b, &control, "B", "15558000002").await;
    // Signal sessions are set up before the fault, so the send needs nothing but its ack.
    barrier(&api_a, "A", "15558000002", &hooks_b, "warm-up").await;

    // The server acts on nothing from A for a while: the send waits for its ack, and the
    // caller gives up long before.
    let (status, body) = control.post("/control/fault", json!({ "jid": jid_a, "kind": "stall", "seconds": 2 })).await;
    assert_eq!(status, 200, "{body}");
    let base = format!("http://{}", gw_a.addr);
    let dropped = keyed_send(&base, "invoice-7", "pay me once", Some(Duration::from_millis(300))).await;
    assert!(dropped.is_err(), "the first call must time out: {dropped:?}");

    // The retry waits for the send that is still under way and answers its outcome.
    let (status, first) = keyed_send(&base, "invoice-7", "pay me once", None).await.unwrap();
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "sent", "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let (status, again) = keyed_send(&base, "invoice-7", "pay me once", None).await.unwrap();
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())), "the same message: {again}");

    barrier(&api_a, "A", "15558000002", &hooks_b, "after the invoice").await;
    let arrived = upserts_of(&hooks_b, "pay me once");
    assert_eq!(arrived.len(), 1, "sent once: {arrived:?}");
    assert_eq!(arrived[0]["id"], id.as_str());
    gw_a.stop().await;
    gw_b.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_right_after_the_server_ack_leaves_the_message_sent_once() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let hooks_b = Receiver::start().await;
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let gateway_a = GatewayProcess::spawn(&sim, data_a.path(), port);
    gateway_a.ready().await;
    let gw_b = start_gateway(&sim, data_b.path()).await;
    let api_b = Api::gateway(gw_b.addr);
    api_b.post("/v1/sessions", json!({ "id": "B", "webhook": { "url": hooks_b.url } })).await;
    let jid_a = link(&gateway_a.api, &control, "A", "15558000011").await;
    link(&api_b, &control, "B", "15558000002").await;
    barrier(&gateway_a.api, "A", "15558000002", &hooks_b, "warm-up").await;

    let (status, body) = control.post("/control/fault", json!({ "jid": jid_a, "kind": "stall", "seconds": 1 })).await;
    assert_eq!(status, 200, "{body}");
    let base = gateway_a.api.base.clone();
    let call = tokio::spawn(async move { keyed_send(&base, "invoice-8", "kill me once", None).await });
    // The recipient has it the moment the server acks the sender: kill the sender then,
    // between the ack and its answer (or just after it).
    hooks_b
        .wait_for("the message at the recipient", common::WAIT, |r| {
            r.iter().any(|x| x.json["event"] == "messages.upsert" && x.json["data"]["text"] == "kill me once")
        })
        .await;
    gateway_a.kill_9();
    let answered_before = call.await.unwrap().ok().filter(|(status, _)| *status == 200);

    let gateway_a = GatewayProcess::spawn(&sim, data_a.path(), port);
    gateway_a.ready().await;
    gateway_a.api.wait_state("A", "connected").await;
    let (status, retried) = keyed_send(&gateway_a.api.base, "invoice-8", "kill me once", None).await.unwrap();
    assert_eq!(status, 200, "{retried}");
    let id = retried["id"].as_str().unwrap().to_string();
    if let Some((_, before)) = &answered_before {
        assert_eq!(before["id"], id.as_str(), "the answer before the kill named the same message");
    }
    let delivered = hooks_b.received().into_iter().find(|r| r.json["data"]["text"] == "kill me once").unwrap();
    assert_eq!(delivered.json["data"]["id"], id.as_str(), "the key names the message WhatsApp took");

    barrier(&gateway_a.api, "A", "15558000002", &hooks_b, "after the kill").await;
    let arrived = upserts_of(&hooks_b, "kill me once");
    assert_eq!(arrived.len(), 1, "the recipient saw it once: {arrived:?}");
    // Known as sent (or further: the recipient's delivery receipt may have come in time).
    // Whether that receipt survives the kill is the simulator's matter: it writes a receipt
    // to a dying connection once and does not redeliver it, unlike WhatsApp.
    let (status, shown) = gateway_a.api.get(&format!("/v1/sessions/A/messages/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert!(matches!(shown["status"].as_str(), Some("sent" | "delivered" | "read")), "{shown}");
    gateway_a.kill_9();
    gw_b.stop().await;
    sim.stop().await;
}
