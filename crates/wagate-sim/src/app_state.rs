//! The account's app state (`w:sync:app:state`), as WhatsApp's server keeps it for a phone:
//! collections of encrypted, MACed mutations that only the account's devices can read, with
//! the app-state key the phone shares with each companion.
//!
//! A profiled account has:
//! - `critical_unblock_low`: one `contact` action per address-book contact, served as a
//!   snapshot at version 1 in an external blob on the media host (the server hands large
//!   collections to a fresh device that way);
//! - `regular_high`: a few `mute` actions, and `regular_low`: a few `pin_v1` and `archive`
//!   actions, each served inline as the collection's first patch (version 1).
//!
//! A device gets them once the phone has shared its key with it; before that, and for
//! empty accounts, every collection is answered at the version the client already has.

use std::sync::Arc;

use tracing::debug;
use wacore_appstate::hash::{generate_patch_mac, HashState};
use wacore_appstate::{encode_record, expand_app_state_keys, ExpandedAppStateKeys};
use wacore_binary::builder::NodeBuilder;
use wacore_binary::Node;
use waproto::buffa::{self, Message as _};
use waproto::whatsapp as wa;
use waproto::whatsapp::sync_action_value::{
    ArchiveChatAction, ContactAction, MuteAction, PinAction, SyncActionMessageRange,
};
use waproto::whatsapp::syncd_mutation::SyncdOperation;

use crate::iq::IqContext;
use crate::media::{GeneratedKind, MediaStore};
use crate::nodes::{attr, child, children, iq_result};
use crate::profile::{derive_bytes, purpose, Chat, ProfiledAccount};

/// The version every profiled collection is served at: one snapshot or one patch.
const VERSION: u64 = 1;
/// How many chats the phone has muted, pinned and archived.
const MUTED: u32 = 3;
const PINNED: u32 = 2;
const ARCHIVED: u32 = 3;

/// The collections a profiled account has data in, and how each is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// Contacts, as an external snapshot.
    CriticalUnblockLow,
    /// Mutes, as an inline patch.
    RegularHigh,
    /// Pins and archives, as an inline patch.
    RegularLow,
}

impl Collection {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "critical_unblock_low" => Some(Self::CriticalUnblockLow),
            "regular_high" => Some(Self::RegularHigh),
            "regular_low" => Some(Self::RegularLow),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::CriticalUnblockLow => "critical_unblock_low",
            Self::RegularHigh => "regular_high",
            Self::RegularLow => "regular_low",
        }
    }

    fn as_snapshot(self) -> bool {
        self == Self::CriticalUnblockLow
    }
}

/// One app-state action before encryption.
struct Action {
    index: Vec<String>,
    value: wa::SyncActionValue,
    /// The action's schema version (WhatsApp Web stamps each kind with its own).
    version: i32,
}

/// The actions of a collection, in a stable order.
fn actions(account: &ProfiledAccount, collection: Collection) -> Vec<Action> {
    let at = (account.linked_at * 1000) as i64;
    let chats = account.chat_count();
    let chat = |i: u32| account.chat_jid(account.chat(i));
    match collection {
        Collection::CriticalUnblockLow => (0..account.profile.contacts)
            .map(|c| {
                let (first, full) = account.contact_name(c);
                Action {
                    index: vec!["contact".into(), account.contact_jid(c)],
                    value: wa::SyncActionValue {
                        timestamp: Some(at - i64::from(account.profile.contacts - c) * 1000),
                        contact_action: buffa::MessageField::some(ContactAction {
                            full_name: Some(full),
                            first_name: Some(first.to_string()),
                            save_on_primary_addressbook: Some(true),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    version: 2,
                }
            })
            .collect(),
        Collection::RegularHigh => (0..MUTED.min(chats))
            .map(|i| Action {
                index: vec!["mute".into(), chat(i)],
                value: wa::SyncActionValue {
                    timestamp: Some(at),
                    mute_action: buffa::MessageField::some(MuteAction {
                        muted: Some(true),
                        // -1: muted for good ("always").
                        mute_end_timestamp: Some(-1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                version: 2,
            })
            .collect(),
        Collection::RegularLow => {
            let pins = (0..PINNED.min(chats)).map(|i| Action {
                index: vec!["pin_v1".into(), chat(chats - 1 - i)],
                value: wa::SyncActionValue {
                    timestamp: Some(at),
                    pin_action: buffa::MessageField::some(PinAction { pinned: Some(true) }),
                    ..Default::default()
                },
                version: 5,
            });
            let archives = (0..ARCHIVED.min(chats)).map(|i| {
                let target = account.chat((chats / 2 + i) % chats);
                Action {
                    index: vec!["archive".into(), account.chat_jid(target)],
                    value: wa::SyncActionValue {
                        timestamp: Some(at),
                        archive_chat_action: buffa::MessageField::some(ArchiveChatAction {
                            archived: Some(true),
                            message_range: buffa::MessageField::some(SyncActionMessageRange {
                                last_message_timestamp: Some(last_message_time(account, target) as i64),
                                ..Default::default()
                            }),
                        }),
                        ..Default::default()
                    },
                    version: 3,
                }
            });
            pins.chain(archives).collect()
        }
    }
}

/// The time of the newest history message in a chat (0 without history there).
fn last_message_time(account: &ProfiledAccount, chat: Chat) -> u64 {
    let history = account.profile.history;
    let chats = account.chat_count();
    let index = match chat {
        Chat::Group(g) => g,
        Chat::Contact(c) => account.group_ids.len() as u32 + c,
    };
    if index >= history || chats == 0 {
        return 0;
    }
    // Messages go round robin: the chat's last one is the highest m with m % chats == index.
    let last = index + (history - 1 - index) / chats * chats;
    account.message_time(last)
}

/// The collection's actions, encrypted and MACed with the phone's app-state key.
fn encrypted(account: &ProfiledAccount, collection: Collection, keys: &ExpandedAppStateKeys) -> Vec<wa::SyncdMutation> {
    actions(account, collection)
        .into_iter()
        .enumerate()
        .map(|(n, action)| {
            let index = serde_json::to_vec(&action.index).expect("strings serialize");
            // Deterministic IVs: a snapshot built again for its download must be the same bytes.
            let iv = derive_bytes::<16>(account.seed, purpose::RECORD_IV, ((collection as u64) << 32) | n as u64);
            let (mutation, _) = encode_record(
                SyncdOperation::SET,
                &index,
                &action.value,
                keys,
                &account.app_state_key_id,
                &iv,
                action.version,
            );
            mutation
        })
        .collect()
}

/// The snapshot a fresh device downloads: every record, and the MAC over their LTHash.
pub fn snapshot(account: &ProfiledAccount, collection: Collection) -> wa::SyncdSnapshot {
    let keys = expand_app_state_keys(&account.app_state_key);
    let records: Vec<wa::SyncdRecord> =
        encrypted(account, collection, &keys).into_iter().filter_map(|m| m.record.into_option()).collect();
    let mut state = HashState { version: VERSION, ..Default::default() };
    state.update_hash_from_records(&records);
    wa::SyncdSnapshot {
        version: buffa::MessageField::some(wa::SyncdVersion { version: Some(VERSION) }),
        records,
        mac: Some(state.generate_snapshot_mac(collection.name(), &keys.snapshot_mac)),
        key_id: buffa::MessageField::some(wa::KeyId { id: Some(account.app_state_key_id.clone()) }),
    }
}

/// The collection's first patch: its mutations, the MAC of the LTHash after them, and the
/// patch MAC that proves the phone wrote it.
pub fn genesis_patch(account: &ProfiledAccount, collection: Collection) -> wa::SyncdPatch {
    let keys = expand_app_state_keys(&account.app_state_key);
    let mutations = encrypted(account, collection, &keys);
    let mut state = HashState::default();
    let (_, applied) = state.update_hash(&mutations, |_, _| Ok(None));
    applied.expect("a genesis patch has no previous values to look up");
    state.version = VERSION;
    let mut patch = wa::SyncdPatch {
        version: buffa::MessageField::some(wa::SyncdVersion { version: Some(VERSION) }),
        mutations,
        snapshot_mac: Some(state.generate_snapshot_mac(collection.name(), &keys.snapshot_mac)),
        key_id: buffa::MessageField::some(wa::KeyId { id: Some(account.app_state_key_id.clone()) }),
        ..Default::default()
    };
    patch.patch_mac = Some(generate_patch_mac(&patch, collection.name(), &keys.patch_mac, VERSION));
    patch
}

/// What the answer to one requested collection carries.
enum Served {
    Nothing,
    Snapshot,
    Patch,
}

/// `<iq xmlns="w:sync:app:state"><sync><collection name version? return_snapshot/>..`:
/// every requested collection is answered, with its data when the device is due it.
pub fn answer(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let account = profiled_for(ctx);
    let mut snapshots = 0;
    let mut patches = 0;
    let collections: Vec<Node> = child(iq, "sync")
        .map(children)
        .unwrap_or_default()
        .iter()
        .map(|requested| {
            let name = attr(requested, "name").unwrap_or_default();
            let version: u64 = attr(requested, "version").and_then(|v| v.parse().ok()).unwrap_or(0);
            let (node, served) = match (&account, Collection::from_name(&name)) {
                (Some(account), Some(collection)) if version < VERSION => {
                    collection_with_data(&ctx.state.media, account, collection)
                }
                _ => (plain_collection(&name, version), Served::Nothing),
            };
            match served {
                Served::Snapshot => snapshots += 1,
                Served::Patch => patches += 1,
                Served::Nothing => {}
            }
            node
        })
        .collect();
    if snapshots + patches > 0 {
        let mut inner = ctx.state.lock();
        inner.stats.profile.app_state_snapshots_served += snapshots;
        inner.stats.profile.app_state_patches_served += patches;
    }
    iq_result(iq, vec![NodeBuilder::new("sync").children(collections).build()])
}

/// The account's profile when the asking device may read its app state: the phone has
/// shared its key with the device, and there is something to read.
fn profiled_for(ctx: &IqContext<'_>) -> Option<Arc<ProfiledAccount>> {
    let addr = ctx.device?;
    let inner = ctx.state.lock();
    let account = inner.accounts.get(addr.phone)?;
    let device = account.devices.get(&addr.device)?;
    let profiled = account.profile.clone()?;
    (device.key_shared && !profiled.profile.is_empty()).then_some(profiled)
}

/// A collection with nothing new: the version the client already has.
fn plain_collection(name: &str, version: u64) -> Node {
    NodeBuilder::new("collection").attr("name", name.to_string()).attr("version", version.to_string()).build()
}

fn collection_with_data(media: &MediaStore, account: &Arc<ProfiledAccount>, collection: Collection) -> (Node, Served) {
    let name = collection.name();
    if actions_count(account, collection) == 0 {
        return (plain_collection(name, 0), Served::Nothing);
    }
    let builder = NodeBuilder::new("collection").attr("name", name).attr("version", VERSION.to_string());
    if collection.as_snapshot() {
        let recipe_account = account.clone();
        let media_key = derive_bytes::<32>(account.seed, purpose::MEDIA_KEY, 100 + collection as u64);
        let recipe = Arc::new(move || snapshot(&recipe_account, collection).encode_to_vec());
        match media.publish_generated(GeneratedKind::AppState, media_key, recipe) {
            Ok(published) => {
                debug!(
                    phone = account.phone,
                    collection = name,
                    bytes = published.encrypted_length,
                    "app-state snapshot published"
                );
                let reference = wa::ExternalBlobReference {
                    media_key: Some(published.media_key.to_vec()),
                    direct_path: Some(published.direct_path),
                    handle: None,
                    file_size_bytes: Some(published.file_length),
                    file_sha256: Some(published.file_sha256.to_vec()),
                    file_enc_sha256: Some(published.file_enc_sha256.to_vec()),
                };
                let node =
                    builder.children([NodeBuilder::new("snapshot").bytes(reference.encode_to_vec()).build()]).build();
                (node, Served::Snapshot)
            }
            Err(e) => {
                tracing::warn!(
                    phone = account.phone,
                    collection = name,
                    "could not publish an app-state snapshot: {e}"
                );
                (plain_collection(name, 0), Served::Nothing)
            }
        }
    } else {
        let patch = NodeBuilder::new("patch").bytes(genesis_patch(account, collection).encode_to_vec()).build();
        (builder.children([NodeBuilder::new("patches").children([patch]).build()]).build(), Served::Patch)
    }
}

fn actions_count(account: &ProfiledAccount, collection: Collection) -> u32 {
    let chats = account.chat_count();
    match collection {
        Collection::CriticalUnblockLow => account.profile.contacts,
        Collection::RegularHigh => MUTED.min(chats),
        Collection::RegularLow => PINNED.min(chats) + ARCHIVED.min(chats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::AccountProfile;
    use wacore_appstate::{process_patch, process_snapshot, AppStateError};

    fn account() -> ProfiledAccount {
        let profile = AccountProfile { contacts: 20, groups: 2, group_size: 5, history: 40, ..AccountProfile::empty() };
        let mut account = ProfiledAccount::new(profile, 15551234567, 1_700_000_000, (vec![9, 9], [4; 32]));
        account.group_ids = vec!["120363000000000001".into(), "120363000000000002".into()];
        account
    }

    #[test]
    fn the_snapshot_verifies_and_decodes_with_the_phone_key() {
        let account = account();
        let snapshot = snapshot(&account, Collection::CriticalUnblockLow);
        let keys = Arc::new(expand_app_state_keys(&account.app_state_key));
        let mut state = HashState::default();
        let processed = process_snapshot(&snapshot, &mut state, |_| Ok(keys.clone()), true, "critical_unblock_low")
            .expect("a valid snapshot");
        assert_eq!(processed.mutations.len(), 20);
        assert_eq!(processed.mutations[0].index[0], "contact");
        assert_eq!(processed.state.version, 1);
        // Another collection's name does not verify: the MAC binds it.
        let mut state = HashState::default();
        let wrong = process_snapshot(&snapshot, &mut state, |_| Ok(keys.clone()), true, "regular");
        assert!(matches!(wrong, Err(AppStateError::SnapshotMACMismatch)));
        assert_eq!(snapshot.encode_to_vec(), super::snapshot(&account, Collection::CriticalUnblockLow).encode_to_vec());
    }

    #[test]
    fn the_genesis_patches_verify() {
        let account = account();
        let keys = Arc::new(expand_app_state_keys(&account.app_state_key));
        for (collection, count) in [(Collection::RegularHigh, 3), (Collection::RegularLow, 5)] {
            let patch = genesis_patch(&account, collection);
            let mut state = HashState::default();
            let result = process_patch(&patch, &mut state, |_| Ok(keys.clone()), |_| Ok(None), true, collection.name())
                .expect("a valid patch");
            assert_eq!(result.mutations.len(), count, "{collection:?}");
            assert!(!result.state.mac_mismatch_fatal);
        }
    }
}
