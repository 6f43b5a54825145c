//! Who may call `/v1`: anyone on this machine; from elsewhere only with
//! `Authorization: Bearer <WAGATE_API_KEY>`, and nobody when no key is configured.
//! The console's static files follow the same rule, except that a remote browser loads
//! them without the key (it cannot send one yet): they hold no data, and every call the
//! page makes needs the key it then asks for.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;

pub async fn require_key(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    authorize(peer.ip(), presented, state.api_key.as_deref())?;
    Ok(next.run(request).await)
}

/// For the console's files: anyone on this machine, and from elsewhere only when a key is
/// configured (without one the API answers nobody remote, so the page could do nothing).
pub async fn require_page_access(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !peer.ip().is_loopback() && state.api_key.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the console only answers this machine unless WAGATE_API_KEY is set",
        ));
    }
    Ok(next.run(request).await)
}

/// The rule itself: loopback is trusted; anyone else needs the configured key.
pub fn authorize(peer: IpAddr, authorization: Option<&str>, api_key: Option<&str>) -> Result<(), ApiError> {
    if peer.is_loopback() {
        return Ok(());
    }
    let Some(expected) = api_key else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the API only answers this machine unless WAGATE_API_KEY is set",
        ));
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_trusted_and_others_need_the_key() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let local6: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(authorize(local, None, None).is_ok());
        assert!(authorize(local6, None, Some("k")).is_ok());
        assert_eq!(authorize(remote, None, None).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(authorize(remote, Some("Bearer k"), None).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(authorize(remote, None, Some("k")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(authorize(remote, Some("Bearer x"), Some("k")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(authorize(remote, Some("k"), Some("k")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(authorize(remote, Some("Bearer k"), Some("k")).is_ok());
    }
}
