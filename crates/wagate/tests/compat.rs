//! The ERPNext app's side of COMPAT.md, played against wagate: Connect (with a double
//! clicking user), compat webhooks with the app's token, status, send, check-number,
//! delete.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::receiver::Receiver;
use common::{link, start_gateway, start_sim, Api};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erpnext_app_links_sends_and_hears_back() {
    let sim = start_sim().await;
    let erp = Receiver::start().await;
    let native_hooks = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));

    let (status, root) = api.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(root["status"], "running");
    let (status, body) = api.post("/sessions/start", json!({ "webhookUrl": erp.url })).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "sessionId is required");

    // Connect: the first call answers with the QR as a PNG data URL.
    let start = json!({ "sessionId": "WA-Acme", "webhookUrl": erp.url, "webhookToken": "tok-123" });
    let (status, answer) = api.post("/sessions/start", start.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "QR Scan Required", "{answer}");
    assert!(answer["qr"].as_str().unwrap().starts_with("data:image/png;base64,"));

    // A second tab / double click keeps calling start every 200 ms during the pairing.
    let done = Arc::new(AtomicBool::new(false));
    let clicker = {
        let (api, start, done) = (api.clone(), start.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let (status, answer) = api.post("/sessions/start", start.clone()).await;
                assert_eq!(status, 200, "{answer}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let qr = api.get("/v1/sessions/WA-Acme").await.1["qr"].clone();
    let (status, _) = control.post("/control/scan", json!({ "qr": qr, "phone": "15551119999" })).await;
    assert_eq!(status, 200);
    api.wait_for("/sessions/WA-Acme/status", "Connected", |v| v["status"] == "Connected").await;
    done.store(true, Ordering::SeqCst);
    clicker.await.unwrap();
    let (_, stats) = control.get("/control/stats").await;
    assert_eq!(stats["totals"]["connections"], 2, "one pairing and one login socket: {stats}");
    let (_, answer) = api.post("/sessions/start", start.clone()).await;
    assert_eq!(answer, json!({ "status": "Connected" }));
    let (_, session) = api.get("/sessions/WA-Acme").await;
    assert_eq!(session["status"], "Connected");
    assert_eq!(session["hasWebhook"], true);
    let (_, health) = api.get("/health").await;
    assert_eq!(health["sessions"]["connected"], 1, "{health}");

    // The app's webhooks: its token, its headers, its words, in order.
    let received =
        erp.wait_for("Connected webhook", common::WAIT, |r| r.iter().any(|x| x.json["status"] == "Connected")).await;
    for request in &received {
        assert_eq!(request.header("x-webhook-token"), Some("tok-123"));
        assert_eq!(request.header("x-requested-with"), Some("XMLHttpRequest"));
        assert_eq!(request.json["sessionId"], "WA-Acme");
    }
    let statuses: Vec<_> = received
        .iter()
        .filter(|r| r.json["event"] == "connection.update")
        .map(|r| r.json["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses.first().map(String::as_str), Some("QR Scan Required"), "{statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("Connected"), "{statuses:?}");

    // A customer (a native session) gets an invoice reminder and answers.
    api.post("/v1/sessions", json!({ "id": "Customer", "webhook": { "url": native_hooks.url } })).await;
    link(&api, &control, "Customer", "15552228888").await;
    let (status, sent) = api
        .post(
            "/sessions/send",
            json!({ "sessionId": "WA-Acme", "receiver": "+1 555 222 8888", "message": "Invoice ACC-1 is due" }),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["status"], "sent");
    native_hooks
        .wait_for("the reminder", common::WAIT, |r| r.iter().any(|x| x.json["data"]["text"] == "Invoice ACC-1 is due"))
        .await;
    erp.wait_for("Delivered", common::WAIT, |r| {
        r.iter().any(|x| {
            x.json["event"] == "message.status"
                && x.json["messageId"] == sent["messageId"]
                && x.json["status"] == "Delivered"
        })
    })
    .await;
    let (status, _) =
        api.post("/v1/sessions/Customer/messages", json!({ "to": "15551119999", "text": "Paid, thanks" })).await;
    assert_eq!(status, 200);
    let reply = erp
        .wait_for("the reply", common::WAIT, |r| r.iter().any(|x| x.json["event"] == "messages.upsert"))
        .await
        .into_iter()
        .find(|x| x.json["event"] == "messages.upsert")
        .unwrap();
    let message = &reply.json["messages"][0];
    assert_eq!(message["from"], "15552228888", "{message}");
    assert_eq!(message["text"], "Paid, thanks");
    assert_eq!(message["isGroup"], false);

    let (status, check) =
        api.post("/sessions/check-number", json!({ "sessionId": "WA-Acme", "phone": "15552228888" })).await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check, json!({ "status": "success", "exists": true, "jid": "15552228888@s.whatsapp.net" }));

    let (status, body) =
        api.post("/sessions/send", json!({ "sessionId": "nobody", "receiver": "1555", "message": "x" })).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("Session not connected")));
    let (status, body) = api.get("/sessions/nobody/status").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("Session not found")));
    let (status, body) = api.delete("/sessions/WA-Acme").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("logged out")));
    gateway.stop().await;
    sim.stop().await;
}
