//! The web console: its files are served with the right types and headers and follow the
//! key rule (a remote browser may load the page only when a key is configured, and gets no
//! data without it); and `interop/test/console.test.mjs` drives it in headless Chromium
//! against this build of `wagate` and the simulator, and against `wagate sandbox` (needs
//! `npm ci --prefix interop` and Debian's `chromium`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::connect_info::MockConnectInfo;
use wagate::engine::WhatsAppEngine;
use wagate::http::AppState;
use wagate::session::{SessionConfig, SessionManager};
use wagate::store::Store;
use wagate::webhook::{Outbox, WebhookSettings};

/// The gateway's router on 127.0.0.1, every request appearing to come from `peer`.
async fn serve_as_if_from(peer: &str, api_key: Option<&str>, data_dir: &Path) -> String {
    let store = Arc::new(Store::open(data_dir).expect("store opens"));
    let outbox = Outbox::new(store, WebhookSettings::default());
    let manager = SessionManager::new(
        Arc::new(WhatsAppEngine::new(None, None, wagate::engine::scratch::Scratch::new(std::env::temp_dir()))),
        outbox,
        SessionConfig::default(),
    );
    let state = Arc::new(AppState {
        manager,
        access: wagate::http::trust::Access { api_key: api_key.map(str::to_string), ..Default::default() },
        started: Instant::now(),
        started_at: chrono::Utc::now(),
        event_streams: Default::default(),
        sandbox: None,
    });
    let peer: SocketAddr = peer.parse().unwrap();
    let router = wagate::http::router(state).layer(MockConnectInfo(peer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router.into_make_service()).await });
    base
}

async fn get(url: &str, key: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `src="..."` and `href="..."` values of the page that point at our own files.
fn linked_files(page: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attribute| page.split(attribute).skip(1).filter_map(|rest| rest.split('"').next()))
        .filter(|target| target.starts_with("console/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn console_files_are_served_with_their_types() {
    let data = tempfile::tempdir().unwrap();
    let base = serve_as_if_from("127.0.0.1:50000", None, data.path()).await;

    let page = get(&format!("{base}/console"), None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert!(header(&page, "content-security-policy").contains("script-src 'self'"));
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"connect-form\"") && html.contains("id=\"qr\""), "{html}");

    let files = linked_files(&html);
    let expected = [
        ("console/console.css", "text/css; charset=utf-8"),
        ("console/console.js", "text/javascript; charset=utf-8"),
        ("console/favicon.svg", "image/svg+xml"),
    ];
    assert_eq!(files.len(), expected.len(), "the page links {files:?}");
    for (file, content_type) in expected {
        assert!(files.iter().any(|f| f == file), "the page does not link {file}: {files:?}");
        let response = get(&format!("{base}/{file}"), None).await;
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(header(&response, "content-type"), content_type, "{file}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{file}");
    }

    // The page's links are relative to /console, so /console/ sends the browser there.
    let slash = get(&format!("{base}/console/"), None).await;
    assert_eq!(slash.status(), 308);
    assert_eq!(header(&slash, "location"), "../console");
    assert_eq!(get(&format!("{base}/console/missing.js"), None).await.status(), 404);
}

#[tokio::test]
async fn remote_browsers_get_the_page_only_with_a_configured_key_and_no_data_without_it() {
    let data = tempfile::tempdir().unwrap();
    let remote = "192.0.2.7:40000";

    let keyless = serve_as_if_from(remote, None, data.path()).await;
    for path in ["/console", "/console/console.js", "/v1/sessions"] {
        let response = get(&format!("{keyless}{path}"), None).await;
        assert_eq!(response.status(), 403, "{path} without a configured key");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("WAGATE_API_KEY"), "{body}");
    }

    let keyed_dir = tempfile::tempdir().unwrap();
    let keyed = serve_as_if_from(remote, Some("s3cret"), keyed_dir.path()).await;
    // The page loads (it holds no data) so that the key can be typed into it ...
    assert_eq!(get(&format!("{keyed}/console"), None).await.status(), 200);
    assert_eq!(get(&format!("{keyed}/console/console.js"), None).await.status(), 200);
    // ... but every call it makes needs the key, the event stream included.
    for path in ["/v1/sessions", "/v1/sessions/S/events", "/v1/sessions/S/qr?format=svg"] {
        assert_eq!(get(&format!("{keyed}{path}"), None).await.status(), 401, "{path} without the key");
        assert_eq!(get(&format!("{keyed}{path}"), Some("wrong")).await.status(), 401, "{path} with a wrong key");
    }
    let listed = get(&format!("{keyed}/v1/sessions"), Some("s3cret")).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.json::<serde_json::Value>().await.unwrap(), serde_json::json!([]));
    let unknown = get(&format!("{keyed}/v1/sessions/S/events"), Some("s3cret")).await;
    assert_eq!(unknown.status(), 404, "with the key the stream is reached (and S does not exist)");
}

/// Where the browser test leaves its screenshots: $WAGATE_CONSOLE_ARTIFACTS, else
/// `console-artifacts` in the cargo target directory.
fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WAGATE_CONSOLE_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    // <target>/debug/wagate -> <target>/console-artifacts
    let wagate = common::node::wagate_bin();
    wagate.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join("console-artifacts")
}

#[test]
fn the_console_links_a_session_in_headless_chromium() {
    common::node::require_package("playwright-core");
    let chromium = std::env::var_os("CHROMIUM_BIN").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.exists(),
        "{} is missing: install Debian's chromium (`sudo apt-get install chromium`; scripts/test.sh does it when run \
         as root or with passwordless sudo), or set CHROMIUM_BIN to a Chromium binary",
        chromium.display()
    );
    let artifacts = artifacts_dir();
    let screenshots = [artifacts.join("console-connected.png"), artifacts.join("console-sandbox.png")];
    for screenshot in &screenshots {
        let _ = std::fs::remove_file(screenshot);
    }
    common::node::run_node_test(
        "console.test.mjs",
        &[("CHROMIUM_BIN", chromium.as_os_str()), ("WAGATE_CONSOLE_ARTIFACTS", artifacts.as_os_str())],
    );
    for screenshot in &screenshots {
        let png =
            std::fs::read(screenshot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", screenshot.display());
    }
}
