//! `POST /{version}/{phone_number_id}/messages`: Cloud API messages sent by the native send
//! path (idempotency, the outgoing queue, statuses), and `{"status": "read"}`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::render::{render, HeaderMedia};
use super::{json_body, number_for, Caller, GraphError, GraphResult};
use crate::engine::{Contact, Content, Location, MediaKind, MediaUpload, MessageRef, Outgoing};
use crate::http::media_input::FileInput;
use crate::http::AppState;
use crate::session::SessionError;
use crate::store::cloud::CloudNumber;
use crate::webhook::cloud::{parse_wamid, wamid};

/// WhatsApp refuses texts longer than this.
const MAX_TEXT: usize = 4096;

/// The sends of the last minute, per session.
static RECENT_SENDS: LazyLock<Mutex<HashMap<String, VecDeque<Instant>>>> = LazyLock::new(Default::default);

/// Counts a send against the session's rate; refuses it (Graph code 130429) when the
/// last minute holds `rate_per_minute` already.
fn take_turn(store: &crate::store::Store, number: &CloudNumber) -> Result<(), GraphError> {
    let mut recent = RECENT_SENDS.lock().unwrap_or_else(|p| p.into_inner());
    // Per data directory too: tests run several gateways in one process.
    let sends = recent.entry(format!("{}\n{}", store.data_dir().display(), number.session)).or_default();
    let now = Instant::now();
    while sends.front().is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60)) {
        sends.pop_front();
    }
    if sends.len() >= number.rate_per_minute as usize {
        return Err(GraphError::new(
            StatusCode::TOO_MANY_REQUESTS,
            130429,
            "Rate limit hit",
            format!(
                "this number sends at most {} messages a minute through the Cloud API (rate_per_minute of \
                 PUT /v1/sessions/{{id}}/cloud-api), which protects it from being banned; try again shortly",
                number.rate_per_minute
            ),
        ));
    }
    sends.push_back(now);
    Ok(())
}

fn text_field<'a>(object: &'a Value, field: &str, what: &str) -> Result<&'a str, GraphError> {
    object[field]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| GraphError::invalid(format!("(#100) The parameter {what}.{field} is required.")))
}

pub async fn send(
    state: &Arc<AppState>,
    caller: &Caller,
    number_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> GraphResult {
    let number = number_for(state, caller, number_id)?;
    let request = json_body(body).await?;
    if request["messaging_product"] != "whatsapp" {
        return Err(GraphError::invalid(
            "(#100) The parameter messaging_product is required and must be \"whatsapp\".",
        ));
    }
    if request["status"] == "read" {
        return mark_read(state, &number, &request).await;
    }
    if request["recipient_type"].as_str().is_some_and(|t| t != "individual") {
        return Err(GraphError::unsupported("only recipient_type \"individual\" is supported (no groups)"));
    }
    let to = request["to"].as_str().ok_or_else(|| GraphError::invalid("(#100) The parameter to is required."))?;
    let wa_id = crate::http::v1::phone_digits(to)
        .ok_or_else(|| GraphError::invalid(format!("(#100) '{to}' is not a phone number with country code")))?;
    let jid = format!("{wa_id}@s.whatsapp.net");
    let kind = request["type"].as_str().unwrap_or("text");
    let (content, interactive) = content(state, &number, kind, &request, &jid).await?;
    let reply_to = match request["context"]["message_id"].as_str() {
        Some(quoted) => Some(message_ref(state, &number, quoted, &jid)?),
        None => None,
    };
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| GraphError::invalid("Idempotency-Key must be printable ASCII"))?
        .filter(|k| !k.is_empty() && k.len() <= 200);
    take_turn(state.manager.store(), &number)?;
    // Noted before it goes: its statuses become Cloud webhooks from the first one on.
    let message_id = crate::engine::new_message_id();
    let store = state.manager.store();
    store.note_cloud_send(&number.session, &message_id, &wa_id, crate::webhook::now_ms()).await?;
    let outgoing = Outgoing { content, reply_to };
    let sent = state.manager.send_as(&number.session, &jid, outgoing, key.as_deref(), true, Some(message_id)).await?;
    if let Some((kind, options)) = interactive {
        store
            .set_cloud_interactive(&number.session, &wa_id, kind, options.to_string(), crate::webhook::now_ms())
            .await?;
    }
    let mut message = json!({ "id": wamid(&sent.chat, "", &sent.id) });
    if kind == "template" {
        message["message_status"] = json!("accepted");
    }
    let answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": wa_id }],
        "messages": [message],
    });
    Ok(Json(answer).into_response())
}

/// `{"messaging_product": "whatsapp", "status": "read", "message_id": "wamid..."}`.
async fn mark_read(state: &AppState, number: &CloudNumber, request: &Value) -> GraphResult {
    let given = text_field(request, "message_id", "read")?;
    let (chat, sender, id) = parse_wamid(given)
        .ok_or_else(|| GraphError::invalid(format!("(#100) '{given}' is not a message id of this number")))?;
    if sender.is_empty() {
        return Err(GraphError::invalid(
            "(#100) message_id names a message this number sent; only received ones are read",
        ));
    }
    let group_sender = chat.ends_with("@g.us").then_some(sender.as_str());
    state.manager.mark_read(&number.session, &chat, group_sender, &id).await?;
    Ok(Json(json!({ "success": true })).into_response())
}

/// The message a `wamid` names, for a reply or a reaction, in the chat `to`.
fn message_ref(state: &AppState, number: &CloudNumber, given: &str, to: &str) -> Result<MessageRef, GraphError> {
    let (chat, sender, id) = parse_wamid(given)
        .ok_or_else(|| GraphError::invalid(format!("(#100) '{given}' is not a message id of this number")))?;
    let found = match state.manager.message_ref(&number.session, &id) {
        Ok(found) => found,
        Err(SessionError::UnknownMessage(_)) => {
            MessageRef { id, chat: chat.clone(), sender: (!sender.is_empty()).then_some(sender), text: None }
        }
        Err(e) => return Err(e.into()),
    };
    let phone = |jid: &str| crate::engine::phone_of_jid(jid);
    if let (Some(a), Some(b)) = (phone(&found.chat), phone(to)) {
        if a != b && found.chat.ends_with("@s.whatsapp.net") {
            return Err(GraphError::invalid(format!("(#100) message {given} is in another chat")));
        }
    }
    Ok(found)
}

type Interactive = Option<(&'static str, Value)>;

/// The message's content, from the object named by its `type`.
async fn content(
    state: &AppState,
    number: &CloudNumber,
    kind: &str,
    request: &Value,
    to: &str,
) -> Result<(Content, Interactive), GraphError> {
    let object = &request[kind];
    let given = object.is_object() || (kind == "contacts" && object.is_array());
    if !given {
        return Err(GraphError::invalid(format!("(#100) The parameter {kind} is required for type \"{kind}\".")));
    }
    let content = match kind {
        "text" => {
            let body = text_field(object, "body", "text")?;
            if body.len() > MAX_TEXT {
                return Err(GraphError::invalid(format!("(#100) text.body is longer than {MAX_TEXT} characters")));
            }
            Content::Text(body.to_string())
        }
        "image" | "document" | "video" | "audio" | "sticker" => {
            let kind = media_kind(kind).expect("a media type");
            Content::Media(media(state, number, kind, object, None).await?)
        }
        "reaction" => {
            let target = message_ref(state, number, text_field(object, "message_id", "reaction")?, to)?;
            let emoji = object["emoji"].as_str().unwrap_or_default().to_string();
            if emoji.chars().count() > 10 {
                return Err(GraphError::invalid("(#100) reaction.emoji must be one emoji (or empty to remove it)"));
            }
            Content::Reaction { target, emoji }
        }
        "location" => {
            let coordinate = |field: &str| {
                object[field].as_f64().or_else(|| object[field].as_str().and_then(|t| t.trim().parse().ok()))
            };
            let (Some(latitude), Some(longitude)) = (coordinate("latitude"), coordinate("longitude")) else {
                return Err(GraphError::invalid("(#100) location.latitude and location.longitude are required"));
            };
            if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
                return Err(GraphError::invalid("(#100) location: latitude must be -90..90 and longitude -180..180"));
            }
            Content::Location(Location {
                latitude,
                longitude,
                name: object["name"].as_str().map(str::to_string),
                address: object["address"].as_str().map(str::to_string),
            })
        }
        "contacts" => Content::Contact(contact(object)?),
        "template" => return Ok((template(state, number, object).await?, None)),
        "interactive" => {
            let (text, kind, options) = interactive(object)?;
            return Ok((Content::Text(text), Some((kind, options))));
        }
        other => {
            return Err(GraphError::unsupported(format!(
                "(#131051) messages of type \"{other}\" are not supported by wagate (a linked device): use text, \
                 image, document, video, audio, sticker, location, contacts, reaction, template or interactive \
                 (button, list)"
            )))
        }
    };
    Ok((content, None))
}

fn media_kind(kind: &str) -> Option<MediaKind> {
    Some(match kind {
        "image" => MediaKind::Image,
        "document" => MediaKind::Document,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        "sticker" => MediaKind::Sticker,
        _ => return None,
    })
}

/// A file by `link` (fetched) or by `id` (uploaded to this number before).
async fn media(
    state: &AppState,
    number: &CloudNumber,
    kind: MediaKind,
    object: &Value,
    caption: Option<String>,
) -> Result<MediaUpload, GraphError> {
    let what = kind.as_str();
    let caption = caption.or_else(|| object["caption"].as_str().map(str::to_string)).filter(|c| !c.is_empty());
    let filename = object["filename"].as_str().map(str::to_string).filter(|f| !f.is_empty());
    let caption = if matches!(kind, MediaKind::Audio | MediaKind::Sticker) { None } else { caption };
    match (object["link"].as_str(), object["id"].as_str()) {
        (Some(link), None) => {
            let input = FileInput { url: Some(link.to_string()), caption, filename, ..Default::default() };
            Ok(input.load(kind).await?)
        }
        (None, Some(id)) => {
            let stored = state.manager.store().cloud_media(id)?.filter(|m| m.session == number.session);
            let stored = stored.ok_or_else(|| {
                GraphError::invalid(format!("(#100) {what}.id '{id}' is not a file uploaded to this phone number id"))
            })?;
            if stored.data.len() > kind.max_bytes() {
                return Err(GraphError::invalid(format!(
                    "(#100) the file is larger than WhatsApp's limit for a {what}"
                )));
            }
            Ok(MediaUpload {
                kind,
                data: stored.data,
                mimetype: stored.mime_type,
                filename: filename.or(stored.filename),
                caption,
                voice: false,
            })
        }
        _ => Err(GraphError::invalid(format!("(#100) give {what}.link or {what}.id (one of them)"))),
    }
}

/// The first contact of `contacts` as a vCard.
fn contact(contacts: &Value) -> Result<Contact, GraphError> {
    let all = contacts.as_array().ok_or_else(|| GraphError::invalid("(#100) contacts must be an array"))?;
    let [card] = all.as_slice() else {
        return Err(GraphError::unsupported("(#131051) wagate sends one contact per message"));
    };
    let name = card["name"]["formatted_name"]
        .as_str()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| GraphError::invalid("(#100) contacts[0].name.formatted_name is required"))?;
    let clean = |t: &str| t.chars().map(|c| if c.is_control() || c == ';' { ' ' } else { c }).collect::<String>();
    let mut vcard = format!("BEGIN:VCARD\nVERSION:3.0\nFN:{}\n", clean(name));
    for phone in card["phones"].as_array().into_iter().flatten() {
        let Some(number) = phone["phone"].as_str() else { continue };
        match phone["wa_id"].as_str().filter(|w| w.bytes().all(|b| b.is_ascii_digit())) {
            Some(wa_id) => vcard.push_str(&format!("TEL;type=CELL;waid={wa_id}:{}\n", clean(number))),
            None => vcard.push_str(&format!("TEL;type=CELL:{}\n", clean(number))),
        }
    }
    for email in card["emails"].as_array().into_iter().flatten() {
        if let Some(address) = email["email"].as_str() {
            vcard.push_str(&format!("EMAIL:{}\n", clean(address)));
        }
    }
    vcard.push_str("END:VCARD");
    Ok(Contact { display_name: name.to_string(), vcard })
}

/// A template message, rendered from the stored template.
async fn template(state: &AppState, number: &CloudNumber, object: &Value) -> Result<Content, GraphError> {
    let name = text_field(object, "name", "template")?;
    let language = object["language"]["code"]
        .as_str()
        .or(object["language"].as_str())
        .ok_or_else(|| GraphError::invalid("(#100) The parameter template.language.code is required."))?;
    let stored = state.manager.store().cloud_template_named(&number.waba_id, name, language)?;
    let stored = stored.ok_or_else(|| {
        GraphError::new(
            StatusCode::NOT_FOUND,
            132001,
            "Template name does not exist in the translation",
            format!("(#132001) Template name does not exist in the translation: template '{name}' in language '{language}' is not one of this account's templates"),
        )
    })?;
    let rendered = render(&stored.components, &object["components"]).map_err(|e| {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            132000,
            "Number of parameters does not match the expected number of params",
            format!("(#132000) {}", e.0),
        )
    })?;
    match rendered.media {
        None => Ok(Content::Text(rendered.text)),
        Some(HeaderMedia { kind, source }) => {
            let caption = Some(rendered.text).filter(|t| !t.is_empty());
            Ok(Content::Media(media(state, number, kind, &source, caption).await?))
        }
    }
}

/// An interactive button or list message as text with numbered options, and the options
/// (`{id, title, description?}`) a numbered reply picks from.
fn interactive(object: &Value) -> Result<(String, &'static str, Value), GraphError> {
    let kind = object["type"].as_str().unwrap_or_default();
    let mut options = Vec::new();
    let mut lines = Vec::new();
    let kind = match kind {
        "button" => {
            for button in object["action"]["buttons"].as_array().into_iter().flatten() {
                let reply = &button["reply"];
                let title = text_field(reply, "title", "interactive.action.buttons[].reply")?;
                options.push(json!({ "id": reply["id"].as_str().unwrap_or(title), "title": title }));
            }
            "button"
        }
        "list" => {
            for section in object["action"]["sections"].as_array().into_iter().flatten() {
                for row in section["rows"].as_array().into_iter().flatten() {
                    let title = text_field(row, "title", "interactive.action.sections[].rows[]")?;
                    let mut option = json!({ "id": row["id"].as_str().unwrap_or(title), "title": title });
                    if let Some(description) = row["description"].as_str() {
                        option["description"] = json!(description);
                    }
                    options.push(option);
                }
            }
            "list"
        }
        other => {
            return Err(GraphError::unsupported(format!(
                "(#131051) interactive messages of type \"{other}\" (flows, products, catalogs, ...) are not \
                 supported by wagate; button and list are sent as text with numbered options"
            )))
        }
    };
    if options.is_empty() {
        return Err(GraphError::invalid(format!("(#100) the interactive {kind} message has no options")));
    }
    if let Some(header) = object["header"]["text"].as_str() {
        lines.push(format!("*{header}*"));
    }
    lines.push(text_field(&object["body"], "text", "interactive.body")?.to_string());
    let numbered: Vec<String> = options
        .iter()
        .enumerate()
        .map(|(n, o)| match o["description"].as_str() {
            Some(description) => format!("{}. {} ({description})", n + 1, o["title"].as_str().unwrap_or_default()),
            None => format!("{}. {}", n + 1, o["title"].as_str().unwrap_or_default()),
        })
        .collect();
    lines.push(numbered.join("\n"));
    if let Some(footer) = object["footer"]["text"].as_str() {
        lines.push(format!("_{footer}_"));
    }
    lines.push("Reply with the number of your choice.".to_string());
    Ok((lines.join("\n\n"), kind, Value::Array(options)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_messages_become_numbered_text() {
        let buttons = json!({
            "type": "button", "body": { "text": "Confirm the order?" },
            "action": { "buttons": [
                { "type": "reply", "reply": { "id": "yes", "title": "Yes" } },
                { "type": "reply", "reply": { "id": "no", "title": "No" } },
            ] },
        });
        let (text, kind, options) = interactive(&buttons).unwrap();
        assert_eq!(text, "Confirm the order?\n\n1. Yes\n2. No\n\nReply with the number of your choice.");
        assert_eq!(kind, "button");
        assert_eq!(options, json!([{ "id": "yes", "title": "Yes" }, { "id": "no", "title": "No" }]));
        assert_eq!(interactive(&json!({ "type": "flow" })).unwrap_err().code, 131051);
    }

    #[test]
    fn contacts_become_vcards() {
        let card =
            json!([{ "name": { "formatted_name": "Ann; B" }, "phones": [{ "phone": "+1 555", "wa_id": "1555" }] }]);
        assert_eq!(
            contact(&card).unwrap().vcard,
            "BEGIN:VCARD\nVERSION:3.0\nFN:Ann  B\nTEL;type=CELL;waid=1555:+1 555\nEND:VCARD"
        );
        assert!(contact(&json!([])).is_err());
    }
}
