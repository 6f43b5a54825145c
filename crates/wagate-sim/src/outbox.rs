//! The `<message>` stanzas handed to a device's connection that the device has not
//! acknowledged yet. WhatsApp's server keeps a message queued for a device until the device
//! confirms it (with `<ack class="message">` or a `<receipt>`); when the connection ends
//! first, the message is delivered again at the next login. This module is the bookkeeping
//! only: which stanza went to which connection, in which order, and whether it was written.

use std::collections::{HashMap, VecDeque};

use wacore_binary::Node;

use crate::jid::DeviceAddr;
use crate::state::ConnId;

/// One side of a conversation, as an ack names it. Accounts are compared by phone number so
/// that the PN and LID forms of a JID, with or without a device, are the same party.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Party {
    Account(u64),
    /// A group, a broadcast list, or a user the simulator does not know: its JID without a
    /// device part.
    Jid(String),
}

/// What identifies a relayed message: a message id is only unique per chat and sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub id: String,
    pub chat: Party,
    pub sender: Party,
}

/// What a device's ack or receipt names. A part the stanza leaves out matches any message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckKey {
    pub id: String,
    pub chat: Option<Party>,
    pub sender: Option<Party>,
}

impl AckKey {
    pub fn matches(&self, key: &MessageKey) -> bool {
        self.id == key.id
            && self.chat.as_ref().is_none_or(|chat| *chat == key.chat)
            && self.sender.as_ref().is_none_or(|sender| *sender == key.sender)
    }
}

/// A stanza a connection took and the device did not ack before that connection ended.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub node: Node,
    /// False when the connection ended before it wrote the stanza out.
    pub written: bool,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    conn: ConnId,
    key: MessageKey,
    node: Node,
    written: bool,
}

/// Per device, the stanzas waiting for its ack, in the order they were handed over.
#[derive(Debug, Default)]
pub struct Outbox {
    devices: HashMap<DeviceAddr, VecDeque<Pending>>,
    next_seq: u64,
}

impl Outbox {
    /// Records that `conn` is about to deliver `node` to `addr`; the number it returns names
    /// this delivery in [`Outbox::mark_written`] and [`Outbox::withdraw`].
    pub fn hand_over(&mut self, addr: DeviceAddr, conn: ConnId, key: MessageKey, node: Node) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.devices.entry(addr).or_default().push_back(Pending { seq, conn, key, node, written: false });
        seq
    }

    /// Takes back a delivery the connection never got (its command channel was closed).
    pub fn withdraw(&mut self, addr: DeviceAddr, seq: u64) -> Option<Node> {
        let queue = self.devices.get_mut(&addr)?;
        let index = queue.iter().position(|p| p.seq == seq)?;
        let node = queue.remove(index).map(|p| p.node);
        self.forget_if_empty(addr);
        node
    }

    /// The connection wrote the stanza. False when it is no longer pending (an ack for an
    /// earlier copy of the same message settled it meanwhile).
    pub fn mark_written(&mut self, addr: DeviceAddr, seq: u64) -> bool {
        let pending = self.devices.get_mut(&addr).and_then(|queue| queue.iter_mut().find(|p| p.seq == seq));
        match pending {
            Some(pending) => {
                pending.written = true;
                true
            }
            None => false,
        }
    }

    /// Settles every pending copy of the message the device acked and returns how many there
    /// were: the ack confirms the message, not one copy of it. An ack for something the
    /// device was never given settles nothing.
    pub fn settle(&mut self, addr: DeviceAddr, ack: &AckKey) -> usize {
        let Some(queue) = self.devices.get_mut(&addr) else { return 0 };
        let before = queue.len();
        queue.retain(|p| !ack.matches(&p.key));
        let settled = before - queue.len();
        self.forget_if_empty(addr);
        settled
    }

    /// Everything `conn` took for `addr` and the device has not acked, in delivery order.
    pub fn take_conn(&mut self, addr: DeviceAddr, conn: ConnId) -> Vec<Unacked> {
        let Some(queue) = self.devices.get_mut(&addr) else { return Vec::new() };
        let (taken, kept): (VecDeque<Pending>, VecDeque<Pending>) = queue.drain(..).partition(|p| p.conn == conn);
        *queue = kept;
        self.forget_if_empty(addr);
        taken.into_iter().map(|p| Unacked { node: p.node, written: p.written }).collect()
    }

    /// How many stanzas wait for the device's ack.
    pub fn pending(&self, addr: DeviceAddr) -> usize {
        self.devices.get(&addr).map_or(0, VecDeque::len)
    }

    fn forget_if_empty(&mut self, addr: DeviceAddr) {
        if self.devices.get(&addr).is_some_and(VecDeque::is_empty) {
            self.devices.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use wacore_binary::builder::NodeBuilder;

    use super::*;

    const B: DeviceAddr = DeviceAddr { phone: 15550000002, device: 1 };
    const C: DeviceAddr = DeviceAddr { phone: 15550000003, device: 1 };

    fn key(id: &str, sender: u64) -> MessageKey {
        MessageKey { id: id.into(), chat: Party::Account(sender), sender: Party::Account(sender) }
    }

    fn ack(id: &str, sender: u64) -> AckKey {
        AckKey { id: id.into(), chat: Some(Party::Account(sender)), sender: Some(Party::Account(sender)) }
    }

    fn message(id: &str) -> Node {
        NodeBuilder::new("message").attr("id", id).build()
    }

    fn ids(unacked: &[Unacked]) -> Vec<String> {
        unacked.iter().map(|u| u.node.attrs.get("id").unwrap().as_str().into_owned()).collect()
    }

    #[test]
    fn what_a_connection_took_comes_back_in_delivery_order_unless_acked() {
        let mut outbox = Outbox::default();
        let first = outbox.hand_over(B, 7, key("M1", 1), message("M1"));
        outbox.hand_over(B, 7, key("M2", 1), message("M2"));
        let third = outbox.hand_over(B, 7, key("M3", 1), message("M3"));
        assert!(outbox.mark_written(B, first));
        assert!(outbox.mark_written(B, third));
        assert_eq!(outbox.settle(B, &ack("M2", 1)), 1);

        let back = outbox.take_conn(B, 7);
        assert_eq!(ids(&back), ["M1", "M3"]);
        assert!(back.iter().all(|u| u.written));
        assert_eq!(outbox.pending(B), 0);
    }

    #[test]
    fn an_ack_must_name_the_same_chat_and_sender() {
        let mut outbox = Outbox::default();
        outbox.hand_over(B, 7, key("M1", 1), message("M1"));
        assert_eq!(outbox.settle(B, &ack("M1", 2)), 0, "the same id from another sender is another message");
        assert_eq!(outbox.settle(B, &ack("UNKNOWN", 1)), 0, "an id the device never got is ignored");
        assert_eq!(outbox.settle(C, &ack("M1", 1)), 0, "another device's ack settles nothing here");
        let loose = AckKey { id: "M1".into(), chat: None, sender: Some(Party::Account(1)) };
        assert_eq!(outbox.settle(B, &loose), 1, "a chat the ack leaves out matches");
    }

    #[test]
    fn only_the_ending_connection_gives_back_its_stanzas() {
        let mut outbox = Outbox::default();
        outbox.hand_over(B, 7, key("OLD", 1), message("OLD"));
        outbox.hand_over(B, 8, key("NEW", 1), message("NEW"));
        let back = outbox.take_conn(B, 7);
        assert_eq!(ids(&back), ["OLD"]);
        assert!(!back[0].written, "never written out");
        assert_eq!(outbox.pending(B), 1);
    }

    #[test]
    fn a_withdrawn_delivery_is_no_longer_pending() {
        let mut outbox = Outbox::default();
        let seq = outbox.hand_over(B, 7, key("M1", 1), message("M1"));
        assert!(outbox.withdraw(B, seq).is_some());
        assert!(!outbox.mark_written(B, seq));
        assert!(outbox.take_conn(B, 7).is_empty());
    }
}
