//! The relay (PROTOCOL.md 6): messages and receipts pass through untouched. The server
//! never decrypts; it only reads the envelope to know which device gets which `<enc>`,
//! acks the sender, and queues for devices that are offline.
//!
//! Like WhatsApp's server it keeps a delivered `<message>` until the device acknowledges it
//! (a `<receipt>` or `<ack class="message">` naming its id, chat and sender): when the
//! connection ends first, the message goes back to the front of the offline queue and comes
//! again, marked `offline`, at the next login.

use std::collections::VecDeque;

use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node, NodeValue};

use crate::accounts::Accounts;
use crate::clock::unix_now;
use crate::conn::ConnCommand;
use crate::jid::{parse_device_jid, AnyDeviceJid, DeviceAddr};
use crate::nodes::{attr, child, children};
use crate::outbox::{AckKey, MessageKey, Party};
use crate::state::{ConnId, Inner};

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

/// Sends `node` to the device now, or queues it for its next login. A `<message>` that a
/// connection takes stays in the outbox until the device acknowledges it.
pub fn deliver(inner: &mut Inner, addr: DeviceAddr, node: Node) {
    let Some((conn, live)) = inner.conn_of(addr) else {
        return enqueue_offline(inner, addr, node);
    };
    // Until the connection takes the offline queue, what waits there comes first.
    let queue_waits = inner.offline.get(&addr).is_some_and(|queue| !queue.is_empty());
    if queue_waits && !live.offline_flushed {
        return enqueue_offline(inner, addr, node);
    }
    let seq = delivery_key(&inner.accounts, &node).map(|key| inner.outbox.hand_over(addr, conn, key, node.clone()));
    if let Some(node) = hand_to(inner, addr, conn, Outgoing { node, seq }) {
        enqueue_offline(inner, addr, node);
    }
}

/// A stanza on its way to a connection; `seq` names its outbox entry when the device has to
/// ack it.
pub struct Outgoing {
    pub node: Node,
    pub seq: Option<u64>,
}

/// Gives the stanza to the connection's task to write. Returns it when the connection is
/// gone; then it is no longer pending in the outbox either.
fn hand_to(inner: &mut Inner, addr: DeviceAddr, conn: ConnId, outgoing: Outgoing) -> Option<Node> {
    let Outgoing { node, seq } = outgoing;
    let command = match seq {
        Some(seq) => ConnCommand::Deliver { seq, node: node.clone() },
        None => ConnCommand::Send(node.clone()),
    };
    if inner.command(conn, command) {
        return None;
    }
    if let Some(seq) = seq {
        inner.outbox.withdraw(addr, seq);
    }
    Some(node)
}

fn enqueue_offline(inner: &mut Inner, addr: DeviceAddr, node: Node) {
    let queue = inner.offline.entry(addr).or_default();
    queue.push_back(node);
    trim_offline(queue);
}

/// Puts stanzas back before everything else queued for the device, keeping their order.
fn requeue_front(inner: &mut Inner, addr: DeviceAddr, nodes: Vec<Node>) {
    if nodes.is_empty() {
        return;
    }
    let queue = inner.offline.entry(addr).or_default();
    for node in nodes.into_iter().rev() {
        queue.push_front(node);
    }
    trim_offline(queue);
}

/// The queue bound: the oldest stanzas go first.
fn trim_offline(queue: &mut VecDeque<Node>) {
    while queue.len() > OFFLINE_QUEUE_LIMIT {
        queue.pop_front();
    }
}

/// What waited for a device while it was offline, marked as such, for connection `conn` to
/// write. Its `<message>`s are pending in the outbox for that connection from now on, and
/// whatever is queued for the device later goes straight to it.
pub fn take_offline(inner: &mut Inner, addr: DeviceAddr, conn: ConnId) -> Vec<Outgoing> {
    if let Some(live) = inner.conns.get_mut(&conn) {
        live.offline_flushed = true;
    }
    let queued = inner.offline.remove(&addr).unwrap_or_default();
    queued
        .into_iter()
        .map(|mut node| {
            node.attrs.insert("offline", "1");
            let key = delivery_key(&inner.accounts, &node);
            let seq = key.map(|key| inner.outbox.hand_over(addr, conn, key, node.clone()));
            Outgoing { node, seq }
        })
        .collect()
}

/// Connection `conn` of `addr` is ending: what it took and the device did not acknowledge
/// goes back to the front of the device's offline queue, in delivery order. Call it before
/// the connection is forgotten, under the same lock, so nothing new reaches it in between.
pub fn take_back_unacked(inner: &mut Inner, addr: DeviceAddr, conn: ConnId) {
    let unacked = inner.outbox.take_conn(addr, conn);
    if inner.accounts.device(addr).is_none() {
        return; // unlinked: nobody will log in as this device again
    }
    // A stanza the connection never wrote out is not a redelivery, only a late delivery.
    let written = unacked.iter().filter(|u| u.written).count() as u64;
    if written > 0 {
        inner.stats.count_redelivered(addr, written);
    }
    requeue_front(inner, addr, unacked.into_iter().map(|u| u.node).collect());
}

/// After a connection of `addr` ended: another connection of the device that already took
/// its offline queue (it replaced the ended one) would otherwise only see what was put back
/// at its next login, so it gets it now.
pub fn pass_offline_to_live(inner: &mut Inner, addr: DeviceAddr) {
    let Some((conn, live)) = inner.conn_of(addr) else { return };
    if !live.offline_flushed || !inner.offline.contains_key(&addr) {
        return;
    }
    let mut undelivered = Vec::new();
    for outgoing in take_offline(inner, addr, conn) {
        undelivered.extend(hand_to(inner, addr, conn, outgoing));
    }
    requeue_front(inner, addr, undelivered);
}

/// A device's `<ack class="message">` or `<receipt>`: the relayed messages it names are
/// delivered for good. Both clients confirm a decrypted message with a delivery receipt and
/// use the bare ack when they do not send one (undecryptable, duplicate, nack).
pub fn settle_acked(inner: &mut Inner, device: DeviceAddr, stanza: &Node) {
    if stanza.tag == "ack" && attr(stanza, "class").as_deref() != Some("message") {
        return;
    }
    let settled: usize = ack_keys(&inner.accounts, stanza).iter().map(|key| inner.outbox.settle(device, key)).sum();
    if settled > 0 {
        inner.stats.count_acked(device, settled as u64);
    }
}

/// Who a JID is when matching acks: an account by its phone number whichever form names it,
/// anything else by its JID without the device part.
fn party(accounts: &Accounts, jid: &str) -> Party {
    match parse_device_jid(jid) {
        Some(AnyDeviceJid::Pn { phone, .. }) => Party::Account(phone),
        Some(AnyDeviceJid::Lid { lid, .. }) => match accounts.by_lid(lid) {
            Some(account) => Party::Account(account.phone),
            None => Party::Jid(format!("{lid}@lid")),
        },
        None => Party::Jid(without_device(jid)),
    }
}

fn without_device(jid: &str) -> String {
    match jid.split_once('@') {
        Some((user, server)) => format!("{}@{server}", user.split(':').next().unwrap_or(user)),
        None => jid.to_string(),
    }
}

/// The identity of a `<message>` as delivered: `from` is the sender, or the group when
/// `participant` names the sender; `recipient` is the chat of a message the account's own
/// other device sent. Other stanzas are not tracked.
pub fn delivery_key(accounts: &Accounts, node: &Node) -> Option<MessageKey> {
    if node.tag != "message" {
        return None;
    }
    let id = attr(node, "id").filter(|id| !id.is_empty())?;
    let from = party(accounts, &attr(node, "from")?);
    let (chat, sender) = match attr(node, "participant") {
        Some(participant) => (from, party(accounts, &participant)),
        None => {
            let chat = attr(node, "recipient").map(|r| party(accounts, &r)).unwrap_or_else(|| from.clone());
            (chat, from)
        }
    };
    Some(MessageKey { id, chat, sender })
}

/// What an ack or receipt names. Clients turn the delivery around: `to` is the delivered
/// `from`, and `participant` and `recipient` are echoed; receipts may list more ids under
/// `<list><item id>`.
pub fn ack_keys(accounts: &Accounts, node: &Node) -> Vec<AckKey> {
    let to = attr(node, "to").map(|to| party(accounts, &to));
    let (chat, sender) = match attr(node, "participant") {
        Some(participant) => (to, Some(party(accounts, &participant))),
        None => (attr(node, "recipient").map(|r| party(accounts, &r)), to),
    };
    let listed = child(node, "list").map(children).unwrap_or_default().iter().filter(|c| c.tag == "item");
    attr(node, "id")
        .into_iter()
        .chain(listed.filter_map(|item| attr(item, "id")))
        .filter(|id| !id.is_empty())
        .map(|id| AckKey { id, chat: chat.clone(), sender: sender.clone() })
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

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;
    use wacore_binary::builder::NodeBuilder;

    use super::*;
    use crate::accounts::SignalKeys;
    use crate::state::LiveConn;

    const A: u64 = 15550000001;
    const B: u64 = 15550000002;

    /// Accounts A and B with one linked companion each.
    fn two_accounts() -> (Inner, DeviceAddr, DeviceAddr) {
        let mut inner = Inner::default();
        let mut link = |phone| {
            let addr = inner.accounts.reserve_companion(phone, [1; 32], "test".into(), SignalKeys::default()).unwrap();
            inner.accounts.confirm(addr);
            addr
        };
        let (a, b) = (link(A), link(B));
        (inner, a, b)
    }

    /// A logged-in connection of `addr`; the receiver sees what the relay hands it.
    fn connect(inner: &mut Inner, addr: DeviceAddr) -> (ConnId, mpsc::UnboundedReceiver<ConnCommand>) {
        let (commands, inbox) = mpsc::unbounded_channel();
        let id = inner.new_conn_id();
        inner.conns.insert(
            id,
            LiveConn { commands, device: Some(addr), client_static: None, registration: None, offline_flushed: false },
        );
        (id, inbox)
    }

    /// What a connection's task does with a relayed message: writes it.
    fn write_next(inner: &mut Inner, addr: DeviceAddr, inbox: &mut mpsc::UnboundedReceiver<ConnCommand>) -> Node {
        match inbox.try_recv() {
            Ok(ConnCommand::Deliver { seq, node }) => {
                assert!(inner.outbox.mark_written(addr, seq));
                inner.stats.count_delivered(addr);
                node
            }
            _ => panic!("expected a relayed message"),
        }
    }

    fn end(inner: &mut Inner, addr: DeviceAddr, conn: ConnId) {
        take_back_unacked(inner, addr, conn);
        inner.forget_conn(conn);
        pass_offline_to_live(inner, addr);
    }

    /// A 1:1 text for the companion `to`, as a sender addresses it.
    fn text(id: &str, to: DeviceAddr) -> Node {
        fan_out(id, to.phone, &[to])
    }

    /// A 1:1 text to `chat`, encrypted for each of `devices`.
    fn fan_out(id: &str, chat: u64, devices: &[DeviceAddr]) -> Node {
        let to = devices.iter().map(|d| {
            let enc = NodeBuilder::new("enc").attr("v", "2").attr("type", "msg").bytes(vec![1, 2, 3]).build();
            NodeBuilder::new("to").attr("jid", Jid::pn_device(d.phone.to_string(), d.device)).children([enc]).build()
        });
        NodeBuilder::new("message")
            .attr("id", id)
            .attr("to", Jid::pn(chat.to_string()))
            .children([NodeBuilder::new("participants").children(to).build()])
            .build()
    }

    fn lid_of(inner: &Inner, addr: DeviceAddr) -> String {
        format!("{}:{}@lid", inner.accounts.get(addr.phone).unwrap().lid, addr.device)
    }

    fn id_of(node: &Node) -> String {
        attr(node, "id").unwrap()
    }

    fn queued_ids(inner: &Inner, addr: DeviceAddr) -> Vec<String> {
        inner.offline.get(&addr).map(|q| q.iter().map(id_of).collect()).unwrap_or_default()
    }

    #[test]
    fn an_unacked_message_goes_back_to_the_front_of_the_offline_queue() {
        let (mut inner, a, b) = two_accounts();
        let (conn, mut inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("M1", b));
        let written = write_next(&mut inner, b, &mut inbox);
        assert_eq!(attr(&written, "offline"), None, "a live delivery");
        assert_eq!(inner.outbox.pending(b), 1);

        end(&mut inner, b, conn);
        relay_message(&mut inner, a, &text("M2", b));
        assert_eq!(queued_ids(&inner, b), ["M1", "M2"], "put back before what came later");
        assert_eq!(inner.stats.device(b).redelivered, 1);

        let (conn, _inbox) = connect(&mut inner, b);
        let flushed = take_offline(&mut inner, b, conn);
        assert_eq!(flushed.iter().map(|o| id_of(&o.node)).collect::<Vec<_>>(), ["M1", "M2"]);
        assert!(flushed.iter().all(|o| attr(&o.node, "offline").as_deref() == Some("1") && o.seq.is_some()));
        assert_eq!(inner.outbox.pending(b), 2, "pending again, now for the new connection");
    }

    #[test]
    fn an_acked_message_is_not_delivered_again() {
        let (mut inner, a, b) = two_accounts();
        let (conn, mut inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("M1", b));
        let written = write_next(&mut inner, b, &mut inbox);
        // whatsapp-rust and Baileys turn the delivery around: `to` is the delivered `from`.
        let ack = NodeBuilder::new("ack")
            .attr("class", "message")
            .attr("id", "M1")
            .attr("to", attr(&written, "from").unwrap())
            .attr("from", Jid::pn_device(B.to_string(), 1))
            .build();
        settle_acked(&mut inner, b, &ack);
        assert_eq!(inner.stats.device(b).acked, 1);
        assert_eq!(inner.stats.totals.acked, 1);

        end(&mut inner, b, conn);
        assert!(queued_ids(&inner, b).is_empty());
        assert_eq!(inner.stats.device(b).redelivered, 0);
    }

    #[test]
    fn acks_name_the_message_by_id_chat_and_sender_in_either_jid_form() {
        let (mut inner, a, b) = two_accounts();
        let (_conn, mut inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("M1", b));
        write_next(&mut inner, b, &mut inbox);
        let receipt = |id: &str, to: String| NodeBuilder::new("receipt").attr("id", id).attr("to", to).build();

        settle_acked(&mut inner, b, &receipt("UNKNOWN", format!("{A}@s.whatsapp.net")));
        settle_acked(&mut inner, b, &receipt("M1", format!("{B}@s.whatsapp.net")));
        let receipt_class = NodeBuilder::new("ack").attr("class", "receipt").attr("id", "M1").build();
        settle_acked(&mut inner, b, &receipt_class);
        assert_eq!(inner.outbox.pending(b), 1, "another id, another sender, another class: nothing settled");

        // The delivery named A by phone number; the receipt names it by LID.
        let by_lid = receipt("M1", lid_of(&inner, a));
        settle_acked(&mut inner, b, &by_lid);
        assert_eq!(inner.outbox.pending(b), 0);
        assert_eq!(inner.stats.device(b).acked, 1);
    }

    #[test]
    fn a_receipt_with_a_list_settles_every_id_in_it() {
        let (mut inner, a, b) = two_accounts();
        let (_conn, mut inbox) = connect(&mut inner, b);
        for id in ["M1", "M2", "M3"] {
            relay_message(&mut inner, a, &text(id, b));
            write_next(&mut inner, b, &mut inbox);
        }
        let items = ["M2", "M3"].map(|id| NodeBuilder::new("item").attr("id", id).build());
        let receipt = NodeBuilder::new("receipt")
            .attr("id", "M1")
            .attr("to", lid_of(&inner, a))
            .attr("type", "inactive")
            .children([NodeBuilder::new("list").children(items).build()])
            .build();
        settle_acked(&mut inner, b, &receipt);
        assert_eq!(inner.outbox.pending(b), 0);
        assert_eq!(inner.stats.device(b).acked, 3);
    }

    #[test]
    fn a_message_from_the_accounts_own_device_is_keyed_by_its_recipient() {
        let (mut inner, a, b) = two_accounts();
        let own = inner.accounts.reserve_companion(A, [2; 32], "test".into(), SignalKeys::default()).unwrap();
        inner.accounts.confirm(own);
        let (_conn, mut inbox) = connect(&mut inner, own);
        relay_message(&mut inner, a, &fan_out("M1", B, &[b, own]));
        let written = write_next(&mut inner, own, &mut inbox);
        let key = delivery_key(&inner.accounts, &written).unwrap();
        assert_eq!(key, MessageKey { id: "M1".into(), chat: Party::Account(B), sender: Party::Account(A) });
        // whatsapp-rust's `type="sender"` receipt: `to` the sending device, `recipient` the chat.
        let receipt = NodeBuilder::new("receipt")
            .attr("id", "M1")
            .attr("to", attr(&written, "from").unwrap())
            .attr("recipient", format!("{B}@s.whatsapp.net"))
            .attr("type", "sender")
            .build();
        settle_acked(&mut inner, own, &receipt);
        assert_eq!(inner.outbox.pending(own), 0);
    }

    #[test]
    fn a_group_message_is_keyed_by_group_and_participant() {
        let (inner, a, _b) = two_accounts();
        let delivered = NodeBuilder::new("message")
            .attr("from", "120363000000000001@g.us")
            .attr("participant", lid_of(&inner, a))
            .attr("id", "G1")
            .build();
        let key = delivery_key(&inner.accounts, &delivered).unwrap();
        let receipt = NodeBuilder::new("receipt")
            .attr("id", "G1")
            .attr("to", "120363000000000001@g.us")
            .attr("participant", format!("{A}:1@s.whatsapp.net"))
            .build();
        let acks = ack_keys(&inner.accounts, &receipt);
        assert_eq!(acks.len(), 1);
        assert!(acks[0].matches(&key), "{acks:?} vs {key:?}");
        let other_group = NodeBuilder::new("receipt")
            .attr("id", "G1")
            .attr("to", "120363000000000002@g.us")
            .attr("participant", format!("{A}:1@s.whatsapp.net"))
            .build();
        assert!(!ack_keys(&inner.accounts, &other_group)[0].matches(&key));
    }

    #[test]
    fn a_replacing_connection_that_already_flushed_gets_what_the_old_one_gives_back() {
        let (mut inner, a, b) = two_accounts();
        let (old, mut old_inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("M1", b));
        write_next(&mut inner, b, &mut old_inbox);
        // The device logged in again on a second socket, which took the (empty) queue.
        inner.conns.get_mut(&old).unwrap().device = None;
        let (new, mut new_inbox) = connect(&mut inner, b);
        assert!(take_offline(&mut inner, b, new).is_empty());
        inner.conns.get_mut(&old).unwrap().device = Some(b);

        end(&mut inner, b, old);
        let again = write_next(&mut inner, b, &mut new_inbox);
        assert_eq!((id_of(&again).as_str(), attr(&again, "offline").as_deref()), ("M1", Some("1")));
        assert!(queued_ids(&inner, b).is_empty());
        assert_eq!(inner.stats.device(b).delivered, 2);
        assert_eq!(inner.stats.device(b).redelivered, 1);
    }

    #[test]
    fn a_new_message_waits_behind_the_queue_until_the_login_takes_it() {
        let (mut inner, a, b) = two_accounts();
        relay_message(&mut inner, a, &text("OLD", b));
        let (conn, mut inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("NEW", b));
        assert!(inbox.try_recv().is_err(), "not before the queue");
        let flushed = take_offline(&mut inner, b, conn);
        assert_eq!(flushed.iter().map(|o| id_of(&o.node)).collect::<Vec<_>>(), ["OLD", "NEW"]);
        relay_message(&mut inner, a, &text("LIVE", b));
        assert_eq!(id_of(&write_next(&mut inner, b, &mut inbox)), "LIVE");
    }

    #[test]
    fn a_stanza_the_connection_never_wrote_is_queued_but_not_counted_as_redelivered() {
        let (mut inner, a, b) = two_accounts();
        let (conn, _inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("M1", b));
        end(&mut inner, b, conn);
        assert_eq!(queued_ids(&inner, b), ["M1"]);
        assert_eq!(inner.stats.device(b).redelivered, 0);
    }

    #[test]
    fn the_offline_queue_stays_bounded_when_stanzas_are_put_back() {
        let (mut inner, a, b) = two_accounts();
        let (conn, mut inbox) = connect(&mut inner, b);
        relay_message(&mut inner, a, &text("FIRST", b));
        write_next(&mut inner, b, &mut inbox);
        inner.conns.get_mut(&conn).unwrap().device = None;
        for n in 0..OFFLINE_QUEUE_LIMIT {
            relay_message(&mut inner, a, &text(&format!("Q{n}"), b));
        }
        inner.conns.get_mut(&conn).unwrap().device = Some(b);
        end(&mut inner, b, conn);
        let queued = queued_ids(&inner, b);
        assert_eq!(queued.len(), OFFLINE_QUEUE_LIMIT);
        assert_eq!(queued[0], "Q0", "the oldest stanza, the one put back, was dropped");
    }
}
