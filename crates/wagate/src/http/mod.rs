//! The HTTP side: the native API under `/v1`, `/health`, the compat API of COMPAT.md at the
//! root, `/metrics`, and the operators' web page at `/console`.

mod auth;
mod cloud;
mod compat;
mod console;
pub mod error;
mod health;
mod media_input;
pub use health::resident_memory_bytes;
mod openapi;
pub mod qr;
#[cfg(feature = "sandbox")]
mod sandbox;
pub mod trust;
mod v1;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::middleware;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::session::SessionManager;

pub struct AppState {
    pub manager: Arc<SessionManager>,
    pub access: trust::Access,
    pub started: Instant,
    /// The same moment on the wall clock, for `/health`.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Room for the open `/v1/sessions/{id}/events` streams.
    pub event_streams: EventStreams,
    /// Set by `wagate sandbox` only: then `/v1/sandbox` and the console's simulated scan
    /// exist; otherwise (`wagate serve`) they are not routed at all.
    #[cfg(feature = "sandbox")]
    pub sandbox: Option<Arc<crate::sandbox::Sandbox>>,
}

/// What clients may hold of the HTTP server, together.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection that has not sent a whole request header within this is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one ends.
    pub max_connections: usize,
    /// Event streams (`GET /v1/sessions/{id}/events`) open at once; more get 503.
    pub max_event_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), max_connections: 1024, max_event_streams: 256 }
    }
}

/// A fixed number of slots for event streams; a stream holds one until it ends.
#[derive(Debug, Clone)]
pub struct EventStreams {
    slots: Arc<Semaphore>,
    max: usize,
}

impl EventStreams {
    pub fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// A slot, or the 503 that says none is free.
    pub fn open(&self) -> Result<OwnedSemaphorePermit, error::ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            error::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many event streams are open (at most {}, --max-event-streams); close one and try again",
                    self.max
                ),
            )
        })
    }
}

impl Default for EventStreams {
    fn default() -> Self {
        Self::new(Limits::default().max_event_streams)
    }
}

/// Every route, with its OpenAPI description: a route is only ever added through
/// `OpenApiRouter::routes`, which takes its path and methods from the handler's
/// `#[utoipa::path]`, so what is served and what is documented are one list (checked by
/// the tests of `openapi.rs` against axum's own route table).
pub fn router(state: Arc<AppState>) -> Router {
    let (router, _) = documented_router(state);
    router
}

/// The router and its OpenAPI document, as `GET /v1/openapi.json` serves it.
pub fn documented_router(state: Arc<AppState>) -> (Router, Arc<String>) {
    let api = v1::routes().merge(cloud::config_routes()).merge(compat::routes()).routes(routes!(metrics));
    #[cfg(feature = "sandbox")]
    let api = if state.sandbox.is_some() { api.merge(sandbox::routes()) } else { api };
    // Behind the key check: a request is admitted here before it is sent on to the node that
    // runs its session.
    let guarded = api
        .layer(middleware::from_fn_with_state(state.clone(), crate::cluster::forward::forward_if_elsewhere))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_key));
    let guarded_paths: Vec<String> = guarded.get_openapi().paths.paths.keys().cloned().collect();
    let (router, document) = OpenApiRouter::new()
        .merge(guarded)
        .merge(console::routes(state.clone()))
        .merge(health::routes())
        // Meta's Cloud API: its own token on every call instead of the key rule of /v1.
        .merge(cloud::routes())
        // The document holds nothing secret; the console links to it without the key.
        .routes(routes!(openapi::document))
        .split_for_parts();
    let document = Arc::new(openapi::finish(document, &guarded_paths));
    // The screen sees every request, unknown paths and methods included, before routing.
    let router = router
        .fallback(error::no_route)
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), auth::screen))
        .layer(Extension(document.clone()))
        .with_state(state);
    (router, document)
}

/// Prometheus metrics: sessions by state, messages, webhook deliveries, the process.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus' text format", content((String = "text/plain; version=0.0.4; charset=utf-8"))),
))]
async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> impl axum::response::IntoResponse {
    let body = crate::metrics::METRICS.render(&state.manager);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// Serves HTTP/1.1 until `shutdown` completes, then waits for the open connections to end.
/// At most `limits.max_connections` connections are served at once (the rest wait in the
/// listen backlog), and one that does not send a whole request header within
/// `limits.header_read_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A connection is accepted only when there is room for it.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers go out at once rather than waiting on the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // What `into_make_service_with_connect_info` would record: the auth middleware reads it.
            request.extensions_mut().insert(ConnectInfo(peer));
            // A Router is always ready, so it may be called without `poll_ready`.
            tower_service::Service::call(&mut app.clone(), request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(client = %peer, "HTTP connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed `accept`: the client gave up already (try the next one), or the process is out
/// of file descriptors or memory (wait a moment rather than spin).
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(error.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted) {
        return;
    }
    tracing::warn!("accepting an HTTP connection failed: {error}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
