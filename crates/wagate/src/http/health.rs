//! `GET /health`: what operators curl for (`"connected": 1`). Everyone sees the status and
//! the counts; session ids, numbers and names, and the process id, only callers allowed
//! on `/v1` (local, or with the key).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::trust::Caller;
use super::AppState;
use crate::session::state::timestamp;
use crate::session::StateKind;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<Arc<AppState>>, caller: Extension<Caller>, headers: HeaderMap) -> Json<Value> {
    let insider = state.access.authorize(caller.0, &headers).is_ok();
    let sessions = state.manager.list();
    let count = |kind: StateKind| sessions.iter().filter(|s| s.state == kind).count();
    let connected = count(StateKind::Connected);
    let qr_pending = count(StateKind::AwaitingScan);
    let list: Vec<Value> = sessions
        .iter()
        .map(|s| json!({ "id": s.id, "state": s.state, "reason": s.reason, "since": s.since, "me": s.me }))
        .collect();
    let mut body = json!({
        "status": "healthy",
        "uptime": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "sessions": {
            "total": sessions.len(),
            "connected": connected,
            "disconnected": sessions.len() - connected - qr_pending,
            "qrPending": qr_pending,
            // Linked sessions restored at start that have not had their turn to reconnect.
            "waitingToReconnect": state.manager.waiting_to_reconnect(),
        },
        "timestamp": timestamp(chrono::Utc::now()),
    });
    if insider {
        body["startedAt"] = timestamp(state.started_at).into();
        body["pid"] = std::process::id().into();
        body["memory"] = json!({ "rss": resident_memory_bytes() });
        body["sessionList"] = list.into();
    }
    Json(body)
}

/// The process's resident memory, from /proc (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
