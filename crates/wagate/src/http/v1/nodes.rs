//! `/v1/nodes`: the nodes of a cluster (several wagate on one PostgreSQL), their leases and
//! room; draining a node; moving a session to another node. A gateway that runs alone has
//! no nodes: these answer 404 there.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::SessionId;
use crate::cluster::{Cluster, MoveError, NodeRow};
use crate::http::error::{ApiError, ErrorBody, JsonBody};
use crate::http::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(drain, resume)).routes(routes!(move_session))
}

type ApiResult<T> = Result<T, ApiError>;

fn cluster(state: &AppState) -> ApiResult<&Arc<Cluster>> {
    state.manager.cluster().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this gateway runs alone (no --database): it has no nodes; docs/cluster.md says how to run several",
        )
    })
}

/// A node, its leases and its room.
#[derive(Serialize, ToSchema)]
struct NodeView {
    #[serde(flatten)]
    row: NodeRow,
    /// The node that answered this request.
    this: bool,
    /// The sessions whose lease it holds now.
    leases: Vec<String>,
}

/// Every node that has joined the cluster, alive or not, with the sessions it runs.
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", responses(
    (status = 200, description = "The nodes", body = Vec<NodeView>),
    (status = 404, description = "This gateway runs alone", body = ErrorBody),
    (status = 503, description = "The cluster's database did not answer", body = ErrorBody),
))]
async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<NodeView>>> {
    let cluster = cluster(&state)?;
    let nodes = cluster.nodes().await?;
    let mut leases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (session, owner) in cluster.owners().await? {
        leases.entry(owner).or_default().push(session);
    }
    for sessions in leases.values_mut() {
        sessions.sort();
    }
    Ok(Json(
        nodes
            .into_iter()
            .map(|row| NodeView {
                this: row.id == cluster.node_id(),
                leases: leases.remove(&row.id).unwrap_or_default(),
                row,
            })
            .collect(),
    ))
}

/// The path parameter of `/v1/nodes/{id}/...`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct NodeId {
    /// The node's id (`--node-id`).
    #[allow(dead_code)]
    id: String,
}

#[derive(Serialize, ToSchema)]
struct Drained {
    node: String,
    /// Always true after a drain: the node takes no sessions until it is resumed or restarted.
    draining: bool,
    /// How many sessions it handed over (the other nodes take them within a second or two).
    handed_over: u64,
}

/// The node answering must be the one named (another node's request was forwarded to it).
fn this_node<'a>(state: &'a AppState, id: &str) -> ApiResult<&'a Arc<Cluster>> {
    let cluster = cluster(state)?;
    if id != cluster.node_id() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("there is no node '{id}' (GET /v1/nodes lists them)"),
        ));
    }
    Ok(cluster)
}

/// Drains a node: it closes its sessions and lets their leases go, so the other nodes take
/// them over at once, and takes no sessions until resumed. Any node forwards this to the
/// node named.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "cluster", params(NodeId), responses(
    (status = 200, description = "Drained", body = Drained),
    (status = 404, description = "No such node, or this gateway runs alone", body = ErrorBody),
))]
async fn drain(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Drained>> {
    let cluster = this_node(&state, &id)?;
    let handed_over = cluster.drain().await;
    Ok(Json(Drained { node: id, draining: true, handed_over }))
}

#[derive(Serialize, ToSchema)]
struct Resumed {
    node: String,
    /// Always false: the node takes sessions again (new ones, and lapsed leases).
    draining: bool,
}

/// Ends a drain: the node takes sessions again (new ones, and its share of the lapsed
/// leases; the sessions it handed over stay where they went).
#[utoipa::path(delete, path = "/v1/nodes/{id}/drain", tag = "cluster", params(NodeId), responses(
    (status = 200, description = "The node takes sessions again", body = Resumed),
    (status = 404, description = "No such node, or this gateway runs alone", body = ErrorBody),
    (status = 503, description = "The cluster's database did not answer", body = ErrorBody),
))]
async fn resume(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Resumed>> {
    let cluster = this_node(&state, &id)?;
    cluster.resume().await?;
    Ok(Json(Resumed { node: id, draining: false }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    /// The node to run the session from now on.
    #[schema(min_length = 1)]
    node: String,
}

#[derive(Serialize, ToSchema)]
struct MoveDone {
    session: String,
    from: String,
    to: String,
    /// From closing the session on its former node to the new node holding its lease; it
    /// reconnects there without a QR code.
    took_ms: u64,
}

/// Moves a session to another node: its node closes it and offers its lease to that node
/// alone, which takes it and reconnects it without a QR code. Answers once the new node
/// holds the lease.
#[utoipa::path(post, path = "/v1/sessions/{id}/move", tag = "cluster", params(SessionId), request_body = MoveRequest,
    responses(
        (status = 200, description = "Moved", body = MoveDone),
        (status = 400, description = "No node named", body = ErrorBody),
        (status = 404, description = "No such session or node, or this gateway runs alone", body = ErrorBody),
        (status = 409, description = "The node is the session's own, or is down, draining or full", body = ErrorBody),
        (status = 503, description = "No node runs the session, or the database did not answer", body = ErrorBody),
        (status = 504, description = "The node did not take the session in time (it stays offered to it)", body = ErrorBody),
))]
async fn move_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MoveRequest>,
) -> ApiResult<Json<MoveDone>> {
    let cluster = cluster(&state)?;
    if body.node.is_empty() {
        return Err(ApiError::bad_request("name the node to move the session to: {\"node\": \"...\"}"));
    }
    if state.manager.get(&id).is_none() {
        let registered = state.manager.store().session(&id).map_err(ApiError::internal)?.is_some();
        return Err(if registered {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no node runs session '{id}' right now; try again"))
        } else {
            crate::session::SessionError::NotFound.into()
        });
    }
    let moved = cluster.move_to(&id, &body.node).await.map_err(|e| {
        let status = match &e {
            MoveError::NoSuchNode(_) => StatusCode::NOT_FOUND,
            MoveError::AlreadyThere(_)
            | MoveError::NodeDown(..)
            | MoveError::NodeDraining(_)
            | MoveError::NodeFull(..) => StatusCode::CONFLICT,
            MoveError::NotHere(_) | MoveError::Lease(_) => StatusCode::SERVICE_UNAVAILABLE,
            MoveError::NotTaken(..) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError::new(status, e.to_string())
    })?;
    Ok(Json(MoveDone { session: id, from: moved.from, to: moved.to, took_ms: moved.took.as_millis() as u64 }))
}
