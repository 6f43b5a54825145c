//! Garbage from clients never takes the simulator down: a few hundred WebSocket clients
//! send generated garbage (before the intro, after it, after a real client hello, and
//! after a whole handshake as encrypted frames and binary nodes of any shape), no task of
//! the simulator panics, and afterwards it still serves its control API and links a real
//! whatsapp-rust client. (Property tests; one simulator for all cases.)

mod common;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{link_client, start_sim, Control, WAIT};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio_tungstenite::tungstenite::Message;
use wacore_binary::marshal::marshal;
use wacore_binary::{Attrs, Node, NodeContent, NodeValue};
use wacore_noise::XxHandshakeState;
use waproto::buffa::Message as _;

const INTRO: &[u8] = b"WA\x06\x03";
const CASES: u32 = 160;

/// Panics anywhere in this process (the simulator's connection tasks included: tokio
/// catches those, so only the hook sees them).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Wraps a payload in the 3-byte length header.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    [vec![(len >> 16) as u8, (len >> 8) as u8, len as u8], payload.to_vec()].concat()
}

/// A WebSocket message a client could send.
#[derive(Debug, Clone)]
enum Sent {
    Binary(Vec<u8>),
    Text(String),
    Ping(Vec<u8>),
}

impl Sent {
    fn message(&self) -> Message {
        match self {
            Sent::Binary(bytes) => Message::Binary(bytes.clone().into()),
            Sent::Text(text) => Message::Text(text.clone().into()),
            Sent::Ping(bytes) => Message::Ping(bytes.clone().into()),
        }
    }
}

/// How far a client gets before the garbage starts.
#[derive(Debug, Clone)]
enum Case {
    /// Garbage from the first byte.
    Raw(Vec<Sent>),
    /// The intro, then garbage (frames or not).
    AfterIntro(Vec<Sent>),
    /// The intro and a real client hello, then garbage as the finish.
    AfterHello(Vec<Sent>),
    /// A whole handshake with this login payload, then these plaintexts as encrypted
    /// frames, then raw garbage.
    AfterHandshake { payload: Vec<u8>, frames: Vec<Vec<u8>>, raw: Vec<Sent> },
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        6 => bytes(200).prop_map(Sent::Binary),
        2 => bytes(200).prop_map(|b| Sent::Binary(frame(&b))),
        1 => Just(Sent::Binary(vec![0xff, 0xff, 0xff])),
        1 => ".{0,40}".prop_map(Sent::Text),
        1 => bytes(20).prop_map(Sent::Ping),
    ]
}

fn node() -> BoxedStrategy<Node> {
    let tag = prop::sample::select(vec![
        "iq",
        "message",
        "receipt",
        "ack",
        "presence",
        "chatstate",
        "usync",
        "query",
        "user",
        "list",
        "item",
        "link_code_companion_reg",
        "pair-device-sign",
        "device-identity",
        "ping",
        "active",
        "key",
        "enc",
        "to",
        "participants",
        "x",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "get",
            "set",
            "result",
            "md",
            "usync",
            "encrypt",
            "w:p",
            "passive",
            "w:g2",
            "companion_hello",
            "15550000001@s.whatsapp.net",
            "1@g.us",
            "status@broadcast",
            "1:2@lid",
        ])
        .prop_map(String::from),
        ".{0,12}",
    ];
    let key = prop::sample::select(vec!["id", "type", "xmlns", "to", "from", "participant", "jid", "stage", "t"]);
    let attrs = prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
        pairs.into_iter().map(|(k, v)| (Cow::Borrowed(k), NodeValue::String(v.into()))).collect::<Attrs>()
    });
    let leaf = (tag.clone(), attrs.clone(), prop::option::of(bytes(90))).prop_map(|(tag, attrs, content)| Node {
        tag: Cow::Borrowed(tag),
        attrs,
        content: content.map(NodeContent::Bytes),
    });
    leaf.prop_recursive(3, 24, 4, move |inner| {
        (tag.clone(), attrs.clone(), prop::collection::vec(inner, 0..4)).prop_map(|(tag, attrs, children)| Node {
            tag: Cow::Borrowed(tag),
            attrs,
            content: Some(NodeContent::Nodes(children)),
        })
    })
    .boxed()
}

/// Frame plaintexts: a flag byte and a node, or anything.
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => node().prop_filter_map("marshals", |n| marshal(&n).ok()),
        1 => bytes(150),
        1 => bytes(100).prop_map(|rest| [vec![2, 0x78, 0x9c], rest].concat()),
    ]
}

/// Login payloads: mostly a new device asking to pair, sometimes a login of nobody.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    (prop::option::weighted(0.25, any::<u64>()), prop::option::of(any::<u32>()), prop::option::of(any::<bool>()))
        .prop_map(|(username, device, passive)| {
            waproto::whatsapp::ClientPayload { username, device, passive, ..Default::default() }.encode_to_vec()
        })
}

fn case() -> impl Strategy<Value = Case> {
    let garbage = || prop::collection::vec(sent(), 0..5);
    prop_oneof![
        1 => garbage().prop_map(Case::Raw),
        1 => garbage().prop_map(Case::AfterIntro),
        1 => garbage().prop_map(Case::AfterHello),
        2 => (payload(), prop::collection::vec(plaintext(), 0..6), garbage())
            .prop_map(|(payload, frames, raw)| Case::AfterHandshake { payload, frames, raw }),
    ]
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next binary message from the simulator, `None` once it closed.
async fn next_binary(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.ok()?? {
            Ok(Message::Binary(bytes)) => return Some(bytes.to_vec()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Plays one case on a fresh connection, then closes it and waits for the simulator to
/// let go of it.
async fn play(url: &str, case: Case) -> Result<(), TestCaseError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| TestCaseError::fail(format!("the simulator took no connection: {e}")))?;
    let raw = match case {
        Case::Raw(raw) => raw,
        Case::AfterIntro(raw) => {
            let _ = ws.send(Message::Binary(INTRO.to_vec().into())).await;
            raw
        }
        Case::AfterHello(raw) => {
            let client = XxHandshakeState::new(keypair(), Vec::new(), INTRO).unwrap();
            let hello = [INTRO.to_vec(), frame(&client.build_client_hello().unwrap())].concat();
            let _ = ws.send(Message::Binary(hello.into())).await;
            raw
        }
        Case::AfterHandshake { payload, frames, raw } => {
            let mut client = XxHandshakeState::new(keypair(), payload, INTRO).unwrap();
            let hello = [INTRO.to_vec(), frame(&client.build_client_hello().unwrap())].concat();
            ws.send(Message::Binary(hello.into())).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let server_hello =
                next_binary(&mut ws).await.ok_or_else(|| TestCaseError::fail("no answer to a real client hello"))?;
            prop_assert!(server_hello.len() > 3, "a server hello without a body");
            let finish = client
                .read_server_hello_and_build_client_finish(&server_hello[3..])
                .map_err(|e| TestCaseError::fail(format!("the server hello does not verify: {e}")))?;
            let ciphers = client.finish().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = ws.send(Message::Binary(frame(&finish).into())).await;
            for (counter, plain) in frames.iter().enumerate() {
                let sealed = ciphers.write_cipher.encrypt_with_counter(counter as u32, plain).unwrap();
                let _ = ws.send(Message::Binary(frame(&sealed).into())).await;
            }
            raw
        }
    };
    for message in &raw {
        let _ = ws.send(message.message()).await;
    }
    let _ = ws.close(None).await;
    let closed = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    prop_assert!(closed.is_ok(), "the simulator kept the connection after the client closed it");
    Ok(())
}

fn keypair() -> wacore_libsignal::protocol::KeyPair {
    wacore_libsignal::protocol::KeyPair::generate(&mut rand::rng())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_clients_never_takes_the_simulator_down() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        report(info);
    }));
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let url = sim.endpoints.ws_url.clone();
    let runtime = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
        runner.run(&case(), |case| runtime.block_on(play(&url, case))).map_err(|e| e.to_string())
    })
    .await
    .expect("the runner does not panic");
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    eprintln!("{CASES} garbage connections in {:.1} s", started.elapsed().as_secs_f32());
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the simulator panicked (see above)");

    let stats = control.get("/control/stats").await;
    let connections = stats["totals"]["connections"].as_u64().unwrap_or_default();
    assert!(connections >= u64::from(CASES), "{connections} connections counted: {stats}");
    assert!(stats["totals"]["handshake_failures"].as_u64().unwrap_or_default() > 0, "{stats}");
    // The garbage after a whole handshake reached the stanza handlers.
    assert!(stats["totals"]["pairing_connections"].as_u64().unwrap_or_default() > 0, "{stats}");
    eprintln!("{}", stats["totals"]);
    // A well-behaved client is still served.
    let (client, _jid) = link_client(&sim, &control, "15557770001").await;
    client.stop().await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the simulator panicked (see above)");
    sim.stop().await;
}
