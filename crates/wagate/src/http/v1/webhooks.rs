//! Webhook settings of a session, the delivery log, manual retry and a test event.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::{validate_webhook_url, SessionId};
use crate::http::error::{ApiError, ErrorBody, JsonBody};
use crate::http::AppState;
use crate::session::SessionError;
use crate::store::{Delivery, DeliveryStatus, WebhookConfig, WebhookFormat};
use crate::webhook::{envelope, now_ms, send_once, TestData, TestOutcome};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(show, replace, remove))
        .routes(routes!(test))
        .routes(routes!(deliveries))
        .routes(routes!(retry))
}

type ApiResult<T> = Result<T, ApiError>;

/// A webhook as the API shows it: without its secrets, saying only whether they are set.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    url: String,
    /// The events it gets; null: all of them.
    events: Option<Vec<String>>,
    has_secret: bool,
    has_token: bool,
    format: WebhookFormat,
}

impl WebhookView {
    pub fn of(webhook: &WebhookConfig) -> Self {
        Self {
            url: webhook.url.clone(),
            events: webhook.events.clone(),
            has_secret: webhook.secret.as_deref().is_some_and(|s| !s.is_empty()),
            has_token: webhook.token.is_some(),
            format: webhook.format,
        }
    }
}

fn session_exists(state: &AppState, id: &str) -> ApiResult<()> {
    state.manager.get(id).map(|_| ()).ok_or_else(|| SessionError::NotFound.into())
}

/// The session's own webhook.
#[utoipa::path(get, path = "/v1/sessions/{id}/webhook", tag = "webhooks", params(SessionId), responses(
    (status = 200, description = "The webhook", body = WebhookView),
    (status = 404, description = "No such session, or it has no webhook of its own", body = ErrorBody),
))]
async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<WebhookView>> {
    session_exists(&state, &id)?;
    let record = state.manager.store().session(&id).map_err(ApiError::internal)?.ok_or(SessionError::NotFound)?;
    match record.webhook {
        Some(webhook) => Ok(Json(WebhookView::of(&webhook))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "this session has no webhook of its own")),
    }
}

/// Sets the session's own webhook (replacing the one it had); applies to the next event.
#[utoipa::path(put, path = "/v1/sessions/{id}/webhook", tag = "webhooks", params(SessionId),
    request_body = WebhookConfig, responses(
        (status = 200, description = "Saved", body = WebhookView),
        (status = 400, description = "Not an http(s) URL, or an empty event list", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
))]
async fn replace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(webhook): JsonBody<WebhookConfig>,
) -> ApiResult<Json<WebhookView>> {
    validate_webhook_url(&webhook.url)?;
    if webhook.format == crate::store::WebhookFormat::Cloud {
        return Err(ApiError::bad_request(
            "format 'cloud' is set by PUT /v1/sessions/{id}/cloud-api (docs/cloud-api.md)",
        ));
    }
    if webhook.events.as_ref().is_some_and(|events| events.is_empty()) {
        return Err(ApiError::bad_request("events, when given, must name at least one event"));
    }
    session_exists(&state, &id)?;
    if !state.manager.store().set_webhook(&id, Some(&webhook)).map_err(ApiError::internal)? {
        return Err(SessionError::NotFound.into());
    }
    Ok(Json(WebhookView::of(&webhook)))
}

#[derive(Serialize, ToSchema)]
struct WebhookRemoved {
    id: String,
    /// Always null: events go to the default webhook, if any.
    #[schema(value_type = Option<WebhookView>)]
    webhook: Option<WebhookView>,
}

/// Removes the session's own webhook; its events then go to the default webhook, if any.
#[utoipa::path(delete, path = "/v1/sessions/{id}/webhook", tag = "webhooks", params(SessionId), responses(
    (status = 200, description = "Removed", body = WebhookRemoved),
    (status = 404, description = "No such session", body = ErrorBody),
))]
async fn remove(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<WebhookRemoved>> {
    session_exists(&state, &id)?;
    state.manager.store().set_webhook(&id, None).map_err(ApiError::internal)?;
    Ok(Json(WebhookRemoved { id, webhook: None }))
}

/// Sends a `webhook.test` event (a native envelope) now and reports what the receiver
/// answered.
#[utoipa::path(post, path = "/v1/sessions/{id}/webhook/test", tag = "webhooks", params(SessionId), responses(
    (status = 200, description = "What the receiver answered (also when it failed)", body = TestOutcome),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 409, description = "The session has no webhook and no default is set", body = ErrorBody),
))]
async fn test(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<TestOutcome>> {
    session_exists(&state, &id)?;
    let outbox = state.manager.outbox();
    let endpoint = outbox
        .endpoint(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::conflict("this session has no webhook (and no default webhook is set)"))?;
    let now = now_ms();
    let event_id = envelope::new_event_id(now);
    let data = serde_json::to_value(TestData::EVENT).map_err(ApiError::internal)?;
    let body = serde_json::to_string(&envelope::Envelope {
        id: &event_id,
        event: "webhook.test",
        session: &id,
        timestamp_ms: now,
        data: &data,
        v: 1,
    })
    .map_err(ApiError::internal)?;
    Ok(Json(send_once(outbox, &endpoint, &event_id, &body).await))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveryQuery {
    /// Only this session's events.
    session: Option<String>,
    /// Only events in this state.
    #[param(pattern = "^(pending|delivered|dead)?$")]
    status: Option<String>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The webhook events and how their delivery went, newest first.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "webhooks", params(DeliveryQuery), responses(
    (status = 200, description = "The events", body = Vec<Delivery>),
    (status = 400, description = "An unknown status or a limit that is no number", body = ErrorBody),
))]
async fn deliveries(
    State(state): State<Arc<AppState>>,
    Query(query): Query<DeliveryQuery>,
) -> ApiResult<Json<Vec<Delivery>>> {
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(name) => Some(DeliveryStatus::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!("unknown status '{name}'; use pending, delivered or dead"))
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1 to 1000, got {limit}")));
    }
    let session = query.session.as_deref().filter(|s| !s.is_empty());
    Ok(Json(state.manager.store().deliveries(session, status, limit).map_err(ApiError::internal)?))
}

#[derive(Serialize, ToSchema)]
struct RetryQueued {
    id: String,
    /// Always `pending`.
    status: DeliveryStatus,
}

/// Delivers a dead (or pending) event again, now, and the session's later events after it.
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/retry", tag = "webhooks",
    params(("id" = String, Path, description = "The event's id (`evt_...`)")), responses(
        (status = 200, description = "Queued for delivery", body = RetryQueued),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 409, description = "It was delivered already", body = ErrorBody),
))]
async fn retry(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<RetryQueued>> {
    let outbox = state.manager.outbox();
    match outbox.store().retry_event(&id, now_ms()).await.map_err(ApiError::internal)? {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such webhook event")),
        Some((DeliveryStatus::Delivered, _)) => Err(ApiError::conflict("that event was delivered already")),
        Some((_, session)) => {
            outbox.wake_from_start(&session);
            Ok(Json(RetryQueued { id, status: DeliveryStatus::Pending }))
        }
    }
}
