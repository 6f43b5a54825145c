//! `/v1/sessions/{id}/contacts/{phone}` (who a number is on WhatsApp) and presence
//! subscriptions; the compat API's contact-info and subscribe-presence run on these paths.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::ContactInfo;
use crate::http::error::{ApiError, JsonBody};
use crate::http::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions/{id}/contacts/{phone}", get(contact))
        .route("/v1/sessions/{id}/presence/subscribe", post(subscribe))
}

fn digits_of(phone: &str) -> Result<String, ApiError> {
    super::phone_digits(phone).ok_or_else(|| {
        ApiError::bad_request(format!("'{phone}' is not a phone number (7 to 15 digits with country code)"))
    })
}

async fn contact(
    State(state): State<Arc<AppState>>,
    Path((id, phone)): Path<(String, String)>,
) -> Result<Json<ContactInfo>, ApiError> {
    let phone = digits_of(&phone)?;
    Ok(Json(state.manager.contact_info(&id, &phone).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    phone: String,
}

async fn subscribe(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<SubscribeRequest>,
) -> Result<Json<Value>, ApiError> {
    let jid = format!("{}@s.whatsapp.net", digits_of(&request.phone)?);
    state.manager.subscribe_presence(&id, &jid).await?;
    Ok(Json(json!({ "subscribed": jid })))
}
