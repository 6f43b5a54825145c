//! Meta's WhatsApp Cloud API, answered over linked-device sessions (docs/cloud-api.md), so
//! that Cloud API clients (first of all the Frappe app `frappe_whatsapp`) work against
//! wagate unchanged: `url = http://<wagate>/cloud`.
//!
//! Everything under `/cloud/` is one route: the Graph API takes any `v<major>.<minor>`
//! version, trailing slashes and ids of several kinds in the same place (`/{v}/{id}` is a
//! media file, a template or an upload session), so the path is read here. Every answer
//! is JSON; every error is a Graph error (`{"error": {"message", "type", "code", ...}}`).
//! The caller is who the access token says, whatever the address it calls from: the
//! token of the phone number the request names is always required, compared in constant
//! time (its SHA-256 is what is stored).

mod config;
mod media;
mod messages;
mod render;
mod templates;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::MAX_BODY;
use super::AppState;
use crate::session::SessionError;
use crate::store::cloud::CloudNumber;
use crate::store::StoreError;

pub use config::routes as config_routes;

/// The Cloud API routes (outside the `/v1` key rule: the Cloud token is required instead).
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(graph_get, graph_post, graph_delete)).layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A Graph API error answer.
#[derive(Debug)]
pub struct GraphError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: u32,
    pub subcode: Option<u32>,
    pub title: String,
}

impl GraphError {
    pub fn new(status: StatusCode, code: u32, title: &str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind: "OAuthException", code, subcode: None, title: title.to_string() }
    }

    /// Code 100: a parameter is missing or wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 100, "Invalid parameter", message)
    }

    /// Code 131051: what the Cloud API has but wagate does not do.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 131051, "Unsupported message type", message)
    }

    /// Code 100, subcode 33: no such object (or not one this token may see).
    pub fn no_object(id: &str) -> Self {
        let mut error = Self::invalid(format!(
            "Unsupported request: object with ID '{id}' does not exist, cannot be loaded due to missing permissions, \
             or does not support this operation"
        ));
        error.subcode = Some(33);
        error
    }

    /// Code 190 (401): no token, or not the token of this phone number.
    pub fn bad_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid access token",
            "Invalid OAuth access token: send the access token configured for this phone number id \
             (Authorization: Bearer <token>)",
        )
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, 1, "Internal error", error.to_string())
    }
}

impl From<StoreError> for GraphError {
    fn from(error: StoreError) -> Self {
        Self::internal(error)
    }
}

impl From<SessionError> for GraphError {
    fn from(error: SessionError) -> Self {
        let message = error.to_string();
        match error {
            SessionError::NotConnected(_) | SessionError::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                131016,
                "Service unavailable",
                format!("{message}: the linked-device session behind this phone number id is not connected"),
            ),
            SessionError::QueueFull | SessionError::IdempotencyInProgress => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, 131056, "Too many messages", message)
            }
            SessionError::BadRecipient(_) | SessionError::UnknownMessage(_) | SessionError::NoMedia(_) => {
                Self::invalid(message)
            }
            SessionError::Send(_) | SessionError::UnsafeMedia(_) => {
                Self::new(StatusCode::BAD_GATEWAY, 131000, "Something went wrong", message)
            }
            SessionError::NotFound => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                131016,
                "Service unavailable",
                "the session behind this phone number id no longer exists",
            ),
            _ => Self::internal(message),
        }
    }
}

impl From<super::error::ApiError> for GraphError {
    fn from(error: super::error::ApiError) -> Self {
        match error.status {
            s if s.is_client_error() => Self::invalid(error.message),
            _ => Self::new(StatusCode::BAD_GATEWAY, 131000, "Something went wrong", error.message),
        }
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "error_user_title": self.title,
            "error_user_msg": self.message,
            "fbtrace_id": format!("wagate{}", hex::encode(rand::random::<[u8; 8]>())),
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = json!(subcode);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

pub type GraphResult = Result<Response, GraphError>;

/// The token a request carries: `Authorization: Bearer <token>` (or `OAuth <token>`, as
/// the resumable upload sends it); `access_token=` in the query is taken too.
fn presented_token(headers: &HeaderMap, query: &str) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
            .then(|| token.trim().to_string());
    }
    query_value(query, "access_token")
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller of one request: its token, compared with the numbers' own.
pub struct Caller {
    token: Option<Vec<u8>>,
}

impl Caller {
    /// Passes when the token is `number`'s.
    pub fn check(&self, number: &CloudNumber) -> Result<(), GraphError> {
        match &self.token {
            Some(token) if constant_time_eq(token, &number.token_sha256) => Ok(()),
            _ => Err(GraphError::bad_token()),
        }
    }

    /// The first of `numbers` whose token this is; 401 when none (every one is compared).
    pub fn pick(&self, numbers: Vec<CloudNumber>) -> Result<CloudNumber, GraphError> {
        let mut found = None;
        for number in numbers {
            if self.check(&number).is_ok() && found.is_none() {
                found = Some(number);
            }
        }
        found.ok_or_else(GraphError::bad_token)
    }

    /// For an object no number owns: 400 "no such object" when the token is one of the
    /// configured ones, else 401.
    pub fn missing(&self, store: &crate::store::Store, id: &str) -> GraphError {
        match store.cloud_numbers().map(|numbers| self.pick(numbers)) {
            Ok(Ok(_)) => GraphError::no_object(id),
            Ok(Err(error)) => error,
            Err(e) => e.into(),
        }
    }
}

/// The number of a phone number id, once the token is its own.
pub fn number_for(state: &AppState, caller: &Caller, phone_number_id: &str) -> Result<CloudNumber, GraphError> {
    match state.manager.store().cloud_number(phone_number_id)? {
        Some(number) => {
            caller.check(&number)?;
            Ok(number)
        }
        None => Err(caller.missing(state.manager.store(), phone_number_id)),
    }
}

/// One of the numbers of a WhatsApp Business Account (or an app) whose token this is.
pub fn number_of_account(state: &AppState, caller: &Caller, id: &str, by_app: bool) -> Result<CloudNumber, GraphError> {
    let numbers = state.manager.store().cloud_numbers_of(id, by_app)?;
    if numbers.is_empty() {
        return Err(caller.missing(state.manager.store(), id));
    }
    caller.pick(numbers)
}

/// A value of a query string, percent-decoded.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key).as_deref() == Some(name))
            .then(|| percent_decode(&value.replace('+', " ")).unwrap_or_else(|| value.to_string()))
    })
}

/// `%XX` escapes undone; `None` when they do not make UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The JSON body of a request (any content type: Cloud API clients are not all careful).
pub async fn json_body(body: Body) -> Result<Value, GraphError> {
    let bytes = axum::body::to_bytes(body, MAX_JSON)
        .await
        .map_err(|_| GraphError::invalid(format!("the request body is larger than {} MB", MAX_JSON / (1024 * 1024))))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| GraphError::invalid(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(_) => Ok(value),
        _ => Err(GraphError::invalid("the body must be a JSON object")),
    }
}

/// The largest JSON body (a message or a template).
const MAX_JSON: usize = 1024 * 1024;

fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else { return false };
    let Some((major, minor)) = rest.split_once('.') else { return false };
    let digits = |t: &str| !t.is_empty() && t.len() <= 4 && t.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// Meta's Cloud API (Graph API) under `/cloud`, for Cloud API clients (docs/cloud-api.md):
/// `GET /cloud/{version}/{media_id}`, `GET /cloud/{version}/{waba_id}/message_templates`,
/// `GET /cloud/media/{media_id}` (a file's bytes).
#[utoipa::path(get, path = "/cloud/{*path}", tag = "cloud", security(("cloudToken" = [])),
    params(("path" = String, Path, description = "A Graph API path: `v<major>.<minor>/...`")), responses(
    (status = 200, description = "The Graph API answer", content((Object = "application/json"))),
    (status = 400, description = "A Graph error (`{\"error\": {\"message\", \"type\", \"code\", ...}}`)", content((Object = "application/json"))),
    (status = 401, description = "A Graph error: not this phone number's access token (code 190)", content((Object = "application/json"))),
    (status = "default", description = "Another Graph error (404 unknown path, 429 rate limit, 502/503 WhatsApp or the session)", content((Object = "application/json"))),
))]
async fn graph_get(State(state): State<Arc<AppState>>, request: Request) -> Response {
    dispatch(state, request).await.unwrap_or_else(IntoResponse::into_response)
}

/// Meta's Cloud API under `/cloud`: `POST /cloud/{version}/{phone_number_id}/messages`,
/// `.../media`, `/{waba_id}/message_templates`, `/{template_id}`, `/{app_id}/uploads`,
/// `/upload:...`, `/{waba_id}/subscribed_apps` (docs/cloud-api.md).
#[utoipa::path(post, path = "/cloud/{*path}", tag = "cloud", security(("cloudToken" = [])),
    params(("path" = String, Path, description = "A Graph API path: `v<major>.<minor>/...`")), responses(
    (status = 200, description = "The Graph API answer", content((Object = "application/json"))),
    (status = 400, description = "A Graph error", content((Object = "application/json"))),
    (status = 401, description = "A Graph error: not this phone number's access token (code 190)", content((Object = "application/json"))),
    (status = "default", description = "Another Graph error (404 unknown path, 429 rate limit, 502/503 WhatsApp or the session)", content((Object = "application/json"))),
))]
async fn graph_post(State(state): State<Arc<AppState>>, request: Request) -> Response {
    dispatch(state, request).await.unwrap_or_else(IntoResponse::into_response)
}

/// Meta's Cloud API under `/cloud`: `DELETE /cloud/{version}/{waba_id}/message_templates?name=`,
/// `DELETE /cloud/{version}/{media_id}` (docs/cloud-api.md).
#[utoipa::path(delete, path = "/cloud/{*path}", tag = "cloud", security(("cloudToken" = [])),
    params(("path" = String, Path, description = "A Graph API path: `v<major>.<minor>/...`")), responses(
    (status = 200, description = "The Graph API answer", content((Object = "application/json"))),
    (status = 400, description = "A Graph error", content((Object = "application/json"))),
    (status = 401, description = "A Graph error: not this phone number's access token (code 190)", content((Object = "application/json"))),
    (status = "default", description = "Another Graph error (404 unknown path, 429 rate limit, 502/503 WhatsApp or the session)", content((Object = "application/json"))),
))]
async fn graph_delete(State(state): State<Arc<AppState>>, request: Request) -> Response {
    dispatch(state, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn dispatch(state: Arc<AppState>, request: Request) -> GraphResult {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let method = request.method().clone();
    let caller = Caller { token: presented_token(request.headers(), &query).map(|t| token_hash(&t)) };
    let segments: Vec<String> = path
        .trim_start_matches("/cloud")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s).unwrap_or_else(|| s.to_string()))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (version, rest) = match segments.as_slice() {
        ["media", media_id] if method == Method::GET => return media::download(&state, &caller, media_id).await,
        [version, rest @ ..] if is_version(version) => (*version, rest),
        _ => {
            return Err(GraphError::new(
                StatusCode::NOT_FOUND,
                2500,
                "Unknown path",
                format!("Unknown path components: {path} (expected /cloud/v<major>.<minor>/...)"),
            ))
        }
    };
    let _ = version;
    let (parts, body) = request.into_parts();
    match (&method, rest) {
        (&Method::POST, [number, "messages"]) => messages::send(&state, &caller, number, &parts.headers, body).await,
        (&Method::POST, [number, "media"]) => media::upload(&state, &caller, number, &parts.headers, body).await,
        (&Method::GET, [account, "message_templates"]) => templates::list(&state, &caller, account, &query),
        (&Method::POST, [account, "message_templates"]) => templates::create(&state, &caller, account, body).await,
        (&Method::DELETE, [account, "message_templates"]) => templates::delete(&state, &caller, account, &query).await,
        (&Method::POST, [account, "subscribed_apps"]) => {
            number_of_account(&state, &caller, account, false)?;
            Ok(Json(json!({ "success": true })).into_response())
        }
        (&Method::GET, [account, "subscribed_apps"]) => {
            let number = number_of_account(&state, &caller, account, false)?;
            Ok(Json(json!({ "data": [{ "whatsapp_business_api_data": { "id": number.app_id } }] })).into_response())
        }
        (&Method::POST, [app, "uploads"]) => uploads::start(&state, &caller, app, &query, body).await,
        (&Method::POST, [upload]) if upload.starts_with("upload:") => {
            uploads::upload(&state, &caller, upload, body).await
        }
        (&Method::GET, [upload]) if upload.starts_with("upload:") => uploads::status(&state, &caller, upload),
        (&Method::GET, [id]) => media::metadata(&state, &caller, id),
        (&Method::DELETE, [id]) => media::delete(&state, &caller, id).await,
        (&Method::POST, [id]) => templates::edit(&state, &caller, id, body).await,
        _ => Err(GraphError::invalid(format!(
            "Unsupported {method} request: wagate answers the Cloud API calls listed in docs/cloud-api.md"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_tokens() {
        assert!(is_version("v17.0") && is_version("v21.10"));
        assert!(!is_version("17.0") && !is_version("v17") && !is_version("vX.0") && !is_version("v1.2.3"));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_token(&headers, "").as_deref(), Some("abc"));
        headers.insert(header::AUTHORIZATION, "OAuth xyz".parse().unwrap());
        assert_eq!(presented_token(&headers, "").as_deref(), Some("xyz"));
        headers.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(presented_token(&headers, "access_token=q"), None);
        assert_eq!(presented_token(&HeaderMap::new(), "a=1&access_token=q%20r").as_deref(), Some("q r"));
    }

    #[test]
    fn graph_errors_have_metas_shape() {
        let response = GraphError::no_object("123").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
