//! Answers to the iqs a logged-in client sends (PROTOCOL.md 5 and 9). Every iq gets an
//! answer: an iq without a handler gets an empty result and is recorded, so a test can
//! list what the simulator did not understand.

use std::sync::Arc;

use buffa::Message;
use tracing::info;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Node, NodeContent};
use waproto::buffa;
use waproto::whatsapp::{ADVKeyIndexList, ADVSignedKeyIndexList};

use crate::accounts::{Account, PreKey, SignalKeys, SignedPreKey};
use crate::clock::unix_now;
use crate::crypto::sign;
use crate::jid::{parse_device_jid, parse_phone, AnyDeviceJid, DeviceAddr};
use crate::nodes::{attr, child, child_bytes, children, content_bytes, iq_error, iq_result, server_jid};
use crate::state::{SimState, UnknownIq};
use wacore::prekeys::compute_key_bundle_digest;

const KEY_INDEX_LIST_PREFIX: [u8; 2] = [6, 2];
/// Privacy categories clients ask about; everything is "all" on a fresh account.
const PRIVACY_CATEGORIES: [&str; 7] = ["readreceipts", "last", "online", "profile", "status", "groupadd", "calladd"];

pub struct IqContext<'a> {
    pub state: &'a Arc<SimState>,
    /// The logged-in device, `None` on a pairing connection.
    pub device: Option<DeviceAddr>,
}

#[derive(Default)]
pub struct IqAnswer {
    pub replies: Vec<Node>,
    /// The client announced it is active: time to tell it the offline queue is drained.
    pub went_active: bool,
    /// The client unlinked itself: close with `device_removed`.
    pub close_as_removed: bool,
}

impl IqAnswer {
    fn reply(node: Node) -> Self {
        Self { replies: vec![node], ..Default::default() }
    }
}

pub fn answer(ctx: &IqContext<'_>, iq: &Node) -> IqAnswer {
    let xmlns = attr(iq, "xmlns").unwrap_or_default();
    let kind = attr(iq, "type").unwrap_or_default();
    let first = children(iq).first();
    let first_tag = first.map(|c| c.tag.as_ref()).unwrap_or("");
    match (xmlns.as_str(), first_tag) {
        ("w:p", "ping") => IqAnswer::reply(iq_result(iq, vec![])),
        ("passive", tag) => {
            IqAnswer { replies: vec![iq_result(iq, vec![])], went_active: tag == "active", ..Default::default() }
        }
        ("encrypt", "count") => IqAnswer::reply(prekey_count(ctx, iq)),
        ("encrypt", "key") => IqAnswer::reply(prekey_bundles(ctx, iq)),
        ("encrypt", _) if kind == "set" && child(iq, "list").is_some() => IqAnswer::reply(store_prekeys(ctx, iq)),
        ("encrypt", "rotate") => IqAnswer::reply(store_prekeys(ctx, iq)),
        ("encrypt", "digest") => IqAnswer::reply(key_digest(ctx, iq)),
        ("abt", _) | ("w", "props") => IqAnswer::reply(iq_result(
            iq,
            vec![NodeBuilder::new("props").attr("protocol", "1").attr("hash", "sim").attr("refresh", "86400").build()],
        )),
        ("privacy", "privacy") if kind == "get" => IqAnswer::reply(iq_result(
            iq,
            vec![NodeBuilder::new("privacy")
                .children(
                    PRIVACY_CATEGORIES
                        .iter()
                        .map(|name| NodeBuilder::new("category").attr("name", *name).attr("value", "all").build()),
                )
                .build()],
        )),
        ("blocklist", _) if kind == "get" => IqAnswer::reply(iq_result(iq, vec![NodeBuilder::new("list").build()])),
        ("usync", "usync") => IqAnswer::reply(usync(ctx, iq)),
        ("w:profile:picture", "picture") if kind == "get" => IqAnswer::reply(crate::profiles::answer_picture(ctx, iq)),
        ("w:g2", "query") => IqAnswer::reply(crate::groups::answer_query(ctx, iq)),
        ("w:g2", "participating") => IqAnswer::reply(crate::groups::answer_participating(ctx, iq)),
        ("w:sync:app:state", "sync") => IqAnswer::reply(crate::app_state::answer(ctx, iq)),
        ("md", "remove-companion-device") => remove_companion(ctx, iq),
        ("w:m", "media_conn") => IqAnswer::reply(iq_result(iq, vec![crate::media::media_conn_node(&ctx.state.media)])),
        _ => {
            record_unknown(ctx, &xmlns, &kind, first_tag);
            IqAnswer::reply(iq_result(iq, vec![]))
        }
    }
}

/// `<ib><offline count=N/></ib>`: the end of the offline queue.
pub fn offline_marker(count: usize) -> Node {
    NodeBuilder::new("ib")
        .attr("from", server_jid())
        .children([NodeBuilder::new("offline").attr("count", count.to_string()).build()])
        .build()
}

fn record_unknown(ctx: &IqContext<'_>, xmlns: &str, kind: &str, child: &str) {
    info!(device = ?ctx.device.map(|d| d.to_string()), xmlns, kind, child, "iq without a handler; answered with an empty result");
    let key = UnknownIq { xmlns: xmlns.to_string(), kind: kind.to_string(), child: child.to_string() };
    *ctx.state.lock().unknown_iqs.entry(key).or_default() += 1;
}

fn prekey_count(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let count =
        ctx.device.and_then(|addr| ctx.state.lock().accounts.device(addr).map(|d| d.signal.prekeys.len())).unwrap_or(0);
    iq_result(iq, vec![NodeBuilder::new("count").attr("value", count.to_string()).build()])
}

fn be_u32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b))
}

/// Prekey upload: `<registration/><type/><identity/><list><key><id/><value/></key>..</list><skey>..</skey>`.
fn store_prekeys(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let Some(addr) = ctx.device else {
        return iq_result(iq, vec![]);
    };
    let uploaded: Vec<PreKey> = child(iq, "list")
        .map(children)
        .unwrap_or_default()
        .iter()
        .filter_map(|key| {
            Some(PreKey { id: be_u32(child_bytes(key, "id")?), public: child_bytes(key, "value")?.to_vec() })
        })
        .collect();
    let signed = child(iq, "skey").and_then(|skey| {
        Some(SignedPreKey {
            id: be_u32(child_bytes(skey, "id")?),
            public: child_bytes(skey, "value")?.to_vec(),
            signature: child_bytes(skey, "signature")?.to_vec(),
        })
    });
    let mut inner = ctx.state.lock();
    if let Some(device) = inner.accounts.device_mut(addr) {
        if let Some(identity) = child_bytes(iq, "identity") {
            device.signal.identity = identity.to_vec();
        }
        if let Some(registration) = child_bytes(iq, "registration") {
            device.signal.registration_id = be_u32(registration);
        }
        if signed.is_some() {
            device.signal.signed_prekey = signed;
        }
        let known: std::collections::HashSet<u32> = device.signal.prekeys.iter().map(|k| k.id).collect();
        device.signal.prekeys.extend(uploaded.into_iter().filter(|k| !known.contains(&k.id)));
    }
    iq_result(iq, vec![])
}

/// The server's view of the device's key bundle: clients compare it with their own and
/// re-upload when the server has no record (a 404).
fn key_digest(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let inner = ctx.state.lock();
    let signal = ctx.device.and_then(|addr| inner.accounts.device(addr)).map(|d| &d.signal);
    let Some((signal, signed)) = signal.and_then(|s| Some((s, s.signed_prekey.as_ref()?))) else {
        return iq_error(iq, 404, "item-not-found");
    };
    let prekey_values: Vec<&[u8]> = signal.prekeys.iter().map(|k| k.public.as_slice()).collect();
    let hash = compute_key_bundle_digest(&signal.identity, &signed.public, &signed.signature, &prekey_values);
    let mut parts = identity_parts(signal, signed);
    parts.push(
        NodeBuilder::new("list")
            .children(signal.prekeys.iter().map(|k| NodeBuilder::new("id").bytes(prekey_id_bytes(k.id)).build()))
            .build(),
    );
    parts.push(NodeBuilder::new("hash").bytes(hash).build());
    let digest = NodeBuilder::new("digest").children(parts).build();
    iq_result(iq, vec![digest])
}

/// `<registration/><type/><identity/><skey><id/><value/><signature/></skey>`: how a device's
/// identity and signed prekey travel, in a digest and in a bundle.
fn identity_parts(signal: &SignalKeys, signed: &SignedPreKey) -> Vec<Node> {
    vec![
        NodeBuilder::new("registration").bytes(signal.registration_id.to_be_bytes().to_vec()).build(),
        NodeBuilder::new("type").bytes(vec![5]).build(),
        NodeBuilder::new("identity").bytes(signal.identity.clone()).build(),
        NodeBuilder::new("skey")
            .children([
                NodeBuilder::new("id").bytes(prekey_id_bytes(signed.id)).build(),
                NodeBuilder::new("value").bytes(signed.public.clone()).build(),
                NodeBuilder::new("signature").bytes(signed.signature.clone()).build(),
            ])
            .build(),
    ]
}

/// Prekey ids travel as 3 big-endian bytes.
fn prekey_id_bytes(id: u32) -> Vec<u8> {
    id.to_be_bytes()[1..].to_vec()
}

/// `<user jid><registration/><type/><identity/><skey>..</skey>[<key>..</key>]</user>`: the
/// keys a sender needs to start a session with one device; `None` without a signed prekey.
pub fn bundle_node(jid: &str, signal: &SignalKeys, one_time: Option<PreKey>) -> Option<Node> {
    let mut parts = identity_parts(signal, signal.signed_prekey.as_ref()?);
    if let Some(key) = one_time {
        parts.push(
            NodeBuilder::new("key")
                .children([
                    NodeBuilder::new("id").bytes(prekey_id_bytes(key.id)).build(),
                    NodeBuilder::new("value").bytes(key.public).build(),
                ])
                .build(),
        );
    }
    Some(NodeBuilder::new("user").attr("jid", jid.to_string()).children(parts).build())
}

/// Prekey fetch by another client: one bundle per requested device, using up one prekey.
fn prekey_bundles(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let requested: Vec<String> =
        child(iq, "key").map(children).unwrap_or_default().iter().filter_map(|user| attr(user, "jid")).collect();
    let mut inner = ctx.state.lock();
    let users = requested.iter().filter_map(|jid| {
        let parsed = parse_device_jid(jid)?;
        if let AnyDeviceJid::Pn { phone, device: 0 } = parsed {
            if let Some((account, index)) = inner.contact(phone) {
                let keys = crate::trickle::contact_keys(&account, index).ok()?;
                return bundle_node(jid, &keys, None);
            }
        }
        let addr = inner.accounts.resolve(parsed)?;
        let device = inner.accounts.device_mut(addr)?;
        let one_time = if device.signal.prekeys.is_empty() { None } else { Some(device.signal.prekeys.remove(0)) };
        bundle_node(jid, &device.signal, one_time)
    });
    let list = NodeBuilder::new("list").children(users.collect::<Vec<_>>()).build();
    iq_result(iq, vec![list])
}

/// The signed list of key indexes of an account's linked devices; clients need it for any
/// device other than 0.
fn key_index_list(account: &Account) -> Node {
    let ts = unix_now();
    let details = ADVKeyIndexList {
        raw_id: Some(account.raw_id),
        timestamp: Some(ts),
        current_index: account.companions().map(|d| d.key_index).max(),
        valid_indexes: account.companions().filter(|d| d.confirmed).map(|d| d.key_index).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let signature = sign(&account.identity, &[&KEY_INDEX_LIST_PREFIX[..], &details].concat());
    let signed = ADVSignedKeyIndexList {
        details: Some(details),
        account_signature: Some(signature.to_vec()),
        ..Default::default()
    }
    .encode_to_vec();
    NodeBuilder::new("key-index-list").attr("ts", ts.to_string()).bytes(signed).build()
}

/// User sync: devices, LIDs and "is this number on WhatsApp" for each listed user.
fn usync(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let Some(request) = child(iq, "usync") else {
        return iq_result(iq, vec![]);
    };
    let query: Vec<&str> =
        child(request, "query").map(children).unwrap_or_default().iter().map(|q| q.tag.as_ref()).collect();
    let users = child(request, "list").map(children).unwrap_or_default();
    let inner = ctx.state.lock();
    let answered: Vec<Node> = users
        .iter()
        .map(|user| {
            let jid = attr(user, "jid");
            let account = jid
                .as_deref()
                .and_then(parse_device_jid)
                .and_then(|j| match j {
                    AnyDeviceJid::Pn { phone, .. } => inner.accounts.get(phone),
                    AnyDeviceJid::Lid { lid, .. } => inner.accounts.by_lid(lid),
                })
                .or_else(|| {
                    let contact = child(user, "contact").and_then(content_bytes)?;
                    inner.accounts.get(parse_phone(std::str::from_utf8(contact).ok()?)?)
                });
            // A contact of a profiled account is on WhatsApp too: its phone is its only device.
            let contact = match account {
                Some(_) => None,
                None => jid
                    .as_deref()
                    .and_then(parse_device_jid)
                    .and_then(|j| match j {
                        AnyDeviceJid::Pn { phone, .. } => Some(phone),
                        AnyDeviceJid::Lid { .. } => None,
                    })
                    .or_else(|| parse_phone(std::str::from_utf8(child(user, "contact").and_then(content_bytes)?).ok()?))
                    .filter(|phone| inner.contact(*phone).is_some()),
            };
            let mut parts = Vec::new();
            for protocol in &query {
                match (*protocol, account) {
                    ("devices", Some(account)) => {
                        // The simulated phone (device 0) receives no messages, so it is not
                        // listed: senders encrypt for the companions only.
                        let mut devices = Vec::new();
                        devices.extend(account.companions().filter(|d| d.confirmed).map(|d| {
                            NodeBuilder::new("device")
                                .attr("id", d.id.to_string())
                                .attr("key-index", d.key_index.to_string())
                                .build()
                        }));
                        let mut content = vec![NodeBuilder::new("device-list").children(devices).build()];
                        if account.companions().any(|d| d.confirmed) {
                            content.push(key_index_list(account));
                        }
                        parts.push(NodeBuilder::new("devices").children(content).build());
                    }
                    ("devices", None) => {
                        let devices: Vec<Node> =
                            contact.map(|_| NodeBuilder::new("device").attr("id", "0").build()).into_iter().collect();
                        let list = NodeBuilder::new("device-list").children(devices).build();
                        parts.push(NodeBuilder::new("devices").children([list]).build())
                    }
                    // A user asked for by LID has no other LID to learn (Baileys would store
                    // the LID as its own phone number).
                    ("lid", Some(account)) if !jid.as_deref().is_some_and(|j| j.ends_with("@lid")) => {
                        parts.push(NodeBuilder::new("lid").attr("val", format!("{}@lid", account.lid)).build())
                    }
                    ("status", Some(account)) => {
                        parts.push(crate::profiles::status_node(inner.profiles.get(&account.phone)))
                    }
                    ("picture", Some(account)) => {
                        parts.extend(crate::profiles::picture_node(inner.profiles.get(&account.phone)))
                    }
                    ("contact", found) => {
                        let kind = if found.is_some() || contact.is_some() { "in" } else { "out" };
                        parts.push(NodeBuilder::new("contact").attr("type", kind).build())
                    }
                    _ => {}
                }
            }
            // Answer with the JID that was asked for (PN or LID); a number looked up by
            // `<contact>` gets its account's JID, or none when it is not on WhatsApp.
            let mut user = NodeBuilder::new("user");
            let phone = account.map(|a| a.phone).or(contact);
            if let Some(jid) = jid.or_else(|| phone.map(|p| format!("{p}@s.whatsapp.net"))) {
                user = user.attr("jid", jid);
            }
            user.children(parts).build()
        })
        .collect();
    // The answer echoes the request's attributes (sid, mode, context ...).
    let result = Node::new(
        "usync",
        request.attrs.clone(),
        Some(NodeContent::Nodes(vec![
            NodeBuilder::new("result").build(),
            NodeBuilder::new("list").children(answered).build(),
        ])),
    );
    iq_result(iq, vec![result])
}

/// The client logs itself out.
fn remove_companion(ctx: &IqContext<'_>, iq: &Node) -> IqAnswer {
    if let Some(addr) = ctx.device {
        info!(device = %addr, "device unlinked itself");
        ctx.state.lock().accounts.remove(addr);
        return IqAnswer { replies: vec![iq_result(iq, vec![])], close_as_removed: true, ..Default::default() };
    }
    IqAnswer::reply(iq_result(iq, vec![]))
}
