//! `/v1/sessions/{id}/cloud-api`: exposes a session as a Cloud API phone number.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{ApiError, ErrorBody, JsonBody};
use crate::http::AppState;
use crate::session::SessionError;
use crate::store::cloud::CloudNumber;
use crate::store::{WebhookConfig, WebhookFormat};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(show, replace, remove))
}

/// Sends through the Cloud API allowed per session and minute unless configured.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 20;
/// How long the webhook's verification answer may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// A session as a Cloud API phone number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CloudApiConfig {
    /// The id Cloud API clients put in their URLs (`/{version}/{phone_number_id}/messages`).
    phone_number_id: String,
    /// The WhatsApp Business Account id (templates, webhooks' `entry[].id`).
    waba_id: String,
    /// The app id (resumable uploads: `/{version}/{app_id}/uploads`).
    app_id: String,
    /// The token clients send as `Authorization: Bearer <token>`; never shown again.
    access_token: String,
    webhook: CloudWebhook,
    /// Sends allowed per minute through the Cloud API (default 20); 0 is refused.
    #[serde(default)]
    rate_per_minute: Option<u32>,
    /// Also deliver group messages, status broadcasts and edits (default false).
    #[serde(default)]
    include_all: bool,
}

/// Where Cloud-form webhooks go, Meta's way.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CloudWebhook {
    url: String,
    /// Echoed by the receiver's verification (`hub.verify_token`).
    verify_token: String,
    /// Signs every body (`X-Hub-Signature-256`).
    app_secret: String,
}

/// The mapping as shown: without the token and the secret.
#[derive(Serialize, ToSchema)]
struct CloudApiView {
    session: String,
    phone_number_id: String,
    waba_id: String,
    app_id: String,
    webhook_url: Option<String>,
    rate_per_minute: u32,
    include_all: bool,
    /// The base URL to give the client (`url` of frappe_whatsapp).
    url: String,
}

fn view(state: &AppState, number: &CloudNumber) -> Result<CloudApiView, ApiError> {
    let webhook = state.manager.store().session_webhook(&number.session).map_err(ApiError::internal)?;
    Ok(CloudApiView {
        session: number.session.clone(),
        phone_number_id: number.phone_number_id.clone(),
        waba_id: number.waba_id.clone(),
        app_id: number.app_id.clone(),
        webhook_url: webhook.filter(|w| w.format == WebhookFormat::Cloud).map(|w| w.url),
        rate_per_minute: number.rate_per_minute,
        include_all: number.include_all,
        url: format!("{}/cloud", state.manager.public_url()),
    })
}

fn graph_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with("upload:")
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    match ok {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!("{what} must be 1 to 64 letters, digits, '_' or '-'"))),
    }
}

/// The session's Cloud API mapping.
#[utoipa::path(get, path = "/v1/sessions/{id}/cloud-api", tag = "cloud",
    params(("id" = String, Path, description = "The session id")), responses(
    (status = 200, description = "The mapping, without its token and secret", body = CloudApiView),
    (status = 404, description = "No such session, or it is not exposed as a Cloud API number", body = ErrorBody),
))]
async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<CloudApiView>, ApiError> {
    state.manager.get(&id).ok_or(SessionError::NotFound)?;
    let number = state.manager.store().cloud_number_of_session(&id).map_err(ApiError::internal)?;
    let number =
        number.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this session is not a Cloud API number"))?;
    Ok(Json(view(&state, &number)?))
}

/// Exposes the session as a Cloud API phone number: its webhook becomes the Cloud-form one
/// (after the receiver passed Meta's `hub.challenge` verification).
#[utoipa::path(put, path = "/v1/sessions/{id}/cloud-api", tag = "cloud",
    params(("id" = String, Path, description = "The session id")), request_body = CloudApiConfig, responses(
    (status = 200, description = "Saved", body = CloudApiView),
    (status = 400, description = "A bad field, or the webhook did not echo the challenge", body = ErrorBody),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 409, description = "Another session has this phone number id", body = ErrorBody),
))]
async fn replace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(config): JsonBody<CloudApiConfig>,
) -> Result<Json<CloudApiView>, ApiError> {
    state.manager.get(&id).ok_or(SessionError::NotFound)?;
    graph_id("phone_number_id", &config.phone_number_id)?;
    graph_id("waba_id", &config.waba_id)?;
    graph_id("app_id", &config.app_id)?;
    if config.access_token.trim().len() < 16 {
        return Err(ApiError::bad_request("access_token must be at least 16 characters"));
    }
    if config.webhook.app_secret.is_empty() || config.webhook.verify_token.is_empty() {
        return Err(ApiError::bad_request("webhook.verify_token and webhook.app_secret are required"));
    }
    let rate = config.rate_per_minute.unwrap_or(DEFAULT_RATE_PER_MINUTE);
    if rate == 0 || rate > 6000 {
        return Err(ApiError::bad_request("rate_per_minute must be 1 to 6000"));
    }
    crate::http::v1::validate_webhook_url(&config.webhook.url)?;
    let store = state.manager.store();
    if let Some(other) = store.cloud_number(&config.phone_number_id).map_err(ApiError::internal)? {
        if other.session != id {
            return Err(ApiError::conflict(format!(
                "phone_number_id {} is session {}'s already",
                config.phone_number_id, other.session
            )));
        }
    }
    verify(&config.webhook).await?;
    let number = CloudNumber {
        session: id.clone(),
        phone_number_id: config.phone_number_id,
        waba_id: config.waba_id,
        app_id: config.app_id,
        token_sha256: super::token_hash(config.access_token.trim()),
        include_all: config.include_all,
        rate_per_minute: rate,
        created_ms: crate::webhook::now_ms(),
    };
    store.set_cloud_number(number.clone()).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    let webhook = WebhookConfig {
        url: config.webhook.url,
        secret: Some(config.webhook.app_secret),
        events: Some(vec!["messages.upsert".into(), "message.status".into()]),
        token: None,
        format: WebhookFormat::Cloud,
    };
    store.set_webhook(&id, Some(&webhook)).map_err(ApiError::internal)?;
    Ok(Json(view(&state, &number)?))
}

/// Meta's verification: `GET url?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...`
/// must answer 2xx with the challenge as its body.
async fn verify(webhook: &CloudWebhook) -> Result<(), ApiError> {
    let challenge = format!("{}", rand::random::<u64>() % 9_000_000_000 + 1_000_000_000);
    let mut url = reqwest::Url::parse(&webhook.url)
        .map_err(|e| ApiError::bad_request(format!("webhook.url '{}' is not a URL: {e}", webhook.url)))?;
    url.query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.verify_token", &webhook.verify_token)
        .append_pair("hub.challenge", &challenge);
    let client = reqwest::Client::builder()
        .timeout(VERIFY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(ApiError::internal)?;
    let failed = |why: String| {
        ApiError::bad_request(format!(
            "the webhook did not pass Meta's verification (GET {}?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...): {why}",
            webhook.url
        ))
    };
    let response = client.get(url).send().await.map_err(|e| failed(e.without_url().to_string()))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(failed(format!("it answered {status}")));
    }
    if body.trim().trim_matches('"') != challenge {
        let shown: String = body.chars().take(80).collect();
        return Err(failed(format!("it answered '{shown}' instead of the challenge {challenge}")));
    }
    Ok(())
}

/// Stops exposing the session as a Cloud API number; its Cloud-form webhook goes too.
#[utoipa::path(delete, path = "/v1/sessions/{id}/cloud-api", tag = "cloud",
    params(("id" = String, Path, description = "The session id")), responses(
    (status = 204, description = "Removed"),
    (status = 404, description = "No such session, or it was not a Cloud API number", body = ErrorBody),
))]
async fn remove(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.manager.get(&id).ok_or(SessionError::NotFound)?;
    let store = state.manager.store();
    if !store.remove_cloud_number(&id).await.map_err(ApiError::internal)? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "this session is not a Cloud API number"));
    }
    if store.session_webhook(&id).map_err(ApiError::internal)?.is_some_and(|w| w.format == WebhookFormat::Cloud) {
        store.set_webhook(&id, None).map_err(ApiError::internal)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
