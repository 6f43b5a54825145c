//! The HTTP side: the native API under `/v1`, `/health`, the compat API of COMPAT.md at the
//! root, `/metrics`, and the operators' web page at `/console`.

mod auth;
mod compat;
mod console;
pub mod error;
mod health;
mod media_input;
pub use health::resident_memory_bytes;
pub mod qr;
pub mod trust;
mod v1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::middleware;
use axum::Router;
use tokio::net::TcpListener;

use crate::session::SessionManager;

pub struct AppState {
    pub manager: Arc<SessionManager>,
    pub access: trust::Access,
    pub started: Instant,
    /// The same moment on the wall clock, for `/health`.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let guarded = v1::routes()
        .merge(compat::routes())
        .route("/metrics", axum::routing::get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(guarded)
        .merge(console::routes(state.clone()))
        .merge(health::routes())
        .layer(middleware::from_fn_with_state(state.clone(), auth::screen))
        .with_state(state)
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> impl axum::response::IntoResponse {
    let body = crate::metrics::METRICS.render(&state.manager);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
