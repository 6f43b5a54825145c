//! The Cloud API face (docs/cloud-api.md), played by a client that makes exactly the calls
//! of the Frappe app `frappe_whatsapp` (`whatsapp_message.py`, `whatsapp_templates.py`,
//! `utils/webhook.py`): its URL building (`{url}/{version}/{id}/...`), its headers
//! (`authorization: Bearer`, `OAuth` for the template sample upload) and the fields it
//! reads. Two sessions of one gateway, linked to the simulator as two accounts, are two
//! Cloud API numbers: each one's client talks to the other through WhatsApp's relay, and
//! each one's webhook receiver is that app's webhook endpoint (it checks the signature
//! with a plain HMAC and, for media, downloads the file inside its handler as the app does).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::{link, start_sim, Api, WAIT};
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const VERSION: &str = "v17.0";
const WEBHOOK_PATH: &str = "/api/method/frappe_whatsapp.utils.webhook.webhook";

/// `WhatsApp Settings` of the app, as it builds its calls from them.
#[derive(Clone)]
struct Settings {
    url: String,
    version: String,
    phone_id: String,
    business_id: String,
    app_id: String,
    token: String,
}

impl Settings {
    fn headers(&self) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers
    }

    /// `make_request(method, url, headers, data=json.dumps(data))`: the JSON answer, or the
    /// status and the Graph error.
    async fn request(&self, method: reqwest::Method, url: &str, data: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new().request(method, url).headers(self.headers());
        if let Some(data) = data {
            request = request.body(data.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "every answer is JSON ({url})"
        );
        (status, response.json().await.unwrap())
    }

    /// `WhatsAppMessage.notify(data)`: the message id it stores, or the Graph error.
    async fn notify(&self, data: Value) -> Result<String, (u16, Value)> {
        let url = format!("{}/{}/{}/messages", self.url, self.version, self.phone_id);
        let (status, answer) = self.request(reqwest::Method::POST, &url, Some(data)).await;
        if status != 200 {
            // The app reads `error.message` and `error.error_user_title` of a 4xx.
            assert!(
                answer["error"]["message"].is_string() && answer["error"]["error_user_title"].is_string(),
                "{answer}"
            );
            return Err((status, answer));
        }
        assert_eq!(answer["messaging_product"], "whatsapp");
        Ok(answer["messages"][0]["id"].as_str().unwrap().to_string())
    }

    async fn send_text(&self, to: &str, body: &str, reply_to: Option<&str>) -> String {
        let mut data = json!({ "messaging_product": "whatsapp", "to": to, "type": "text",
                               "text": { "preview_url": true, "body": body } });
        if let Some(id) = reply_to {
            data["context"] = json!({ "message_id": id });
        }
        self.notify(data).await.unwrap_or_else(|e| panic!("text: {e:?}"))
    }
}

/// One webhook request as the app's endpoint received it.
#[derive(Debug, Clone)]
struct Hook {
    json: Value,
    signature_ok: bool,
    /// For media messages: (mime type from `GET /{media_id}/`, SHA-256 of the downloaded bytes, its `sha256`).
    download: Option<(String, String, String)>,
}

#[derive(Default)]
struct EndpointState {
    hooks: Vec<Hook>,
    verifications: Vec<HashMap<String, String>>,
}

/// The app's webhook endpoint (and a small file server for `link`s).
#[derive(Clone)]
struct Endpoint {
    base: String,
    state: Arc<Mutex<EndpointState>>,
}

#[derive(Clone)]
struct EndpointConfig {
    state: Arc<Mutex<EndpointState>>,
    verify_token: String,
    app_secret: String,
    settings: Arc<Mutex<Option<Settings>>>,
    files: Arc<HashMap<String, (&'static str, Vec<u8>)>>,
}

impl Endpoint {
    async fn start(verify_token: &str, app_secret: &str, settings: Arc<Mutex<Option<Settings>>>) -> Self {
        let state = Arc::new(Mutex::new(EndpointState::default()));
        let files = Arc::new(HashMap::from([
            ("invoice.pdf".to_string(), ("application/pdf", b"%PDF-1.4\n% invoice 7\n%%EOF\n".to_vec())),
            ("photo.png".to_string(), ("image/png", png())),
        ]));
        let config = EndpointConfig {
            state: state.clone(),
            verify_token: verify_token.into(),
            app_secret: app_secret.into(),
            settings,
            files,
        };
        let app = Router::new()
            .route(WEBHOOK_PATH, get(verify).post(receive))
            .route("/files/{name}", get(file))
            .with_state(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base: format!("http://{addr}"), state }
    }

    fn webhook_url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.base)
    }

    fn hooks(&self) -> Vec<Hook> {
        self.state.lock().unwrap().hooks.clone()
    }

    /// Waits for a webhook that `check` accepts; returns it.
    async fn wait(&self, what: &str, check: impl Fn(&Value) -> bool) -> Hook {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(hook) = self.hooks().into_iter().find(|h| check(&h.json)) {
                return hook;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                self.hooks().iter().map(|h| &h.json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `get()` of `utils/webhook.py`: the challenge back when the verify token matches.
async fn verify(State(config): State<EndpointConfig>, Query(query): Query<HashMap<String, String>>) -> Response {
    config.state.lock().unwrap().verifications.push(query.clone());
    if query.get("hub.verify_token") != Some(&config.verify_token) {
        return (StatusCode::FORBIDDEN, "Verify token does not match").into_response();
    }
    query.get("hub.challenge").cloned().unwrap_or_default().into_response()
}

/// `post()` of `utils/webhook.py`, with the signature check a careful receiver adds.
async fn receive(State(config): State<EndpointConfig>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(config.app_secret.as_bytes()).unwrap();
    mac.update(&body);
    let presented = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let signature_ok = presented
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|given| mac.verify_slice(&given).is_ok());
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let value = &json["entry"][0]["changes"][0]["value"];
    let mut download = None;
    if let Some(message) = value["messages"].get(0) {
        let kind = message["type"].as_str().unwrap_or_default();
        if ["image", "audio", "video", "document"].contains(&kind) {
            // As the app: GET {url}/{version}/{media_id}/ then GET its url, both with the token,
            // inside this handler (the webhook request is still open).
            let settings = config.settings.lock().unwrap().clone().unwrap();
            let media_id = message[kind]["id"].as_str().unwrap();
            let client = reqwest::Client::new();
            let bearer = format!("Bearer {}", settings.token);
            let meta = client
                .get(format!("{}/{}/{media_id}/", settings.url, settings.version))
                .header("Authorization", &bearer)
                .send()
                .await
                .unwrap();
            assert_eq!(meta.status(), 200);
            let meta: Value = meta.json().await.unwrap();
            let bytes =
                client.get(meta["url"].as_str().unwrap()).header("Authorization", &bearer).send().await.unwrap();
            assert_eq!(bytes.status(), 200);
            let bytes = bytes.bytes().await.unwrap();
            let mime = meta["mime_type"].as_str().unwrap().to_string();
            let _extension = mime.split('/').nth(1).expect("the app splits the MIME type on '/'");
            download = Some((mime, hex::encode(Sha256::digest(&bytes)), meta["sha256"].as_str().unwrap().to_string()));
        }
    }
    config.state.lock().unwrap().hooks.push(Hook { json, signature_ok, download });
    StatusCode::OK
}

async fn file(State(config): State<EndpointConfig>, Path(name): Path<String>) -> Response {
    match config.files.get(&name) {
        Some((kind, bytes)) => ([("content-type", *kind)], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A 2x2 PNG.
fn png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let image = image::RgbImage::from_pixel(2, 2, image::Rgb([200, 10, 10]));
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

/// The value of a webhook with one message or status.
fn value(hook: &Hook) -> &Value {
    &hook.json["entry"][0]["changes"][0]["value"]
}

/// A message webhook with its id and timestamp checked and replaced by placeholders, for a
/// field-by-field comparison with the expected JSON.
fn normalized(hook: &Hook) -> Value {
    let mut json = hook.json.clone();
    let message = &mut json["entry"][0]["changes"][0]["value"]["messages"][0];
    assert!(message["id"].as_str().unwrap().starts_with("wamid."), "{message}");
    assert!(message["timestamp"].as_str().unwrap().parse::<u64>().unwrap() > 1_600_000_000, "{message}");
    message["id"] = json!("<wamid>");
    message["timestamp"] = json!("<timestamp>");
    json
}

/// The whole Cloud webhook around one message, as Meta documents it.
fn expected_message(waba: &str, phone: &str, phone_id: &str, from: &str, name: &str, message: Value) -> Value {
    let mut message = message;
    message["from"] = json!(from);
    message["id"] = json!("<wamid>");
    message["timestamp"] = json!("<timestamp>");
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": waba,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": phone, "phone_number_id": phone_id },
                    "contacts": [{ "profile": { "name": name }, "wa_id": from }],
                    "messages": [message],
                },
            }],
        }],
    })
}

fn statuses_of(endpoint: &Endpoint, wamid: &str) -> Vec<String> {
    endpoint
        .hooks()
        .iter()
        .filter_map(|h| value(h)["statuses"].get(0).cloned())
        .filter(|s| s["id"] == wamid)
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

/// A gateway with two linked sessions, `A` and `B`, each a Cloud API number with its own
/// webhook endpoint.
struct World {
    sim: wagate_sim::Simulator,
    gateway: wagate::server::Gateway,
    api: Api,
    _data: tempfile::TempDir,
    a: Settings,
    b: Settings,
    hooks_a: Endpoint,
    hooks_b: Endpoint,
}

const PHONE_A: &str = "15557000001";
const PHONE_B: &str = "15557000002";

async fn world(rate_a: u32) -> World {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    let data = tempfile::tempdir().unwrap();
    let gateway = common::start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    link(&api, &control, "A", PHONE_A).await;
    link(&api, &control, "B", PHONE_B).await;
    let settings = |phone_id: &str, business_id: &str, app_id: &str, token: &str| Settings {
        url: format!("{}/cloud", api.base),
        version: VERSION.into(),
        phone_id: phone_id.into(),
        business_id: business_id.into(),
        app_id: app_id.into(),
        token: token.into(),
    };
    let a = settings("1100000000000001", "2100000000000001", "3100000000000001", "EAAG-token-of-number-A-0123456789");
    let b = settings("1100000000000002", "2100000000000002", "3100000000000002", "EAAG-token-of-number-B-0123456789");
    let (shared_a, shared_b) = (Arc::new(Mutex::new(Some(a.clone()))), Arc::new(Mutex::new(Some(b.clone()))));
    let hooks_a = Endpoint::start("verify-a", "secret-a", shared_a).await;
    let hooks_b = Endpoint::start("verify-b", "secret-b", shared_b).await;
    for (session, settings, hooks, verify, secret, rate) in
        [("A", &a, &hooks_a, "verify-a", "secret-a", rate_a), ("B", &b, &hooks_b, "verify-b", "secret-b", 20)]
    {
        let (status, body) = api
            .call(
                reqwest::Method::PUT,
                &format!("/v1/sessions/{session}/cloud-api"),
                Some(json!({
                    "phone_number_id": settings.phone_id, "waba_id": settings.business_id, "app_id": settings.app_id,
                    "access_token": settings.token, "rate_per_minute": rate,
                    "webhook": { "url": hooks.webhook_url(), "verify_token": verify, "app_secret": secret },
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["url"], format!("{}/cloud", api.base), "{body}");
    }
    World { sim, gateway, api, _data: data, a, b, hooks_a, hooks_b }
}

impl World {
    async fn stop(self) {
        self.gateway.stop().await;
        self.sim.stop().await;
    }
}

/// The configuration handshake, then what the app does: texts, a template with body
/// parameters and a document header by link, an image by link, a reply, a reaction, mark
/// as read; and what it receives: text, image (downloaded inside its webhook handler),
/// reply, reaction; statuses sent -> delivered -> read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frappe_whatsapp_talks_to_a_linked_session_unchanged() {
    let w = world(20).await;
    let (a, b, hooks_a, hooks_b) = (&w.a, &w.b, &w.hooks_a, &w.hooks_b);

    // The verification handshake happened at configuration, Meta's way.
    let checks = hooks_a.state.lock().unwrap().verifications.clone();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0]["hub.mode"], "subscribe");
    assert_eq!(checks[0]["hub.verify_token"], "verify-a");
    assert!(!checks[0]["hub.challenge"].is_empty());
    // A receiver that does not echo the challenge (wrong verify token) fails the configuration.
    let (status, body) = w
        .api
        .call(
            reqwest::Method::PUT,
            "/v1/sessions/A/cloud-api",
            Some(json!({ "phone_number_id": a.phone_id, "waba_id": a.business_id, "app_id": a.app_id,
                         "access_token": a.token,
                         "webhook": { "url": hooks_a.webhook_url(), "verify_token": "wrong", "app_secret": "x" } })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("verification"), "{body}");
    let (status, shown) = w.api.get("/v1/sessions/A/cloud-api").await;
    assert_eq!((status, &shown["phone_number_id"]), (200, &json!(a.phone_id)), "the earlier mapping stays: {shown}");
    assert!(shown.get("access_token").is_none(), "{shown}");

    // A text, A -> B: the answer the app stores, then B's webhook.
    let first = a.send_text(PHONE_B, "Hello from ERPNext", None).await;
    assert!(first.starts_with("wamid."), "{first}");
    let hook = hooks_b
        .wait("the text at B", |j| {
            j["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "Hello from ERPNext"
        })
        .await;
    assert!(hook.signature_ok, "X-Hub-Signature-256 verifies");
    assert_eq!(
        normalized(&hook),
        expected_message(
            &b.business_id,
            PHONE_B,
            &b.phone_id,
            PHONE_A,
            "Sim 15557000001",
            json!({ "type": "text", "text": { "body": "Hello from ERPNext" } })
        )
    );
    let first_at_b = value(&hook)["messages"][0]["id"].as_str().unwrap().to_string();

    // B's client acknowledged delivery; B marks it read through its own Cloud API.
    hooks_a.wait("delivered", |_| statuses_of(hooks_a, &first).contains(&"delivered".to_string())).await;
    let (status, answer) = b
        .request(
            reqwest::Method::POST,
            &format!("{}/{}/{}/messages", b.url, b.version, b.phone_id),
            Some(json!({ "messaging_product": "whatsapp", "status": "read", "message_id": first_at_b })),
        )
        .await;
    assert_eq!((status, answer), (200, json!({ "success": true })));
    hooks_a.wait("read", |_| statuses_of(hooks_a, &first).contains(&"read".to_string())).await;
    assert_eq!(statuses_of(hooks_a, &first), ["sent", "delivered", "read"], "in order, one per request");
    let read = hooks_a.hooks().into_iter().find(|h| value(h)["statuses"][0]["status"] == "read").unwrap();
    assert!(read.signature_ok);
    let status = &value(&read)["statuses"][0];
    assert_eq!(
        value(&read),
        &json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": PHONE_A, "phone_number_id": a.phone_id },
            "statuses": [{ "id": first, "status": "read", "timestamp": status["timestamp"], "recipient_id": PHONE_B }],
        })
    );
    assert_eq!(read.json["entry"][0]["id"], a.business_id);
    assert_eq!(read.json["entry"][0]["changes"][0]["field"], "messages");

    // Inbound at A: B writes; A's webhook is the app's text message.
    let from_b = b.send_text(PHONE_A, "Where is my order?", None).await;
    let hook = hooks_a
        .wait("B's text at A", |j| {
            j["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "Where is my order?"
        })
        .await;
    assert!(hook.signature_ok);
    assert_eq!(
        normalized(&hook),
        expected_message(
            &a.business_id,
            PHONE_A,
            &a.phone_id,
            PHONE_B,
            "Sim 15557000002",
            json!({ "type": "text", "text": { "body": "Where is my order?" } })
        )
    );
    let question = value(&hook)["messages"][0]["id"].as_str().unwrap().to_string();
    // B's own message got its statuses at B (sent via B's Cloud API), A's receipt included.
    hooks_b.wait("B's sent status", |_| statuses_of(hooks_b, &from_b).contains(&"sent".to_string())).await;

    // A replies to it (context) and reacts to it.
    let reply = a.send_text(PHONE_B, "It ships today", Some(&question)).await;
    let hook = hooks_b
        .wait("the reply at B", |j| {
            j["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "It ships today"
        })
        .await;
    assert_eq!(
        value(&hook)["messages"][0]["context"],
        json!({ "from": PHONE_B, "id": from_b }),
        "B's own wamid, from B's number"
    );
    let reaction = a
        .notify(json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "reaction",
                        "reaction": { "message_id": question, "emoji": "👍" } }))
        .await
        .unwrap();
    assert!(reaction.starts_with("wamid."));
    let hook = hooks_b
        .wait("the reaction at B", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "reaction")
        .await;
    assert_eq!(
        normalized(&hook),
        expected_message(
            &b.business_id,
            PHONE_B,
            &b.phone_id,
            PHONE_A,
            "Sim 15557000001",
            json!({ "type": "reaction", "reaction": { "message_id": from_b, "emoji": "👍" } })
        )
    );

    // Inbound reply and reaction at A: B answers A's reply and reacts to it.
    let reply_at_b = value(
        &hooks_b
            .wait("reply id", |j| {
                j["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "It ships today"
            })
            .await,
    )["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.send_text(PHONE_A, "Thanks!", Some(&reply_at_b)).await;
    let hook = hooks_a
        .wait("B's reply at A", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "Thanks!")
        .await;
    assert_eq!(
        normalized(&hook),
        expected_message(
            &a.business_id,
            PHONE_A,
            &a.phone_id,
            PHONE_B,
            "Sim 15557000002",
            json!({ "type": "text", "text": { "body": "Thanks!" }, "context": { "from": PHONE_A, "id": reply } })
        )
    );
    b.notify(json!({ "messaging_product": "whatsapp", "to": PHONE_A, "type": "reaction",
                    "reaction": { "message_id": reply_at_b, "emoji": "❤" } }))
        .await
        .unwrap();
    let hook = hooks_a
        .wait("B's reaction at A", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "reaction")
        .await;
    assert_eq!(value(&hook)["messages"][0]["reaction"], json!({ "message_id": reply, "emoji": "❤" }));

    // A template: the sample header upload (resumable, OAuth), the template, then a send
    // with body parameters and a document header by link.
    let (status, session) = a
        .request(
            reqwest::Method::POST,
            &format!("{}/{}/{}/uploads", a.url, a.version, a.app_id),
            Some(json!({ "file_length": 27, "file_type": "application/pdf", "messaging_product": "whatsapp" })),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let session_id = session["id"].as_str().unwrap();
    assert!(session_id.starts_with("upload:"), "{session}");
    let uploaded = reqwest::Client::new()
        .post(format!("{}/{}/{session_id}", a.url, a.version))
        .header("Authorization", format!("OAuth {}", a.token))
        .body(b"%PDF-1.4\n% sample\n%%EOF\n".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let handle = uploaded.json::<Value>().await.unwrap()["h"].as_str().unwrap().to_string();
    let template = json!({
        "name": "invoice_notice", "language": "en_US", "category": "UTILITY",
        "components": [
            { "type": "BODY", "text": "Dear {{1}}, invoice {{2}} of {{3}} is attached.",
              "example": { "body_text": [["Ann", "INV-1", "$5"]] } },
            { "type": "header", "format": "DOCUMENT", "example": { "header_handle": [handle] } },
            { "type": "FOOTER", "text": "Acme Ltd" },
            { "type": "BUTTONS", "buttons": [{ "type": "URL", "text": "Pay now", "url": "https://pay.example/{{1}}" }] },
        ],
    });
    let (status, created) = a
        .request(
            reqwest::Method::POST,
            &format!("{}/{}/{}/message_templates", a.url, a.version, a.business_id),
            Some(template),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["status"], "APPROVED");
    let sent = a
        .notify(json!({
            "messaging_product": "whatsapp", "to": PHONE_B, "type": "template",
            "template": { "name": "invoice_notice", "language": { "code": "en_US" }, "components": [
                { "type": "body", "parameters": [{ "type": "text", "text": "Bo" }, { "type": "text", "text": "INV-7" },
                                                  { "type": "text", "text": "$12.00" }] },
                { "type": "header", "parameters": [{ "type": "document",
                    "document": { "link": format!("{}/files/invoice.pdf", hooks_a.base), "filename": "INV-7.pdf" } }] },
                { "type": "button", "sub_type": "url", "index": "0", "parameters": [{ "type": "text", "text": "INV-7" }] },
            ] },
        }))
        .await
        .unwrap();
    assert!(sent.starts_with("wamid."));
    let hook = hooks_b
        .wait("the template at B", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "document")
        .await;
    let document = &value(&hook)["messages"][0]["document"];
    assert_eq!(
        document["caption"],
        "Dear Bo, invoice INV-7 of $12.00 is attached.\n\n_Acme Ltd_\n\nPay now: https://pay.example/INV-7"
    );
    assert_eq!(document["filename"], "INV-7.pdf");
    assert_eq!(document["mime_type"], "application/pdf");
    let (mime, downloaded, listed) = hook.download.clone().expect("B's app downloaded the document in its handler");
    assert_eq!(mime, "application/pdf");
    assert_eq!(downloaded, hex::encode(Sha256::digest(b"%PDF-1.4\n% invoice 7\n%%EOF\n")));
    assert_eq!(listed, downloaded, "GET /{{media_id}} gives the file's SHA-256");

    // An image by link, A -> B.
    a.notify(json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "image",
                     "image": { "link": format!("{}/files/photo.png", hooks_a.base), "caption": "Your parcel" } }))
        .await
        .unwrap();
    let hook = hooks_b
        .wait("the image at B", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "image")
        .await;
    assert_eq!(hook.download.as_ref().unwrap().1, hex::encode(Sha256::digest(png())));
    assert_eq!(value(&hook)["messages"][0]["image"]["caption"], "Your parcel");

    // Inbound image at A: B uploads a file (multipart, as the Cloud API takes it) and sends it by id.
    let boundary = "wagate-test-boundary";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"messaging_product\"\r\n\r\nwhatsapp\r\n")
            .as_bytes(),
    );
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nimage/png\r\n").as_bytes(),
    );
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    form.extend_from_slice(&png());
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = reqwest::Client::new()
        .post(format!("{}/{}/{}/media", b.url, b.version, b.phone_id))
        .header("Authorization", format!("Bearer {}", b.token))
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let media_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let (status, meta) = b.request(reqwest::Method::GET, &format!("{}/{}/{media_id}/", b.url, b.version), None).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(
        (meta["mime_type"].as_str(), meta["sha256"].as_str()),
        (Some("image/png"), Some(hex::encode(Sha256::digest(png())).as_str()))
    );
    b.notify(json!({ "messaging_product": "whatsapp", "to": PHONE_A, "type": "image", "image": { "id": media_id, "caption": "It arrived broken" } }))
        .await
        .unwrap();
    let hook = hooks_a
        .wait("B's image at A", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "image")
        .await;
    assert!(hook.signature_ok);
    let image = value(&hook)["messages"][0]["image"].clone();
    let (mime, downloaded, listed) = hook.download.clone().expect("A's app downloaded the image in its handler");
    assert_eq!(
        (mime.as_str(), downloaded.as_str(), listed.as_str()),
        ("image/png", hex::encode(Sha256::digest(png())).as_str(), downloaded.as_str())
    );
    let mut expected_image = json!({ "caption": "It arrived broken", "mime_type": "image/png",
        "sha256": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, Sha256::digest(png())) });
    expected_image["id"] = image["id"].clone();
    assert_eq!(image, expected_image);
    // The download needs the token, and another number's token is refused.
    let url = format!("{}/media/{}", a.url, image["id"].as_str().unwrap());
    let anonymous = reqwest::get(&url).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let other =
        reqwest::Client::new().get(&url).header("Authorization", format!("Bearer {}", b.token)).send().await.unwrap();
    assert_eq!(other.status(), 401);

    // Every webhook was signed, and carried exactly one message or status.
    for hook in hooks_a.hooks().iter().chain(hooks_b.hooks().iter()) {
        assert!(hook.signature_ok, "{}", hook.json);
        let value = value(hook);
        let items = value["messages"].as_array().map_or(0, Vec::len) + value["statuses"].as_array().map_or(0, Vec::len);
        assert_eq!(items, 1, "{}", hook.json);
    }
    w.stop().await;
}

/// Bad tokens (also from this machine), unknown templates, unsupported types and malformed
/// bodies are Graph errors; template CRUD as `whatsapp_templates.py` does it; any version
/// and trailing slashes; interactive messages as numbered text and a numbered answer as a
/// button reply; the send rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_errors_templates_interactive_and_the_rate_limit() {
    let w = world(4).await;
    let (a, b, hooks_a) = (&w.a, &w.b, &w.hooks_a);
    let messages = format!("{}/{}/{}/messages", a.url, a.version, a.phone_id);
    let text = json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "text", "text": { "body": "hi" } });

    // 401 without the token, with another number's token, and from loopback too.
    for authorization in
        [None, Some(format!("Bearer {}", b.token)), Some("Bearer nope".to_string()), Some(a.token.clone())]
    {
        let mut request =
            reqwest::Client::new().post(&messages).header("content-type", "application/json").body(text.to_string());
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        let error = response.json::<Value>().await.unwrap()["error"].clone();
        assert_eq!(error["code"], 190, "{error}");
        assert_eq!(error["type"], "OAuthException");
        for field in ["message", "error_user_title", "error_user_msg", "fbtrace_id"] {
            assert!(error[field].is_string(), "{field}: {error}");
        }
    }
    // An unknown phone number id with a valid token: no such object.
    let (status, error) =
        a.request(reqwest::Method::POST, &format!("{}/v17.0/999/messages", a.url), Some(text.clone())).await;
    assert_eq!(
        (status, &error["error"]["code"], &error["error"]["error_subcode"]),
        (400, &json!(100), &json!(33)),
        "{error}"
    );

    // Unsupported types and bad bodies: 400 with a clear message, never a 5xx.
    for (data, code, says) in [
        (
            json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "order", "order": {} }),
            131051,
            "not supported",
        ),
        (
            json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "interactive",
                 "interactive": { "type": "flow", "body": { "text": "x" } } }),
            131051,
            "flows",
        ),
        (json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "text" }), 100, "text"),
        (
            json!({ "messaging_product": "whatsapp", "to": "hello", "type": "text", "text": { "body": "x" } }),
            100,
            "phone number",
        ),
        (json!({ "to": PHONE_B, "type": "text", "text": { "body": "x" } }), 100, "messaging_product"),
        (json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "image", "image": {} }), 100, "link"),
        (
            json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "reaction",
                 "reaction": { "message_id": "wamid.nope", "emoji": "x" } }),
            100,
            "not a message id",
        ),
    ] {
        let (status, error) = a.request(reqwest::Method::POST, &messages, Some(data.clone())).await;
        assert_eq!(status, 400, "{data}: {error}");
        assert_eq!(error["error"]["code"], code, "{data}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(says), "{data}: {error}");
    }
    let response = reqwest::Client::new()
        .post(&messages)
        .header("Authorization", format!("Bearer {}", a.token))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], 100);
    let (status, error) = a.request(reqwest::Method::GET, &format!("{}/nonsense/path", a.url), None).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"]["message"].is_string());

    // Templates: create, fetch (another version, trailing slash), edit, unknown name, delete.
    let templates = format!("{}/v21.0/{}/message_templates/", a.url, a.business_id);
    let (status, created) = a
        .request(reqwest::Method::POST, &templates, Some(json!({ "name": "order_ready", "language": "en", "category": "UTILITY",
            "components": [{ "type": "HEADER", "format": "TEXT", "text": "Order {{1}}" }, { "type": "BODY", "text": "Hi {{1}}, it is ready." }] })))
        .await;
    assert_eq!(status, 200, "{created}");
    let template_id = created["id"].as_str().unwrap().to_string();
    let (status, again) = a
        .request(
            reqwest::Method::POST,
            &templates,
            Some(json!({ "name": "order_ready", "language": "en", "category": "UTILITY",
            "components": [{ "type": "BODY", "text": "x" }] })),
        )
        .await;
    assert_eq!(status, 400, "a duplicate: {again}");
    let (status, listed) = a.request(reqwest::Method::GET, &templates, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["data"],
        json!([{ "name": "order_ready", "language": "en", "status": "APPROVED", "category": "UTILITY", "id": template_id,
                 "components": [{ "type": "HEADER", "format": "TEXT", "text": "Order {{1}}" }, { "type": "BODY", "text": "Hi {{1}}, it is ready." }] }])
    );
    let (status, edited) = a
        .request(reqwest::Method::POST, &format!("{}/{}/{template_id}", a.url, a.version),
            Some(json!({ "components": [{ "type": "HEADER", "format": "TEXT", "text": "Order {{1}}" }, { "type": "BODY", "text": "Hello {{1}}, it is ready." }] })))
        .await;
    assert_eq!((status, edited), (200, json!({ "success": true })));
    let (status, error) = a
        .request(
            reqwest::Method::POST,
            &messages,
            Some(json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "template",
            "template": { "name": "no_such_template", "language": { "code": "en" } } })),
        )
        .await;
    assert_eq!((status, &error["error"]["code"]), (404, &json!(132001)), "{error}");
    let (status, error) = a
        .request(
            reqwest::Method::POST,
            &messages,
            Some(json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "template",
            "template": { "name": "order_ready", "language": { "code": "de" } } })),
        )
        .await;
    assert_eq!((status, &error["error"]["code"]), (404, &json!(132001)), "another language: {error}");
    let (status, error) = a
        .request(
            reqwest::Method::POST,
            &messages,
            Some(json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "template",
            "template": { "name": "order_ready", "language": { "code": "en" } } })),
        )
        .await;
    assert_eq!((status, &error["error"]["code"]), (400, &json!(132000)), "parameters missing: {error}");
    let (status, subscribed) = a
        .request(reqwest::Method::POST, &format!("{}/{}/{}/subscribed_apps", a.url, a.version, a.business_id), None)
        .await;
    assert_eq!((status, subscribed), (200, json!({ "success": true })));

    // An interactive button message goes as numbered text; "2" within 24 h is a button reply.
    a.notify(json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "interactive", "interactive": {
        "type": "button", "body": { "text": "Deliver tomorrow?" },
        "action": { "buttons": [{ "type": "reply", "reply": { "id": "yes-1", "title": "Yes" } },
                                { "type": "reply", "reply": { "id": "no-1", "title": "No" } }] } } }))
        .await
        .unwrap();
    let hook = w
        .hooks_b
        .wait("the buttons at B", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "text")
        .await;
    assert_eq!(
        value(&hook)["messages"][0]["text"]["body"],
        "Deliver tomorrow?\n\n1. Yes\n2. No\n\nReply with the number of your choice."
    );
    b.send_text(PHONE_A, "2", None).await;
    let hook = hooks_a
        .wait("the button reply", |j| j["entry"][0]["changes"][0]["value"]["messages"][0]["type"] == "interactive")
        .await;
    assert_eq!(
        normalized(&hook),
        expected_message(
            &a.business_id,
            PHONE_A,
            &a.phone_id,
            PHONE_B,
            "Sim 15557000002",
            json!({ "type": "interactive", "interactive": { "type": "button_reply", "button_reply": { "id": "no-1", "title": "No" } } })
        )
    );

    // The rate limit: 4 a minute here (one went above).
    for n in 0..3 {
        let data = json!({ "messaging_product": "whatsapp", "to": PHONE_B, "type": "text", "text": { "body": format!("n{n}") } });
        let answer = a.notify(data).await;
        assert!(answer.is_ok(), "send {n}: {answer:?}");
    }
    let (status, error) = a.request(reqwest::Method::POST, &messages, Some(text.clone())).await;
    assert_eq!((status, &error["error"]["code"]), (429, &json!(130429)), "{error}");

    let (status, deleted) = a
        .request(
            reqwest::Method::DELETE,
            &format!("{}/{}/{}/message_templates?name=order_ready", a.url, a.version, a.business_id),
            None,
        )
        .await;
    assert_eq!((status, deleted), (200, json!({ "success": true })));
    let (_, listed) = a.request(reqwest::Method::GET, &templates, None).await;
    assert_eq!(listed["data"], json!([]));
    w.stop().await;
}
