//! `GET /health`: what operators curl for (`"connected": 1`).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
use crate::session::state::timestamp;
use crate::session::StateKind;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let sessions = state.manager.list();
    let count = |kind: StateKind| sessions.iter().filter(|s| s.state == kind).count();
    let connected = count(StateKind::Connected);
    let qr_pending = count(StateKind::AwaitingScan);
    let list: Vec<Value> = sessions
        .iter()
        .map(|s| json!({ "id": s.id, "state": s.state, "reason": s.reason, "since": s.since, "me": s.me }))
        .collect();
    Json(json!({
        "status": "healthy",
        "uptime": state.started.elapsed().as_secs(),
        "startedAt": timestamp(state.started_at),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "memory": { "rss": resident_memory_bytes() },
        "sessions": {
            "total": sessions.len(),
            "connected": connected,
            "disconnected": sessions.len() - connected - qr_pending,
            "qrPending": qr_pending,
        },
        "sessionList": list,
        "timestamp": timestamp(chrono::Utc::now()),
    }))
}

/// The process's resident memory, from /proc (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
