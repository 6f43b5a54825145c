//! `/v1/sessions/{id}/groups`: the groups the session's account is in.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::engine::GroupInfo;
use crate::http::error::ApiError;
use crate::http::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/sessions/{id}/groups", get(list)).route("/v1/sessions/{id}/groups/{group}", get(show))
}

/// The list shows each group without its member list, which can be long.
fn summary(group: &GroupInfo) -> Value {
    json!({
        "id": group.id,
        "subject": group.subject,
        "owner": group.owner,
        "owner_phone": group.owner_phone,
        "creation": group.creation,
        "participants_count": group.participants.len(),
    })
}

async fn list(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let groups = state.manager.groups(&id).await?;
    Ok(Json(json!({ "groups": groups.iter().map(summary).collect::<Vec<_>>() })))
}

/// `{group}` is a group JID (`120363...@g.us`) or its digits.
async fn show(
    State(state): State<Arc<AppState>>,
    Path((id, group)): Path<(String, String)>,
) -> Result<Json<GroupInfo>, ApiError> {
    let jid = super::messages::recipient_jid(&group)?;
    if !jid.ends_with("@g.us") {
        return Err(ApiError::bad_request(format!("'{group}' is not a group id")));
    }
    state
        .manager
        .group(&id, &jid)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("the session is not in a group {jid}")))
}
