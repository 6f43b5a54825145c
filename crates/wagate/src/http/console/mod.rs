//! `/console`: a small web page for operators (sessions, live QR code, pairing code, logout)
//! served from the binary. Plain HTML, CSS and JavaScript embedded at build time; the page
//! itself holds no data and does everything through the native API, with the same key rule.

use std::sync::Arc;

use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::{auth, AppState};

const PAGE: &str = include_str!("index.html");
const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");
const ICON: &str = include_str!("favicon.svg");

/// Only our own files, nothing inline, no other origin: an injected script could read the
/// API key the page keeps. `blob:` images are the QR codes fetched with that key.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
     connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `wagate sandbox`'s additions to the page: the simulated phone's scan button and the
/// simulated contact, in a script of their own that only a sandbox serves.
#[cfg(feature = "sandbox")]
mod sandbox {
    use std::sync::LazyLock;

    pub const SCRIPT: &str = include_str!("sandbox.js");
    const CONSOLE_TAG: &str = r#"<script src="console/console.js" defer></script>"#;

    /// The page with the sandbox's script after the console's.
    pub static PAGE: LazyLock<String> = LazyLock::new(|| {
        assert!(super::PAGE.contains(CONSOLE_TAG), "index.html loads console.js");
        super::PAGE
            .replace(CONSOLE_TAG, &format!("{CONSOLE_TAG}\n  <script src=\"console/sandbox.js\" defer></script>"))
    });
}

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    #[allow(unused_mut)]
    let mut page: &'static str = PAGE;
    #[allow(unused_mut)]
    let mut router = Router::new();
    #[cfg(feature = "sandbox")]
    if state.sandbox.is_some() {
        page = sandbox::PAGE.as_str();
        router = router
            .route("/console/sandbox.js", get(|| async { asset(sandbox::SCRIPT, "text/javascript; charset=utf-8") }));
    }
    router
        .route("/console", get(move || async move { asset(page, "text/html; charset=utf-8") }))
        // The page's links are relative to `/console`; a trailing slash would break them.
        .route("/console/", get(|| async { Redirect::permanent("../console") }))
        .route("/console/console.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .route("/console/console.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/console/favicon.svg", get(|| async { asset(ICON, "image/svg+xml") }))
        .layer(middleware::from_fn_with_state(state, auth::require_page_access))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Revalidated at each load, so an upgraded gateway never runs yesterday's script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
