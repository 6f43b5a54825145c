//! The OpenAPI 3.1 document of everything wagate serves over HTTP, served at
//! `GET /v1/openapi.json`. The operations and their schemas come from the handlers'
//! `#[utoipa::path]` annotations and the types they answer with (collected by
//! [`super::documented_router`]); this module adds what no single handler knows: who may
//! call what (the access rules of [`super::auth`]), the answers every request can get
//! from them, and the webhook events wagate sends, under `webhooks`.

use std::sync::Arc;

use axum::Extension;
use serde_json::{json, Map, Value};
use utoipa::openapi::OpenApi;
use utoipa::ToSchema;

use crate::engine::{Inbound, PresenceUpdate};
use crate::session::SessionView;
use crate::session::StatusChange;
use crate::webhook::TestData;

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()), responses(
    (status = 200, description = "The OpenAPI 3.1 document of this gateway (the sandbox's operations only \
      in `wagate sandbox`)", content((Object = "application/json"))),
))]
pub async fn document(Extension(document): Extension<Arc<String>>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document.as_str().to_string())
}

/// A file's bytes, as a response body (a QR code image, a downloaded file).
pub struct FileBytes;

impl utoipa::PartialSchema for FileBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for FileBytes {}

const DESCRIPTION: &str = "A WhatsApp linked-device gateway: link accounts by QR code or pairing code, send and \
receive messages, and get every change as a signed webhook. `/v1` is the native API; the root paths `/sessions/...` \
are the API of the ERPNext app's former Node.js service (docs/compat.md). Callers on this machine need no key; \
others send `Authorization: Bearer <WAGATE_API_KEY>`. Every error answer is `{\"error\": \"...\"}`.";

/// The document as served: `generated` (the annotated operations) with the access rules,
/// the answers common to all operations, and the webhooks. `guarded` are the paths behind
/// the API key.
pub fn finish(generated: OpenApi, guarded: &[String]) -> String {
    let mut document = serde_json::to_value(&generated).expect("the OpenAPI document serializes");
    document["info"] = json!({
        "title": "wagate",
        "version": env!("CARGO_PKG_VERSION"),
        "description": DESCRIPTION,
        "license": { "name": "MIT", "identifier": "MIT" },
    });
    document["tags"] = json!([
        { "name": "sessions", "description": "Link WhatsApp accounts and follow their state" },
        { "name": "messages", "description": "Send, follow what was sent, download received files" },
        { "name": "contacts", "description": "Who is on WhatsApp; presence" },
        { "name": "groups", "description": "The groups an account is in" },
        { "name": "webhooks", "description": "Where events go, and how their delivery went" },
        { "name": "operations", "description": "Health, metrics, this document" },
        { "name": "cluster", "description": "Several nodes on one PostgreSQL: nodes, drains, moves (docs/cluster.md)" },
        { "name": "console", "description": "The operators' web page" },
        { "name": "compat", "description": "The ERPNext app's Node service API (docs/compat.md)" },
        { "name": "cloud", "description": "Meta's WhatsApp Cloud API over a linked-device session (docs/cloud-api.md)" },
        { "name": "sandbox", "description": "Only in `wagate sandbox`: the simulated phone and contact" },
    ]);
    if !document["components"].is_object() {
        document["components"] = json!({});
    }
    document["components"]["securitySchemes"] = json!({
        "cloudToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The access_token of PUT /v1/sessions/{id}/cloud-api, for the phone number id the call names. Required from every caller.",
        },
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "WAGATE_API_KEY. Callers on this machine need none; without a key set, only they are answered.",
        }
    });
    if let Some(paths) = document["paths"].as_object_mut() {
        // OpenAPI has no wildcard segments: axum's `{*path}` is the parameter `{path}`.
        let wildcards: Vec<String> = paths.keys().filter(|p| p.contains("{*")).cloned().collect();
        for path in wildcards {
            if let Some(item) = paths.remove(&path) {
                paths.insert(path.replace("{*", "{"), item);
            }
        }
        for (path, item) in paths.iter_mut() {
            // Meta's Cloud API: its own token, Graph errors, no cross-site screen (cloud/mod.rs).
            if path.starts_with("/cloud/") {
                continue;
            }
            let behind_key = guarded.iter().any(|g| g == path);
            for (method, operation) in item.as_object_mut().into_iter().flatten() {
                add_common_answers(method, operation, behind_key);
            }
        }
    }
    add_webhooks(&mut document);
    serde_json::to_string_pretty(&document).expect("the OpenAPI document serializes")
}

fn error_answer(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// What the layers in front of every handler can answer (see `auth.rs` and `trust.rs`).
fn add_common_answers(method: &str, operation: &mut Value, behind_key: bool) {
    let Some(operation) = operation.as_object_mut() else { return };
    let has_body = operation.contains_key("requestBody");
    if method == "post" && !has_body {
        // trust.rs: a POST is JSON, or says with this header that it comes from a client
        // (a browser's cross-site form cannot set it).
        let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
        if let Some(parameters) = parameters.as_array_mut() {
            parameters.push(json!({
                "name": "X-Wagate-Client",
                "in": "header",
                "required": true,
                "description": "Any value: a POST without a JSON body must carry it (browsers cannot send it cross-site)",
                "schema": { "type": "string" },
            }));
        }
    }
    if behind_key {
        operation.insert("security".into(), json!([{}, { "apiKey": [] }]));
    }
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    let mut add = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| error_answer(description));
    };
    add("421", "With `--allowed-hosts`: a Host header that is not this gateway's (DNS rebinding)");
    if method != "get" {
        add("403", "A browser's request for another site (cross-site request forgery)");
        add("415", "A POST that is neither JSON nor carries `X-Wagate-Client`");
    }
    if has_body {
        add("400", "The body is not a JSON object of the documented fields");
        add("413", "The body is larger than this operation takes");
    }
    if behind_key {
        add("401", "A caller from another machine without the right `Authorization: Bearer <key>`");
        add("403", "A caller from another machine while no API key is set");
    }
}

/// A component schema for `T` and every schema it refers to.
fn add_schema<T: ToSchema>(schemas: &mut Map<String, Value>) {
    let mut all = vec![(T::name().to_string(), T::schema())];
    T::schemas(&mut all);
    for (name, schema) in all {
        schemas.entry(name).or_insert_with(|| serde_json::to_value(schema).expect("schemas serialize"));
    }
}

/// The events of docs/webhooks.md, each as the body wagate POSTs (the native envelope).
fn add_webhooks(document: &mut Value) {
    let schemas = document["components"]
        .as_object_mut()
        .expect("components is an object")
        .entry("schemas")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("schemas is an object");
    add_schema::<SessionView>(schemas);
    add_schema::<Inbound>(schemas);
    add_schema::<StatusChange>(schemas);
    add_schema::<PresenceUpdate>(schemas);
    add_schema::<TestData>(schemas);
    let events = [
        ("connection.update", "ConnectionUpdate", "SessionView", "A session's state changed, or a new QR code is up"),
        ("messages.upsert", "MessagesUpsert", "Inbound", "Someone sent the session a message"),
        ("message.status", "MessageStatus", "StatusChange", "A message the session sent moved forward"),
        ("presence.update", "PresenceUpdateEvent", "PresenceUpdate", "A subscribed contact's presence changed"),
        ("webhook.test", "WebhookTest", "TestData", "Sent only by `POST /v1/sessions/{id}/webhook/test`"),
    ];
    let mut webhooks = Map::new();
    for (event, name, data, summary) in events {
        let name = name.to_string();
        schemas.insert(name.clone(), envelope(event, data));
        webhooks.insert(
            event.to_string(),
            json!({ "post": {
                "summary": summary,
                "description": "Native format: signed (Standard Webhooks) when the webhook has a secret. \
                    Delivered at least once, in order per session; any 2xx answer acknowledges it, anything \
                    else (or no answer within the timeout) is retried. See docs/webhooks.md.",
                "parameters": signature_headers(),
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } } },
                },
                "responses": { "2XX": { "description": "Received; not sent again" } },
            }}),
        );
    }
    document["webhooks"] = Value::Object(webhooks);
}

/// `{"id", "event", "session", "timestamp_ms", "data", "v"}` with `data` of this event.
fn envelope(event: &str, data: &str) -> Value {
    json!({
        "type": "object",
        "required": ["id", "event", "session", "timestamp_ms", "data", "v"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": "^evt_[0-9A-HJKMNP-TV-Z]{26}$",
                "description": "The event's id: the same in every retry, so receivers can drop repeats",
            },
            "event": { "const": event },
            "session": { "type": "string" },
            "timestamp_ms": { "type": "integer", "minimum": 0, "description": "When it happened" },
            "data": { "$ref": format!("#/components/schemas/{data}") },
            "v": { "const": 1 },
        },
    })
}

fn signature_headers() -> Value {
    let header = |name: &str, description: &str| json!({ "name": name, "in": "header", "required": false, "description": description, "schema": { "type": "string" } });
    json!([
        header("webhook-id", "The event's id (`evt_...`), the same on every retry"),
        header("webhook-timestamp", "When this attempt was sent, seconds since the epoch"),
        header(
            "webhook-signature",
            "`v1,<base64 of HMAC-SHA256(key, \"<webhook-id>.<webhook-timestamp>.<body>\")>`, when the webhook has a secret",
        ),
        header("X-Webhook-Token", "The webhook's token, when it has one"),
    ])
}

/// The paths axum routes, read from the router's `Debug` form (axum has no public list of
/// its routes; its `Debug` prints the path table as `paths: {RouteId(..): "/path", ..}`).
#[cfg(test)]
fn routed_paths(router: &axum::Router) -> std::collections::BTreeSet<String> {
    let text = format!("{router:?}");
    let Some(start) = text.find("paths: {") else { return Default::default() };
    // The quoted strings up to the `}` that closes the table (paths hold `{id}` too).
    let (mut paths, mut current, mut quoted) = (std::collections::BTreeSet::new(), String::new(), false);
    for c in text[start + "paths: {".len()..].chars() {
        match (quoted, c) {
            (true, '"') => {
                paths.insert(std::mem::take(&mut current));
                quoted = false;
            }
            (true, c) => current.push(c),
            (false, '"') => quoted = true,
            (false, '}') => break,
            (false, _) => {}
        }
    }
    paths
}

/// The differences between what the router serves and what `document` describes: routes
/// missing from the document, then documented paths that nothing serves. Empty when they
/// agree.
#[cfg(test)]
fn route_differences(router: &axum::Router, document: &Value) -> Vec<String> {
    let routed: std::collections::BTreeSet<String> =
        routed_paths(router).into_iter().map(|path| path.replace("{*", "{")).collect();
    let documented: std::collections::BTreeSet<String> =
        document["paths"].as_object().map(|paths| paths.keys().cloned().collect()).unwrap_or_default();
    let mut differences: Vec<String> =
        routed.difference(&documented).map(|path| format!("{path} is served but not documented")).collect();
    differences.extend(documented.difference(&routed).map(|path| format!("{path} is documented but not served")));
    differences
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::scratch::Scratch;
    use crate::engine::WhatsAppEngine;
    use crate::http::AppState;
    use crate::session::{SessionConfig, SessionManager};
    use crate::store::Store;
    use crate::webhook::{Outbox, WebhookSettings};

    async fn state(data: &std::path::Path) -> Arc<AppState> {
        let store = Arc::new(Store::open(data).unwrap());
        let engine = Arc::new(WhatsAppEngine::new(Some("ws://127.0.0.1:9/ws".into()), None, Scratch::new(data.into())));
        let manager =
            SessionManager::new(engine, Outbox::new(store, WebhookSettings::default()), SessionConfig::default());
        Arc::new(AppState {
            manager,
            access: Default::default(),
            started: std::time::Instant::now(),
            started_at: chrono::Utc::now(),
            event_streams: Default::default(),
            #[cfg(feature = "sandbox")]
            sandbox: None,
        })
    }

    fn parse(document: &str) -> Value {
        serde_json::from_str(document).unwrap()
    }

    /// Every route axum serves is in the document, and every documented path is served.
    #[tokio::test]
    async fn the_document_describes_every_route() {
        let data = tempfile::tempdir().unwrap();
        let (router, document) = super::super::documented_router(state(data.path()).await);
        let document = parse(&document);
        assert!(routed_paths(&router).len() > 30, "the route table was read: {:?}", routed_paths(&router));
        assert_eq!(route_differences(&router, &document), Vec::<String>::new());
        assert_eq!(document["openapi"], "3.1.0");
    }

    /// A route added past the annotations (a plain `.route`) is caught.
    #[tokio::test]
    async fn an_undocumented_route_is_caught() {
        let data = tempfile::tempdir().unwrap();
        let (router, document) = super::super::documented_router(state(data.path()).await);
        let router = router.route("/v1/secret", axum::routing::get(|| async { "not in the document" }));
        assert_eq!(route_differences(&router, &parse(&document)), ["/v1/secret is served but not documented"]);
    }

    /// The sandbox's operations are served and documented only in `wagate sandbox`.
    #[cfg(feature = "sandbox")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sandbox_routes_are_documented_in_a_sandbox_only() {
        let data = tempfile::tempdir().unwrap();
        let (_, plain) = super::super::documented_router(state(data.path()).await);
        assert!(parse(&plain)["paths"].get("/v1/sandbox/scan").is_none(), "a gateway that is no sandbox");

        let sandbox = crate::sandbox::Sandbox::start(&data.path().join("contact")).await.unwrap();
        let mut with_sandbox = Arc::into_inner(state(data.path()).await).unwrap();
        with_sandbox.sandbox = Some(sandbox.clone());
        let (router, document) = super::super::documented_router(Arc::new(with_sandbox));
        let document = parse(&document);
        for path in ["/v1/sandbox", "/v1/sandbox/scan", "/console/sandbox.js"] {
            assert!(document["paths"].get(path).is_some(), "{path} documented");
        }
        assert_eq!(route_differences(&router, &document), Vec::<String>::new());
        sandbox.stop().await;
    }

    /// Each webhook event's schema refers to the type wagate serializes its data from.
    #[tokio::test]
    async fn webhooks_are_described() {
        let data = tempfile::tempdir().unwrap();
        let (_, document) = super::super::documented_router(state(data.path()).await);
        let document = parse(&document);
        let events: Vec<&String> = document["webhooks"].as_object().unwrap().keys().collect();
        assert_eq!(
            events,
            ["connection.update", "message.status", "messages.upsert", "presence.update", "webhook.test"]
        );
        for (event, body) in document["webhooks"].as_object().unwrap() {
            let reference =
                body["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
            let name = reference.rsplit('/').next().unwrap();
            let schema = &document["components"]["schemas"][name];
            assert_eq!(schema["properties"]["event"]["const"], event.as_str(), "{event}");
            let data = schema["properties"]["data"]["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
            assert!(document["components"]["schemas"][data].is_object(), "{event}: {data} is a component");
        }
    }
}
