//! `/console`: a small web page for operators (sessions, live QR code, pairing code, logout)
//! served from the binary. Plain HTML, CSS and JavaScript embedded at build time; the page
//! itself holds no data and does everything through the native API, with the same key rule.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
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

pub fn routes(state: Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    #[allow(unused_mut)]
    let mut router = OpenApiRouter::new();
    #[cfg(feature = "sandbox")]
    if state.sandbox.is_some() {
        router = router.routes(routes!(sandbox_script));
    }
    router
        .routes(routes!(page))
        .routes(routes!(slash))
        .routes(routes!(style))
        .routes(routes!(script))
        .routes(routes!(icon))
        .layer(middleware::from_fn_with_state(state, auth::require_page_access))
}

/// The console: sessions, live QR codes, pairing codes, logout; in a sandbox also the
/// simulated phone and contact.
#[utoipa::path(get, path = "/console", tag = "console", security(()), responses(
    (status = 200, description = "The page", content((String = "text/html; charset=utf-8"))),
    (status = 403, description = "A remote caller while no API key is set", body = ErrorBody),
))]
async fn page(State(state): State<Arc<AppState>>) -> Response {
    #[cfg(feature = "sandbox")]
    if state.sandbox.is_some() {
        return asset(sandbox::PAGE.as_str(), "text/html; charset=utf-8");
    }
    let _ = state;
    asset(PAGE, "text/html; charset=utf-8")
}

/// The page's links are relative to `/console`; with a trailing slash they would break.
#[utoipa::path(get, path = "/console/", tag = "console", security(()), responses(
    (status = 308, description = "To `/console`"),
    (status = 403, description = "A remote caller while no API key is set", body = ErrorBody),
))]
async fn slash() -> Redirect {
    Redirect::permanent("../console")
}

#[utoipa::path(get, path = "/console/console.css", tag = "console", security(()), responses(
    (status = 200, description = "The page's style", content((String = "text/css; charset=utf-8"))),
    (status = 403, description = "A remote caller while no API key is set", body = ErrorBody),
))]
async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

#[utoipa::path(get, path = "/console/console.js", tag = "console", security(()), responses(
    (status = 200, description = "The page's script", content((String = "text/javascript; charset=utf-8"))),
    (status = 403, description = "A remote caller while no API key is set", body = ErrorBody),
))]
async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[utoipa::path(get, path = "/console/favicon.svg", tag = "console", security(()), responses(
    (status = 200, description = "The page's icon", content((String = "image/svg+xml"))),
    (status = 403, description = "A remote caller while no API key is set", body = ErrorBody),
))]
async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}

/// `wagate sandbox` only: the simulated phone's scan button and the simulated contact.
#[cfg(feature = "sandbox")]
#[utoipa::path(get, path = "/console/sandbox.js", tag = "sandbox", security(()), responses(
    (status = 200, description = "The sandbox's part of the page", content((String = "text/javascript; charset=utf-8"))),
    (status = 403, description = "A remote caller while no API key is set", body = ErrorBody),
))]
async fn sandbox_script() -> Response {
    asset(sandbox::SCRIPT, "text/javascript; charset=utf-8")
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
