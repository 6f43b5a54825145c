//! Shared by the simulator's integration tests: start a simulator, call its control API,
//! run a whatsapp-rust client against it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use wagate_sim::{ServerKeys, SimConfig, Simulator};
use whatsapp_rust::prelude::*;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;

pub const WAIT: Duration = Duration::from_secs(30);

pub async fn start_sim() -> Simulator {
    start_sim_with(SimConfig::default()).await
}

pub async fn start_sim_with(config: SimConfig) -> Simulator {
    // RUST_LOG=wagate_sim=debug shows every stanza of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    Simulator::start("127.0.0.1:0".parse().unwrap(), ServerKeys::generate(), config).await.expect("simulator starts")
}

pub struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    pub fn new(sim: &Simulator) -> Self {
        Self { base: sim.endpoints.control_url.clone(), http: reqwest::Client::new() }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response =
            self.http.post(format!("{}{path}", self.base)).json(&body).send().await.expect("control API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("control API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.base)).send().await.expect("control API answers").json().await.unwrap()
    }

    /// Polls `/control/stats` until `check` holds (or the wait runs out).
    pub async fn wait_stats(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_stats_for(what, WAIT, check).await
    }

    pub async fn wait_stats_for(&self, what: &str, wait: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let stats = self.get("/control/stats").await;
            if check(&stats) {
                return stats;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; stats: {stats}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the test client reports, in order.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Qr(String),
    PairCode(String),
    PairSuccess,
    Connected,
    Disconnected,
    LoggedOut(String),
    /// A stanza as it came off the wire, before the client handled it.
    Stanza(Stanza),
    /// A history sync chunk the client downloaded and decoded: its conversations' ids and
    /// how many messages it held.
    HistorySync {
        sync_type: i32,
        conversations: Vec<String>,
        messages: usize,
    },
    /// An app-state action the client applied: its kind (`contact`, `mute`, `pin`,
    /// `archive`) and the chat it names.
    ChatAction {
        kind: &'static str,
        jid: String,
    },
    /// A message the client decrypted: sender and text.
    Message {
        from: String,
        text: String,
    },
    Other(String),
}

/// The envelope of a received stanza: enough to tell which message came, and how.
#[derive(Debug, Clone)]
pub struct Stanza {
    pub tag: String,
    pub attrs: BTreeMap<String, String>,
    pub children: Vec<String>,
}

impl Stanza {
    fn of(node: &wacore_binary::OwnedNodeRef) -> Self {
        let node = node.get();
        Self {
            tag: node.tag.to_string(),
            attrs: node.attrs_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            children: node.children().unwrap_or_default().iter().map(|c| c.tag.to_string()).collect(),
        }
    }

    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    /// `<ib><offline count=N/></ib>`: the server is done with the offline queue of a login.
    pub fn is_offline_marker(&self) -> bool {
        self.tag == "ib" && self.children.iter().any(|c| c == "offline")
    }

    pub fn is_message(&self, id: &str) -> bool {
        self.tag == "message" && self.attr("id") == Some(id)
    }
}

pub struct TestClient {
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    pub handle: BotHandle,
    pub client: Arc<Client>,
    pub _dir: tempfile::TempDir,
    /// Keeps [`ClientEvent::Stanza`] coming.
    _raw_nodes: whatsapp_rust::RawNodeLease,
}

/// Hands the library's events over inline and in order. (With `on_event`'s concurrent
/// delivery an event right before a close, `StreamReplaced` say, could be lost.)
struct Forward(mpsc::UnboundedSender<ClientEvent>);

impl wacore::types::events::EventHandler for Forward {
    fn handle_event(&self, event: Arc<Event>) {
        let mapped = match &*event {
            Event::PairingQrCode(qr) => ClientEvent::Qr(qr.code.clone()),
            Event::PairingCode(code) => ClientEvent::PairCode(code.code.clone()),
            Event::PairSuccess(_) => ClientEvent::PairSuccess,
            Event::Connected(_) => ClientEvent::Connected,
            Event::Disconnected(_) => ClientEvent::Disconnected,
            Event::LoggedOut(reason) => ClientEvent::LoggedOut(format!("{reason:?}")),
            Event::RawNode(node) => ClientEvent::Stanza(Stanza::of(node)),
            Event::HistorySync(chunk) => {
                let decoded = chunk.get();
                let conversations = decoded.map(|h| h.conversations.iter().map(|c| c.id.clone()).collect());
                ClientEvent::HistorySync {
                    sync_type: chunk.sync_type(),
                    conversations: conversations.unwrap_or_default(),
                    messages: decoded.map(|h| h.conversations.iter().map(|c| c.messages.len()).sum()).unwrap_or(0),
                }
            }
            Event::ContactUpdate(update) => ClientEvent::ChatAction { kind: "contact", jid: update.jid.to_string() },
            Event::MuteUpdate(update) => ClientEvent::ChatAction { kind: "mute", jid: update.jid.to_string() },
            Event::PinUpdate(update) => ClientEvent::ChatAction { kind: "pin", jid: update.jid.to_string() },
            Event::ArchiveUpdate(update) => ClientEvent::ChatAction { kind: "archive", jid: update.jid.to_string() },
            Event::Messages(batch) => {
                for inbound in batch.iter() {
                    let text = inbound.message.conversation.clone().unwrap_or_default();
                    let from = inbound.info.source.sender.to_string();
                    let _ = self.0.send(ClientEvent::Message { from, text });
                }
                return;
            }
            other => ClientEvent::Other(format!("{other:?}").chars().take(80).collect()),
        };
        let _ = self.0.send(mapped);
    }
}

impl TestClient {
    /// A whatsapp-rust client with its own SQLite store in a temp dir. `pair_phone` asks it
    /// to link by phone-number code instead of QR.
    pub async fn start(ws_url: &str, pair_phone: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(ws_url, pair_phone, dir).await
    }

    pub async fn start_in(ws_url: &str, pair_phone: Option<&str>, dir: tempfile::TempDir) -> Self {
        let db = dir.path().join("client.db");
        let (tx, events) = mpsc::unbounded_channel();
        let mut builder = Bot::builder()
            .with_backend(SqliteStore::new(db.to_str().unwrap()).await.expect("sqlite store"))
            .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(ws_url.to_string()))
            .with_version((2, 3000, 1_000_000_000))
            .with_http_client(SimMediaHttp::new())
            .with_event_handler(Forward(tx));
        if let Some(phone) = pair_phone {
            builder = builder.with_pair_code(whatsapp_rust::pair_code::PairCodeOptions {
                phone_number: phone.to_string(),
                ..Default::default()
            });
        }
        let bot = builder.build().await.expect("client builds");
        // Raw stanzas are forwarded from the start, so a test sees every login's.
        let raw_nodes = bot.client().acquire_raw_node_forwarding();
        let client = bot.client();
        let handle = bot.spawn();
        Self { events, handle, client, _dir: dir, _raw_nodes: raw_nodes }
    }

    /// Waits for the first event `pick` accepts, skipping others.
    pub async fn wait_for<T>(&mut self, what: &str, pick: impl Fn(&ClientEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("client stopped before {what}"));
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    pub async fn wait_connected(&mut self) {
        self.wait_for("Connected", |e| matches!(e, ClientEvent::Connected).then_some(())).await
    }

    /// The stanzas received from now until the next `<ib><offline/>`, the end of a login's
    /// offline flush (the marker not included).
    pub async fn stanzas_until_offline_marker(&mut self) -> Vec<Stanza> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for an offline marker; saw {seen:?}"))
                .expect("client stopped before an offline marker");
            match event {
                ClientEvent::Stanza(stanza) if stanza.is_offline_marker() => return seen,
                ClientEvent::Stanza(stanza) => seen.push(stanza),
                _ => {}
            }
        }
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.handle.shutdown().await;
        self._dir
    }
}

/// Media over HTTPS to the simulator's media host, whose certificate is self-signed.
struct SimMediaHttp(reqwest::Client);

impl SimMediaHttp {
    fn new() -> Self {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .build()
            .expect("an HTTP client builds");
        Self(client)
    }
}

#[async_trait::async_trait]
impl whatsapp_rust::http::HttpClient for SimMediaHttp {
    async fn execute(
        &self,
        request: whatsapp_rust::http::HttpRequest,
    ) -> anyhow::Result<whatsapp_rust::http::HttpResponse> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
        let mut call = self.0.request(method, &request.url);
        for (name, value) in &request.headers {
            call = call.header(name, value);
        }
        if let Some(body) = request.body {
            call = call.body(body.to_vec());
        }
        let response = call.send().await?;
        let status_code = response.status().as_u16();
        Ok(whatsapp_rust::http::HttpResponse { status_code, body: response.bytes().await?.to_vec() })
    }
}

/// Starts a whatsapp-rust client, scans its QR as `phone`, and waits until the simulator
/// sees the new device logged in (the client's own `Connected` may come later).
pub async fn link_client(sim: &Simulator, control: &Control, phone: &str) -> (TestClient, String) {
    let mut client = TestClient::start(&sim.endpoints.ws_url, None).await;
    let qr = client.wait_for("a QR code", qr_of).await;
    let (status, linked) = control.post("/control/scan", serde_json::json!({ "qr": qr, "phone": phone })).await;
    assert_eq!(status, 200, "scan answer: {linked}");
    let jid = linked["jid"].as_str().unwrap().to_string();
    control.wait_logins(&jid, 1).await;
    (client, jid)
}

pub fn qr_of(event: &ClientEvent) -> Option<String> {
    match event {
        ClientEvent::Qr(code) => Some(code.clone()),
        _ => None,
    }
}

/// The name of an event the test client does not map itself (e.g. "StreamReplaced").
pub fn other_named(name: &'static str) -> impl Fn(&ClientEvent) -> Option<()> {
    move |event| matches!(event, ClientEvent::Other(other) if other.starts_with(name)).then_some(())
}

impl Control {
    /// Waits until the device has logged in at least `count` times.
    pub async fn wait_logins(&self, jid: &str, count: u64) -> Value {
        self.wait_stats(&format!("{count} logins of {jid}"), |s| {
            s["devices"][jid]["logins"].as_u64().unwrap_or(0) >= count
        })
        .await
    }

    /// Whether the simulator currently has a live login for `jid`.
    pub async fn is_connected(&self, jid: &str) -> bool {
        let devices = self.get("/control/devices").await;
        devices.as_array().unwrap().iter().any(|d| d["jid"] == jid && d["connected"] == true)
    }

    pub async fn wait_disconnected(&self, jid: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.is_connected(jid).await {
            assert!(tokio::time::Instant::now() < deadline, "{jid} stayed connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
