//! Groups: who is in which group, and the `w:g2` iqs clients send for group metadata.
//! Groups are LID-addressed like today's WhatsApp groups: members appear by LID with their
//! phone number beside it, and group messages name their sender by LID.

use std::collections::{BTreeMap, HashMap};

use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};

use crate::accounts::Accounts;
use crate::clock::unix_now;
use crate::iq::IqContext;
use crate::nodes::{attr, iq_error, iq_result};

/// `120363` is the prefix of today's group ids; 12 more digits make the usual 18.
const GROUP_ID_PREFIX: u64 = 120_363_000_000_000_000;

#[derive(Debug, Clone)]
pub struct Group {
    /// The user part of the group JID (digits).
    pub id: String,
    pub subject: String,
    pub owner: u64,
    pub creation: u64,
    /// Phone numbers of the members, the owner first.
    pub members: Vec<u64>,
}

impl Group {
    pub fn jid(&self) -> Jid {
        Jid::group(self.id.clone())
    }

    pub fn has_member(&self, phone: u64) -> bool {
        self.members.contains(&phone)
    }
}

#[derive(Default)]
pub struct Groups {
    by_id: BTreeMap<String, Group>,
    /// Group ids by member phone: profiled accounts make tens of thousands of groups, too
    /// many to scan for every `participating` query. Only members that can ask are indexed
    /// (see [`Groups::create_indexed`]).
    by_member: HashMap<u64, Vec<String>>,
    created: u64,
}

impl Groups {
    /// A new group of `owner` and `participants` (duplicates and the owner dropped from them).
    pub fn create(&mut self, subject: String, owner: u64, participants: &[u64]) -> &Group {
        self.create_indexed(subject, owner, participants, |_| true)
    }

    /// [`Groups::create`], with only the members `indexed` accepts findable by
    /// [`Groups::of_member`]: a profiled account's groups are mostly its contacts, who have
    /// no device to ask, and indexing each of them would cost more than the group itself.
    pub fn create_indexed(
        &mut self,
        subject: String,
        owner: u64,
        participants: &[u64],
        indexed: impl Fn(u64) -> bool,
    ) -> &Group {
        self.created += 1;
        // Mixing in the time keeps ids of two simulator runs apart, for clients that cache.
        let id = (GROUP_ID_PREFIX + (unix_now() % 1_000_000) * 1_000_000 + self.created).to_string();
        let mut members = vec![owner];
        for phone in participants {
            if !members.contains(phone) {
                members.push(*phone);
            }
        }
        for member in members.iter().filter(|m| indexed(**m)) {
            self.by_member.entry(*member).or_default().push(id.clone());
        }
        let group = Group { id: id.clone(), subject, owner, creation: unix_now(), members };
        self.by_id.entry(id).or_insert(group)
    }

    /// By its JID (`<id>@g.us`) or bare id.
    pub fn get(&self, jid: &str) -> Option<&Group> {
        let id = jid.strip_suffix("@g.us").unwrap_or(jid);
        self.by_id.get(id)
    }

    /// The groups `phone` is an indexed member of.
    pub fn of_member(&self, phone: u64) -> impl Iterator<Item = &Group> {
        self.by_member.get(&phone).into_iter().flatten().filter_map(|id| self.by_id.get(id))
    }
}

/// `<group id subject creator ..><participant jid=LID phone_number=PN [type]/>..</group>`.
pub fn group_node(group: &Group, accounts: &Accounts) -> Node {
    let lid_of = |phone: u64| accounts.get(phone).map(|a| Jid::lid(a.lid.to_string()));
    let participants = group.members.iter().map(|phone| {
        let mut participant = match lid_of(*phone) {
            Some(lid) => {
                NodeBuilder::new("participant").attr("jid", lid).attr("phone_number", Jid::pn(phone.to_string()))
            }
            None => NodeBuilder::new("participant").attr("jid", Jid::pn(phone.to_string())),
        };
        if *phone == group.owner {
            participant = participant.attr("type", "superadmin");
        }
        participant.build()
    });
    let owner = lid_of(group.owner).unwrap_or_else(|| Jid::pn(group.owner.to_string()));
    NodeBuilder::new("group")
        .attr("id", group.id.clone())
        .attr("subject", group.subject.clone())
        .attr("s_t", group.creation.to_string())
        .attr("s_o", owner.clone())
        .attr("s_o_pn", Jid::pn(group.owner.to_string()))
        .attr("creation", group.creation.to_string())
        .attr("creator", owner)
        .attr("creator_pn", Jid::pn(group.owner.to_string()))
        .attr("addressing_mode", "lid")
        .attr("size", group.members.len().to_string())
        .children(participants.collect::<Vec<_>>())
        .build()
}

/// `<iq xmlns="w:g2" type="get" to=GROUP><query request="interactive"/></iq>`: one group's
/// metadata, for its members only.
pub fn answer_query(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let inner = ctx.state.lock();
    let target = attr(iq, "to").unwrap_or_default();
    let Some(group) = inner.groups.get(&target) else {
        return iq_error(iq, 404, "item-not-found");
    };
    if !ctx.device.is_some_and(|d| group.has_member(d.phone)) {
        return iq_error(iq, 403, "forbidden");
    }
    iq_result(iq, vec![group_node(group, &inner.accounts)])
}

/// `<iq xmlns="w:g2" type="get" to="@g.us"><participating>..`: every group of the account.
pub fn answer_participating(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let inner = ctx.state.lock();
    let groups: Vec<Node> = match ctx.device {
        Some(device) => inner.groups.of_member(device.phone).map(|g| group_node(g, &inner.accounts)).collect(),
        None => Vec::new(),
    };
    iq_result(iq, vec![NodeBuilder::new("groups").children(groups).build()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_unique_with_the_owner_first() {
        let mut groups = Groups::default();
        let group = groups.create("Team".into(), 1555, &[1666, 1555, 1666, 1777]).clone();
        assert_eq!(group.members, [1555, 1666, 1777]);
        assert_eq!(group.id.len(), 18, "{}", group.id);
        assert!(groups.get(&format!("{}@g.us", group.id)).is_some());
        assert_eq!(groups.of_member(1777).count(), 1);
        assert_eq!(groups.of_member(1888).count(), 0);
        let second = groups.create("Other".into(), 1666, &[]).id.clone();
        assert_ne!(second, group.id);
    }
}
