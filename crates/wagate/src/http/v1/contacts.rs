//! `/v1/sessions/{id}/contacts/{phone}` (who a number is on WhatsApp) and presence
//! subscriptions; the compat API's contact-info and subscribe-presence run on these paths.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::SessionId;
use crate::engine::ContactInfo;
use crate::http::error::{ApiError, ErrorBody, JsonBody};
use crate::http::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(contact)).routes(routes!(subscribe))
}

fn digits_of(phone: &str) -> Result<String, ApiError> {
    super::phone_digits(phone).ok_or_else(|| {
        ApiError::bad_request(format!("'{phone}' is not a phone number (7 to 15 digits with country code)"))
    })
}

/// Whether a phone number is on WhatsApp, with its about text and profile picture.
#[utoipa::path(get, path = "/v1/sessions/{id}/contacts/{phone}", tag = "contacts",
    params(SessionId, ("phone" = String, Path, description = "A phone number with country code")), responses(
        (status = 200, description = "What WhatsApp tells of the number", body = ContactInfo),
        (status = 400, description = "Not a phone number", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session is not connected", body = ErrorBody),
        (status = 502, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn contact(
    State(state): State<Arc<AppState>>,
    Path((id, phone)): Path<(String, String)>,
) -> Result<Json<ContactInfo>, ApiError> {
    let phone = digits_of(&phone)?;
    Ok(Json(state.manager.contact_info(&id, &phone).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    /// The contact's phone number with country code.
    phone: String,
}

#[derive(Serialize, ToSchema)]
struct Subscribed {
    /// The contact's JID.
    subscribed: String,
}

/// Asks WhatsApp for a contact's presence: `presence.update` events follow (until the
/// gateway restarts).
#[utoipa::path(post, path = "/v1/sessions/{id}/presence/subscribe", tag = "contacts", params(SessionId),
    request_body = SubscribeRequest, responses(
        (status = 200, description = "Subscribed", body = Subscribed),
        (status = 400, description = "Not a phone number", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session is not connected", body = ErrorBody),
        (status = 502, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn subscribe(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<SubscribeRequest>,
) -> Result<Json<Subscribed>, ApiError> {
    let jid = format!("{}@s.whatsapp.net", digits_of(&request.phone)?);
    state.manager.subscribe_presence(&id, &jid).await?;
    Ok(Json(Subscribed { subscribed: jid }))
}
