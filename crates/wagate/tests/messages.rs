//! Messages between two wagate sessions through the simulator's relay: the simulator never
//! decrypts, so a text that arrives proves the Signal sessions interoperate end to end.

mod common;

use base64::Engine as _;
use common::receiver::Receiver;
use common::{link, start_gateway_with, start_sim, Api};
use serde_json::json;

async fn gateway(sim: &wagate_sim::Simulator, data: &std::path::Path) -> wagate::server::Gateway {
    start_gateway_with(common::gateway_config(sim, data)).await
}

fn upserts(receiver: &Receiver) -> Vec<serde_json::Value> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.json["event"] == "messages.upsert")
        .map(|r| r.json["data"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_arrives_as_messages_upsert_and_receipts_become_status() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let (hooks_a, hooks_b) = (Receiver::start().await, Receiver::start().await);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (gw_a, gw_b) = (gateway(&sim, data_a.path()).await, gateway(&sim, data_b.path()).await);
    let (api_a, api_b) = (Api::gateway(gw_a.addr), Api::gateway(gw_b.addr));
    api_a.post("/v1/sessions", json!({ "id": "A", "webhook": { "url": hooks_a.url } })).await;
    api_b.post("/v1/sessions", json!({ "id": "B", "webhook": { "url": hooks_b.url } })).await;
    link(&api_a, &control, "A", "15556000001").await;
    link(&api_b, &control, "B", "15556000002").await;

    let (status, sent) =
        api_a.post("/v1/sessions/A/messages", json!({ "to": "+1 555 600-0002", "text": "hello from A" })).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["status"], "sent");
    let id = sent["id"].as_str().unwrap().to_string();

    hooks_b
        .wait_for("B's messages.upsert", common::WAIT, |r| r.iter().any(|x| x.json["event"] == "messages.upsert"))
        .await;
    let message = upserts(&hooks_b).into_iter().next().unwrap();
    assert_eq!(message["id"], id, "{message}");
    assert_eq!(message["type"], "text");
    assert_eq!(message["text"], "hello from A");
    assert_eq!(message["sender_phone"], "15556000001", "{message}");
    assert_eq!(message["is_group"], false);
    // B answers it; quoting it towards anyone else would leak it into another chat.
    let (status, body) =
        api_b.post("/v1/sessions/B/messages", json!({ "to": "15556000001", "text": "got it", "reply_to": id })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        api_b.post("/v1/sessions/B/messages", json!({ "to": "15556000077", "text": "leak", "reply_to": id })).await;
    assert_eq!(status, 400, "chat {}: {body}", message["chat"]);
    assert!(body["error"].as_str().unwrap().contains("another chat"), "{body}");

    // B's client acknowledges delivery; A learns it as message.status.
    let statuses = hooks_a
        .wait_for("A's delivered status", common::WAIT, |r| {
            r.iter().any(|x| x.json["event"] == "message.status" && x.json["data"]["status"] == "delivered")
        })
        .await;
    let states: Vec<_> = statuses
        .iter()
        .filter(|x| x.json["event"] == "message.status" && x.json["data"]["id"] == id)
        .map(|x| x.json["data"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["sent", "delivered"], "in order, never backwards");
    let (status, shown) = api_a.get(&format!("/v1/sessions/A/messages/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["status"], "delivered");

    // The same Idempotency-Key never sends twice.
    let send_keyed = || async {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/sessions/A/messages", api_a.base))
            .header("Idempotency-Key", "invoice-42")
            .json(&json!({ "to": "15556000002", "text": "invoice 42" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().await.unwrap()
    };
    let (first, second) = (send_keyed().await, send_keyed().await);
    assert_eq!(first["id"], second["id"]);
    hooks_b
        .wait_for("the keyed message", common::WAIT, |r| r.iter().any(|x| x.json["data"]["text"] == "invoice 42"))
        .await;
    let copies = upserts(&hooks_b).iter().filter(|m| m["text"] == "invoice 42").count();
    assert_eq!(copies, 1);

    // Which numbers are on WhatsApp.
    let (status, checked) =
        api_a.post("/v1/sessions/A/contacts/check", json!({ "phones": ["+1 555 600 0002", "15550009999"] })).await;
    assert_eq!(status, 200, "{checked}");
    let results = checked["results"].as_array().unwrap();
    assert_eq!(results[0]["phone"], "15556000002");
    assert_eq!(results[0]["exists"], true, "{checked}");
    assert_eq!(results[0]["jid"], "15556000002@s.whatsapp.net");
    assert_eq!(results[1]["exists"], false, "{checked}");
    let (status, _) = api_a.post("/v1/sessions/A/contacts/check", json!({ "phones": [] })).await;
    assert_eq!(status, 400);
    gw_a.stop().await;
    gw_b.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_receiver_is_offline_arrive_once_in_order() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let hooks_b = Receiver::start().await;
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw_a = gateway(&sim, data_a.path()).await;
    let api_a = Api::gateway(gw_a.addr);
    let gw_b = gateway(&sim, data_b.path()).await;
    let api_b = Api::gateway(gw_b.addr);
    api_b.post("/v1/sessions", json!({ "id": "B", "webhook": { "url": hooks_b.url } })).await;
    link(&api_a, &control, "A", "15556000011").await;
    link(&api_b, &control, "B", "15556000012").await;
    gw_b.stop().await;

    for n in 1..=3 {
        let (status, sent) =
            api_a.post("/v1/sessions/A/messages", json!({ "to": "15556000012", "text": format!("offline {n}") })).await;
        assert_eq!(status, 200, "{sent}");
    }
    let gw_b = gateway(&sim, data_b.path()).await;
    hooks_b
        .wait_for("three messages", common::WAIT, |r| {
            r.iter().filter(|x| x.json["event"] == "messages.upsert").count() >= 3
        })
        .await;
    let texts: Vec<_> = upserts(&hooks_b).iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        texts,
        ["offline 1", "offline 2", "offline 3"],
        "{:#?}",
        hooks_b.received().iter().map(|x| x.json.clone()).collect::<Vec<_>>()
    );
    assert!(upserts(&hooks_b).iter().all(|m| m["offline"] == true), "flagged as from the offline queue");
    gw_a.stop().await;
    gw_b.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_needs_a_connected_session_and_a_valid_request() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gw = gateway(&sim, data.path()).await;
    let api = Api::gateway(gw.addr);
    api.post("/v1/sessions", json!({ "id": "Q" })).await;
    api.wait_state("Q", "awaiting_scan").await;
    let (status, body) = api.post("/v1/sessions/Q/messages", json!({ "to": "15556000099", "text": "hi" })).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("awaiting_scan"), "{body}");
    let two_megabytes = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 2 * 1024 * 1024]);
    for (request, what, says) in [
        (json!({ "to": "nonsense", "text": "hi" }), "bad recipient", "neither a phone number"),
        (json!({ "to": "15556000099" }), "nothing to send", "exactly one of"),
        (json!({ "to": "15556000099", "text": "hi", "image": { "base64": "aGk=" } }), "two contents", "exactly one of"),
        (json!({ "to": "15556000099", "text": "" }), "empty text", "text must be"),
        (json!({ "to": "15556000099", "poll": {} }), "unknown type", "unknown field `poll`"),
        (json!({ "to": "15556000099", "sticker": {} }), "no file", "give 'url' or 'base64'"),
        (json!({ "to": "15556000099", "image": { "base64": "%%%" } }), "bad base64", "not valid base64"),
        (json!({ "to": "15556000099", "sticker": { "base64": two_megabytes } }), "oversized", "limit of 1 MB"),
        (json!({ "to": "15556000099", "document": { "url": "ftp://x/y" } }), "bad url", "only http"),
        (
            json!({ "to": "15556000099", "document": { "url": "http://127.0.0.1:9/x.pdf" } }),
            "unfetchable",
            "could not fetch",
        ),
        (
            json!({ "to": "15556000099", "image": { "base64": "aGk=", "voice": true } }),
            "voice image",
            "only applies to audio",
        ),
        (
            json!({ "to": "15556000099", "location": { "latitude": 91.0, "longitude": 0.0 } }),
            "bad location",
            "latitude",
        ),
        (
            json!({ "to": "15556000099", "contact": { "name": "Ann" } }),
            "contact without number",
            "give 'phone' or 'vcard'",
        ),
        (
            json!({ "to": "15556000099", "reaction": { "message_id": "NOPE", "emoji": "x" } }),
            "unknown target",
            "no message 'NOPE'",
        ),
        (json!({ "to": "15556000099", "text": "hi", "reply_to": "NOPE" }), "unknown reply", "no message 'NOPE'"),
    ] {
        let (status, body) = api.post("/v1/sessions/Q/messages", request).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{what}: {body}");
    }
    let (status, body) = api.get("/v1/sessions/Q/media/NOPE").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = api.post("/v1/sessions/nope/messages", json!({ "to": "15556000099", "text": "hi" })).await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/v1/sessions/Q/messages/nope").await;
    assert_eq!(status, 404);
    gw.stop().await;
    sim.stop().await;
}

/// While a linked session reconnects (here: its proxy is gone), sends are queued on disk,
/// survive a gateway restart, and go out in order once it is connected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_while_reconnecting_are_queued_and_go_out_in_order() {
    use common::proxies::{Kind, TestProxy};
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let hooks_a = Receiver::start().await;
    let hooks_b = Receiver::start().await;
    let proxy = TestProxy::start(Kind::Socks5, "127.0.0.1:0", None).await;
    let proxy_addr = proxy.addr.to_string();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_a = || {
        let mut config = common::gateway_config(&sim, data_a.path());
        config.proxy = Some(format!("socks5://{proxy_addr}"));
        config
    };
    let gw_a = start_gateway_with(config_a()).await;
    let gw_b = gateway(&sim, data_b.path()).await;
    let (api_a, api_b) = (Api::gateway(gw_a.addr), Api::gateway(gw_b.addr));
    api_a.post("/v1/sessions", json!({ "id": "A", "webhook": { "url": hooks_a.url } })).await;
    api_b.post("/v1/sessions", json!({ "id": "B", "webhook": { "url": hooks_b.url } })).await;
    link(&api_a, &control, "A", "15556000031").await;
    link(&api_b, &control, "B", "15556000032").await;

    proxy.stop();
    api_a.wait_for("/v1/sessions/A", "A reconnecting", |v| v["state"] == "reconnecting").await;
    let mut queued = Vec::new();
    for n in 1..=3 {
        let (status, body) =
            api_a.post("/v1/sessions/A/messages", json!({ "to": "15556000032", "text": format!("queued {n}") })).await;
        assert_eq!(status, 202, "accepted, not sent: {body}");
        assert_eq!(body["status"], "queued");
        queued.push(body["id"].as_str().unwrap().to_string());
    }
    let (status, body) = api_a
        .post("/v1/sessions/A/messages", json!({ "to": "15556000032", "text": "not queued", "queue": false }))
        .await;
    assert_eq!(status, 409, "the caller asked for no queueing: {body}");
    let (_, shown) = api_a.get(&format!("/v1/sessions/A/messages/{}", queued[0])).await;
    assert_eq!(shown["status"], "queued");

    // The queue is on disk: a restart of the gateway keeps it.
    gw_a.stop().await;
    let gw_a = start_gateway_with(config_a()).await;
    let api_a = Api::gateway(gw_a.addr);
    let _proxy = TestProxy::start(Kind::Socks5, &proxy_addr, None).await;
    hooks_b
        .wait_for("the three queued messages", common::WAIT, |r| {
            r.iter().filter(|x| x.json["event"] == "messages.upsert").count() >= 3
        })
        .await;
    let texts: Vec<_> = upserts(&hooks_b).iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, ["queued 1", "queued 2", "queued 3"], "in order, once each");
    let ids: Vec<_> = upserts(&hooks_b).iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, queued, "the ids the API answered are the ids that arrived");
    for id in &queued {
        let shown = api_a
            .wait_for(&format!("/v1/sessions/A/messages/{id}"), "a sent state", |v| {
                matches!(v["status"].as_str(), Some("sent" | "delivered" | "read"))
            })
            .await;
        assert_eq!(shown["id"], id.as_str());
    }
    let statuses: Vec<_> = hooks_a
        .received()
        .iter()
        .filter(|x| x.json["event"] == "message.status" && x.json["data"]["id"] == queued[0].as_str())
        .map(|x| x.json["data"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses.first().map(String::as_str), Some("queued"), "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "sent"), "{statuses:?}");
    gw_a.stop().await;
    gw_b.stop().await;
    sim.stop().await;
}
