//! `/v1/sessions/{id}/groups`: the groups the session's account is in.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::SessionId;
use crate::engine::GroupInfo;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(show))
}

/// A group without its member list, which can be long.
#[derive(Serialize, ToSchema)]
struct GroupSummary {
    /// The group JID, `<digits>@g.us`.
    id: String,
    subject: String,
    owner: Option<String>,
    owner_phone: Option<String>,
    /// Seconds since the epoch.
    creation: Option<u64>,
    participants_count: usize,
}

impl GroupSummary {
    fn of(group: &GroupInfo) -> Self {
        Self {
            id: group.id.clone(),
            subject: group.subject.clone(),
            owner: group.owner.clone(),
            owner_phone: group.owner_phone.clone(),
            creation: group.creation,
            participants_count: group.participants.len(),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct GroupList {
    groups: Vec<GroupSummary>,
}

/// The groups the session's account is in.
#[utoipa::path(get, path = "/v1/sessions/{id}/groups", tag = "groups", params(SessionId), responses(
    (status = 200, description = "The groups", body = GroupList),
    (status = 404, description = "No such session", body = ErrorBody),
    (status = 409, description = "The session is not connected", body = ErrorBody),
    (status = 502, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn list(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<GroupList>, ApiError> {
    let groups = state.manager.groups(&id).await?;
    Ok(Json(GroupList { groups: groups.iter().map(GroupSummary::of).collect() }))
}

/// One group with its members.
#[utoipa::path(get, path = "/v1/sessions/{id}/groups/{group}", tag = "groups",
    params(SessionId, ("group" = String, Path, description = "A group JID (`120363...@g.us`) or its digits")),
    responses(
        (status = 200, description = "The group", body = GroupInfo),
        (status = 400, description = "Not a group id", body = ErrorBody),
        (status = 404, description = "No such session, or the account is not in that group", body = ErrorBody),
        (status = 409, description = "The session is not connected", body = ErrorBody),
        (status = 502, description = "WhatsApp did not answer", body = ErrorBody),
))]
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
