//! Webhook bodies in the form of Meta's WhatsApp Cloud API, for sessions exposed as a
//! Cloud API phone number (`PUT /v1/sessions/{id}/cloud-api`, docs/cloud-api.md). Made from
//! the same events and the same durable outbox as the native and compat bodies: one
//! received message or one status per request (Cloud API clients read only the first).
//!
//! Also here: the ids the Cloud API face hands out for messages (`wamid.…`) and received
//! files, which encode what they name, so they map back without a table.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::store::Store;

/// How long a numbered reply still answers an interactive message.
pub const INTERACTIVE_WINDOW_MS: u64 = 24 * 3600 * 1000;

const SEPARATOR: char = '\u{1f}';

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn unb64(text: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}

/// The `wamid` of a message: its chat, its sender (empty: this session) and its id. Device
/// parts are dropped (receipts name the device that sent them), so every report of one
/// message has the same `wamid`.
pub fn wamid(chat: &str, sender: &str, id: &str) -> String {
    let sender = if sender.is_empty() { String::new() } else { crate::engine::non_device(sender) };
    let chat = crate::engine::non_device(chat);
    format!("wamid.{}", b64(&format!("{chat}{SEPARATOR}{sender}{SEPARATOR}{id}")))
}

/// What a `wamid` names: (chat, sender (empty: this session), id).
pub fn parse_wamid(wamid: &str) -> Option<(String, String, String)> {
    let decoded = unb64(wamid.strip_prefix("wamid.")?)?;
    let mut parts = decoded.split(SEPARATOR);
    let (chat, sender, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || chat.is_empty() || id.is_empty() {
        return None;
    }
    Some((chat.to_string(), sender.to_string(), id.to_string()))
}

/// The media id of a received message's file.
pub fn received_media_id(session: &str, message_id: &str) -> String {
    format!("r{}", b64(&format!("{session}{SEPARATOR}{message_id}")))
}

/// (session, message id) of a received file's media id.
pub fn parse_received_media_id(media_id: &str) -> Option<(String, String)> {
    let decoded = unb64(media_id.strip_prefix('r')?)?;
    let (session, message) = decoded.split_once(SEPARATOR)?;
    (!session.is_empty() && !message.is_empty()).then(|| (session.to_string(), message.to_string()))
}

/// A phone-number JID's digits; for a LID (whose number is unknown) its digits.
fn wa_id_of(jid: &str) -> String {
    jid.split('@').next().unwrap_or_default().split(':').next().unwrap_or_default().to_string()
}

/// The Cloud body of an event, or `None` when the Cloud API has no such thing or it is
/// left out (other events, group messages, own messages, status broadcasts, edits,
/// statuses of messages not sent through the Cloud API).
pub fn body(store: &Store, session: &str, event: &str, data: &Value) -> Option<Value> {
    let number = store.cloud_number_of_session(session).ok()??;
    let display = store.session(session).ok()??.me.and_then(|me| me.phone).unwrap_or_default();
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": display, "phone_number_id": number.phone_number_id },
    });
    match event {
        "messages.upsert" => {
            let (contact, message) = message(store, session, &display, number.include_all, data)?;
            value["contacts"] = json!([contact]);
            value["messages"] = json!([message]);
        }
        "message.status" => value["statuses"] = json!([status(store, session, data)?]),
        _ => return None,
    }
    Some(json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": number.waba_id, "changes": [{ "field": "messages", "value": value }] }],
    }))
}

fn status(store: &Store, session: &str, data: &Value) -> Option<Value> {
    let id = data["id"].as_str()?;
    let recipient = store.cloud_sent_to(session, id).ok()??;
    let word = match data["status"].as_str()? {
        "sent" => "sent",
        "delivered" => "delivered",
        "read" | "played" => "read",
        "failed" => "failed",
        _ => return None,
    };
    let chat = data["chat"].as_str().unwrap_or_default();
    let seconds = data["timestamp_ms"].as_u64().unwrap_or(0) / 1000;
    let mut status = json!({
        "id": wamid(chat, "", id),
        "status": word,
        "timestamp": seconds.to_string(),
        "recipient_id": recipient,
    });
    if word == "failed" {
        status["errors"] = json!([{
            "code": 131000,
            "title": "Something went wrong",
            "message": "Something went wrong",
            "error_data": { "details": "the linked-device session could not send the message (see GET /v1/sessions/{id}/messages/{message_id})" },
        }]);
    }
    Some(status)
}

/// The `contacts` entry and the message of a received message.
fn message(store: &Store, session: &str, own: &str, include_all: bool, data: &Value) -> Option<(Value, Value)> {
    let kind = data["type"].as_str()?;
    let chat = data["chat"].as_str()?;
    let left_out = data["from_me"] == true
        || data["is_group"] == true
        || chat.ends_with("@broadcast")
        || matches!(kind, "edit" | "revoke" | "poll" | "unknown");
    if left_out && !include_all {
        return None;
    }
    let sender = data["sender"].as_str()?;
    let wa_id = data["sender_phone"].as_str().map(str::to_string).unwrap_or_else(|| wa_id_of(sender));
    let id = data["id"].as_str()?;
    let contact = json!({ "profile": { "name": data["push_name"].as_str().unwrap_or_default() }, "wa_id": wa_id });
    let mut message = json!({
        "from": wa_id,
        "id": wamid(chat, sender, id),
        "timestamp": data["timestamp"].as_i64().unwrap_or(0).to_string(),
    });
    let text = data["text"].as_str();
    let quoted = data["quoted_id"].as_str().map(|quoted| quoted_ref(store, session, own, chat, sender, &wa_id, quoted));
    let media = &data["media"];
    let media_part = |with_caption: bool| {
        let mut part = Map::new();
        if with_caption {
            if let Some(caption) = text {
                part.insert("caption".into(), json!(caption));
            }
        }
        part.insert("mime_type".into(), media["mimetype"].clone());
        let sha256 = media["sha256"].as_str().and_then(|h| hex::decode(h).ok());
        part.insert(
            "sha256".into(),
            json!(sha256.map(|s| base64::engine::general_purpose::STANDARD.encode(s)).unwrap_or_default()),
        );
        part.insert("id".into(), json!(received_media_id(session, id)));
        Value::Object(part)
    };
    let (cloud_kind, part) = match kind {
        "text" => match interactive_reply(store, session, &wa_id, text.unwrap_or_default()) {
            Some(reply) => ("interactive", reply),
            None => ("text", json!({ "body": text.unwrap_or_default() })),
        },
        "image" | "video" => (kind, media_part(true)),
        "document" => {
            let mut part = media_part(true);
            part["filename"] = media["filename"].clone();
            ("document", part)
        }
        "audio" | "voice" => {
            let mut part = media_part(false);
            part["voice"] = json!(kind == "voice");
            ("audio", part)
        }
        "sticker" => {
            let mut part = media_part(false);
            part["animated"] = json!(false);
            ("sticker", part)
        }
        "location" => {
            let location = &data["location"];
            let mut part = json!({ "latitude": location["latitude"], "longitude": location["longitude"] });
            for field in ["name", "address"] {
                if let Some(text) = location[field].as_str() {
                    part[field] = json!(text);
                }
            }
            ("location", part)
        }
        "contact" => ("contacts", json!([contact_card(&data["contact"])])),
        "reaction" => {
            let (_, target) = quoted.clone()?;
            let mut part = json!({ "message_id": target });
            // Meta leaves the emoji out when a reaction is removed.
            if let Some(emoji) = data["reaction"].as_str().filter(|e| !e.is_empty()) {
                part["emoji"] = json!(emoji);
            }
            ("reaction", part)
        }
        _ => ("unsupported", json!({ "type": kind })),
    };
    message["type"] = json!(cloud_kind);
    if cloud_kind == "unsupported" {
        message["errors"] = json!([{
            "code": 131051,
            "title": "Message type unknown",
            "message": "Message type unknown",
            "error_data": { "details": format!("wagate does not map '{kind}' messages to the Cloud API") },
        }]);
    } else {
        message[cloud_kind] = part;
    }
    if kind != "reaction" {
        if let Some((from, id)) = quoted {
            message["context"] = json!({ "from": from, "id": id });
        }
    }
    Some((contact, message))
}

/// Who wrote a quoted message and its `wamid`, as the client saw them earlier.
fn quoted_ref(
    store: &Store,
    session: &str,
    own: &str,
    chat: &str,
    sender: &str,
    sender_wa_id: &str,
    quoted: &str,
) -> (String, String) {
    if let Ok(Some(sent)) = store.sent_message(session, quoted) {
        return (own.to_string(), wamid(&sent.chat, "", quoted));
    }
    if let Ok(Some(received)) = store.received_message(session, quoted) {
        return (wa_id_of(&received.sender), wamid(&received.chat, &received.sender, quoted));
    }
    // Not known here (older than what is kept): taken to be the sender's own.
    (sender_wa_id.to_string(), wamid(chat, sender, quoted))
}

/// A numbered answer to the interactive message last sent to this contact, within 24 h.
fn interactive_reply(store: &Store, session: &str, wa_id: &str, text: &str) -> Option<Value> {
    let number: usize = text.trim().trim_end_matches('.').parse().ok()?;
    let sent = store.cloud_interactive(session, wa_id).ok()??;
    if crate::webhook::now_ms().saturating_sub(sent.sent_ms) > INTERACTIVE_WINDOW_MS {
        return None;
    }
    let options: Vec<Value> = serde_json::from_str(&sent.options).ok()?;
    let chosen = options.get(number.checked_sub(1)?)?;
    let (kind, mut reply) = match sent.kind.as_str() {
        "list" => ("list_reply", json!({ "id": chosen["id"], "title": chosen["title"] })),
        _ => ("button_reply", json!({ "id": chosen["id"], "title": chosen["title"] })),
    };
    if let Some(description) = chosen["description"].as_str() {
        reply["description"] = json!(description);
    }
    Some(json!({ "type": kind, kind: reply }))
}

/// A vCard as the Cloud API's contact object: the name and the numbers (`waid` gives
/// `wa_id`).
fn contact_card(contact: &Value) -> Value {
    let name = contact["display_name"].as_str().unwrap_or_default();
    let vcard = contact["vcard"].as_str().unwrap_or_default();
    let mut phones = Vec::new();
    for line in vcard.lines() {
        let Some((property, value)) = line.split_once(':') else { continue };
        if !property.to_ascii_uppercase().starts_with("TEL") {
            continue;
        }
        let mut phone = json!({ "phone": value.trim(), "type": "CELL" });
        if let Some(waid) = property.split(';').find_map(|p| p.strip_prefix("waid=")) {
            phone["wa_id"] = json!(waid);
        }
        phones.push(phone);
    }
    json!({ "name": { "formatted_name": name, "first_name": name }, "phones": phones })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_back() {
        let id = wamid("1555@s.whatsapp.net", "", "3EB0AB");
        assert!(id.starts_with("wamid."));
        assert_eq!(parse_wamid(&id), Some(("1555@s.whatsapp.net".into(), String::new(), "3EB0AB".into())));
        assert_eq!(parse_wamid("wamid.???"), None);
        assert_eq!(parse_wamid("nope"), None);
        let media = received_media_id("WA-Acme", "ABC");
        assert_eq!(parse_received_media_id(&media), Some(("WA-Acme".into(), "ABC".into())));
        assert_eq!(parse_received_media_id("123456"), None);
    }

    /// Groups, own messages, status broadcasts and edits are left out unless asked for;
    /// statuses only of messages sent through the Cloud API.
    #[tokio::test]
    async fn what_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_session("A", None).unwrap();
        let me = crate::engine::Me { phone: Some("15550001111".into()), ..Default::default() };
        store.set_me("A", Some(&me)).unwrap();
        let mut number = crate::store::cloud::CloudNumber {
            session: "A".into(),
            phone_number_id: "1".into(),
            waba_id: "2".into(),
            app_id: "3".into(),
            token_sha256: vec![0],
            include_all: false,
            rate_per_minute: 20,
            created_ms: 0,
        };
        store.set_cloud_number(number.clone()).await.unwrap();
        let text = json!({ "id": "M1", "chat": "1555@s.whatsapp.net", "sender": "1555@s.whatsapp.net",
            "sender_phone": "1555", "push_name": "Ann", "timestamp": 1700000000, "type": "text", "text": "hi",
            "is_group": false, "from_me": false });
        let shown = body(&store, "A", "messages.upsert", &text).unwrap();
        assert_eq!(shown["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"], "hi");
        assert_eq!(shown["entry"][0]["changes"][0]["value"]["metadata"]["display_phone_number"], "15550001111");
        let mut group = text.clone();
        group["is_group"] = json!(true);
        group["chat"] = json!("120363@g.us");
        let mut broadcast = text.clone();
        broadcast["chat"] = json!("status@broadcast");
        let mut edit = text.clone();
        edit["type"] = json!("edit");
        let mut own = text.clone();
        own["from_me"] = json!(true);
        for left_out in [&group, &broadcast, &edit, &own] {
            assert!(body(&store, "A", "messages.upsert", left_out).is_none(), "{left_out}");
        }
        number.include_all = true;
        store.set_cloud_number(number).await.unwrap();
        assert!(body(&store, "A", "messages.upsert", &group).is_some(), "the flag includes them");
        let status = json!({ "id": "S1", "chat": "1555@s.whatsapp.net", "status": "delivered", "timestamp_ms": 1700000000000u64 });
        assert!(body(&store, "A", "message.status", &status).is_none(), "not sent through the Cloud API");
        store.note_cloud_send("A", "S1", "1555", 1).await.unwrap();
        let shown = body(&store, "A", "message.status", &status).unwrap();
        assert_eq!(
            shown["entry"][0]["changes"][0]["value"]["statuses"][0],
            json!({ "id": wamid("1555@s.whatsapp.net", "", "S1"), "status": "delivered", "timestamp": "1700000000", "recipient_id": "1555" })
        );
        let failed =
            json!({ "id": "S1", "chat": "1555@s.whatsapp.net", "status": "failed", "timestamp_ms": 1700000001000u64 });
        let shown = body(&store, "A", "message.status", &failed).unwrap();
        let status = &shown["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!((&status["status"], &status["errors"][0]["code"]), (&json!("failed"), &json!(131000)));
        let queued = json!({ "id": "S1", "chat": "1555@s.whatsapp.net", "status": "queued", "timestamp_ms": 1 });
        assert!(body(&store, "A", "message.status", &queued).is_none(), "the Cloud API has no queued status");
        // A numbered answer to a list within 24 h is a list reply; other texts stay texts.
        let rows =
            json!([{ "id": "r1", "title": "Monday", "description": "9-12" }, { "id": "r2", "title": "Tuesday" }]);
        store.set_cloud_interactive("A", "1555", "list", rows.to_string(), crate::webhook::now_ms()).await.unwrap();
        let mut answer = text.clone();
        answer["text"] = json!("1");
        let shown = body(&store, "A", "messages.upsert", &answer).unwrap();
        assert_eq!(
            shown["entry"][0]["changes"][0]["value"]["messages"][0]["interactive"],
            json!({ "type": "list_reply", "list_reply": { "id": "r1", "title": "Monday", "description": "9-12" } })
        );
        answer["text"] = json!("3");
        let shown = body(&store, "A", "messages.upsert", &answer).unwrap();
        assert_eq!(shown["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"], "3", "no third option");
        assert!(body(&store, "A", "connection.update", &json!({})).is_none());
        assert!(body(&store, "B", "messages.upsert", &text).is_none(), "a session that is no Cloud number");
    }

    #[test]
    fn contact_cards_list_their_numbers() {
        let card = json!({ "display_name": "Ann", "vcard": "BEGIN:VCARD\nFN:Ann\nTEL;type=CELL;waid=15551234567:+15551234567\nEND:VCARD" });
        assert_eq!(
            contact_card(&card),
            json!({ "name": { "formatted_name": "Ann", "first_name": "Ann" },
                    "phones": [{ "phone": "+15551234567", "type": "CELL", "wa_id": "15551234567" }] })
        );
    }
}
