//! The ERPNext app's Node service API (COMPAT.md) at the root paths, on the native code
//! paths: same request fields, answer shapes and status words, so the app works
//! unchanged. Calling `/sessions/start` again and again never disturbs a pairing: it only
//! reads the state of the one supervisor that owns the session.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, JsonBody};
use super::qr::png_data_url;
use super::AppState;
use crate::engine::{Content, MediaKind, MediaUpload, Outgoing};
use crate::session::{SessionError, SessionView, StateKind};
use crate::store::{WebhookConfig, WebhookFormat};
use crate::webhook::compat::state_word;

/// `/sessions/start` answers within this (ERPNext's HTTP timeout is 30 s).
const START_WAIT: Duration = Duration::from_secs(20);

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(start))
        .routes(routes!(send))
        .layer(DefaultBodyLimit::max(super::error::MAX_BODY))
        .routes(routes!(check_number))
        .routes(routes!(contact_info))
        .routes(routes!(group_metadata))
        .routes(routes!(subscribe_presence))
        .routes(routes!(status))
        .routes(routes!(show, delete))
}

/// The Node service's error shape: a status and `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

fn from_api(error: ApiError) -> Response {
    error.into_response()
}

fn answer(body: impl Serialize) -> Response {
    Json(body).into_response()
}

/// `GET /` of the Node service: what runs, and how many sessions are connected.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::Service)]
struct Service {
    service: &'static str,
    /// Always `running`.
    status: &'static str,
    version: &'static str,
    /// Seconds since the gateway started.
    uptime: u64,
    active_sessions: usize,
}

/// What runs here (the Node service answered this at its root).
#[utoipa::path(get, path = "/", tag = "compat", responses((status = 200, description = "The service", body = Service)))]
async fn root(State(state): State<Arc<AppState>>) -> Json<Service> {
    let active = state.manager.list().iter().filter(|s| s.state == StateKind::Connected).count();
    Json(Service {
        service: "wagate (WhatsApp gateway, compatible with the whatsapp_integration Node service)",
        status: "running",
        version: env!("CARGO_PKG_VERSION"),
        uptime: state.started.elapsed().as_secs(),
        active_sessions: active,
    })
}

/// A session's state in the Node service's words.
#[derive(Serialize, ToSchema)]
#[schema(as = compat::Status)]
struct Status {
    /// `Connected`, `QR Scan Required`, `Initializing`, `Disconnected` or `Logged Out`.
    status: &'static str,
}

fn word(view: &SessionView) -> &'static str {
    state_word(view.state.as_str()).unwrap_or("Disconnected")
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::StartRequest)]
struct StartRequest {
    /// Required.
    session_id: Option<String>,
    /// Where the session's events go, in the Node service's bodies.
    webhook_url: Option<String>,
    /// Sent as `X-Webhook-Token` with each event.
    webhook_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = compat::StartAnswer)]
struct StartAnswer {
    /// `Connected`, `QR Scan Required` or `Initializing`.
    status: &'static str,
    /// With `QR Scan Required`: the QR code as a PNG `data:` URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    qr: Option<String>,
    /// With `Initializing`: what the session is doing, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Creates the session unless it exists and answers within 20 s: connected, or the QR
/// code to scan. Calling it again never disturbs a pairing.
#[utoipa::path(post, path = "/sessions/start", tag = "compat", request_body = StartRequest, responses(
    (status = 200, description = "Connected, a QR code to scan, or still initializing", body = StartAnswer),
    (status = 400, description = "No sessionId, an invalid one, or a webhookUrl that is no http(s) URL", body = ErrorBody),
    (status = 503, description = "No room for another session", body = ErrorBody),
))]
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
        (StateKind::Connected, _) => answer(StartAnswer { status: "Connected", qr: None, message: None }),
        (StateKind::AwaitingScan, Some(qr)) => match png_data_url(qr) {
            Ok(url) => answer(StartAnswer { status: "QR Scan Required", qr: Some(url), message: None }),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        _ => answer(StartAnswer { status: "Initializing", qr: None, message: Some(view.detail) }),
    }
}

/// The session's state in the Node service's words.
#[utoipa::path(get, path = "/sessions/{id}/status", tag = "compat",
    params(("id" = String, Path, description = "The session's id")), responses(
        (status = 200, description = "The state", body = Status),
        (status = 404, description = "No such session", body = ErrorBody),
))]
async fn status(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.manager.get(&id) {
        Some(view) => answer(Status { status: word(&view) }),
        None => error(StatusCode::NOT_FOUND, "Session not found"),
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::Session)]
struct Session {
    /// As `/sessions/{id}/status` says it.
    status: &'static str,
    /// While a scan is awaited: the QR code as a PNG `data:` URL.
    qr: Option<String>,
    /// Whether its events go to a webhook (its own or the default one).
    has_webhook: bool,
}

/// The session's state, QR code and whether it has a webhook.
#[utoipa::path(get, path = "/sessions/{id}", tag = "compat",
    params(("id" = String, Path, description = "The session's id")), responses(
        (status = 200, description = "The session", body = Session),
        (status = 404, description = "No such session", body = ErrorBody),
))]
async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(view) = state.manager.get(&id) else {
        return error(StatusCode::NOT_FOUND, "Session not found");
    };
    let qr = view.qr.as_deref().filter(|_| view.state == StateKind::AwaitingScan).and_then(|qr| png_data_url(qr).ok());
    let has_webhook = state.manager.outbox().endpoint(&id).ok().flatten().is_some();
    answer(Session { status: word(&view), qr, has_webhook })
}

/// Logs the session out and deletes it.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "compat",
    params(("id" = String, Path, description = "The session's id")), responses(
        (status = 200, description = "Deleted (`{\"status\": \"logged out\"}`)", body = Status),
        (status = 404, description = "No such session", body = ErrorBody),
))]
async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.manager.delete(&id).await {
        Ok(()) => answer(Status { status: "logged out" }),
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

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::SendRequest)]
struct SendRequest {
    /// Required.
    session_id: Option<String>,
    /// Required: a phone number, a group id or a JID.
    receiver: Option<String>,
    /// The text; with media, the caption (unless it is the file name).
    message: Option<String>,
    media: Option<CompatMedia>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = compat::Media)]
struct CompatMedia {
    /// The file, base64.
    data: Option<String>,
    /// Decides the kind: `image/*`, `video/*`, `audio/*` (a voice note when the file name
    /// says `voice_note`), else a document.
    mimetype: Option<String>,
    filename: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::Sent)]
struct Sent {
    /// Always `sent`.
    status: &'static str,
    message_id: String,
    /// Seconds since the epoch.
    timestamp: u64,
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

/// Sends a text or a file, at once (nothing is queued: a session that is not connected
/// answers 400).
#[utoipa::path(post, path = "/sessions/send", tag = "compat", request_body = SendRequest, responses(
    (status = 200, description = "Sent", body = Sent),
    (status = 400, description = "A field missing or invalid, or the session is not connected", body = ErrorBody),
    (status = 413, description = "The body is larger than 140 MB", body = ErrorBody),
    (status = 500, description = "WhatsApp refused the message", body = ErrorBody),
))]
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
        Ok(sent) => answer(Sent { status: "sent", message_id: sent.id, timestamp: sent.created_ms / 1000 }),
        Err(e) => session_failure(e),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = compat::NumberCheck)]
struct NumberCheck {
    /// Always `success`.
    status: &'static str,
    exists: bool,
    jid: Option<String>,
}

/// Whether a phone number is on WhatsApp.
#[utoipa::path(post, path = "/sessions/check-number", tag = "compat", request_body = PhoneRequest, responses(
    (status = 200, description = "The answer", body = NumberCheck),
    (status = 400, description = "A field missing, not a phone number, or the session is not connected", body = ErrorBody),
    (status = 500, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn check_number(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<PhoneRequest>) -> Response {
    let (id, digits) = match session_and_phone(request) {
        Ok(found) => found,
        Err(e) => return from_api(e),
    };
    match state.manager.check_numbers(&id, std::slice::from_ref(&digits)).await {
        Ok(results) => {
            let found = results.into_iter().next();
            answer(NumberCheck {
                status: "success",
                exists: found.as_ref().is_some_and(|r| r.exists),
                jid: found.and_then(|r| r.jid),
            })
        }
        Err(e) => session_failure(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::GroupRequest)]
struct GroupRequest {
    /// Required.
    session_id: Option<String>,
    /// Required: a group JID or its digits.
    group_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = compat::GroupMetadata)]
struct GroupMetadata {
    /// Always `success`.
    status: &'static str,
    metadata: Group,
}

#[derive(Serialize, ToSchema)]
#[schema(as = compat::Group)]
struct Group {
    id: String,
    subject: String,
    /// The creator's phone digits.
    owner: Option<String>,
    /// Seconds since the epoch.
    creation: Option<u64>,
    desc: Option<String>,
    size: usize,
    participants: Vec<Member>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = compat::Member)]
struct Member {
    /// The phone digits, or the JID's user part when the phone is unknown.
    id: String,
    phone: Option<String>,
    full_id: String,
    /// `superadmin`, `admin` or null.
    admin: Option<&'static str>,
}

/// One group as the Node service described it: members by phone digits, full JID and
/// Baileys' admin word (`superadmin`, `admin` or null).
#[utoipa::path(post, path = "/sessions/group-metadata", tag = "compat", request_body = GroupRequest, responses(
    (status = 200, description = "The group", body = GroupMetadata),
    (status = 400, description = "A field missing, not a group id, or the session is not connected", body = ErrorBody),
    (status = 404, description = "The account is not in that group", body = ErrorBody),
    (status = 500, description = "WhatsApp did not answer", body = ErrorBody),
))]
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
            let participants: Vec<Member> = group
                .participants
                .iter()
                .map(|p| {
                    let user = p.jid.split('@').next().unwrap_or_default();
                    Member {
                        id: p.phone.clone().unwrap_or_else(|| user.to_string()),
                        phone: p.phone.clone(),
                        full_id: p.jid.clone(),
                        admin: if p.super_admin { Some("superadmin") } else { p.admin.then_some("admin") },
                    }
                })
                .collect();
            answer(GroupMetadata {
                status: "success",
                metadata: Group {
                    id: group.id,
                    subject: group.subject,
                    owner: group.owner_phone,
                    creation: group.creation,
                    desc: group.description,
                    size: participants.len(),
                    participants,
                },
            })
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("the session is not in a group {jid}")),
        Err(e) => session_failure(e),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::PhoneRequest)]
struct PhoneRequest {
    /// Required.
    session_id: Option<String>,
    /// Required: a phone number with country code.
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

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = compat::ContactInfo)]
struct ContactInfo {
    /// Always `success`.
    status: &'static str,
    exists: bool,
    /// A URL of the profile picture, when there is one and it is visible.
    profile_picture: Option<String>,
    about: Option<String>,
    jid: Option<String>,
}

/// Whether a phone number is on WhatsApp, with its about text and profile picture.
#[utoipa::path(post, path = "/sessions/contact-info", tag = "compat", request_body = PhoneRequest, responses(
    (status = 200, description = "What WhatsApp tells of the number", body = ContactInfo),
    (status = 400, description = "A field missing, not a phone number, or the session is not connected", body = ErrorBody),
    (status = 500, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn contact_info(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<PhoneRequest>) -> Response {
    let (id, phone) = match session_and_phone(request) {
        Ok(found) => found,
        Err(e) => return from_api(e),
    };
    match state.manager.contact_info(&id, &phone).await {
        Ok(info) => answer(ContactInfo {
            status: "success",
            exists: info.exists,
            profile_picture: info.picture_url,
            about: info.about,
            jid: info.jid,
        }),
        Err(e) => session_failure(e),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = compat::Subscribed)]
struct Subscribed {
    /// Always `success`.
    status: &'static str,
    message: String,
}

/// Asks WhatsApp for a contact's presence.
#[utoipa::path(post, path = "/sessions/subscribe-presence", tag = "compat", request_body = PhoneRequest, responses(
    (status = 200, description = "Subscribed", body = Subscribed),
    (status = 400, description = "A field missing, not a phone number, or the session is not connected", body = ErrorBody),
    (status = 500, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn subscribe_presence(State(state): State<Arc<AppState>>, JsonBody(request): JsonBody<PhoneRequest>) -> Response {
    let (id, phone) = match session_and_phone(request) {
        Ok(found) => found,
        Err(e) => return from_api(e),
    };
    let jid = format!("{phone}@s.whatsapp.net");
    match state.manager.subscribe_presence(&id, &jid).await {
        Ok(()) => answer(Subscribed { status: "success", message: format!("Subscribed to presence of {jid}") }),
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
