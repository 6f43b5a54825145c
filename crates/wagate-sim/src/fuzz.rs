//! Property tests: whatever a client sends, the simulator's parsers of it never panic.
//! Bytes as frames (intro, edge-routing prefix, 3-byte lengths), as Noise handshake
//! messages, as encrypted binary nodes; nodes as iqs, messages, receipts, acks, presence
//! and pairing answers; and the text the control API parses (QR codes, codes, phones,
//! JIDs). A few hundred generated cases each, every run.

use std::borrow::Cow;
use std::sync::Arc;

use buffa::Message as _;
use proptest::prelude::*;
use wacore_binary::marshal::{marshal, unmarshal_ref};
use wacore_binary::{Attrs, Jid, Node, NodeContent, NodeValue};
use wacore_noise::{NoiseCipher, XxHandshakeState};
use waproto::buffa;
use waproto::whatsapp::handshake_message::{ClientFinish, ClientHello};
use waproto::whatsapp::{ADVSignedDeviceIdentity, HandshakeMessage};

use crate::accounts::SignalKeys;
use crate::crypto::generate_key_pair;
use crate::iq::{self, IqContext};
use crate::jid::DeviceAddr;
use crate::keys::ServerKeys;
use crate::media::MediaStore;
use crate::noise::{respond_to_hello, HelloOutcome};
use crate::profile::{AccountProfile, ProfileOverrides};
use crate::state::{SimConfig, SimState};
use crate::wire::{frame, FrameReader, Transport};

const PROLOGUE: [u8; 4] = *b"WA\x06\x03";
const A: u64 = 15550000001;
const B: u64 = 15550000002;
const C: u64 = 15550000003;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------
// Frames.

/// Splits `bytes` at the given points (indexes into it, in any order).
fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(config())]

    /// Frames come out as they went in, however the WebSocket messages cut the stream, with
    /// or without an edge-routing prefix before the intro.
    #[test]
    fn frames_survive_any_split(
        routing in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        if let Some(routing) = &routing {
            let len = routing.len();
            stream.extend_from_slice(&[b'E', b'D', 0, 1, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
            stream.extend_from_slice(routing);
        }
        stream.extend_from_slice(&PROLOGUE);
        for payload in &payloads {
            stream.extend(frame(payload));
        }
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        for chunk in split(&stream, &cuts) {
            reader.push(&chunk);
            while let Some(frame) = reader.next_frame().expect("a well-formed stream") {
                got.push(frame);
            }
        }
        prop_assert_eq!(got, payloads);
        if !stream.is_empty() {
            prop_assert_eq!(reader.prologue(), Some(&PROLOGUE));
        }
    }

    /// Any bytes at all: frames, a wait for more, or an error; never a panic, and a
    /// prologue only when the intro was WhatsApp's.
    #[test]
    fn any_bytes_as_frames(
        chunks in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                Just(b"ED".to_vec()),
                Just(PROLOGUE.to_vec()),
                Just(vec![0xff, 0xff, 0xff]),
                Just(vec![0, 0, 0]),
            ],
            0..8,
        ),
    ) {
        let mut reader = FrameReader::default();
        'chunks: for chunk in chunks {
            reader.push(&chunk);
            loop {
                match reader.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'chunks,
                }
            }
        }
        if let Some(prologue) = reader.prologue() {
            prop_assert_eq!(&prologue[..3], b"WA\x06");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encrypted nodes.

/// A transport pair: the simulator's side and the key a client writes with.
fn transport() -> (Transport, NoiseCipher) {
    let key = [9u8; 32];
    let server = Transport::new(NoiseCipher::new(&key).unwrap(), NoiseCipher::new(&[1; 32]).unwrap());
    (server, NoiseCipher::new(&key).unwrap())
}

/// Plaintexts of frames: a flag byte (0 plain, 2 zlib) and a marshalled node, or not.
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (0..4u8, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(flag, rest)| [vec![flag], rest].concat()),
        node().prop_filter_map("marshals", |node| marshal(&node).ok()),
        (node(), any::<prop::sample::Index>(), any::<u8>()).prop_filter_map("marshals", |(node, at, byte)| {
            let mut bytes = marshal(&node).ok()?;
            let at = at.index(bytes.len());
            bytes[at] = byte;
            Some(bytes)
        }),
        // A zlib header before junk.
        prop::collection::vec(any::<u8>(), 0..100).prop_map(|rest| [vec![2, 0x78, 0x9c], rest].concat()),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Frames the client encrypted properly, holding anything: a node or an error.
    #[test]
    fn any_plaintext_as_a_node(plaintexts in prop::collection::vec(plaintext(), 1..4)) {
        let (mut server, client) = transport();
        for (counter, plain) in plaintexts.iter().enumerate() {
            let sealed = client.encrypt_with_counter(counter as u32, plain).unwrap();
            let _ = server.decrypt_node(sealed);
        }
    }

    /// Frames not encrypted with the client's key never decrypt.
    #[test]
    fn any_ciphertext_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let (mut server, _) = transport();
        prop_assert!(server.decrypt_node(bytes).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// The Noise handshake.

fn keys() -> &'static ServerKeys {
    &state().0.keys
}

fn key_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 32..=32),
        Just(vec![0; 32]),
    ])
}

/// Handshake messages: any bytes, and `clientHello`s / `clientFinish`es of any content.
fn handshake_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (key_bytes(), key_bytes(), key_bytes()).prop_map(|(ephemeral, r#static, payload)| {
            HandshakeMessage {
                client_hello: buffa::MessageField::some(ClientHello {
                    ephemeral,
                    r#static,
                    payload,
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        }),
        (key_bytes(), key_bytes()).prop_map(|(r#static, payload)| {
            HandshakeMessage {
                client_finish: buffa::MessageField::some(ClientFinish { r#static, payload, ..Default::default() }),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    ]
}

/// A real client's handshake up to its finish message, with `payload` as its login payload.
fn client_handshake(payload: Vec<u8>) -> (XxHandshakeState, Vec<u8>, HelloOutcome) {
    let client = XxHandshakeState::new(generate_key_pair(), payload, &PROLOGUE).unwrap();
    let hello = client.build_client_hello().unwrap();
    let (server_hello, outcome) = respond_to_hello(keys(), &PROLOGUE, &hello).expect("a real hello is answered");
    (client, server_hello, outcome)
}

proptest! {
    #![proptest_config(config())]

    /// The first handshake message, any bytes: an answer or an error.
    #[test]
    fn any_client_hello(message in handshake_message()) {
        let _ = respond_to_hello(keys(), &PROLOGUE, &message);
    }

    /// The second one, after a real hello: any bytes, an error.
    #[test]
    fn any_client_finish(message in handshake_message()) {
        let (_, _, outcome) = client_handshake(Vec::new());
        let HelloOutcome::AwaitingFinish(pending) = outcome else { panic!("XX waits for the finish") };
        prop_assert!(pending.finish(&message).is_err(), "a finish nobody encrypted was taken");
    }

    /// A real client's finish with any login payload: established exactly when the payload
    /// is a ClientPayload; then the client's frames, whatever they hold, are read.
    #[test]
    fn real_handshake_any_payload(
        payload in prop_oneof![prop::collection::vec(any::<u8>(), 0..120), client_payload()],
        frames in prop::collection::vec(plaintext(), 0..3),
    ) {
        let decodes = waproto::whatsapp::ClientPayload::decode_from_slice(&payload).is_ok();
        let (mut client, server_hello, outcome) = client_handshake(payload);
        let finish = client.read_server_hello_and_build_client_finish(&server_hello).expect("the client takes our hello");
        let HelloOutcome::AwaitingFinish(pending) = outcome else { panic!("XX waits for the finish") };
        let established = pending.finish(&finish);
        prop_assert_eq!(established.is_ok(), decodes);
        if let Ok(established) = established {
            let _ = crate::conn::registration_from(&established.payload, established.client_static);
            let ciphers = client.finish().expect("the client finishes");
            let mut server = Transport::new(established.read, established.write);
            for (counter, plain) in frames.iter().enumerate() {
                let sealed = ciphers.write_cipher.encrypt_with_counter(counter as u32, plain).unwrap();
                let _ = server.decrypt_node(sealed);
            }
        }
    }
}

/// Login payloads: a phone number or not, pairing data of any shape.
fn client_payload() -> impl Strategy<Value = Vec<u8>> {
    use waproto::whatsapp::client_payload::DevicePairingRegistrationData;
    let pairing = (key_bytes(), key_bytes(), key_bytes(), key_bytes(), key_bytes(), key_bytes()).prop_map(
        |(e_regid, e_ident, e_skey_id, e_skey_val, e_skey_sig, device_props)| DevicePairingRegistrationData {
            e_regid,
            e_ident,
            e_skey_id,
            e_skey_val,
            e_skey_sig,
            device_props,
            ..Default::default()
        },
    );
    (
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<bool>()),
        prop::option::of(pairing),
    )
        .prop_map(|(username, device, passive, pairing)| {
            waproto::whatsapp::ClientPayload {
                username,
                device,
                passive,
                device_pairing_data: pairing.map(buffa::MessageField::some).unwrap_or_default(),
                ..Default::default()
            }
            .encode_to_vec()
        })
}

// ---------------------------------------------------------------------------------------
// Nodes.

const TAGS: &[&str] = &[
    "iq",
    "message",
    "receipt",
    "ack",
    "presence",
    "chatstate",
    "notification",
    "ib",
    "enc",
    "to",
    "participants",
    "participant",
    "list",
    "item",
    "usync",
    "query",
    "user",
    "contact",
    "devices",
    "device",
    "key",
    "registration",
    "type",
    "identity",
    "skey",
    "value",
    "signature",
    "count",
    "digest",
    "picture",
    "group",
    "groups",
    "link_code_companion_reg",
    "link_code_pairing_wrapped_companion_ephemeral_pub",
    "pair-device-sign",
    "device-identity",
    "error",
    "ping",
    "active",
    "props",
    "media_conn",
    "sync",
    "collection",
    "remove-companion-device",
    "composing",
    "paused",
    "side_list",
    "lid",
    "status",
    "business",
    "devices",
    "",
];

const KEYS: &[&str] = &[
    "id",
    "type",
    "xmlns",
    "to",
    "from",
    "participant",
    "recipient",
    "t",
    "class",
    "count",
    "jid",
    "stage",
    "context",
    "mode",
    "last",
    "index",
    "name",
    "v",
    "version",
    "phash",
    "reason",
    "code",
    "text",
    "addressing_mode",
    "category",
    "media",
    "sid",
    "expected_ts",
    "device_hash",
    "",
];

/// Attribute values: JIDs of the accounts here, of nobody, and any text.
fn value() -> impl Strategy<Value = NodeValue> {
    let jids = vec![
        format!("{A}@s.whatsapp.net"),
        format!("{A}:1@s.whatsapp.net"),
        format!("{B}:1@s.whatsapp.net"),
        format!("{B}@s.whatsapp.net"),
        "100015550000002:1@lid".to_string(),
        "999@lid".to_string(),
        "120363000000000001@g.us".to_string(),
        "s.whatsapp.net".to_string(),
        "status@broadcast".to_string(),
        "1:99999@s.whatsapp.net".to_string(),
        "18446744073709551616@s.whatsapp.net".to_string(),
    ];
    prop_oneof![
        3 => ".{0,20}".prop_map(|s: String| NodeValue::String(s.into())),
        2 => prop::sample::select(vec!["get", "set", "result", "error", "md", "usync", "encrypt", "w:p", "passive",
            "w:g2", "message", "receipt", "retry", "read", "subscribe", "available", "unavailable", "companion_hello",
            "companion_finish", "1", "0", "-1", "99999999999999999999"]).prop_map(|s| NodeValue::String(s.into())),
        3 => prop::sample::select(jids.clone()).prop_map(|s| NodeValue::String(s.into())),
        1 => prop::sample::select(jids).prop_filter_map("parses", |s| s.parse::<Jid>().ok().map(NodeValue::Jid)),
    ]
}

fn leaf_content() -> impl Strategy<Value = Option<NodeContent>> {
    prop::option::of(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..100).prop_map(NodeContent::Bytes),
        prop::collection::vec(any::<u8>(), 32..=32).prop_map(NodeContent::Bytes),
        prop::collection::vec(any::<u8>(), 80..=80).prop_map(NodeContent::Bytes),
        ".{0,20}".prop_map(|s: String| NodeContent::String(s.into())),
    ])
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(TAGS).prop_map(String::from), 1 => ".{0,10}"]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    prop::collection::vec(
        (prop_oneof![4 => prop::sample::select(KEYS).prop_map(String::from), 1 => ".{0,8}"], value()),
        0..6,
    )
    .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect())
}

/// Any node, nested a few levels.
fn node() -> BoxedStrategy<Node> {
    let leaf = (tag(), attrs(), leaf_content()).prop_map(|(tag, attrs, content)| Node {
        tag: Cow::Owned(tag),
        attrs,
        content,
    });
    leaf.prop_recursive(4, 40, 6, |inner| {
        (tag(), attrs(), prop::collection::vec(inner, 0..6)).prop_map(|(tag, attrs, children)| Node {
            tag: Cow::Owned(tag),
            attrs,
            content: Some(NodeContent::Nodes(children)),
        })
    })
    .boxed()
}

/// The iqs the simulator has handlers for, by namespace and first child, with any content.
fn iq() -> impl Strategy<Value = Node> {
    let handled = vec![
        ("w:p", "ping"),
        ("passive", "active"),
        ("encrypt", "count"),
        ("encrypt", "key"),
        ("encrypt", "list"),
        ("encrypt", "rotate"),
        ("encrypt", "digest"),
        ("abt", "props"),
        ("w", "props"),
        ("privacy", "privacy"),
        ("blocklist", "list"),
        ("usync", "usync"),
        ("w:profile:picture", "picture"),
        ("w:g2", "query"),
        ("w:g2", "participating"),
        ("w:sync:app:state", "sync"),
        ("md", "remove-companion-device"),
        ("md", "link_code_companion_reg"),
        ("w:m", "media_conn"),
        ("nope", "nope"),
    ];
    (
        prop::sample::select(handled),
        prop::sample::select(vec!["get", "set", "result", "error", ""]),
        attrs(),
        prop::collection::vec(node(), 0..4),
        attrs(),
    )
        .prop_map(|((xmlns, first), kind, extra, children, first_attrs)| {
            let first =
                Node { tag: Cow::Borrowed(first), attrs: first_attrs, content: Some(NodeContent::Nodes(children)) };
            let mut attrs = extra;
            attrs.insert(Cow::Borrowed("xmlns"), NodeValue::String(xmlns.into()));
            attrs.insert(Cow::Borrowed("type"), NodeValue::String(kind.into()));
            Node { tag: Cow::Borrowed("iq"), attrs, content: Some(NodeContent::Nodes(vec![first])) }
        })
}

/// A simulator state with accounts A and B (one companion each) and a group of both,
/// shared by every case: what one case leaves behind (queued stanzas, subscriptions,
/// pairing codes) is there for the next.
fn state() -> &'static (Arc<SimState>, DeviceAddr, DeviceAddr) {
    static STATE: std::sync::OnceLock<(Arc<SimState>, DeviceAddr, DeviceAddr)> = std::sync::OnceLock::new();
    STATE.get_or_init(|| {
        let state = SimState::new(ServerKeys::generate(), SimConfig::default(), MediaStore::new("127.0.0.1:9".into()));
        let (a, b) = {
            let mut inner = state.lock();
            let link = |inner: &mut crate::state::Inner, phone| {
                let signal = SignalKeys { identity: vec![5; 33], ..SignalKeys::default() };
                let addr = inner.accounts.reserve_companion(phone, [1; 32], "test".into(), signal).unwrap();
                inner.accounts.confirm(addr);
                addr
            };
            // A has a profile, so its app-state answers carry data.
            inner.account_profile =
                AccountProfile { contacts: 5, groups: 2, group_size: 4, history: 10, ..AccountProfile::empty() };
            let a = link(&mut inner, A);
            crate::profile::assign(&mut inner, A);
            if let Some(device) = inner.accounts.device_mut(a) {
                device.key_shared = true;
            }
            inner.account_profile = AccountProfile::empty();
            let b = link(&mut inner, B);
            inner.groups.create("Team".into(), A, &[B]);
            (a, b)
        };
        (state, a, b)
    })
}

/// What a connection does with a node from its client (`conn.rs`, `on_node`), minus the
/// socket: every answer it would write must encode.
fn handle(state: &Arc<SimState>, device: Option<DeviceAddr>, node: &Node) -> Result<(), TestCaseError> {
    let mut answers = Vec::new();
    match (node.tag.as_ref(), device) {
        ("receipt", Some(reader)) => {
            let mut inner = state.lock();
            crate::relay::settle_acked(&mut inner, reader, node);
            answers.push(crate::relay::relay_receipt(&mut inner, reader, node));
        }
        ("ack", Some(device)) => crate::relay::settle_acked(&mut state.lock(), device, node),
        ("message", Some(sender)) => answers.push(crate::relay::relay_message(&mut state.lock(), sender, node)),
        ("presence" | "chatstate", Some(sender)) => crate::presence::on_stanza(&mut state.lock(), sender, node),
        ("iq", _) => {
            if let Some(reg) = crate::nodes::child(node, "link_code_companion_reg") {
                if let Ok(hello) = crate::pair_code::parse_companion_hello(reg) {
                    prop_assert_eq!(hello.wrapped_ephemeral.len(), 80);
                    answers.push(crate::pair_code::companion_hello_answer(node, b"2@ref"));
                }
            }
            let answer = iq::answer(&IqContext { state, device }, node);
            let kind = crate::nodes::attr(node, "type").unwrap_or_default();
            if kind != "result" && kind != "error" {
                prop_assert!(!answer.replies.is_empty(), "an iq without an answer");
            }
            answers.extend(answer.replies);
        }
        _ => {}
    }
    let (mut server, _) = transport();
    for answer in &answers {
        prop_assert!(server.encrypt_node(answer).is_ok(), "an answer does not encode: {:?}", answer.tag);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Iqs of every namespace the simulator answers, with any content, from a pairing
    /// connection and from a logged-in one.
    #[test]
    fn any_iq(iq in iq(), logged_in in any::<bool>()) {
        let (state, a, _) = state().clone();
        handle(&state, logged_in.then_some(a), &iq)?;
    }

    /// Stanzas of any shape from a logged-in device.
    #[test]
    fn any_stanza(nodes in prop::collection::vec(node(), 1..4), from_b in any::<bool>()) {
        let (state, a, b) = state().clone();
        for node in &nodes {
            handle(&state, Some(if from_b { b } else { a }), node)?;
        }
    }

    /// Whatever bytes decode as a node are handled.
    #[test]
    fn any_bytes_as_a_node(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (node(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_filter_map(
            "marshals",
            |(node, edits)| {
                // The flag byte is not part of a node.
                let mut bytes = marshal(&node).ok()?[1..].to_vec();
                for (at, byte) in edits {
                    if !bytes.is_empty() {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                }
                Some(bytes)
            },
        ),
    ]) {
        if let Ok(node) = unmarshal_ref(&bytes).map(|n| n.to_owned()) {
            let (state, a, _) = state().clone();
            handle(&state, Some(a), &node)?;
            handle(&state, None, &node)?;
        }
    }

    /// A client's answer to `pair-success`, however formed, never passes without the
    /// device's own signature.
    #[test]
    fn forged_pair_device_signs_are_refused(
        node in node(),
        details in prop_oneof![prop::collection::vec(any::<u8>(), 0..40).prop_map(Some), Just(None)],
        signature in key_bytes(),
        raw in prop::collection::vec(any::<u8>(), 0..80),
        use_details in any::<bool>(),
        shape in 0..3u8,
    ) {
        // A device of its own: the other properties may unlink A's and B's.
        let pair = {
            let mut inner = state().0.lock();
            let device = match inner.accounts.get(C).and_then(|account| account.companions().next()) {
                Some(device) => device.id,
                None => inner.accounts.reserve_companion(C, [2; 32], "test".into(), SignalKeys::default()).unwrap().device,
            };
            let account = inner.accounts.get(C).unwrap();
            crate::pairing::pair_success(account, &account.devices[&device], [3; 32], &[4; 32])
        };
        let identity = match shape {
            0 => raw,
            _ => ADVSignedDeviceIdentity {
                details: if use_details { Some(pair.device_details.clone()) } else { details },
                device_signature: signature,
                ..Default::default()
            }
            .encode_to_vec(),
        };
        let answer = match shape {
            2 => node,
            _ => Node {
                tag: Cow::Borrowed("iq"),
                attrs: [(Cow::Borrowed("id"), NodeValue::String(pair.iq_id.as_str().into()))].into_iter().collect(),
                content: Some(NodeContent::Nodes(vec![Node {
                    tag: Cow::Borrowed("pair-device-sign"),
                    attrs: Attrs::new(),
                    content: Some(NodeContent::Nodes(vec![Node {
                        tag: Cow::Borrowed("device-identity"),
                        attrs: Attrs::new(),
                        content: Some(NodeContent::Bytes(identity)),
                    }])),
                }])),
            },
        };
        let _ = crate::pairing::is_answer_to(&answer, &pair);
        prop_assert!(crate::pairing::verify_pair_device_sign(&answer, &pair).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Text the control API parses.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn qr_texts(text in prop_oneof![".{0,80}", "[A-Za-z0-9+/=,@#:. ]{0,120}"]) {
        if let Ok(scan) = crate::pairing::parse_qr(&text) {
            prop_assert!(!scan.pairing_ref.is_empty());
        }
    }

    #[test]
    fn codes_phones_and_jids(text in prop_oneof![".{0,30}", "[0-9A-Za-z:@.+ -]{0,30}"]) {
        if let Some(code) = crate::pair_code::normalize_code(&text) {
            prop_assert_eq!(code.len(), 8);
        }
        if let Some(phone) = crate::jid::parse_phone(&text) {
            prop_assert!(phone.to_string().len() <= 15);
        }
        let _ = crate::jid::parse_device_jid(&text);
    }
}

// ---------------------------------------------------------------------------------------
// Bodies of `POST /control/account-profile`.

fn profile_field() -> impl Strategy<Value = (String, serde_json::Value)> {
    let name = prop::sample::select(vec![
        "preset",
        "contacts",
        "groups",
        "group_size",
        "history",
        "trickle_per_minute",
        "other",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u32>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
        prop::sample::select(vec!["empty", "small-business", "small_business", " empty "])
            .prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([1, {"a": 2}])),
    ];
    (name.prop_map(String::from), value)
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a control call sends, the profile route either takes a valid profile or
    /// says why not; it never panics and never keeps an invalid one.
    #[test]
    fn account_profile_bodies(
        fields in prop::collection::vec(profile_field(), 0..7),
        text in ".{0,60}",
        as_text in any::<bool>(),
    ) {
        let body = if as_text {
            text
        } else {
            serde_json::Value::Object(fields.into_iter().collect()).to_string()
        };
        if let Ok(overrides) = serde_json::from_str::<ProfileOverrides>(&body) {
            if let Ok(profile) = AccountProfile::with_overrides(&AccountProfile::small_business(), &overrides) {
                prop_assert!(profile.validate().is_ok());
                prop_assert!(profile.trickle_per_minute.is_finite());
            }
        }
    }
}
