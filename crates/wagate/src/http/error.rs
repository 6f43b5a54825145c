//! Every error answer is a status and `{"error": "..."}` that says what was wrong.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::session::SessionError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// A failure of ours (the store, say), reported with its cause.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}

/// The cluster's database did not answer (503).
impl From<crate::cluster::LeaseError> for ApiError {
    fn from(error: crate::cluster::LeaseError) -> Self {
        SessionError::Cluster(error.to_string()).into()
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        let status = match &error {
            SessionError::NotFound => StatusCode::NOT_FOUND,
            SessionError::InvalidId(_) | SessionError::BadRecipient(_) => StatusCode::BAD_REQUEST,
            SessionError::AlreadyLinked | SessionError::PairCodeOutstanding(_) | SessionError::PairCodeSuperseded => {
                StatusCode::CONFLICT
            }
            SessionError::PairCode(_) => StatusCode::BAD_GATEWAY,
            SessionError::Unavailable
            | SessionError::TooManySessions(_)
            | SessionError::OutOfFiles { .. }
            | SessionError::NotOwned
            | SessionError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::NotConnected(_) | SessionError::IdempotencyInProgress | SessionError::QueueFull => {
                StatusCode::CONFLICT
            }
            SessionError::Send(_) => StatusCode::BAD_GATEWAY,
            SessionError::UnknownMessage(_) | SessionError::NoMedia(_) => StatusCode::NOT_FOUND,
            SessionError::UnsafeMedia(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SessionError::Store(_) | SessionError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match error {
            SessionError::NotFound => "Session not found".to_string(),
            SessionError::NotConnected(state) => format!("the session is not connected (state: {})", state.as_str()),
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

/// The largest request body: a 100 MB document in base64, with room for the JSON around it.
pub const MAX_BODY: usize = 140 * 1024 * 1024;

/// A JSON body whose rejection (malformed JSON, wrong field types, missing content type)
/// is a 400 in the same shape as every other error.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<Object<T>>::from_request(req, state).await {
            Ok(Json(Object(value))) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the {} MB this call takes", MAX_BODY / (1024 * 1024)),
            )),
            Err(rejection) => Err(ApiError::bad_request(rejection_message(&rejection))),
        }
    }
}

/// A body read as `T` only when it is a JSON object. On its own serde also fills a struct
/// from an array, field by field in order: `[null]` as the body of `PUT /v1/sessions/{id}`
/// removed the session's proxy (found by the property tests of tests/bodies.rs). The API
/// takes objects only.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(Fields(std::marker::PhantomData)).map(Object)
    }
}

fn rejection_message(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => "send a JSON body with Content-Type: application/json".into(),
        other => format!("invalid JSON body: {}", other.body_text()),
    }
}

/// A path no route serves.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such path: {}", uri.path()))
}

/// The longest plain-text error body turned into JSON; axum's own are a line or two.
const MAX_PLAIN_ERROR: usize = 16 * 1024;

/// Every error answer in JSON, also those axum writes itself: a path or query that does
/// not parse (plain text), a method the path does not take (405, empty). Clients, and the
/// OpenAPI document, can then rely on `{"error": ...}` for every 4xx and 5xx.
pub async fn json_errors(request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_PLAIN_ERROR).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this path does not take that method (see the Allow header)".to_string(),
        _ => text,
    };
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let json = ApiError::new(status, message).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}
