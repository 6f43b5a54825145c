//! Any node answers: a request for a session that another node runs is sent on to that node,
//! once, and its answer (an event stream included) handed back as it comes.
//!
//! The layer sits behind the API key check: this node has already admitted the caller, and
//! vouches for it to the owner with the cluster's shared key (every node runs with the same
//! `--api-key`). A forwarded request carries `x-wagate-forwarded-by`; a node never forwards
//! such a request again, so a disagreement about ownership costs one answer, not a loop.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use crate::http::error::ApiError;
use crate::http::AppState;

/// Names the node that forwarded a request.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-wagate-forwarded-by");

/// The largest body looked into for a `sessionId` (the compat API's requests carry files of
/// at most 16 MB in base64).
const MAX_INSPECTED_BODY: usize = 32 << 20;

static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("the forwarding client builds")
});

/// Hop-by-hop headers, which stay with their connection.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::CONTENT_LENGTH,
];

/// The session a request is about, from its path (`/v1/sessions/{id}...`, `/sessions/{id}`)
/// or, for the compat API's POSTs, its JSON body's `sessionId`.
fn session_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/sessions/").or_else(|| path.strip_prefix("/sessions/"))?;
    let id = rest.split('/').next()?;
    let compat_verbs =
        ["start", "send", "check-number", "contact-info", "group-metadata", "subscribe-presence", "pair-code"];
    if id.is_empty() || (path.starts_with("/sessions/") && compat_verbs.contains(&id)) {
        return None;
    }
    Some(id)
}

pub async fn forward_if_elsewhere(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.manager.cluster().cloned() else { return next.run(request).await };
    if request.headers().contains_key(&FORWARDED_BY) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    let creates = request.method() == axum::http::Method::POST && (path == "/v1/sessions" || path == "/sessions/start");
    let (request, session) = match session_of_path(&path) {
        Some(id) => (request, Some(id.to_string())),
        None if request.method() == axum::http::Method::POST && (path.starts_with("/sessions/") || creates) => {
            match session_in_body(request).await {
                Ok(found) => found,
                Err(response) => return response,
            }
        }
        None => (request, None),
    };
    if let Some(node) = node_of_path(&path) {
        return forward_to_node(state.clone(), &cluster, node.to_string(), request, next).await;
    }
    let Some(session) = session else { return next.run(request).await };
    if state.manager.get(&session).is_some() {
        return next.run(request).await;
    }
    let owner = match cluster.owner(&session).await {
        Ok(owner) => owner,
        Err(e) => {
            return ApiError::from(e).into_response();
        }
    };
    match owner {
        Some(owner) if owner.node != cluster.node_id() => {
            let key = state.access.api_key.clone();
            forward(request, &owner.advertise_url, cluster.node_id(), key.as_deref()).await
        }
        Some(_) => next.run(request).await,
        // A new session goes to the live node with the most free room.
        None if creates => match cluster.placement().await {
            Ok(Some(node)) if node.id != cluster.node_id() => {
                let key = state.access.api_key.clone();
                forward(request, &node.advertise_url, cluster.node_id(), key.as_deref()).await
            }
            _ => next.run(request).await,
        },
        // Nobody runs it (its lease lapsed): this node takes it, if asked to.
        None => next.run(request).await,
    }
}

/// The node a `/v1/nodes/{id}/...` request is about (its drain), when it names one.
fn node_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/nodes/")?;
    let (id, tail) = rest.split_once('/')?;
    (!id.is_empty() && !tail.is_empty()).then_some(id)
}

/// A request about another node goes to that node; one about this node, or a node nobody
/// knows, is answered here.
async fn forward_to_node(
    state: Arc<AppState>,
    cluster: &Arc<crate::cluster::Cluster>,
    node: String,
    request: Request,
    next: Next,
) -> Response {
    if node == cluster.node_id() {
        return next.run(request).await;
    }
    match cluster.nodes().await {
        Ok(nodes) => match nodes.into_iter().find(|n| n.id == node) {
            Some(row) => {
                let key = state.access.api_key.clone();
                forward(request, &row.advertise_url, cluster.node_id(), key.as_deref()).await
            }
            None => next.run(request).await,
        },
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Asks another node for `path` (a GET, answered by that node alone) and reads its JSON
/// answer, within `wait`.
pub async fn ask<T: serde::de::DeserializeOwned>(
    node_url: &str,
    path: &str,
    me: &str,
    api_key: Option<&str>,
    wait: Duration,
) -> Result<T, String> {
    let url = format!("{}{}", node_url.trim_end_matches('/'), path);
    let mut request = CLIENT.get(&url).timeout(wait).header(FORWARDED_BY, me);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let answer = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    answer.json::<T>().await.map_err(|e| format!("{url}: {e}"))
}

/// Reads the body (within a bound) for its `sessionId`, and puts it back.
async fn session_in_body(request: Request) -> Result<(Request, Option<String>), Response> {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, MAX_INSPECTED_BODY).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_INSPECTED_BODY} bytes"))
            .into_response()
    })?;
    let session = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("sessionId").or_else(|| v.get("id")).and_then(|s| s.as_str()).map(str::to_string));
    Ok((Request::from_parts(parts, Body::from(bytes)), session))
}

async fn forward(request: Request, owner_url: &str, me: &str, api_key: Option<&str>) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", owner_url.trim_end_matches('/'), path_and_query);
    let mut headers = parts.headers.clone();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // This node admitted the caller; the owner hears it from the cluster's key.
    if let Some(key) = api_key {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
            headers.insert(header::AUTHORIZATION, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(me) {
        headers.insert(FORWARDED_BY, value);
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let sent =
        CLIENT.request(parts.method, &url).headers(headers).body(reqwest::Body::wrap_stream(stream)).send().await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                cause.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the node that runs this session ({owner_url}) did not answer: {cause}"),
            )
            .into_response();
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(name) {
            response = response.header(name, value);
        }
    }
    response.body(Body::from_stream(answer.bytes_stream())).unwrap_or_else(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("the owner's answer could not be passed on: {e}"))
            .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::session_of_path;

    #[test]
    fn the_session_is_found_in_native_and_compat_paths() {
        assert_eq!(session_of_path("/v1/sessions/WA-1"), Some("WA-1"));
        assert_eq!(session_of_path("/v1/sessions/WA-1/messages"), Some("WA-1"));
        assert_eq!(session_of_path("/sessions/WA-1/status"), Some("WA-1"));
        assert_eq!(session_of_path("/sessions/start"), None, "in the body");
        assert_eq!(session_of_path("/v1/sessions"), None);
        assert_eq!(session_of_path("/v1/sessions/"), None);
        assert_eq!(session_of_path("/health"), None);
    }

    #[test]
    fn a_node_is_found_in_the_paths_of_its_operations() {
        use super::node_of_path;
        assert_eq!(node_of_path("/v1/nodes/b/drain"), Some("b"));
        assert_eq!(node_of_path("/v1/nodes"), None);
        assert_eq!(node_of_path("/v1/nodes/b"), None, "no operation on a node itself");
        assert_eq!(node_of_path("/v1/nodes//drain"), None);
    }
}
