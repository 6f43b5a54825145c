//! Every error answer is a status and `{"error": "..."}` that says what was wrong.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        let status = match &error {
            SessionError::NotFound => StatusCode::NOT_FOUND,
            SessionError::InvalidId(_) | SessionError::BadRecipient(_) => StatusCode::BAD_REQUEST,
            SessionError::AlreadyLinked | SessionError::PairCodeOutstanding(_) => StatusCode::CONFLICT,
            SessionError::PairCode(_) => StatusCode::BAD_GATEWAY,
            SessionError::Unavailable | SessionError::TooManySessions(_) | SessionError::OutOfFiles { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
