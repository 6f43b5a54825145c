//! `GET /health`: what operators curl for (`"connected": 1`). Everyone sees the status and
//! the counts; session ids, numbers and names, and the process id, only callers allowed
//! on `/v1` (local, or with the key).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Extension;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::trust::Caller;
use super::AppState;
use crate::cluster::overview::{self, NodeSession};
use crate::engine::Me;
use crate::session::state::timestamp;
use crate::session::StateKind;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(health))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// Always `healthy`: whoever gets an answer reached a running gateway.
    status: &'static str,
    /// Seconds since the gateway started.
    uptime: u64,
    version: &'static str,
    sessions: SessionCounts,
    timestamp: String,
    /// On a cluster: the node that answered (the counts are the whole cluster's).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// The rest only for callers allowed on `/v1` (this machine, or with the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_list: Option<Vec<SessionLine>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionCounts {
    total: usize,
    connected: usize,
    /// Neither connected nor waiting for a scan.
    disconnected: usize,
    qr_pending: usize,
    /// Linked sessions restored at start that have not had their turn to reconnect yet.
    waiting_to_reconnect: usize,
}

#[derive(Serialize, ToSchema)]
struct Memory {
    /// Resident memory in bytes; null where /proc is missing.
    rss: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct SessionLine {
    id: String,
    state: StateKind,
    reason: Option<String>,
    since: String,
    me: Option<Me>,
    /// On a cluster: the node that runs it (absent when none does).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

/// What operators and monitors poll: the status and the session counts for everyone;
/// session ids, numbers and the process for callers allowed on `/v1`. Answers from the
/// first second after start, whatever the number of sessions.
#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses(
    (status = 200, description = "The gateway runs", body = Health),
))]
async fn health(State(state): State<Arc<AppState>>, caller: Extension<Caller>, headers: HeaderMap) -> Json<Health> {
    let insider = state.access.authorize(caller.0, &headers).is_ok();
    let cluster = state.manager.cluster();
    // On a cluster the counts and the list are the cluster's (the other nodes are asked
    // briefly; a node that does not answer shows its sessions as unreachable).
    let sessions = match cluster {
        Some(cluster) => overview::everywhere(&state.manager, cluster, state.access.api_key.as_deref()).await,
        None => overview::local(&state.manager),
    };
    let count = |kind: StateKind| sessions.iter().filter(|s| s.view.state == kind).count();
    let connected = count(StateKind::Connected);
    let qr_pending = count(StateKind::AwaitingScan);
    let mut body = Health {
        status: "healthy",
        uptime: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
        sessions: SessionCounts {
            total: sessions.len(),
            connected,
            disconnected: sessions.len() - connected - qr_pending,
            qr_pending,
            waiting_to_reconnect: state.manager.waiting_to_reconnect(),
        },
        timestamp: timestamp(chrono::Utc::now()),
        node: cluster.map(|c| c.node_id().to_string()),
        started_at: None,
        pid: None,
        memory: None,
        session_list: None,
    };
    if insider {
        body.started_at = Some(timestamp(state.started_at));
        body.pid = Some(std::process::id());
        body.memory = Some(Memory { rss: resident_memory_bytes() });
        body.session_list = Some(
            sessions
                .into_iter()
                .map(|NodeSession { view: s, node }| SessionLine {
                    id: s.id,
                    state: s.state,
                    reason: s.reason,
                    since: s.since,
                    me: s.me,
                    node,
                })
                .collect(),
        );
    }
    Json(body)
}

/// The process's resident memory, from /proc (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
