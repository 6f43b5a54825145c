//! Webhook settings of a session, the delivery log, manual retry and a test event.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::sessions::validate_webhook_url;
use crate::http::error::{ApiError, JsonBody};
use crate::http::AppState;
use crate::session::SessionError;
use crate::store::{Delivery, DeliveryStatus, WebhookConfig};
use crate::webhook::{envelope, now_ms, send_once, TestOutcome};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions/{id}/webhook", get(show).put(replace).delete(remove))
        .route("/v1/sessions/{id}/webhook/test", post(test))
        .route("/v1/webhooks/deliveries", get(deliveries))
        .route("/v1/webhooks/deliveries/{id}/retry", post(retry))
}

type ApiResult<T> = Result<T, ApiError>;

/// The API shows a webhook without its secrets, saying only whether they are set.
pub(super) fn view(webhook: &WebhookConfig) -> Value {
    json!({
        "url": webhook.url,
        "events": webhook.events,
        "has_secret": webhook.secret.as_deref().is_some_and(|s| !s.is_empty()),
        "has_token": webhook.token.is_some(),
    })
}

fn session_exists(state: &AppState, id: &str) -> ApiResult<()> {
    state.manager.get(id).map(|_| ()).ok_or_else(|| SessionError::NotFound.into())
}

async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    session_exists(&state, &id)?;
    let record = state.manager.store().session(&id).map_err(ApiError::internal)?.ok_or(SessionError::NotFound)?;
    match record.webhook {
        Some(webhook) => Ok(Json(view(&webhook))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "this session has no webhook of its own")),
    }
}

async fn replace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(webhook): JsonBody<WebhookConfig>,
) -> ApiResult<Json<Value>> {
    validate_webhook_url(&webhook.url)?;
    if webhook.events.as_ref().is_some_and(|events| events.is_empty()) {
        return Err(ApiError::bad_request("events, when given, must name at least one event"));
    }
    session_exists(&state, &id)?;
    if !state.manager.store().set_webhook(&id, Some(&webhook)).map_err(ApiError::internal)? {
        return Err(SessionError::NotFound.into());
    }
    Ok(Json(view(&webhook)))
}

async fn remove(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    session_exists(&state, &id)?;
    state.manager.store().set_webhook(&id, None).map_err(ApiError::internal)?;
    Ok(Json(json!({ "id": id, "webhook": null })))
}

/// Sends a `webhook.test` event now and reports what the receiver answered.
async fn test(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<TestOutcome>> {
    session_exists(&state, &id)?;
    let outbox = state.manager.outbox();
    let endpoint = outbox
        .endpoint(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::conflict("this session has no webhook (and no default webhook is set)"))?;
    let now = now_ms();
    let event_id = envelope::new_event_id(now);
    let data = json!({ "message": "a test event from wagate" });
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

#[derive(Deserialize)]
struct DeliveryQuery {
    session: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

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
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let session = query.session.as_deref().filter(|s| !s.is_empty());
    Ok(Json(state.manager.store().deliveries(session, status, limit).map_err(ApiError::internal)?))
}

async fn retry(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let outbox = state.manager.outbox();
    match outbox.store().retry_event(&id, now_ms()).await.map_err(ApiError::internal)? {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such webhook event")),
        Some((DeliveryStatus::Delivered, _)) => Err(ApiError::conflict("that event was delivered already")),
        Some((_, session)) => {
            outbox.wake_from_start(&session);
            Ok(Json(json!({ "id": id, "status": "pending" })))
        }
    }
}
