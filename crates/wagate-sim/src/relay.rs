//! The relay (PROTOCOL.md 6): messages and receipts pass through untouched. The server
//! never decrypts; it only reads the envelope to know which device gets which `<enc>`,
//! acks the sender, and queues for devices that are offline.

use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node, NodeValue};

use crate::accounts::Accounts;
use crate::clock::unix_now;
use crate::conn::ConnCommand;
use crate::jid::{parse_device_jid, AnyDeviceJid, DeviceAddr};
use crate::nodes::{attr, child, children};
use crate::state::Inner;

/// At most this many stanzas wait for one offline device; older ones are dropped first.
pub const OFFLINE_QUEUE_LIMIT: usize = 2000;

/// How a device is addressed: by phone number or by LID. Deliveries use the same form
/// for the sender, because clients key their Signal sessions on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Pn,
    Lid,
}

fn device_jid(accounts: &Accounts, addr: DeviceAddr, addressing: Addressing) -> Jid {
    match (addressing, accounts.get(addr.phone)) {
        (Addressing::Lid, Some(account)) => Jid::lid_device(account.lid.to_string(), addr.device),
        _ => Jid::pn_device(addr.phone.to_string(), addr.device),
    }
}

pub fn resolve(accounts: &Accounts, jid: &str) -> Option<(DeviceAddr, Addressing)> {
    let parsed = parse_device_jid(jid)?;
    let addressing = match parsed {
        AnyDeviceJid::Pn { .. } => Addressing::Pn,
        AnyDeviceJid::Lid { .. } => Addressing::Lid,
    };
    let addr = match parsed {
        AnyDeviceJid::Pn { phone, device } => DeviceAddr { phone, device },
        AnyDeviceJid::Lid { lid, device } => accounts.by_lid(lid).map(|a| a.addr(device))?,
    };
    Some((addr, addressing))
}

/// Sends `node` to the device now, or queues it for its next login.
pub fn deliver(inner: &mut Inner, addr: DeviceAddr, node: Node) {
    if let Some((conn, _)) = inner.conn_of(addr) {
        if inner.command(conn, ConnCommand::Send(node.clone())) {
            return;
        }
    }
    let queue = inner.offline.entry(addr).or_default();
    if queue.len() >= OFFLINE_QUEUE_LIMIT {
        queue.pop_front();
    }
    queue.push_back(node);
}

/// What waited for a device while it was offline, marked as such.
pub fn take_offline(inner: &mut Inner, addr: DeviceAddr) -> Vec<Node> {
    inner
        .offline
        .remove(&addr)
        .unwrap_or_default()
        .into_iter()
        .map(|mut node| {
            node.attrs.insert("offline", "1");
            node
        })
        .collect()
}

/// Routes a `<message>` from `sender`: each `<participants><to jid=..>` gets its `<enc>`.
/// Returns the server ack for the sender.
pub fn relay_message(inner: &mut Inner, sender: DeviceAddr, message: &Node) -> Node {
    if attr(message, "to").is_some_and(|to| to.ends_with("@g.us")) {
        return crate::group_relay::relay_group_message(inner, sender, message);
    }
    let id = attr(message, "id").unwrap_or_default();
    let to = message.attrs.get("to").cloned().unwrap_or_else(|| NodeValue::String("".into()));
    let now = unix_now().to_string();
    let sender_push_name = format!("Sim {}", sender.phone);
    let device_identity = child(message, "device-identity").cloned();
    let recipient_user = to.as_str().into_owned();
    let mut routes = Vec::new();
    for target in child(message, "participants").map(children).unwrap_or_default() {
        let Some(jid) = attr(target, "jid") else { continue };
        let Some((addr, addressing)) = resolve(&inner.accounts, &jid) else { continue };
        let encs: Vec<Node> = children(target).iter().filter(|c| c.tag == "enc").cloned().collect();
        if encs.is_empty() {
            continue;
        }
        routes.push((addr, addressing, encs));
    }
    // A message with a top-level <enc> (no participants) goes to the one addressed device.
    if routes.is_empty() {
        if let Some((addr, addressing)) = resolve(&inner.accounts, &recipient_user) {
            let encs: Vec<Node> = children(message).iter().filter(|c| c.tag == "enc").cloned().collect();
            if !encs.is_empty() {
                routes.push((addr, addressing, encs));
            }
        }
    }
    for (addr, addressing, encs) in routes {
        let from = device_jid(&inner.accounts, sender, addressing);
        let mut builder = NodeBuilder::new("message")
            .attr("from", from)
            .attr("id", id.clone())
            .attr("t", now.clone())
            .attr("type", attr(message, "type").unwrap_or_else(|| "text".into()))
            .attr("notify", sender_push_name.clone());
        if addressing == Addressing::Lid {
            builder = builder.attr("sender_pn", Jid::pn(sender.phone.to_string()));
        } else if let Some(account) = inner.accounts.get(sender.phone) {
            builder = builder.attr("sender_lid", Jid::lid(account.lid.to_string()));
        }
        // The sender's own other devices learn which chat it was.
        if addr.phone == sender.phone {
            builder = builder.attr("recipient", to.clone());
        }
        let mut content = encs;
        if let Some(identity) = &device_identity {
            content.push(identity.clone());
        }
        deliver(inner, addr, builder.children(content).build());
    }
    message_ack(message)
}

/// `<ack class="message" id from=<to> t [phash]>`: the server took the message.
pub fn message_ack(message: &Node) -> Node {
    let to = message.attrs.get("to").cloned().unwrap_or_else(|| NodeValue::String("".into()));
    let mut ack = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", attr(message, "id").unwrap_or_default())
        .attr("from", to)
        .attr("t", unix_now().to_string());
    if let Some(phash) = message.attrs.get("phash") {
        ack = ack.attr("phash", phash.clone());
    }
    ack.build()
}

/// Forwards a `<receipt>` from `reader` to every device of the account it names, and
/// returns the server's ack for the reader.
pub fn relay_receipt(inner: &mut Inner, reader: DeviceAddr, receipt: &Node) -> Node {
    let id = attr(receipt, "id").unwrap_or_default();
    let target = attr(receipt, "to").unwrap_or_default();
    if target.ends_with("@g.us") {
        return crate::group_relay::relay_group_receipt(inner, reader, receipt);
    }
    if let Some((addr, addressing)) = resolve(&inner.accounts, &target) {
        let from = device_jid(&inner.accounts, reader, addressing);
        let mut forwarded = Node::new("receipt", receipt.attrs.clone(), receipt.content.clone());
        forwarded.attrs.insert("from", from);
        forwarded.attrs.insert("t", unix_now().to_string());
        forwarded.attrs.0.retain(|(k, _)| k != "to");
        let devices: Vec<DeviceAddr> = inner
            .accounts
            .get(addr.phone)
            .map(|account| account.companions().filter(|d| d.confirmed).map(|d| account.addr(d.id)).collect())
            .unwrap_or_default();
        for device in devices {
            deliver(inner, device, forwarded.clone());
        }
    }
    let mut ack = NodeBuilder::new("ack").attr("class", "receipt").attr("id", id).attr("from", target);
    if let Some(kind) = receipt.attrs.get("type") {
        ack = ack.attr("type", kind.clone());
    }
    ack.build()
}
