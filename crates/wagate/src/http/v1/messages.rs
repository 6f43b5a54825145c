//! `/v1/sessions/{id}/messages`: send, and the latest state of what was sent.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error::{ApiError, JsonBody};
use crate::http::AppState;
use crate::session::SessionError;
use crate::store::SentMessage;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions/{id}/messages", post(send))
        .route("/v1/sessions/{id}/messages/{message_id}", get(show))
        .route("/v1/sessions/{id}/contacts/check", post(check_contacts))
}

/// At most this many numbers per check.
const MAX_CHECK: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    phones: Vec<String>,
}

async fn check_contacts(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<CheckRequest>,
) -> Result<Json<Value>, ApiError> {
    if request.phones.is_empty() || request.phones.len() > MAX_CHECK {
        return Err(ApiError::bad_request(format!("give 1 to {MAX_CHECK} phone numbers")));
    }
    let phones = request
        .phones
        .iter()
        .map(|p| {
            super::sessions::phone_digits(p).ok_or_else(|| {
                ApiError::bad_request(format!("'{p}' is not a phone number (7 to 15 digits with country code)"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = state.manager.check_numbers(&id, &phones).await?;
    Ok(Json(json!({ "results": results })))
}

/// Message types the API knows; all but `text` arrive with the media and rich-message work.
const PLANNED_TYPES: [&str; 8] = ["document", "image", "video", "audio", "location", "contact", "reaction", "reply_to"];
/// WhatsApp refuses texts longer than this.
const MAX_TEXT: usize = 65_536;

#[derive(Deserialize)]
struct SendRequest {
    to: String,
    text: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// The JID for `to`: a JID as given, a group id, or a phone number in any common format
/// (`+91 98765-43210`).
pub fn recipient_jid(to: &str) -> Result<String, ApiError> {
    let to = to.trim();
    if to.contains('@') {
        return match to.split_once('@') {
            Some((user, server)) if !user.is_empty() && !server.is_empty() && !to.contains(' ') => Ok(to.to_string()),
            _ => Err(ApiError::bad_request(format!("'{to}' is not a valid JID"))),
        };
    }
    let compact: String = to.chars().filter(|c| !matches!(c, ' ' | '+' | '(' | ')' | '.')).collect();
    // Old-style group ids: <creator phone>-<creation time>.
    if let Some((creator, created)) = compact.split_once('-') {
        if creator.len() >= 10
            && created.len() >= 9
            && !created.contains('-')
            && (creator.to_string() + created).bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(format!("{compact}@g.us"));
        }
    }
    let digits: String = compact.chars().filter(|c| *c != '-').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!("'{to}' is neither a phone number, a JID nor a group id")));
    }
    match digits.len() {
        7..=15 => Ok(format!("{digits}@s.whatsapp.net")),
        16.. => Ok(format!("{digits}@g.us")),
        _ => Err(ApiError::bad_request(format!("'{to}' is too short for a phone number (include the country code)"))),
    }
}

async fn send(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<SendRequest>,
) -> Result<Json<Value>, ApiError> {
    if let Some(kind) = request.other.keys().find(|k| PLANNED_TYPES.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("message type '{kind}' is not supported yet; send 'text'")));
    }
    if let Some(unknown) = request.other.keys().next() {
        return Err(ApiError::bad_request(format!("unknown field '{unknown}'")));
    }
    let text = request.text.ok_or_else(|| ApiError::bad_request("nothing to send: give 'text'"))?;
    if text.is_empty() || text.len() > MAX_TEXT {
        return Err(ApiError::bad_request(format!("text must be 1 to {MAX_TEXT} bytes")));
    }
    let to = recipient_jid(&request.to)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?;
    if key.as_deref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::bad_request("Idempotency-Key must be 1 to 200 characters"));
    }
    let sent = state.manager.send_text(&id, &to, &text, key.as_deref()).await?;
    Ok(Json(json!({ "id": sent.id, "status": "sent", "timestamp": sent.created_ms, "to": sent.chat })))
}

async fn show(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<Json<SentMessage>, ApiError> {
    state.manager.get(&id).ok_or(SessionError::NotFound)?;
    let message = state
        .manager
        .store()
        .sent_message(&id, &message_id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    message
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no message with that id was sent by this session"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_in_common_formats() {
        assert_eq!(recipient_jid("+91 98765-43210").unwrap(), "919876543210@s.whatsapp.net");
        assert_eq!(recipient_jid("15551234567").unwrap(), "15551234567@s.whatsapp.net");
        assert_eq!(recipient_jid("15551234567@s.whatsapp.net").unwrap(), "15551234567@s.whatsapp.net");
        assert_eq!(recipient_jid("120363025246125486").unwrap(), "120363025246125486@g.us");
        assert_eq!(recipient_jid("15551234567-1612345678").unwrap(), "15551234567-1612345678@g.us");
        assert!(recipient_jid("hello").is_err());
        assert!(recipient_jid("123").is_err());
        assert!(recipient_jid("@x").is_err());
    }
}
