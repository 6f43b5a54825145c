//! `/v1/sandbox` (routed only by `wagate sandbox`): what the sandbox offers, and a simulated
//! phone scanning a session's QR code.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::sandbox::{Sandbox, SandboxError};
use crate::session::{SessionError, StateKind};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/sandbox", get(describe)).route("/v1/sandbox/scan", post(scan))
}

fn sandbox(state: &AppState) -> Result<&Arc<Sandbox>, ApiError> {
    state.sandbox.as_ref().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this gateway is not a sandbox"))
}

async fn describe(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(sandbox(&state)?.describe()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    session: String,
}

/// A fresh simulated phone scans the session's current QR code. Answers once the pairing
/// is signed; the session's 515 restart and login follow on its event stream.
async fn scan(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<ScanRequest>,
) -> Result<Json<Value>, ApiError> {
    let sandbox = sandbox(&state)?;
    let view = state.manager.get(&body.session).ok_or(SessionError::NotFound)?;
    let (StateKind::AwaitingScan, Some(qr)) = (view.state, view.qr.as_deref()) else {
        return Err(ApiError::conflict(format!(
            "the session is not waiting for a scan (state: {}); connect it first",
            view.state.as_str()
        )));
    };
    let scanned = sandbox.scan(qr).await.map_err(|e| scan_failed(&body.session, e))?;
    Ok(Json(json!({
        "session": body.session,
        "phone": scanned.phone,
        "jid": scanned.jid,
        "next": "the session restarts once (515, normal after pairing) and connects",
    })))
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
