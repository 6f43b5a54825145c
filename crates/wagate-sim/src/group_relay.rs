//! Group messages through the relay (PROTOCOL.md 6). A sender encrypts a group message once
//! with its sender key (`<enc type="skmsg">`) and adds, per device that does not have that
//! key yet, a Signal-encrypted sender-key distribution message under `<participants>`. The
//! server copies the skmsg to every device of every member except the sending one, each with
//! its own distribution message (first, so it is processed before the skmsg) if it has one.

use std::collections::HashMap;

use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};

use crate::clock::unix_now;
use crate::jid::DeviceAddr;
use crate::nodes::{attr, child, children};
use crate::relay::{deliver, message_ack, resolve};
use crate::state::Inner;

/// The sender as group members see it: by LID, the groups being LID-addressed.
fn sender_jid(inner: &Inner, sender: DeviceAddr) -> Jid {
    match inner.accounts.get(sender.phone) {
        Some(account) => Jid::lid_device(account.lid.to_string(), sender.device),
        None => Jid::pn_device(sender.phone.to_string(), sender.device),
    }
}

/// Every linked device of every member.
fn member_devices(inner: &Inner, members: &[u64]) -> Vec<DeviceAddr> {
    members
        .iter()
        .filter_map(|phone| inner.accounts.get(*phone))
        .flat_map(|account| account.companions().filter(|d| d.confirmed).map(|d| account.addr(d.id)))
        .collect()
}

/// Routes a `<message to="..@g.us">` from `sender` and returns the server's ack, which
/// carries an error when the group is unknown or the sender is not in it.
pub fn relay_group_message(inner: &mut Inner, sender: DeviceAddr, message: &Node) -> Node {
    let group_jid = attr(message, "to").unwrap_or_default();
    let Some(group) = inner.groups.get(&group_jid).cloned() else {
        return with_error(message_ack(message), 404);
    };
    if !group.has_member(sender.phone) {
        return with_error(message_ack(message), 403);
    }
    let top_level: Vec<Node> = children(message).iter().filter(|c| c.tag == "enc").cloned().collect();
    let mut own_encs: HashMap<DeviceAddr, Vec<Node>> = HashMap::new();
    for target in child(message, "participants").map(children).unwrap_or_default() {
        let Some((addr, _)) = attr(target, "jid").and_then(|jid| resolve(&inner.accounts, &jid)) else { continue };
        own_encs.entry(addr).or_default().extend(children(target).iter().filter(|c| c.tag == "enc").cloned());
    }
    // A retry answer names one device in `participant` and carries its enc at the top level.
    let (skmsg, targets) = match attr(message, "participant").and_then(|jid| resolve(&inner.accounts, &jid)) {
        Some((addr, _)) => {
            own_encs.insert(addr, top_level);
            (Vec::new(), vec![addr])
        }
        None => (top_level, member_devices(inner, &group.members)),
    };
    let from = sender_jid(inner, sender);
    let now = unix_now().to_string();
    let device_identity = child(message, "device-identity").cloned();
    for addr in targets.into_iter().filter(|a| *a != sender) {
        let mut content = own_encs.remove(&addr).unwrap_or_default();
        let has_own = !content.is_empty();
        content.extend(skmsg.iter().cloned());
        if content.is_empty() {
            continue;
        }
        if let (true, Some(identity)) = (has_own, &device_identity) {
            content.push(identity.clone());
        }
        let delivered = NodeBuilder::new("message")
            .attr("from", group.jid())
            .attr("participant", from.clone())
            .attr("participant_pn", Jid::pn(sender.phone.to_string()))
            .attr("addressing_mode", "lid")
            .attr("id", attr(message, "id").unwrap_or_default())
            .attr("t", now.clone())
            .attr("type", attr(message, "type").unwrap_or_else(|| "text".into()))
            .attr("notify", format!("Sim {}", sender.phone))
            .children(content)
            .build();
        deliver(inner, addr, delivered);
    }
    message_ack(message)
}

fn with_error(mut ack: Node, code: u16) -> Node {
    ack.attrs.insert("error", code.to_string());
    ack
}

/// A member's receipt for a group message goes to every device of the message's sender
/// (named in `participant`), saying which group and which reader.
pub fn relay_group_receipt(inner: &mut Inner, reader: DeviceAddr, receipt: &Node) -> Node {
    let id = attr(receipt, "id").unwrap_or_default();
    let group_jid = attr(receipt, "to").unwrap_or_default();
    let author = attr(receipt, "participant").and_then(|jid| resolve(&inner.accounts, &jid));
    let group = inner.groups.get(&group_jid).cloned();
    if let (Some(group), Some((author, _))) = (group, author) {
        let mut forwarded = Node::new("receipt", receipt.attrs.clone(), receipt.content.clone());
        forwarded.attrs.0.retain(|(k, _)| k != "to" && k != "participant");
        forwarded.attrs.insert("from", group.jid());
        forwarded.attrs.insert("participant", sender_jid(inner, reader));
        forwarded.attrs.insert("t", unix_now().to_string());
        for device in member_devices(inner, &[author.phone]) {
            if device != reader {
                deliver(inner, device, forwarded.clone());
            }
        }
    }
    let mut ack = NodeBuilder::new("ack").attr("class", "receipt").attr("id", id).attr("from", group_jid);
    if let Some(kind) = receipt.attrs.get("type") {
        ack = ack.attr("type", kind.clone());
    }
    ack.build()
}
