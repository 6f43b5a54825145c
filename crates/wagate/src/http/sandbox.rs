//! `/v1/sandbox` (routed only by `wagate sandbox`): what the sandbox offers, and a simulated
//! phone scanning a session's QR code.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, JsonBody};
use super::AppState;
use crate::sandbox::{Sandbox, SandboxError, SandboxInfo};
use crate::session::{SessionError, StateKind};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(describe)).routes(routes!(scan))
}

fn sandbox(state: &AppState) -> Result<&Arc<Sandbox>, ApiError> {
    state.sandbox.as_ref().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this gateway is not a sandbox"))
}

/// What the sandbox offers: its simulator and the simulated contact.
#[utoipa::path(get, path = "/v1/sandbox", tag = "sandbox", responses(
    (status = 200, description = "The sandbox", body = SandboxInfo),
))]
async fn describe(State(state): State<Arc<AppState>>) -> Result<Json<SandboxInfo>, ApiError> {
    Ok(Json(sandbox(&state)?.describe()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    /// The session whose QR code the phone scans.
    session: String,
}

#[derive(Serialize, ToSchema)]
struct ScanAnswer {
    session: String,
    /// The simulated phone's number.
    phone: String,
    /// The linked device's JID.
    jid: String,
    /// What happens next, in words.
    next: &'static str,
}

/// A fresh simulated phone scans the session's current QR code. Answers once the pairing
/// is signed; the session's 515 restart and login follow on its event stream.
#[utoipa::path(post, path = "/v1/sandbox/scan", tag = "sandbox", request_body = ScanRequest, responses(
    (status = 200, description = "Scanned; the session links", body = ScanAnswer),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 409, description = "The session is not waiting for a scan, or its QR code changed meanwhile", body = ErrorBody),
    (status = 502, description = "The simulator refused or did not answer", body = ErrorBody),
    (status = 503, description = "The gateway is shutting down", body = ErrorBody),
))]
async fn scan(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<ScanRequest>,
) -> Result<Json<ScanAnswer>, ApiError> {
    let sandbox = sandbox(&state)?;
    let view = state.manager.get(&body.session).ok_or(SessionError::NotFound)?;
    let (StateKind::AwaitingScan, Some(qr)) = (view.state, view.qr.as_deref()) else {
        return Err(ApiError::conflict(format!(
            "the session is not waiting for a scan (state: {}); connect it first",
            view.state.as_str()
        )));
    };
    let scanned = sandbox.scan(qr).await.map_err(|e| scan_failed(&body.session, e))?;
    Ok(Json(ScanAnswer {
        session: body.session,
        phone: scanned.phone,
        jid: scanned.jid,
        next: "the session restarts once (515, normal after pairing) and connects",
    }))
}

fn scan_failed(session: &str, error: SandboxError) -> ApiError {
    tracing::warn!(session, "sandbox: the simulated phone could not scan the QR code: {error}");
    match error {
        // The code rotated or its connection went while the phone scanned it.
        SandboxError::Refused { status: 404 | 410, message } => {
            ApiError::conflict(format!("the QR code changed while the phone scanned it ({message}); try again"))
        }
        SandboxError::Refused { status: 409, message } => ApiError::conflict(message),
        SandboxError::Refused { message, .. } => ApiError::new(StatusCode::BAD_GATEWAY, message),
        SandboxError::Control { .. } | SandboxError::Timeout(_) => {
            ApiError::new(StatusCode::BAD_GATEWAY, error.to_string())
        }
        SandboxError::Session(e) => e.into(),
        other => ApiError::internal(other),
    }
}
