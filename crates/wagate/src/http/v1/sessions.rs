//! `/v1/sessions`: create, inspect, link (QR or pairing code), start, log out, delete, and
//! follow a session's state live.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::webhooks::WebhookView;
use crate::cluster::overview::{self, NodeSession};
use crate::http::error::{ApiError, ErrorBody, JsonBody};
use crate::http::qr::{self, QrFormat};
use crate::http::AppState;
use crate::session::{SessionView, StateKind};
use crate::store::WebhookConfig;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, delete))
        .routes(routes!(qr_code))
        .routes(routes!(pair_code))
        .routes(routes!(start))
        .routes(routes!(logout))
        .routes(routes!(events))
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// 1 to 64 letters, digits, `_`, `-` or `.` (not only dots).
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.-]+$", example = "WA-Acme_Ltd")]
    id: String,
    /// Where this session's events go; without it, the default webhook (`--webhook-url`).
    webhook: Option<WebhookConfig>,
    /// `http://`, `https://` or `socks5://` proxy URL (with user and password if needed).
    proxy: Option<String>,
}

/// A proxy URL as given, checked; the answer shows it masked.
fn checked_proxy(url: &str) -> ApiResult<String> {
    crate::engine::proxy::Proxy::parse(url).map(|p| p.to_string()).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Creates a session (or answers the existing one) and starts connecting it: a new
/// account then shows a QR code, a linked one connects.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession, responses(
    (status = 201, description = "Created; it starts connecting", body = SessionView),
    (status = 200, description = "A session with this id exists already: it as it is", body = SessionView),
    (status = 400, description = "An invalid id, webhook URL or proxy", body = ErrorBody),
    (status = 503, description = "No room for another session (`--max-sessions` or open files)", body = ErrorBody),
))]
async fn create(State(state): State<Arc<AppState>>, JsonBody(body): JsonBody<CreateSession>) -> ApiResult<Response> {
    if let Some(webhook) = &body.webhook {
        validate_webhook_url(&webhook.url)?;
        if webhook.format == crate::store::WebhookFormat::Cloud {
            return Err(ApiError::bad_request(
                "format 'cloud' is set by PUT /v1/sessions/{id}/cloud-api (docs/cloud-api.md)",
            ));
        }
    }
    if let Some(proxy) = &body.proxy {
        checked_proxy(proxy)?;
    }
    let (view, created) = state.manager.create(&body.id, body.webhook.as_ref(), body.proxy.as_deref()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

pub fn validate_webhook_url(url: &str) -> ApiResult<()> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("webhook url must be an http:// or https:// URL, got '{url}'")))
    }
}

/// Every session, in the order they were created; on a cluster, those of every node, each
/// with its `node`.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", responses(
    (status = 200, description = "The sessions", body = Vec<NodeSession>),
))]
async fn list(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Json<Vec<NodeSession>> {
    // A node asked by another answers for itself alone.
    match state.manager.cluster() {
        Some(cluster) if !headers.contains_key(crate::cluster::forward::FORWARDED_BY) => {
            Json(overview::everywhere(&state.manager, cluster, state.access.api_key.as_deref()).await)
        }
        _ => Json(overview::local(&state.manager)),
    }
}

fn found(state: &AppState, id: &str) -> ApiResult<SessionView> {
    state.manager.get(id).ok_or_else(|| crate::session::SessionError::NotFound.into())
}

/// A session with its settings.
#[derive(Serialize, ToSchema)]
struct SessionDetail {
    #[serde(flatten)]
    view: SessionView,
    /// The proxy, its password masked.
    proxy: Option<String>,
    /// The session's own webhook, without its secrets.
    webhook: Option<WebhookView>,
}

/// A session: its state, what to do about it, and its settings.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", params(SessionId), responses(
    (status = 200, description = "The session", body = SessionDetail),
    (status = 404, description = "No such session", body = ErrorBody),
))]
async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<SessionDetail>> {
    let view = found(&state, &id)?;
    let record = state.manager.store().session(&id).map_err(ApiError::internal)?;
    let (proxy, webhook) = record.map(|r| (r.proxy, r.webhook)).unwrap_or_default();
    Ok(Json(SessionDetail {
        view,
        proxy: proxy.as_deref().map(checked_proxy).transpose()?,
        webhook: webhook.as_ref().map(WebhookView::of),
    }))
}

/// The path parameter of every `/v1/sessions/{id}/...` operation.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct SessionId {
    /// The session's id.
    #[allow(dead_code)]
    id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateSession {
    /// A proxy URL, or null to remove it. Applies from the next connection.
    proxy: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ProxyUpdated {
    id: String,
    /// The proxy, its password masked; null when removed.
    proxy: Option<String>,
    /// Always `from the next connection`.
    applies: &'static str,
}

/// Sets or removes the session's proxy.
#[utoipa::path(put, path = "/v1/sessions/{id}", tag = "sessions", params(SessionId), request_body = UpdateSession,
    responses(
        (status = 200, description = "Saved", body = ProxyUpdated),
        (status = 400, description = "Not a proxy URL wagate can use", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
))]
async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateSession>,
) -> ApiResult<Json<ProxyUpdated>> {
    let masked = body.proxy.as_deref().map(checked_proxy).transpose()?;
    found(&state, &id)?;
    state.manager.store().set_proxy(&id, body.proxy.as_deref()).map_err(ApiError::internal)?;
    Ok(Json(ProxyUpdated { id, proxy: masked, applies: "from the next connection" }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct QrQuery {
    /// `png` (default), `svg`, `text` (a drawing for terminals) or `raw` (the code's text).
    #[param(pattern = "^(png|svg|text|raw)$")]
    format: Option<String>,
}

/// The QR code to scan, while the session waits for a scan.
#[utoipa::path(get, path = "/v1/sessions/{id}/qr", tag = "sessions", params(SessionId, QrQuery), responses(
    (status = 200, description = "The current QR code (it changes about every 20 s)", content(
        (crate::http::openapi::FileBytes = "image/png"),
        (String = "image/svg+xml"),
        (String = "text/plain; charset=utf-8"),
    )),
    (status = 400, description = "An unknown format", body = ErrorBody),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 409, description = "The session is not waiting for a scan", body = ErrorBody),
))]
async fn qr_code(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<QrQuery>,
) -> ApiResult<Response> {
    let name = query.format.as_deref().unwrap_or("png");
    let format = QrFormat::parse(name)
        .ok_or_else(|| ApiError::bad_request(format!("unknown format '{name}'; use png, svg, text or raw")))?;
    let view = found(&state, &id)?;
    let (StateKind::AwaitingScan, Some(code)) = (view.state, view.qr.as_deref()) else {
        return Err(ApiError::conflict(format!(
            "the session is not waiting for a scan (state: {})",
            view.state.as_str()
        )));
    };
    let bytes =
        qr::render(code, format).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, format.content_type()), (header::CACHE_CONTROL, "no-store")], bytes).into_response())
}

#[derive(Deserialize, ToSchema)]
struct PairCodeRequest {
    /// The account's phone number with country code, in any common format.
    #[schema(example = "+1 555 123 4567")]
    phone: String,
}

#[derive(Serialize, ToSchema)]
struct PairCode {
    /// The code to type on the phone (Linked devices > Link with phone number).
    #[schema(example = "ABCD-1234")]
    code: String,
}

/// Digits of a phone number written in any common way (`+91 98765-43210`).
pub fn phone_digits(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(|c| !matches!(c, ' ' | '-' | '+' | '(' | ')' | '.')).collect();
    ((7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// Asks WhatsApp for an 8-character code to type on the phone instead of scanning.
#[utoipa::path(post, path = "/v1/sessions/{id}/pair-code", tag = "sessions", params(SessionId),
    request_body = PairCodeRequest, responses(
        (status = 200, description = "The code", body = PairCode),
        (status = 400, description = "Not a phone number in international format", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "Linked already, a code is outstanding, or a newer request for a code \
            replaced this one", body = ErrorBody),
        (status = 502, description = "WhatsApp refused", body = ErrorBody),
        (status = 503, description = "The session is not connected to WhatsApp right now", body = ErrorBody),
))]
async fn pair_code(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PairCodeRequest>,
) -> ApiResult<Json<PairCode>> {
    let phone = phone_digits(&body.phone).ok_or_else(|| {
        ApiError::bad_request(format!("'{}' is not a phone number (7 to 15 digits with country code)", body.phone))
    })?;
    // The library refuses a leading 0 (a national number), which came out as a 502 (found
    // by the property tests of tests/bodies.rs).
    if phone.starts_with('0') {
        return Err(ApiError::bad_request(format!(
            "'{}' is not in international format: start with the country code, not 0",
            body.phone
        )));
    }
    found(&state, &id)?;
    let code = state.manager.pair_code(&id, &phone).await?;
    Ok(Json(PairCode { code: display_code(&code) }))
}

/// `ABCD1234` -> `ABCD-1234`, as WhatsApp shows it.
fn display_code(code: &str) -> String {
    if code.len() == 8 && code.is_ascii() && !code.contains('-') {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_string()
    }
}

/// Connects a stopped, logged-out or failed session again (a new QR code when unlinked).
#[utoipa::path(post, path = "/v1/sessions/{id}/start", tag = "sessions", params(SessionId), responses(
    (status = 200, description = "The session, now connecting", body = SessionView),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 503, description = "No room for another connection (open files)", body = ErrorBody),
))]
async fn start(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<SessionView>> {
    Ok(Json(state.manager.start(&id).await?))
}

/// Unlinks the device from the account (on WhatsApp too) and forgets its keys; the
/// session stays, logged out.
#[utoipa::path(post, path = "/v1/sessions/{id}/logout", tag = "sessions", params(SessionId), responses(
    (status = 200, description = "The session, logged out", body = SessionView),
    (status = 404, description = "No such session", body = ErrorBody),
))]
async fn logout(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<SessionView>> {
    Ok(Json(state.manager.logout(&id).await?))
}

#[derive(Serialize, ToSchema)]
pub(super) struct Deleted {
    id: String,
    /// Always true.
    deleted: bool,
}

/// Logs the session out and deletes it with everything kept of it.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", params(SessionId), responses(
    (status = 200, description = "Deleted", body = Deleted),
    (status = 404, description = "No such session", body = ErrorBody),
))]
async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Deleted>> {
    state.manager.delete(&id).await?;
    Ok(Json(Deleted { id, deleted: true }))
}

/// Server-Sent Events: the current state first, then every change (each new QR too) as
/// `state`, and each message the session receives from now on as `message` (the data of its
/// `messages.upsert` event).
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions", params(SessionId), responses(
    (status = 200, content_type = "text/event-stream", body = StreamEvent, description = "Server-Sent Events, until the \
      client goes away: `event: state` with a session (as `GET /v1/sessions/{id}`, without its settings) first \
      and at each change, `event: message` with a received message (the `data` of `messages.upsert`), and a \
      comment every 15 s"),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 503, description = "Too many event streams are open (`--max-event-streams`)", body = ErrorBody),
))]
async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let not_found = || ApiError::from(crate::session::SessionError::NotFound);
    let (current, changes) = state.manager.subscribe(&id).ok_or_else(not_found)?;
    let received = state.manager.received(&id).ok_or_else(not_found)?;
    // Held by the stream until the client goes away.
    let slot = state.event_streams.open()?;
    let first = stream::once(async move { Ok(state_event(&current)) });
    let states = first.chain(stream::unfold(changes, |mut changes| async move {
        loop {
            match changes.recv().await {
                Ok(view) => return Some((Ok(state_event(&view)), changes)),
                // A slow reader missed some changes; the next one carries the whole state.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    }));
    let messages = stream::unfold(received, |mut received| async move {
        let event = match received.recv().await {
            Ok(message) => message_event(&message),
            // A slow reader missed some messages: say so, and go on with the next.
            Err(RecvError::Lagged(missed)) => {
                Event::default().comment(format!("{missed} received messages were skipped"))
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), received))
    });
    let events = stream::select(states, messages).map(move |event| {
        let _held = &slot;
        event
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One event of `GET /v1/sessions/{id}/events`, as a Server-Sent Events parser reads it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct StreamEvent {
    /// `state` or `message`.
    #[schema(pattern = "^(state|message)$")]
    event: String,
    /// JSON: a session (`state`) or a received message (`message`).
    #[schema(content_media_type = "application/json")]
    data: String,
}

fn message_event(message: &serde_json::Value) -> Event {
    Event::default().event("message").json_data(message).unwrap_or_else(|_| Event::default().comment("unserializable"))
}

fn state_event(view: &SessionView) -> Event {
    Event::default().event("state").json_data(view).unwrap_or_else(|_| Event::default().comment("unserializable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_codes() {
        assert_eq!(phone_digits("+91 98765 43210").as_deref(), Some("919876543210"));
        assert_eq!(phone_digits("12"), None);
        assert_eq!(phone_digits("+1 555 abc"), None);
        assert_eq!(display_code("ABCD1234"), "ABCD-1234");
        assert!(validate_webhook_url("https://erp.example/api").is_ok());
        assert!(validate_webhook_url("ftp://x").is_err());
        assert!(validate_webhook_url("http://").is_err());
    }
}
