//! The ERPNext app's Node service API (COMPAT.md) at the root paths, on the native code
//! paths: same request fields, answer shapes and status words, so the app works
//! unchanged. Calling `/sessions/start` again and again never disturbs a pairing: it only
//! reads the state of the one supervisor that owns the session.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, JsonBody};
use super::qr::png_data_url;
use super::AppState;
use crate::engine::{Content, MediaKind, MediaUpload, Outgoing};
use crate::session::{SessionError, SessionView, StateKind};
use crate::store::{WebhookConfig, WebhookFormat};
use crate::webhook::compat::state_word;

/// `/sessions/start` answers within this (ERPNext's HTTP timeout is 30 s).
const START_WAIT: Duration = Duration::from_secs(20);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(root))
        .route("/sessions/start", post(start))
        .route("/sessions/send", post(send).layer(DefaultBodyLimit::max(super::error::MAX_BODY)))
        .route("/sessions/check-number", post(check_number))
        .route("/sessions/contact-info", post(contact_info))
        .route("/sessions/group-metadata", post(group_metadata))
        .route("/sessions/subscribe-presence", post(subscribe_presence))
        .route("/sessions/{id}/status", get(status))
        .route("/sessions/{id}", get(show).delete(delete))
}

/// The Node service's error shape: a status and `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn from_api(error: ApiError) -> Response {
    error.into_response()
}

async fn root(State(state): State<Arc<AppState>>) -> Json<Value> {
    let active = state.manager.list().iter().filter(|s| s.state == StateKind::Connected).count();
    Json(json!({
        "service": "wagate (WhatsApp gateway, compatible with the whatsapp_integration Node service)",
        "status": "running",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": state.started.elapsed().as_secs(),
        "activeSessions": active,
    }))
}

fn word(view: &SessionView) -> &'static str {
    state_word(view.state.as_str()).unwrap_or("Disconnected")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    session_id: Option<String>,
    webhook_url: Option<String>,
    webhook_token: Option<String>,
}

async fn start(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<StartRequest>) -> Response {
    let Some(id) = request.session_id.filter(|id| !id.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "sessionId is required");
    };
    if let Some(url) = request.webhook_url.filter(|u| !u.is_empty()) {
        if let Err(e) = super::v1::validate_webhook_url(&url) {
            return from_api(e);
        }
        let webhook = WebhookConfig {
            url,
            secret: None,
            events: None,
            token: request.webhook_token.filter(|t| !t.is_empty()),
            format: WebhookFormat::Compat,
        };
        // Recorded before the session starts, so its first events already go there.
        let store = state.manager.store();
        let saved = state
            .manager
            .register(&id, Some(&webhook))
            .map_err(ApiError::from)
            .and_then(|_| store.set_webhook(&id, Some(&webhook)).map_err(ApiError::internal));
        if let Err(e) = saved {
            return from_api(e);
        }
    }
    let subscription = match state.manager.create(&id, None, None).await {
        Ok(_) => state.manager.subscribe(&id),
        Err(e) => return from_api(e.into()),
    };
    let Some((mut view, mut changes)) = subscription else {
        return error(StatusCode::NOT_FOUND, "Session not found");
    };
    // Wait for something to show: a QR code or the connection.
    let deadline = tokio::time::Instant::now() + START_WAIT;
    while !matches!(view.state, StateKind::Connected | StateKind::AwaitingScan) {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Ok(Ok(next)) => view = next,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                view = state.manager.get(&id).unwrap_or(view);
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
    match (view.state, view.qr.as_deref()) {
        (StateKind::Connected, _) => Json(json!({ "status": "Connected" })).into_response(),
        (StateKind::AwaitingScan, Some(qr)) => match png_data_url(qr) {
            Ok(url) => Json(json!({ "qr": url, "status": "QR Scan Required" })).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        _ => Json(json!({ "status": "Initializing", "message": view.detail })).into_response(),
    }
}

async fn status(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.manager.get(&id) {
        Some(view) => Json(json!({ "status": word(&view) })).into_response(),
        None => error(StatusCode::NOT_FOUND, "Session not found"),
    }
}

async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(view) = state.manager.get(&id) else {
        return error(StatusCode::NOT_FOUND, "Session not found");
    };
    let qr = view.qr.as_deref().filter(|_| view.state == StateKind::AwaitingScan).and_then(|qr| png_data_url(qr).ok());
    let has_webhook = state.manager.outbox().endpoint(&id).ok().flatten().is_some();
    Json(json!({ "status": word(&view), "qr": qr, "hasWebhook": has_webhook })).into_response()
}

async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.manager.delete(&id).await {
        Ok(()) => Json(json!({ "status": "logged out" })).into_response(),
        Err(SessionError::NotFound) => error(StatusCode::NOT_FOUND, "Session not found"),
        Err(e) => from_api(e.into()),
    }
}

/// COMPAT.md's receiver rules: strip spaces and `+`; with `@` it is a JID; with `-` or
/// longer than 15 characters a group; otherwise a phone number.
pub fn receiver_jid(receiver: &str) -> String {
    let cleaned: String = receiver.chars().filter(|c| *c != ' ' && *c != '+').collect();
    if cleaned.contains('@') {
        cleaned
    } else if cleaned.contains('-') || cleaned.len() > 15 {
        format!("{cleaned}@g.us")
    } else {
        format!("{cleaned}@s.whatsapp.net")
    }
}

/// A user or group JID with a user part WhatsApp could know: digits (and `-` in old
/// group ids) before the `@`.
fn is_plausible_jid(jid: &str) -> bool {
    let Some((user, server)) = jid.split_once('@') else { return false };
    let user = user.split(':').next().unwrap_or_default();
    let digits = |extra: char| !user.is_empty() && user.chars().all(|c| c.is_ascii_digit() || c == extra);
    match server {
        "s.whatsapp.net" | "lid" => digits('0'),
        "g.us" => digits('-'),
        _ => false,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendRequest {
    session_id: Option<String>,
    receiver: Option<String>,
    message: Option<String>,
    media: Option<CompatMedia>,
}

#[derive(Deserialize)]
struct CompatMedia {
    data: Option<String>,
    mimetype: Option<String>,
    filename: Option<String>,
}

/// COMPAT.md's media rules: the kind follows the MIME type, audio whose file name says
/// `voice_note` is a voice note, and the message is the caption unless it is the file name.
fn media_content(media: CompatMedia, message: Option<String>) -> Result<Content, ApiError> {
    let data = media.data.filter(|d| !d.is_empty()).ok_or_else(|| ApiError::bad_request("media.data is required"))?;
    let mimetype = media
        .mimetype
        .filter(|m| m.contains('/'))
        .ok_or_else(|| ApiError::bad_request("media.mimetype is required"))?;
    let kind = match mimetype.split('/').next().unwrap_or_default() {
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        _ => MediaKind::Document,
    };
    let filename = media.filename.filter(|f| !f.is_empty());
    let voice = kind == MediaKind::Audio && filename.as_deref().is_some_and(|f| f.contains("voice_note"));
    let caption = message.filter(|m| Some(m) != filename.as_ref() && kind != MediaKind::Audio);
    let data = crate::http::media_input::decode_base64(&data, kind.max_bytes(), "media")?;
    if data.is_empty() {
        return Err(ApiError::bad_request("media.data is empty"));
    }
    Ok(Content::Media(MediaUpload { kind, data, mimetype, filename, caption, voice }))
}

async fn send(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<SendRequest>) -> Response {
    let (Some(id), Some(receiver)) = (request.session_id, request.receiver) else {
        return error(StatusCode::BAD_REQUEST, "sessionId and receiver are required");
    };
    let to = receiver_jid(&receiver);
    if !is_plausible_jid(&to) {
        return error(StatusCode::BAD_REQUEST, format!("'{receiver}' is not a phone number, group id or JID"));
    }
    let content = match (request.media, request.message.filter(|m| !m.is_empty())) {
        (Some(media), message) => match media_content(media, message) {
            Ok(content) => content,
            Err(e) => return error(e.status, e.message),
        },
        (None, Some(text)) => Content::Text(text),
        (None, None) => return error(StatusCode::BAD_REQUEST, "message is required"),
    };
    let message = Outgoing { content, reply_to: None };
    // The Node service never queued: a session that is not connected answers 400 as it did.
    match state.manager.send(&id, &to, message, None, false).await {
        Ok(sent) => {
            Json(json!({ "status": "sent", "messageId": sent.id, "timestamp": sent.created_ms / 1000 })).into_response()
        }
        Err(e) => session_failure(e),
    }
}

async fn check_number(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<PhoneRequest>) -> Response {
    let (id, digits) = match session_and_phone(request) {
        Ok(found) => found,
        Err(e) => return from_api(e),
    };
    match state.manager.check_numbers(&id, std::slice::from_ref(&digits)).await {
        Ok(results) => {
            let found = results.into_iter().next();
            Json(json!({
                "status": "success",
                "exists": found.as_ref().is_some_and(|r| r.exists),
                "jid": found.and_then(|r| r.jid),
            }))
            .into_response()
        }
        Err(e) => session_failure(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupRequest {
    session_id: Option<String>,
    group_id: Option<String>,
}

/// One group as the Node service described it: members by phone digits, full JID and
/// Baileys' admin word (`superadmin`, `admin` or null).
async fn group_metadata(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<GroupRequest>) -> Response {
    let GroupRequest { session_id: Some(id), group_id: Some(group_id) } = request else {
        return error(StatusCode::BAD_REQUEST, "sessionId and groupId are required");
    };
    let jid = receiver_jid(&group_id);
    if !jid.ends_with("@g.us") {
        return error(StatusCode::BAD_REQUEST, format!("'{group_id}' is not a group id"));
    }
    match state.manager.group(&id, &jid).await {
        Ok(Some(group)) => {
            let participants: Vec<Value> = group
                .participants
                .iter()
                .map(|p| {
                    let user = p.jid.split('@').next().unwrap_or_default();
                    json!({
                        "id": p.phone.as_deref().unwrap_or(user),
                        "phone": p.phone,
                        "full_id": p.jid,
                        "admin": if p.super_admin { Some("superadmin") } else { p.admin.then_some("admin") },
                    })
                })
                .collect();
            Json(json!({
                "status": "success",
                "metadata": {
                    "id": group.id,
                    "subject": group.subject,
                    "owner": group.owner_phone,
                    "creation": group.creation,
                    "desc": group.description,
                    "size": participants.len(),
                    "participants": participants,
                },
            }))
            .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("the session is not in a group {jid}")),
        Err(e) => session_failure(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhoneRequest {
    session_id: Option<String>,
    phone: Option<String>,
}

/// The session id and the phone digits of a `{sessionId, phone}` request.
fn session_and_phone(request: PhoneRequest) -> Result<(String, String), ApiError> {
    let (Some(id), Some(phone)) = (request.session_id.filter(|i| !i.is_empty()), request.phone) else {
        return Err(ApiError::bad_request("sessionId and phone are required"));
    };
    match super::v1::phone_digits(&phone) {
        Some(digits) => Ok((id, digits)),
        None => Err(ApiError::bad_request(format!("'{phone}' is not a phone number"))),
    }
}

async fn contact_info(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<PhoneRequest>) -> Response {
    let (id, phone) = match session_and_phone(request) {
        Ok(found) => found,
        Err(e) => return from_api(e),
    };
    match state.manager.contact_info(&id, &phone).await {
        Ok(info) => Json(json!({
            "status": "success",
            "exists": info.exists,
            "profilePicture": info.picture_url,
            "about": info.about,
            "jid": info.jid,
        }))
        .into_response(),
        Err(e) => session_failure(e),
    }
}

async fn subscribe_presence(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<PhoneRequest>) -> Response {
    let (id, phone) = match session_and_phone(request) {
        Ok(found) => found,
        Err(e) => return from_api(e),
    };
    let jid = format!("{phone}@s.whatsapp.net");
    match state.manager.subscribe_presence(&id, &jid).await {
        Ok(()) => {
            Json(json!({ "status": "success", "message": format!("Subscribed to presence of {jid}") })).into_response()
        }
        Err(e) => session_failure(e),
    }
}

/// A session call that failed: the Node service's 400 when the session is not there or
/// not connected, else a 500 with the cause.
fn session_failure(e: SessionError) -> Response {
    match e {
        SessionError::NotConnected(_) | SessionError::NotFound => {
            error(StatusCode::BAD_REQUEST, "Session not connected")
        }
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_follow_the_node_service_rules() {
        assert_eq!(receiver_jid("+91 98765 43210"), "919876543210@s.whatsapp.net");
        assert_eq!(receiver_jid("1555@s.whatsapp.net"), "1555@s.whatsapp.net");
        assert_eq!(receiver_jid("1555-1612345678"), "1555-1612345678@g.us");
        assert_eq!(receiver_jid("120363025246125486"), "120363025246125486@g.us");
        assert!(is_plausible_jid(&receiver_jid("+91 98765 43210")));
        assert!(is_plausible_jid("1555-1612345678@g.us"));
        for bad in ["", "abc", "12ab34", "x@example.com", "@s.whatsapp.net"] {
            assert!(!is_plausible_jid(&receiver_jid(bad)), "{bad}");
        }
    }
}
