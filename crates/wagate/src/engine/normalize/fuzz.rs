//! Property tests: whatever message a sender crafts (the protobuf comes from their device,
//! unchecked), `inbound` makes an event of it without panicking, and the event holds
//! together: it serializes to JSON, media whose direct path is unsafe is never
//! downloadable, and the store and the compat webhook can take it.

use proptest::prelude::*;
use waproto::buffa::{Message as _, MessageField};
use waproto::whatsapp::message as m;

use super::*;
use crate::store::StoredMedia;

/// What the API documents as `type`.
const KINDS: &[&str] = &[
    "text", "image", "video", "audio", "voice", "document", "sticker", "location", "contact", "reaction", "poll",
    "edit", "revoke", "unknown",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,30}",
        2 => "[/@:.a-z0-9%\\\\ ]{0,30}",
        1 => Just(String::new()),
        1 => "[\\x00-\\x1f\\u{2028}\\u{202e}\\u{feff}]{1,8}",
        1 => (0usize..3).prop_map(|i| match i {
            0 => "x".repeat(70_000),
            1 => "é".repeat(40_000),
            _ => "\u{0}".repeat(5_000),
        }),
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

fn opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop_oneof![prop::collection::vec(any::<u8>(), 0..40), Just(vec![7; 32])])
}

/// Direct paths as WhatsApp sends them and as a hostile sender could.
fn direct_path() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        2 => prop::sample::select(vec![
            "/v/t62.7118-24/12345_67890.enc?ccb=11-4&oh=01_Q5&oe=6870",
            "/v/t62/ok.enc?ccb=1",
            "@127.0.0.1:9/x",
            "//127.0.0.1:9/z",
            ".x@127.0.0.1:9/y",
            "https://evil/x",
            "/a\\b",
            "/a b",
            "/a\nb",
            "/",
            "",
            "/%2F%2Fevil",
        ])
        .prop_map(String::from),
        2 => "/[a-z0-9./?=&%@:\\\\-]{0,40}",
        1 => text(),
        1 => Just(format!("/{}", "a".repeat(5_000))),
    ])
}

fn file_length() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(prop_oneof![any::<u64>(), Just(0), Just(u64::MAX), Just(100 * 1024 * 1024 + 1), 0..10_000u64])
}

fn coordinate() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(-0.0),
        -200.0..200.0f64,
    ])
}

/// JIDs as they appear in message keys and context infos (plain strings there).
fn jid_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        prop::sample::select(vec![
            "15551234567@s.whatsapp.net",
            "15551234567:3@s.whatsapp.net",
            "99123@lid",
            "120363025246125486@g.us",
            "status@broadcast",
            "@",
            "a@b@c",
        ])
        .prop_map(String::from),
        text(),
    ])
}

fn key() -> impl Strategy<Value = MessageField<wa::MessageKey>> {
    prop::option::of(
        (jid_text(), prop::option::of(any::<bool>()), opt_text(), jid_text())
            .prop_map(|(remote_jid, from_me, id, participant)| wa::MessageKey { remote_jid, from_me, id, participant }),
    )
    .prop_map(field)
}

fn field<T: Default>(value: Option<T>) -> MessageField<T> {
    value.map(MessageField::some).unwrap_or_default()
}

/// A reply's context: who and what it quotes (`quoted` a whole message again).
fn context(quoted: BoxedStrategy<wa::Message>) -> impl Strategy<Value = MessageField<wa::ContextInfo>> {
    prop::option::of((opt_text(), jid_text(), prop::option::of(quoted), jid_text()).prop_map(
        |(stanza_id, participant, quoted, remote_jid)| wa::ContextInfo {
            stanza_id,
            participant,
            quoted_message: quoted.map(MessageField::some).unwrap_or_default(),
            remote_jid,
            ..Default::default()
        },
    ))
    .prop_map(field)
}

/// The fields every media message has.
#[derive(Debug, Clone)]
struct Cdn {
    direct_path: Option<String>,
    media_key: Option<Vec<u8>>,
    file_sha256: Option<Vec<u8>>,
    file_enc_sha256: Option<Vec<u8>>,
    file_length: Option<u64>,
    mimetype: Option<String>,
    caption: Option<String>,
}

fn cdn() -> impl Strategy<Value = Cdn> {
    (direct_path(), opt_bytes(), opt_bytes(), opt_bytes(), file_length(), opt_text(), opt_text()).prop_map(
        |(direct_path, media_key, file_sha256, file_enc_sha256, file_length, mimetype, caption)| Cdn {
            direct_path,
            media_key,
            file_sha256,
            file_enc_sha256,
            file_length,
            mimetype,
            caption,
        },
    )
}

/// One message with a single kind of content, nothing wrapped.
fn plain(quoted: BoxedStrategy<wa::Message>) -> BoxedStrategy<wa::Message> {
    prop_oneof![
        opt_text().prop_map(|conversation| wa::Message { conversation, ..Default::default() }),
        (opt_text(), context(quoted.clone())).prop_map(|(text, context_info)| wa::Message {
            extended_text_message: MessageField::some(m::ExtendedTextMessage {
                text,
                context_info,
                ..Default::default()
            }),
            ..Default::default()
        }),
        (cdn(), context(quoted.clone())).prop_map(|(c, context_info)| wa::Message {
            image_message: MessageField::some(m::ImageMessage {
                direct_path: c.direct_path,
                media_key: c.media_key,
                file_sha256: c.file_sha256,
                file_enc_sha256: c.file_enc_sha256,
                file_length: c.file_length,
                mimetype: c.mimetype,
                caption: c.caption,
                context_info,
                ..Default::default()
            }),
            ..Default::default()
        }),
        (cdn(), context(quoted.clone())).prop_map(|(c, context_info)| wa::Message {
            video_message: MessageField::some(m::VideoMessage {
                direct_path: c.direct_path,
                media_key: c.media_key,
                file_sha256: c.file_sha256,
                file_enc_sha256: c.file_enc_sha256,
                file_length: c.file_length,
                mimetype: c.mimetype,
                caption: c.caption,
                context_info,
                ..Default::default()
            }),
            ..Default::default()
        }),
        (cdn(), prop::option::of(any::<bool>()), context(quoted.clone())).prop_map(|(c, ptt, context_info)| {
            wa::Message {
                audio_message: MessageField::some(m::AudioMessage {
                    direct_path: c.direct_path,
                    media_key: c.media_key,
                    file_sha256: c.file_sha256,
                    file_enc_sha256: c.file_enc_sha256,
                    file_length: c.file_length,
                    mimetype: c.mimetype,
                    ptt,
                    context_info,
                    ..Default::default()
                }),
                ..Default::default()
            }
        }),
        (cdn(), opt_text(), opt_text(), context(quoted.clone())).prop_map(|(c, file_name, title, context_info)| {
            wa::Message {
                document_message: MessageField::some(m::DocumentMessage {
                    direct_path: c.direct_path,
                    media_key: c.media_key,
                    file_sha256: c.file_sha256,
                    file_enc_sha256: c.file_enc_sha256,
                    file_length: c.file_length,
                    mimetype: c.mimetype,
                    caption: c.caption,
                    file_name,
                    title,
                    context_info,
                    ..Default::default()
                }),
                ..Default::default()
            }
        }),
        cdn().prop_map(|c| wa::Message {
            sticker_message: MessageField::some(m::StickerMessage {
                direct_path: c.direct_path,
                media_key: c.media_key,
                file_sha256: c.file_sha256,
                file_enc_sha256: c.file_enc_sha256,
                file_length: c.file_length,
                mimetype: c.mimetype,
                ..Default::default()
            }),
            ..Default::default()
        }),
        (coordinate(), coordinate(), opt_text(), opt_text()).prop_map(
            |(degrees_latitude, degrees_longitude, name, address)| wa::Message {
                location_message: MessageField::some(m::LocationMessage {
                    degrees_latitude,
                    degrees_longitude,
                    name,
                    address,
                    ..Default::default()
                }),
                ..Default::default()
            }
        ),
        (opt_text(), prop::option::of(vcard())).prop_map(|(display_name, vcard)| wa::Message {
            contact_message: MessageField::some(m::ContactMessage { display_name, vcard, ..Default::default() }),
            ..Default::default()
        }),
        (opt_text(), prop::collection::vec((opt_text(), prop::option::of(vcard())), 0..4)).prop_map(
            |(display_name, contacts)| wa::Message {
                contacts_array_message: MessageField::some(m::ContactsArrayMessage {
                    display_name,
                    contacts: contacts
                        .into_iter()
                        .map(|(display_name, vcard)| m::ContactMessage { display_name, vcard, ..Default::default() })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        ),
        (key(), opt_text()).prop_map(|(key, text)| wa::Message {
            reaction_message: MessageField::some(m::ReactionMessage { key, text, ..Default::default() }),
            ..Default::default()
        }),
        (key(), protocol_type(), prop::option::of(quoted.clone())).prop_map(|(key, r#type, edited)| wa::Message {
            protocol_message: MessageField::some(m::ProtocolMessage {
                key,
                r#type,
                edited_message: edited.map(MessageField::some).unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        opt_text().prop_map(|name| wa::Message {
            poll_creation_message: MessageField::some(m::PollCreationMessage { name, ..Default::default() }),
            ..Default::default()
        }),
        Just(wa::Message {
            sender_key_distribution_message: MessageField::some(Default::default()),
            ..Default::default()
        }),
        Just(wa::Message { message_context_info: MessageField::some(Default::default()), ..Default::default() }),
        Just(wa::Message::default()),
    ]
    .boxed()
}

fn protocol_type() -> impl Strategy<Value = Option<m::protocol_message::Type>> {
    use m::protocol_message::Type;
    prop::option::of(prop::sample::select(vec![
        Type::REVOKE,
        Type::MESSAGE_EDIT,
        Type::APP_STATE_SYNC_KEY_SHARE,
        Type::HISTORY_SYNC_NOTIFICATION,
        Type::EPHEMERAL_SETTING,
    ]))
}

/// vCards, whole and broken.
fn vcard() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,30}".prop_map(|name| format!("BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;waid=1555:+1555\nEND:VCARD")),
        text(),
    ]
}

/// Two messages in one: protobuf merges concatenated encodings, as a sender may send them.
fn merged(a: &wa::Message, b: &wa::Message) -> wa::Message {
    let mut bytes = a.encode_to_vec();
    bytes.extend(b.encode_to_vec());
    wa::Message::decode_from_slice(&bytes).expect("concatenated messages decode")
}

/// Messages nested in the wrappers WhatsApp uses (device-sent, ephemeral, view-once,
/// document with caption, edits, replies), in any order and depth.
fn message() -> BoxedStrategy<wa::Message> {
    let leaf = plain(Just(wa::Message::default()).boxed());
    leaf.prop_recursive(6, 24, 2, |inner| {
        let future_proof =
            |inner: wa::Message| MessageField::some(m::FutureProofMessage { message: MessageField::some(inner) });
        prop_oneof![
            (inner.clone(), jid_text()).prop_map(|(inner, destination_jid)| wa::Message {
                device_sent_message: MessageField::some(m::DeviceSentMessage {
                    destination_jid,
                    message: MessageField::some(inner),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            (inner.clone(), 0..6usize).prop_map(move |(inner, which)| {
                let wrapped = future_proof(inner);
                let mut message = wa::Message::default();
                match which {
                    0 => message.ephemeral_message = wrapped,
                    1 => message.view_once_message = wrapped,
                    2 => message.view_once_message_v2 = wrapped,
                    3 => message.view_once_message_v2_extension = wrapped,
                    4 => message.document_with_caption_message = wrapped,
                    _ => message.edited_message = wrapped,
                }
                message
            }),
            plain(inner.clone().boxed()),
            (inner.clone(), inner).prop_map(|(a, b)| merged(&a, &b)),
        ]
    })
    .boxed()
}

/// Who sent it, as the library reports it: JIDs of any server, users of any text.
fn info() -> impl Strategy<Value = MessageInfo> {
    let jid = || {
        prop_oneof![
            prop::sample::select(vec![
                "15551234567@s.whatsapp.net",
                "15551234567:3@s.whatsapp.net",
                "99123:2@lid",
                "120363025246125486@g.us",
                "status@broadcast",
                "1@newsletter",
            ])
            .prop_map(|s| s.parse::<wacore_binary::Jid>().expect("a valid JID")),
            (".{0,12}", 0..12u8, any::<u16>()).prop_map(|(user, server, device)| {
                let servers = [
                    wacore_binary::Server::Pn,
                    wacore_binary::Server::Lid,
                    wacore_binary::Server::Group,
                    wacore_binary::Server::Broadcast,
                    wacore_binary::Server::Newsletter,
                    wacore_binary::Server::Hosted,
                    wacore_binary::Server::HostedLid,
                    wacore_binary::Server::Messenger,
                    wacore_binary::Server::Interop,
                    wacore_binary::Server::Bot,
                    wacore_binary::Server::Legacy,
                    wacore_binary::Server::Call,
                ];
                let mut jid = wacore_binary::Jid::new(user, servers[usize::from(server)]);
                jid.device = device;
                jid
            }),
        ]
    };
    let timestamp = prop_oneof![
        any::<i32>().prop_map(i64::from),
        Just(chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp()),
        Just(chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp()),
    ];
    (jid(), jid(), prop::option::of(jid()), any::<[bool; 3]>(), text(), text(), timestamp).prop_map(
        |(chat, sender, sender_alt, [is_group, is_from_me, is_offline], id, push_name, seconds)| MessageInfo {
            source: wacore::types::message::MessageSource {
                chat,
                sender,
                sender_alt,
                is_group,
                is_from_me,
                ..Default::default()
            },
            id,
            push_name,
            timestamp: chrono::DateTime::from_timestamp(seconds, 0).unwrap_or_default(),
            is_offline,
            ..Default::default()
        },
    )
}

/// What every event must satisfy.
fn check(message: &wa::Message, info: &MessageInfo) -> Result<(), TestCaseError> {
    let Some(event) = inbound(message, info) else {
        prop_assert!(classify(message).is_none(), "only protocol traffic makes no event");
        return Ok(());
    };
    prop_assert!(KINDS.contains(&event.kind.as_str()), "unknown type {}", event.kind);
    if event.kind == "reaction" {
        prop_assert!(event.text.is_none(), "a reaction's emoji is in `reaction`, not `text`");
    }
    let text = serde_json::to_string(&event);
    prop_assert!(text.is_ok(), "the event does not serialize: {:?}", text.err());
    let data: serde_json::Value = serde_json::from_str(&text.unwrap()).expect("serde_json writes JSON");
    prop_assert_eq!(&data["id"], &serde_json::json!(event.id));
    if let Some(media) = &event.media {
        prop_assert_eq!(&media.sha256, &hex::encode(&media.location.file_sha256));
        if direct_path_problem(&media.location.direct_path).is_some() {
            prop_assert!(
                media.location.check_downloadable().is_err(),
                "an unsafe direct path is downloadable: {:?}",
                media.location.direct_path
            );
        }
        // The store keeps the reference as JSON and reads it back for downloads.
        let stored = StoredMedia {
            location: media.location.clone(),
            mimetype: media.mimetype.clone(),
            filename: media.filename.clone(),
        };
        let json = serde_json::to_string(&stored).expect("media references serialize");
        let back: Result<StoredMedia, _> = serde_json::from_str(&json);
        prop_assert!(
            back.as_ref().is_ok_and(|back| *back == stored),
            "the stored reference reads back differently: {json}"
        );
    }
    if let Some(location) = &event.location {
        for (name, value) in [("latitude", location.latitude), ("longitude", location.longitude)] {
            let shown = &data["location"][name];
            prop_assert!(
                shown.is_number() || (shown.is_null() && !value.is_finite()),
                "{name} {value} shown as {shown}"
            );
        }
    }
    // Media downloads are linked under the id: one path segment, whatever the sender chose.
    prop_assert!(!crate::percent::encode(&event.id).contains('/'));
    let compat = crate::webhook::compat::body("S", "messages.upsert", &data);
    prop_assert!(compat.is_some_and(|body| body["messages"].is_array()), "no compat body for {}", data);
    Ok(())
}

/// Runs 256 cases of a strategy (made by `strategy`) through `test` on a thread with a large stack: generating
/// nested messages (large structs, by value, in debug builds) takes more than the 2 MiB of
/// a test thread. The code under test gets no such help: `deeply_nested_wrappers` runs it
/// on a test thread's own stack.
fn run<S: Strategy>(
    strategy: impl FnOnce() -> S + Send + 'static,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let strategy = strategy();
            let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
            let mut runner = proptest::test_runner::TestRunner::new(config);
            if let Err(failure) = runner.run(&strategy, test) {
                panic!("{failure}");
            }
        })
        .expect("a thread starts")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Messages built field by field, nested any which way.
#[test]
fn any_message_normalizes() {
    run(|| (message(), info()), |(message, info)| check(&message, &info));
}

/// Bytes off the wire: whatever the protobuf decoder takes, normalizes.
#[test]
fn any_decodable_bytes_normalize() {
    run(
        || (prop::collection::vec(any::<u8>(), 0..600), info()),
        |(bytes, info)| match waproto::codec::message_decode(&bytes) {
            Ok(message) => check(&message, &info),
            Err(_) => Ok(()),
        },
    );
}

/// Real encodings with bytes flipped, cut or spliced in: most still decode, to something no
/// sender's client would make.
#[test]
fn damaged_encodings_normalize() {
    let edits = || prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6);
    run(
        move || (message(), edits(), info()),
        |(message, edits, info)| {
            let mut bytes = message.encode_to_vec();
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let at = at.index(bytes.len());
                match how {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            match waproto::codec::message_decode(&bytes) {
                Ok(message) => check(&message, &info),
                Err(_) => Ok(()),
            }
        },
    );
}

/// Wrappers nested far deeper than any client nests them (the bytes written by hand:
/// the encoder itself recurses): the decoder stops at its recursion limit, and what it
/// takes normalizes, on a test thread's own stack.
#[test]
fn deeply_nested_wrappers() {
    /// One length-delimited field: tag, length, bytes.
    fn wrap(field: u32, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(inner.len() + 8);
        for mut value in [u64::from(field << 3 | 2), inner.len() as u64] {
            while value >= 0x80 {
                out.push((value as u8) | 0x80);
                value >>= 7;
            }
            out.push(value as u8);
        }
        out.extend_from_slice(inner);
        out
    }
    for depth in [10, 49, 50, 51, 99, 100, 101, 1_000, 20_000] {
        let mut bytes = wa::Message { conversation: Some("deep".into()), ..Default::default() }.encode_to_vec();
        for level in 0..depth {
            // ephemeralMessage (40), viewOnceMessage (37), documentWithCaptionMessage (53),
            // each a FutureProofMessage whose `message` is field 1.
            bytes = wrap([40, 37, 53][level % 3], &wrap(1, &bytes));
        }
        if let Ok(decoded) = waproto::codec::message_decode(&bytes) {
            check(&decoded, &MessageInfo::default()).unwrap_or_else(|e| panic!("depth {depth}: {e}"));
        }
    }
}
