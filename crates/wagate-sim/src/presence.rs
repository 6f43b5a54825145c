//! Presence (PROTOCOL.md 6): who is online and who is typing, relayed only to the devices
//! that subscribed to a user with `<presence type="subscribe" to=..>`, and only while they
//! are connected (presence is never queued).

use std::collections::HashMap;

use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};

use crate::clock::unix_now;
use crate::conn::ConnCommand;
use crate::jid::DeviceAddr;
use crate::nodes::{attr, children};
use crate::relay::{resolve, Addressing};
use crate::state::Inner;

/// The last `available` / `unavailable` a user's devices announced.
#[derive(Debug, Clone, Copy)]
struct Seen {
    available: bool,
    at: u64,
}

#[derive(Default)]
pub struct Presence {
    /// By watched phone number: the subscribed devices and how each named the user.
    subscribers: HashMap<u64, HashMap<DeviceAddr, Addressing>>,
    last: HashMap<u64, Seen>,
}

/// A `<presence>` or `<chatstate>` a logged-in device sent.
pub fn on_stanza(inner: &mut Inner, sender: DeviceAddr, node: &Node) {
    match (node.tag.as_ref(), attr(node, "type").as_deref()) {
        ("presence", Some("subscribe")) => subscribe(inner, sender, node),
        ("presence", Some("unsubscribe")) => {
            if let Some((watched, _)) = attr(node, "to").and_then(|to| resolve(&inner.accounts, &to)) {
                if let Some(devices) = inner.presence.subscribers.get_mut(&watched.phone) {
                    devices.remove(&sender);
                }
            }
        }
        ("presence", Some(kind @ ("available" | "unavailable"))) => {
            let seen = Seen { available: kind == "available", at: unix_now() };
            inner.presence.last.insert(sender.phone, seen);
            for (device, addressing) in subscribers_of(inner, sender.phone) {
                let update = presence_node(inner, sender.phone, addressing, seen);
                send_if_online(inner, device, update);
            }
        }
        ("chatstate", _) => chatstate(inner, sender, node),
        _ => {}
    }
}

fn subscribe(inner: &mut Inner, sender: DeviceAddr, node: &Node) {
    let Some((watched, addressing)) = attr(node, "to").and_then(|to| resolve(&inner.accounts, &to)) else {
        return;
    };
    inner.presence.subscribers.entry(watched.phone).or_default().insert(sender, addressing);
    // A new subscriber hears the current state at once, as on WhatsApp.
    if let Some(seen) = inner.presence.last.get(&watched.phone).copied() {
        let update = presence_node(inner, watched.phone, addressing, seen);
        send_if_online(inner, sender, update);
    }
}

/// `<chatstate to=user><composing/></chatstate>` reaches that user's devices that
/// subscribed to the sender, as `<chatstate from=sender><composing/></chatstate>`.
fn chatstate(inner: &mut Inner, sender: DeviceAddr, node: &Node) {
    let Some((target, _)) = attr(node, "to").and_then(|to| resolve(&inner.accounts, &to)) else {
        return;
    };
    let state: Vec<Node> = children(node).iter().take(1).cloned().collect();
    for (device, addressing) in subscribers_of(inner, sender.phone) {
        if device.phone != target.phone {
            continue;
        }
        let from = user_jid(inner, sender.phone, addressing);
        send_if_online(inner, device, NodeBuilder::new("chatstate").attr("from", from).children(state.clone()).build());
    }
}

fn subscribers_of(inner: &Inner, phone: u64) -> Vec<(DeviceAddr, Addressing)> {
    let devices = inner.presence.subscribers.get(&phone);
    // A user's own devices learn nothing from their own presence.
    devices.into_iter().flatten().filter(|(d, _)| d.phone != phone).map(|(d, a)| (*d, *a)).collect()
}

fn user_jid(inner: &Inner, phone: u64, addressing: Addressing) -> Jid {
    match (addressing, inner.accounts.get(phone)) {
        (Addressing::Lid, Some(account)) => Jid::lid(account.lid.to_string()),
        _ => Jid::pn(phone.to_string()),
    }
}

fn presence_node(inner: &Inner, phone: u64, addressing: Addressing, seen: Seen) -> Node {
    let builder = NodeBuilder::new("presence").attr("from", user_jid(inner, phone, addressing));
    if seen.available {
        builder.attr("type", "available").build()
    } else {
        builder.attr("type", "unavailable").attr("last", seen.at.to_string()).build()
    }
}

fn send_if_online(inner: &Inner, device: DeviceAddr, node: Node) {
    if let Some((conn, _)) = inner.conn_of(device) {
        inner.command(conn, ConnCommand::Send(node));
    }
}
