//! The access rules of [`super::trust`] applied to requests: every request is screened
//! (its `Host`, and whether a browser sends it for another site); `/v1`, the compat API
//! and `/metrics` answer local callers, or callers with the key. The console's static
//! files follow the same rule, except that a remote browser loads them without the key (it
//! cannot send one yet) when a key is configured: they hold no data, and every call the
//! page makes needs the key it then asks for.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use tracing::debug;

use super::error::ApiError;
use super::trust::{check_not_cross_site, Caller};
use super::AppState;

/// Every request: another site's `Host` (DNS rebinding) gets 421, a state-changing request
/// a browser sends for another site 403/415. Records who the caller is for the handlers.
pub async fn screen(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.access.check_host(request.headers())?;
    // The Cloud API takes multipart and raw uploads, and every call there needs a bearer
    // token, which no foreign page can make a browser send.
    if !request.uri().path().starts_with("/cloud/") {
        check_not_cross_site(request.method(), request.headers())?;
    }
    let caller = state.access.caller(peer.ip(), request.headers());
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

fn caller_of(state: &AppState, peer: SocketAddr, request: &Request) -> Caller {
    match request.extensions().get::<Caller>() {
        Some(caller) => *caller,
        None => state.access.caller(peer.ip(), request.headers()),
    }
}

pub async fn require_key(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = caller_of(&state, peer, &request);
    if let Err(refused) = state.access.authorize(caller, request.headers()) {
        debug!(client = %caller.address, path = %request.uri().path(), "refused a request without a valid API key");
        return Err(refused);
    }
    Ok(next.run(request).await)
}

/// For the console's files: local callers, and remote ones only when a key is configured
/// (without one the API answers nobody remote, so the page could do nothing).
pub async fn require_page_access(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !caller_of(&state, peer, &request).local && state.access.api_key.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the console only answers this machine unless WAGATE_API_KEY is set",
        ));
    }
    Ok(next.run(request).await)
}
