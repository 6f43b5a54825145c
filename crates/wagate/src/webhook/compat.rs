//! The webhook bodies of the ERPNext app's Node service (COMPAT.md): flattened
//! `{sessionId, event, ...}` with its status words. wagate keeps their shape but maps
//! receipts correctly (server ack -> Sent, delivery -> Delivered, read -> Read).

use serde_json::{json, Map, Value};

/// The compat body for an event, or `None` when the Node service had no such event
/// (intermediate states such as `connecting` or `pairing`).
pub fn body(session: &str, event: &str, data: &Value) -> Option<Value> {
    let fields = match event {
        "connection.update" => connection_update(data)?,
        "messages.upsert" => json!({ "messages": [message(data)] }),
        "message.status" => json!({
            "messageId": data["id"],
            "status": status_word(data["status"].as_str()?)?,
            "timestamp": data["timestamp_ms"],
        }),
        "presence.update" => json!({
            "from": data["phone"],
            "presence": { "lastKnownPresence": data["presence"], "lastSeen": data["last_seen"] },
        }),
        "webhook.test" => data.clone(),
        _ => return None,
    };
    let mut body = Map::new();
    body.insert("sessionId".into(), json!(session));
    body.insert("event".into(), json!(event));
    if let Value::Object(fields) = fields {
        body.extend(fields);
    }
    Some(Value::Object(body))
}

/// The Node service's status strings.
pub fn state_word(state: &str) -> Option<&'static str> {
    match state {
        "awaiting_scan" => Some("QR Scan Required"),
        "connected" => Some("Connected"),
        "connecting" | "pairing" => Some("Connecting"),
        "stopped" | "reconnecting" | "logged_out" | "replaced" | "banned" | "outdated" | "failed" => {
            Some("Disconnected")
        }
        _ => None,
    }
}

fn connection_update(view: &Value) -> Option<Value> {
    let word = state_word(view["state"].as_str()?)?;
    if word == "Connecting" {
        return None;
    }
    let mut fields = json!({ "status": word });
    if word == "Disconnected" {
        fields["error"] = view["detail"].clone();
    }
    if word == "QR Scan Required" {
        if let Some(qr) = view["qr"].as_str() {
            fields["qr"] = json!(qr);
        }
    }
    Some(fields)
}

fn status_word(status: &str) -> Option<&'static str> {
    match status {
        "sent" => Some("Sent"),
        "delivered" => Some("Delivered"),
        "read" | "played" => Some("Read"),
        _ => None,
    }
}

fn message(data: &Value) -> Value {
    let text = match data["text"].as_str() {
        Some(text) => json!(text),
        None => json!(format!("[Media: {}]", data["type"].as_str().unwrap_or("unknown"))),
    };
    json!({
        "id": data["id"],
        "from": data["sender_phone"],
        "text": text,
        "timestamp": data["timestamp"],
        "pushName": data["push_name"],
        "media": media(data),
        "isGroup": data["is_group"],
        "groupId": data["group_id"],
        "groupName": data["group_subject"],
        "replyTo": data["quoted_id"].as_str().map(|id| json!({ "messageId": id, "text": data["quoted_text"] })),
    })
}

/// The file of a media message: its bytes are in `media.data` (base64) when the session
/// downloaded it for this webhook; null, with `media.reason`, when it is too large for this
/// format (`--compat-media-max`) or its download failed.
fn media(data: &Value) -> Value {
    let media = &data["media"];
    if !media.is_object() {
        return Value::Null;
    }
    let mut shown = json!({ "data": media["data"], "mimetype": media["mimetype"], "filename": media["filename"] });
    if media["data"].is_null() {
        shown["reason"] = media["reason"].as_str().unwrap_or("the file was not downloaded").into();
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_service_shapes() {
        let qr = body("WA-Acme", "connection.update", &json!({ "state": "awaiting_scan", "qr": "2@x" })).unwrap();
        assert_eq!(
            qr,
            json!({ "sessionId": "WA-Acme", "event": "connection.update", "status": "QR Scan Required", "qr": "2@x" })
        );
        assert!(body("WA-Acme", "connection.update", &json!({ "state": "pairing" })).is_none());
        let down =
            body("WA-Acme", "connection.update", &json!({ "state": "logged_out", "detail": "unlinked" })).unwrap();
        assert_eq!(down["status"], "Disconnected");
        assert_eq!(down["error"], "unlinked");
        let read = body("s", "message.status", &json!({ "id": "M1", "status": "read", "timestamp_ms": 5 })).unwrap();
        assert_eq!(
            read,
            json!({ "sessionId": "s", "event": "message.status", "messageId": "M1", "status": "Read", "timestamp": 5 })
        );
        let upsert = body(
            "s",
            "messages.upsert",
            &json!({ "id": "M2", "sender_phone": "1555", "type": "image", "timestamp": 7, "is_group": false }),
        )
        .unwrap();
        assert_eq!(upsert["messages"][0]["text"], "[Media: image]");
        assert_eq!(upsert["messages"][0]["from"], "1555");
        let in_group =
            json!({ "id": "M3", "text": "hi", "is_group": true, "group_id": "1203", "group_subject": "Team" });
        let upsert = body("s", "messages.upsert", &in_group).unwrap();
        assert_eq!(upsert["messages"][0]["groupId"], "1203");
        assert_eq!(upsert["messages"][0]["groupName"], "Team");
        assert_eq!(upsert["messages"][0]["media"], Value::Null);
        assert_eq!(upsert["messages"][0]["replyTo"], Value::Null);
    }

    #[test]
    fn files_replies_and_presence() {
        let document = json!({
            "id": "M4", "sender_phone": "1555", "type": "document", "text": "Invoice",
            "quoted_id": "Q1", "quoted_text": "Please pay",
            "media": { "mimetype": "application/pdf", "filename": "a.pdf", "size": 3, "sha256": "x", "data": "YWJj" },
        });
        let message = &body("s", "messages.upsert", &document).unwrap()["messages"][0];
        assert_eq!(message["media"], json!({ "data": "YWJj", "mimetype": "application/pdf", "filename": "a.pdf" }));
        let too_big = body(
            "s",
            "messages.upsert",
            &json!({ "id": "M4", "type": "document",
                     "media": { "mimetype": "application/pdf", "filename": "b.pdf", "data": null, "reason": "too large" } }),
        )
        .unwrap();
        assert_eq!(
            too_big["messages"][0]["media"],
            json!({ "data": null, "mimetype": "application/pdf", "filename": "b.pdf", "reason": "too large" })
        );
        assert_eq!(message["replyTo"], json!({ "messageId": "Q1", "text": "Please pay" }));
        let presence =
            json!({ "from": "1555@s.whatsapp.net", "phone": "1555", "presence": "composing", "last_seen": null });
        assert_eq!(
            body("s", "presence.update", &presence).unwrap(),
            json!({
                "sessionId": "s", "event": "presence.update", "from": "1555",
                "presence": { "lastKnownPresence": "composing", "lastSeen": null },
            })
        );
    }
}
