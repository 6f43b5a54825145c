//! Request bodies of the native and compat APIs never make the gateway fail: whatever JSON
//! (or not JSON at all) a caller sends to any route that reads a body, the answer is a
//! status with a JSON body, an error is `{"error": "..."}` and a server error (5xx) never
//! comes of a request's body. Property tests against a real gateway whose sessions exist
//! (one linked to the simulator, so that valid requests get as far as WhatsApp), a few
//! hundred generated requests per route, every run.
//!
//! Nothing generated leaves this machine: every string that names a host other than
//! 127.0.0.1 (a file to fetch, a webhook, a proxy) is pointed at a closed local port
//! before it is sent (see [`leaves_this_machine`]).
//!
//! Each test has a gateway of its own. The compat routes are never tried on one where the
//! native routes may have given a session a dead proxy or a pairing code: `/sessions/start`
//! would wait its 20 s for such a session to show a QR code.

mod common;
#[path = "bodies/json.rs"]
mod json;

use common::{link, start_gateway, start_sim, Api};
use json::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

/// Generated requests per route and kind of body.
const CASES: u32 = 256;

// ---------------------------------------------------------------------------------------
// The bodies of each route.

/// What the generated requests may refer to.
#[derive(Clone)]
struct World {
    /// A message the linked session sent to the other phone (for replies and reactions).
    sent_id: String,
    /// The gateway's own address: a URL there can really be fetched.
    gateway: String,
}

fn message_id(world: &World) -> BoxedStrategy<J> {
    string_of(prop_oneof![2 => Just(world.sent_id.clone()), 1 => text()].boxed())
}

fn mimetype() -> BoxedStrategy<J> {
    one_of(&[
        "image/jpeg",
        "video/mp4",
        "audio/ogg; codecs=opus",
        "application/pdf",
        "image/webp",
        "image",
        " ",
        "a/b/c",
    ])
}

fn file(world: &World) -> BoxedStrategy<J> {
    let fetchable = vec![format!("{}/health", world.gateway), format!("{}/nope", world.gateway)];
    let url = string_of(prop_oneof![1 => text(), 1 => prop::sample::select(fetchable)].boxed());
    let base64 = string_of(
        prop_oneof![
            3 => text(),
            2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|bytes| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }),
            // Just over the sticker limit (1 MB).
            1 => Just("A".repeat(1_400_008)),
        ]
        .boxed(),
    );
    object(vec![
        field("url", 0.4, url),
        field("base64", 0.6, base64),
        field("mimetype", 0.5, mimetype()),
        field("filename", 0.3, string()),
        field("caption", 0.3, string()),
        field("voice", 0.2, boolean()),
    ])
}

fn send_request(world: &World) -> BoxedStrategy<J> {
    let content = |name: &'static str, value: BoxedStrategy<J>| value.prop_map(move |v| (name.to_string(), v)).boxed();
    let location = object(vec![
        field("latitude", 0.9, num()),
        field("longitude", 0.9, num()),
        field("name", 0.3, string()),
        field("address", 0.3, string()),
    ]);
    let contact =
        object(vec![field("name", 0.9, string()), field("phone", 0.6, phone()), field("vcard", 0.4, vcard())]);
    let reaction = object(vec![field("message_id", 0.9, message_id(world)), field("emoji", 0.9, emoji())]);
    let one = prop::strategy::Union::new(vec![
        content("text", string()),
        content("document", file(world)),
        content("image", file(world)),
        content("video", file(world)),
        content("audio", file(world)),
        content("sticker", file(world)),
        content("location", location),
        content("contact", contact),
        content("reaction", reaction),
    ])
    .boxed();
    // Mostly one content field, as the API wants; sometimes none or two.
    let contents = prop_oneof![
        8 => one.clone().prop_map(|c| vec![c]),
        1 => Just(Vec::new()),
        1 => (one.clone(), one).prop_map(|(a, b)| vec![a, b]),
    ]
    .boxed();
    object_with(
        vec![field("to", 0.95, recipient()), field("reply_to", 0.2, message_id(world)), field("queue", 0.3, boolean())],
        contents,
    )
}

fn emoji() -> BoxedStrategy<J> {
    one_of(&["👍", "", "👍🏽", "🏳️‍🌈", "a", "👍👍👍👍👍👍👍👍👍👍👍", "\u{0}"])
}

/// vCards, whole and broken.
fn vcard() -> BoxedStrategy<J> {
    string_of(
        prop_oneof![
            2 => ".{0,40}".prop_map(|fn_| format!("BEGIN:VCARD\nVERSION:3.0\nFN:{fn_}\nEND:VCARD")),
            1 => text(),
        ]
        .boxed(),
    )
}

fn proxy() -> BoxedStrategy<J> {
    one_of(&[
        "socks5://127.0.0.1:1",
        "socks5h://user:pa%3Ass@127.0.0.1:1",
        "http://127.0.0.1:1",
        "http://u@127.0.0.1:1/",
        "https://127.0.0.1:1",
        "socks5://127.0.0.1",
        "socks5://127.0.0.1:65536",
        "socks5://:p@127.0.0.1:1",
        "socks5://[::1]:1",
        "socks5://127.0.0.1:1/path",
    ])
}

fn webhook_config() -> BoxedStrategy<J> {
    object(vec![
        field("url", 0.9, url()),
        field("secret", 0.3, one_of(&["whsec_aGVsbG8=", "whsec_", "whsec_!!", "s3cr3t"])),
        field("events", 0.3, array_of(one_of(&["messages.upsert", "message.status", "session.state", ""]), 40)),
        field("token", 0.3, string()),
        field("format", 0.3, one_of(&["native", "compat", "Native", ""])),
    ])
}

/// A body route: its method, one of its paths, and the bodies to try on it.
struct Route {
    method: Method,
    paths: Vec<String>,
    bodies: BoxedStrategy<J>,
}

impl Route {
    fn new(method: Method, paths: &[&str], bodies: BoxedStrategy<J>) -> Self {
        Self { method, paths: paths.iter().map(|p| p.to_string()).collect(), bodies }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.paths[0])
    }
}

const V1_ROUTES: usize = 7;

fn v1_routes(world: &World) -> Vec<Route> {
    let session_id = string_of(
        prop_oneof![2 => text(), 1 => prop::sample::select(vec!["F", "P", "fuzz-new"]).prop_map(String::from)].boxed(),
    );
    vec![
        Route::new(
            Method::POST,
            &["/v1/sessions/F/messages", "/v1/sessions/Q/messages", "/v1/sessions/nope/messages"],
            send_request(world),
        ),
        Route::new(
            Method::POST,
            &["/v1/sessions"],
            object(vec![
                field("id", 0.9, session_id),
                field("webhook", 0.3, webhook_config()),
                field("proxy", 0.3, proxy()),
            ]),
        ),
        Route::new(Method::PUT, &["/v1/sessions/P", "/v1/sessions/nope"], object(vec![field("proxy", 0.8, proxy())])),
        Route::new(
            Method::POST,
            &["/v1/sessions/P/pair-code", "/v1/sessions/F/pair-code"],
            object(vec![field("phone", 0.9, phone())]),
        ),
        Route::new(
            Method::POST,
            &["/v1/sessions/F/contacts/check", "/v1/sessions/Q/contacts/check"],
            object(vec![field("phones", 0.9, array_of(phone(), 60))]),
        ),
        Route::new(Method::PUT, &["/v1/sessions/F/webhook", "/v1/sessions/nope/webhook"], webhook_config()),
        Route::new(
            Method::POST,
            &["/v1/sessions/F/presence/subscribe", "/v1/sessions/Q/presence/subscribe"],
            object(vec![field("phone", 0.9, phone())]),
        ),
    ]
}

const COMPAT_ROUTES: usize = 6;

fn compat_routes() -> Vec<Route> {
    // Sessions that answer `/sessions/start` at once: the linked one, one showing a QR, and
    // one that does not exist yet.
    let session_id = || {
        string_of(
            prop_oneof![2 => text(), 2 => prop::sample::select(vec!["F", "Q", "fuzz-start"]).prop_map(String::from)]
                .boxed(),
        )
    };
    let session_and_phone = || object(vec![field("sessionId", 0.9, session_id()), field("phone", 0.9, phone())]);
    let media = object(vec![
        field("data", 0.9, string_of(prop_oneof![2 => text(), 1 => Just("aGVsbG8=".to_string())].boxed())),
        field("mimetype", 0.8, mimetype()),
        field("filename", 0.5, one_of(&["voice_note.ogg", "a.pdf", "x"])),
    ]);
    vec![
        Route::new(
            Method::POST,
            &["/sessions/start"],
            object(vec![
                field("sessionId", 0.9, session_id()),
                field("webhookUrl", 0.4, url()),
                field("webhookToken", 0.3, string()),
            ]),
        ),
        Route::new(
            Method::POST,
            &["/sessions/send"],
            object(vec![
                field("sessionId", 0.9, session_id()),
                field("receiver", 0.9, recipient()),
                field("message", 0.7, string()),
                field("media", 0.3, media),
            ]),
        ),
        Route::new(Method::POST, &["/sessions/check-number"], session_and_phone()),
        Route::new(Method::POST, &["/sessions/contact-info"], session_and_phone()),
        Route::new(Method::POST, &["/sessions/subscribe-presence"], session_and_phone()),
        Route::new(
            Method::POST,
            &["/sessions/group-metadata"],
            object(vec![field("sessionId", 0.9, session_id()), field("groupId", 0.9, recipient())]),
        ),
    ]
}

/// Bytes that are not JSON, or only almost.
fn any_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (any_json(), 0usize..64, prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(json, cut, junk)| {
            // Valid JSON cut short or with junk spliced in.
            let mut bytes = json.text().into_bytes();
            let at = bytes.len().saturating_sub(cut);
            bytes.truncate(at);
            bytes.extend(junk);
            bytes
        }),
        Just(b"{\"to\":\"15554000002\",\"text\":\"hi\"}{}".to_vec()),
        Just(vec![0xef, 0xbb, 0xbf, b'{', b'}']),
        Just(b"[".repeat(10_000)),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// The gateway under test and the judge of its answers.

struct Setup {
    sim: wagate_sim::Simulator,
    gateway: wagate::server::Gateway,
    _data: tempfile::TempDir,
    world: World,
}

/// A simulator and a gateway with session `F` linked (as 15554000001), `R` linked as the
/// phone `F` writes to (15554000002), and `Q` and `P` waiting for a scan.
async fn setup() -> Setup {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let (api, control) = (Api::gateway(gateway.addr), Api::sim(&sim));
    link(&api, &control, "F", "15554000001").await;
    link(&api, &control, "R", "15554000002").await;
    for waiting in ["Q", "P"] {
        let (status, body) = api.post("/v1/sessions", json!({ "id": waiting })).await;
        assert_eq!(status, 201, "{body}");
        api.wait_state(waiting, "awaiting_scan").await;
    }
    let (status, sent) = api.post("/v1/sessions/F/messages", json!({ "to": "15554000002", "text": "hello" })).await;
    assert_eq!(status, 200, "{sent}");
    let world =
        World { sent_id: sent["id"].as_str().unwrap().to_string(), gateway: format!("http://{}", gateway.addr) };
    Setup { sim, gateway, _data: data, world }
}

impl Setup {
    async fn stop(self) {
        self.gateway.stop().await;
        self.sim.stop().await;
    }
}

/// One generated request.
#[derive(Clone, Debug)]
struct Case {
    path: String,
    body: Body,
    /// For sends: an `Idempotency-Key` header, as bytes.
    key: Option<Vec<u8>>,
}

/// The server errors a well-formed request may get: WhatsApp (here the simulator) failed
/// the send. It has no keys for a number nobody linked, so encryption fails, and no group
/// of an id nobody created. The native API says 502; the compat API 500, as the Node
/// service did (COMPAT.md).
fn whatsapp_failed(status: u16, path: &str, error: &str) -> bool {
    const REFUSALS: &[&str] = &[
        "WhatsApp refused or failed the request: encryption failed",
        "WhatsApp refused or failed the request: IQ request failed: received a server error response: code=404",
    ];
    REFUSALS.iter().any(|refusal| error.starts_with(refusal))
        && (status == 502 || (status == 500 && path == "/sessions/send"))
}

/// Sends the case and judges the answer.
async fn check(http: &reqwest::Client, base: &str, method: &Method, case: &Case) -> Result<u16, TestCaseError> {
    let mut request = http
        .request(method.clone(), format!("{base}{}", case.path))
        .header(CONTENT_TYPE, "application/json")
        .body(case.body.bytes());
    if let Some(key) = case.key.as_deref().and_then(|k| HeaderValue::from_bytes(k).ok()) {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| TestCaseError::fail(format!("answer cut short: {e}")))?;
    let short: String = text.chars().take(400).collect();
    let answer: Value = serde_json::from_str(&text).map_err(|_| {
        TestCaseError::fail(format!("{method} {}: {status} with a body that is not JSON: {short}", case.path))
    })?;
    let error = answer["error"].as_str().unwrap_or_default();
    prop_assert!(
        status < 500 || whatsapp_failed(status, &case.path, error),
        "{method} {}: a server error ({status}) for a request's body: {short}",
        case.path
    );
    if status >= 400 {
        prop_assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {}: {status} without an error text: {short}",
            case.path
        );
    }
    if case.body.must_be_refused() {
        prop_assert!(
            (400..500).contains(&status),
            "{method} {}: {status} for a body that is not a JSON object",
            case.path
        );
    }
    Ok(status)
}

/// What one run tries: a route, and the bodies and `Idempotency-Key`s to send it.
type Plan = (Route, BoxedStrategy<Body>, BoxedStrategy<Option<Vec<u8>>>);

/// Runs [`CASES`] generated requests against the gateway: from a blocking thread (the
/// proptest runner is synchronous, and its strategies stay on that thread), each request
/// on the test's runtime.
async fn run(setup: &Setup, plan: impl FnOnce(&World) -> Plan + Send + 'static) {
    let base = format!("http://{}", setup.gateway.addr);
    let world = setup.world.clone();
    let runtime = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    let (name, outcome) = tokio::task::spawn_blocking(move || {
        let (route, bodies, keys) = plan(&world);
        let http = reqwest::Client::new();
        // The first path, mostly: the one where requests get furthest.
        let paths = prop_oneof![3 => Just(route.paths[0].clone()), 1 => prop::sample::select(route.paths.clone())];
        let strategy = (paths, bodies, keys).prop_map(|(path, body, key)| Case { path, body, key });
        let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
        let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
        let outcome = runner.run(&strategy, |case| {
            let status = runtime.block_on(check(&http, &base, &route.method, &case))?;
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            Ok(())
        });
        (
            format!("{} (answers: {:?})", route.name(), statuses.into_inner().unwrap()),
            outcome.map_err(|e| e.to_string()),
        )
    })
    .await
    .expect("the runner does not panic");
    if let Err(failure) = outcome {
        panic!("{name}: {failure}");
    }
    eprintln!("{name}: {CASES} cases in {:.1} s", started.elapsed().as_secs_f32());
}

fn no_key() -> BoxedStrategy<Option<Vec<u8>>> {
    Just(None).boxed()
}

/// Bodies made for the route: its fields, with hostile values and wrong types.
fn structured(route: Route) -> Plan {
    let bodies = route.bodies.clone().prop_map(|j| Body::Json(j.confined())).boxed();
    (route, bodies, no_key())
}

/// Any JSON at all, and bytes that are not JSON.
fn unstructured(route: Route) -> Plan {
    let bodies = prop_oneof![
        1 => any_json().prop_map(|j| Body::Json(j.confined())),
        1 => any_bytes().prop_map(Body::Bytes),
    ]
    .boxed();
    (route, bodies, no_key())
}

// ---------------------------------------------------------------------------------------
// The properties.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_bodies() {
    let setup = setup().await;
    run(&setup, |world| {
        let (route, bodies, _) = structured(v1_routes(world).remove(0));
        let keys = prop_oneof![
            6 => Just(None),
            1 => prop::sample::select(vec![
                b"key-1".to_vec(),
                Vec::new(),
                vec![b'k'; 201],
                vec![b'k'; 200],
                "ключ".as_bytes().to_vec(),
                vec![0x80, b'a'],
            ])
            .prop_map(Some),
        ]
        .boxed();
        (route, bodies, keys)
    })
    .await;
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_contact_and_webhook_bodies() {
    let setup = setup().await;
    for index in 1..V1_ROUTES {
        run(&setup, move |world| structured(v1_routes(world).remove(index))).await;
    }
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_bodies() {
    let setup = setup().await;
    for index in 0..COMPAT_ROUTES {
        run(&setup, move |_| structured(compat_routes().remove(index))).await;
    }
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_json_or_bytes_to_v1_routes() {
    let setup = setup().await;
    for index in 0..V1_ROUTES {
        run(&setup, move |world| unstructured(v1_routes(world).remove(index))).await;
    }
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_json_or_bytes_to_compat_routes() {
    let setup = setup().await;
    for index in 0..COMPAT_ROUTES {
        run(&setup, move |_| unstructured(compat_routes().remove(index))).await;
    }
    setup.stop().await;
}
