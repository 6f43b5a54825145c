//! The ERPNext app's side of COMPAT.md, played against wagate: Connect (with a double
//! clicking user), compat webhooks with the app's token, status, send, check-number,
//! delete.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
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

    // The customer answers the reminder as a WhatsApp reply, then sends a statement: the app
    // hears both, the file itself in base64 as the Node service sent it.
    let (status, _) = api
        .post(
            "/v1/sessions/Customer/messages",
            json!({ "to": "15551119999", "text": "Which one?", "reply_to": sent["messageId"] }),
        )
        .await;
    assert_eq!(status, 200);
    let statement: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&statement);
    let document = json!({ "base64": encoded, "mimetype": "application/pdf", "filename": "statement.pdf" });
    let (status, answer) =
        api.post("/v1/sessions/Customer/messages", json!({ "to": "15551119999", "document": document })).await;
    assert_eq!(status, 200, "{answer}");
    let upserts = erp
        .wait_for("the reply and the statement", common::WAIT, |r| {
            r.iter().filter(|x| x.json["event"] == "messages.upsert").count() >= 3
        })
        .await;
    let messages: Vec<&serde_json::Value> =
        upserts.iter().filter(|x| x.json["event"] == "messages.upsert").map(|x| &x.json["messages"][0]).collect();
    assert_eq!(messages[1]["text"], "Which one?");
    assert_eq!(messages[1]["replyTo"], json!({ "messageId": sent["messageId"], "text": "Invoice ACC-1 is due" }));
    assert_eq!(messages[1]["media"], serde_json::Value::Null);
    assert_eq!(messages[2]["text"], "[Media: document]");
    assert_eq!(messages[2]["media"]["mimetype"], "application/pdf");
    assert_eq!(messages[2]["media"]["filename"], "statement.pdf");
    assert_eq!(messages[2]["media"]["data"], encoded.as_str(), "the file arrives whole, in base64");

    // Contact info: about text and picture from the customer's profile; unknown numbers.
    let profile =
        json!({ "phone": "15552228888", "about": "Accounts payable", "picture_url": "https://pps.example/c.jpg" });
    assert_eq!(control.post("/control/profile", profile).await.0, 200);
    let (status, info) =
        api.post("/sessions/contact-info", json!({ "sessionId": "WA-Acme", "phone": "+1 555 222 8888" })).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info,
        json!({
            "status": "success", "exists": true, "about": "Accounts payable",
            "profilePicture": "https://pps.example/c.jpg", "jid": "15552228888@s.whatsapp.net",
        })
    );
    let (_, native) = api.get("/v1/sessions/WA-Acme/contacts/15552228888").await;
    assert_eq!((native["about"].as_str(), native["exists"].as_bool()), (Some("Accounts payable"), Some(true)));
    let (status, info) =
        api.post("/sessions/contact-info", json!({ "sessionId": "WA-Acme", "phone": "15550001111" })).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info,
        json!({ "status": "success", "exists": false, "about": null, "profilePicture": null, "jid": null })
    );

    // Presence: the customer's device is online; the app hears it once subscribed.
    let (status, answer) =
        api.post("/sessions/subscribe-presence", json!({ "sessionId": "WA-Acme", "phone": "15552228888" })).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("success")), "{answer}");
    let presence = erp
        .wait_for("presence", common::WAIT, |r| r.iter().any(|x| x.json["event"] == "presence.update"))
        .await
        .into_iter()
        .find(|x| x.json["event"] == "presence.update")
        .unwrap();
    assert_eq!(presence.json["from"], "15552228888", "{}", presence.json);
    assert_eq!(presence.json["presence"]["lastKnownPresence"], "available", "{}", presence.json);

    every_bad_request_is_a_400(&api).await;

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

/// Missing or malformed fields: a 400 with `{"error": ...}` from every call, never a 500.
async fn every_bad_request_is_a_400(api: &Api) {
    let pdf = |data: &str| json!({ "data": data, "mimetype": "application/pdf", "filename": "a.pdf" });
    let cases = [
        ("/sessions/start", json!("sessionId")),
        ("/sessions/start", json!({ "sessionId": 5 })),
        ("/sessions/start", json!({ "sessionId": "" })),
        ("/sessions/start", json!({ "sessionId": "WA-Acme", "webhookUrl": "not a url" })),
        ("/sessions/send", json!({})),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "15552228888" })),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "abc", "message": "x" })),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "15552228888", "message": 7 })),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "15552228888", "media": "file" })),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "15552228888", "media": pdf("%%not base64") })),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "15552228888", "media": pdf("") })),
        ("/sessions/send", json!({ "sessionId": "WA-Acme", "receiver": "15552228888", "media": { "data": "YWJj" } })),
        ("/sessions/check-number", json!({ "sessionId": "WA-Acme" })),
        ("/sessions/check-number", json!({ "sessionId": "WA-Acme", "phone": "call me" })),
        ("/sessions/contact-info", json!({})),
        ("/sessions/contact-info", json!({ "phone": "15552228888" })),
        ("/sessions/contact-info", json!({ "sessionId": "WA-Acme", "phone": "12" })),
        ("/sessions/contact-info", json!({ "sessionId": "WA-Acme", "phone": ["15552228888"] })),
        ("/sessions/contact-info", json!({ "sessionId": "nobody", "phone": "15552228888" })),
        ("/sessions/group-metadata", json!({ "sessionId": "WA-Acme" })),
        ("/sessions/group-metadata", json!({ "sessionId": "WA-Acme", "groupId": "not a group" })),
        ("/sessions/group-metadata", json!({ "sessionId": "nobody", "groupId": "120363025246125486" })),
        ("/sessions/subscribe-presence", json!({ "sessionId": "WA-Acme" })),
        ("/sessions/subscribe-presence", json!({ "sessionId": "WA-Acme", "phone": 15552228888u64 })),
        ("/sessions/subscribe-presence", json!({ "sessionId": "nobody", "phone": "15552228888" })),
    ];
    for (path, body) in cases {
        let (status, answer) = api.post(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{path} {body}: {answer}");
    }
}

/// A compat `messages.upsert` waits on disk while its file downloads: one that a crash
/// interrupted (left in `pending_upserts`) is recorded at the session's next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_interrupted_by_a_crash_goes_out_after_the_restart() {
    let sim = start_sim().await;
    let erp = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    let (status, _) = api.post("/sessions/start", json!({ "sessionId": "WA-Crash", "webhookUrl": erp.url })).await;
    assert_eq!(status, 200);
    link(&api, &control, "WA-Crash", "15551117777").await;
    gateway.stop().await;

    // What a crash between a message's arrival and its event's recording leaves behind.
    let store = wagate::store::Store::open(data.path()).unwrap();
    let left = json!({ "id": "LEFT-1", "chat": "15550001111@s.whatsapp.net", "sender": "15550001111@s.whatsapp.net",
        "sender_phone": "15550001111", "timestamp": 1, "type": "text", "text": "left over", "is_group": false,
        "from_me": false, "offline": false });
    store.write_blocking(move |db| wagate::store::add_pending_upsert(db, "WA-Crash", &left, None)).unwrap();
    drop(store);

    let gateway = start_gateway(&sim, data.path()).await;
    let received = erp
        .wait_for("the left-over message", common::WAIT, |r| {
            r.iter().any(|x| x.json["event"] == "messages.upsert" && x.json["messages"][0]["id"] == "LEFT-1")
        })
        .await;
    let upsert = received.iter().find(|x| x.json["event"] == "messages.upsert").unwrap();
    assert_eq!(upsert.json["messages"][0]["text"], "left over", "{}", upsert.json);
    let store = wagate::store::Store::open(data.path()).unwrap();
    assert!(store.pending_upserts("WA-Crash").unwrap().is_empty(), "recorded, so no longer pending");
    gateway.stop().await;
    sim.stop().await;
}
