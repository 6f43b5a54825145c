//! History sync, as a phone does it for a newly linked companion: it uploads the chat
//! history as zlib-compressed `HistorySync` protobufs, encrypted as media of the history
//! type, and tells the device where they are with `HISTORY_SYNC_NOTIFICATION` protocol
//! messages (Signal-encrypted from device 0, like the app-state key share). The device
//! downloads each chunk from the CDN, decrypts, inflates and stores it.
//!
//! Two chunks, as phones send them: `INITIAL_BOOTSTRAP` with every conversation, the
//! newer half of the messages and the contacts' push names, then `RECENT` with the older
//! half. Chunks are rebuilt from the account's seed whenever they are downloaded.

use std::io::Write;
use std::sync::Arc;

use flate2::write::ZlibEncoder;
use waproto::buffa::{self, Message as _};
use waproto::whatsapp as wa;
use waproto::whatsapp::message::{protocol_message, HistorySyncNotification, ProtocolMessage};

use crate::error::SimError;
use crate::media::{GeneratedKind, MediaStore};
use crate::profile::{derive_bytes, purpose, Chat, ProfiledAccount};

/// A history chunk: which half of the messages it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Every conversation, the newer messages and the push names.
    InitialBootstrap,
    /// The older messages of the conversations that have any.
    Recent,
}

impl Chunk {
    fn order(self) -> u32 {
        match self {
            Self::InitialBootstrap => 1,
            Self::Recent => 2,
        }
    }

    /// History messages (by number, 0 the oldest) this chunk carries.
    fn messages(self, history: u32) -> std::ops::Range<u32> {
        let half = history / 2;
        match self {
            Self::InitialBootstrap => half..history,
            Self::Recent => 0..half,
        }
    }

    fn sync_type(self) -> (wa::history_sync::HistorySyncType, wa::message::HistorySyncType) {
        match self {
            Self::InitialBootstrap => {
                (wa::history_sync::HistorySyncType::INITIAL_BOOTSTRAP, wa::message::HistorySyncType::INITIAL_BOOTSTRAP)
            }
            Self::Recent => (wa::history_sync::HistorySyncType::RECENT, wa::message::HistorySyncType::RECENT),
        }
    }
}

/// The chunks an account's phone sends: none without history.
pub fn chunks(account: &ProfiledAccount) -> Vec<Chunk> {
    let history = account.profile.history;
    [Chunk::InitialBootstrap, Chunk::Recent]
        .into_iter()
        .filter(|chunk| history > 0 && !chunk.messages(history).is_empty())
        .collect()
}

/// The chunk as the phone uploads it before encryption: a zlib-compressed `HistorySync`.
pub fn chunk_plaintext(account: &ProfiledAccount, chunk: Chunk) -> Vec<u8> {
    let proto = history_sync(account, chunk).encode_to_vec();
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(proto.len() / 3), flate2::Compression::default());
    encoder.write_all(&proto).expect("writing to a Vec does not fail");
    encoder.finish().expect("writing to a Vec does not fail")
}

pub fn history_sync(account: &ProfiledAccount, chunk: Chunk) -> wa::HistorySync {
    let history = account.profile.history;
    let chats = account.chat_count();
    let mut messages: Vec<Vec<wa::HistorySyncMsg>> = vec![Vec::new(); chats as usize];
    for m in chunk.messages(history) {
        if let Some(chat) = account.chat_of_message(m) {
            let index = m % chats;
            messages[index as usize].push(history_message(account, chat, m));
        }
    }
    // Phones list a conversation's newest message first.
    for list in &mut messages {
        list.reverse();
    }
    let with_history = history.min(chats);
    let conversations = messages
        .into_iter()
        .enumerate()
        .take(with_history as usize)
        .filter(|(_, list)| chunk == Chunk::InitialBootstrap || !list.is_empty())
        .map(|(index, list)| conversation(account, account.chat(index as u32), list))
        .collect();
    let pushnames = match chunk {
        Chunk::InitialBootstrap => (0..account.profile.contacts)
            .map(|c| wa::Pushname {
                id: Some(account.contact_jid(c)),
                pushname: Some(account.contact_name(c).0.to_string()),
            })
            .collect(),
        Chunk::Recent => Vec::new(),
    };
    wa::HistorySync {
        sync_type: chunk.sync_type().0,
        conversations,
        chunk_order: Some(chunk.order()),
        progress: Some(if chunk == Chunk::Recent { 100 } else { 50 }),
        pushnames,
        ..Default::default()
    }
}

fn conversation(account: &ProfiledAccount, chat: Chat, messages: Vec<wa::HistorySyncMsg>) -> wa::Conversation {
    let last = messages.first().and_then(|m| m.message.as_option()).and_then(|m| m.message_timestamp);
    let mut conversation = wa::Conversation {
        id: account.chat_jid(chat),
        messages,
        last_msg_timestamp: last,
        conversation_timestamp: last,
        unread_count: Some(0),
        ..Default::default()
    };
    match chat {
        Chat::Group(g) => {
            conversation.name = Some(account.group_subject(g));
            conversation.participant = std::iter::once(own_jid(account))
                .chain(account.group_members(g).into_iter().map(|c| account.contact_jid(c)))
                .map(|user_jid| wa::GroupParticipant { user_jid, ..Default::default() })
                .collect();
        }
        Chat::Contact(c) => conversation.name = Some(account.contact_name(c).1),
    }
    conversation
}

fn own_jid(account: &ProfiledAccount) -> String {
    format!("{}@s.whatsapp.net", account.phone)
}

/// History message `m`: every fourth one the account's own, the rest from the contact (or a
/// member of the group).
fn history_message(account: &ProfiledAccount, chat: Chat, m: u32) -> wa::HistorySyncMsg {
    let from_me = m.is_multiple_of(4);
    let chat_jid = account.chat_jid(chat);
    let participant = match chat {
        Chat::Group(g) if !from_me => {
            let members = account.group_members(g);
            (!members.is_empty()).then(|| account.contact_jid(members[m as usize % members.len()]))
        }
        _ => None,
    };
    let push_name = match (chat, from_me) {
        (_, true) => None,
        (Chat::Contact(c), false) => Some(account.contact_name(c).0.to_string()),
        (Chat::Group(_), false) => None,
    };
    let info = wa::WebMessageInfo {
        key: buffa::MessageField::some(wa::MessageKey {
            remote_jid: Some(chat_jid),
            from_me: Some(from_me),
            id: Some(account.message_id(purpose::MESSAGE_ID, u64::from(m))),
            participant: participant.clone(),
        }),
        message: buffa::MessageField::some(wa::Message {
            conversation: Some(account.phrase(u64::from(m)).to_string()),
            ..Default::default()
        }),
        message_timestamp: Some(account.message_time(m)),
        status: Some(if from_me {
            wa::web_message_info::Status::READ
        } else {
            wa::web_message_info::Status::DELIVERY_ACK
        }),
        participant,
        push_name,
        ..Default::default()
    };
    wa::HistorySyncMsg { message: buffa::MessageField::some(info), msg_order_id: Some(u64::from(m) + 1) }
}

/// Publishes the account's history chunks on the media host and returns the protocol
/// messages announcing them, in order.
pub fn notifications(media: &MediaStore, account: &Arc<ProfiledAccount>) -> Result<Vec<wa::Message>, SimError> {
    chunks(account)
        .into_iter()
        .map(|chunk| {
            let recipe_account = account.clone();
            let media_key = derive_bytes::<32>(account.seed, purpose::MEDIA_KEY, u64::from(chunk.order()));
            let published = media.publish_generated(
                GeneratedKind::History,
                media_key,
                Arc::new(move || chunk_plaintext(&recipe_account, chunk)),
            )?;
            let oldest = chunk.messages(account.profile.history).start;
            let notification = HistorySyncNotification {
                file_sha256: Some(published.file_sha256.to_vec()),
                file_length: Some(published.file_length),
                media_key: Some(published.media_key.to_vec()),
                file_enc_sha256: Some(published.file_enc_sha256.to_vec()),
                direct_path: Some(published.direct_path),
                sync_type: Some(chunk.sync_type().1),
                chunk_order: Some(chunk.order()),
                progress: Some(if chunk == Chunk::Recent { 100 } else { 50 }),
                oldest_msg_in_chunk_timestamp_sec: Some(account.message_time(oldest) as i64),
                ..Default::default()
            };
            tracing::debug!(
                phone = account.phone,
                chunk = ?chunk,
                bytes = published.encrypted_length,
                "phone uploaded a history chunk"
            );
            Ok(wa::Message {
                protocol_message: buffa::MessageField::some(ProtocolMessage {
                    r#type: Some(protocol_message::Type::HISTORY_SYNC_NOTIFICATION),
                    history_sync_notification: buffa::MessageField::some(notification),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Read;

    use super::*;
    use crate::profile::AccountProfile;

    fn account(contacts: u32, groups: u32, history: u32) -> ProfiledAccount {
        let profile = AccountProfile { contacts, groups, group_size: 10, history, ..AccountProfile::empty() };
        let mut account = ProfiledAccount::new(profile, 15551234567, 1_700_000_000, (vec![1], [2; 32]));
        account.group_ids = (0..groups).map(|g| format!("1203630000000000{g:02}")).collect();
        account
    }

    fn decode(account: &ProfiledAccount, chunk: Chunk) -> wa::HistorySync {
        let mut proto = Vec::new();
        flate2::read::ZlibDecoder::new(chunk_plaintext(account, chunk).as_slice()).read_to_end(&mut proto).unwrap();
        wa::HistorySync::decode_from_slice(&proto).unwrap()
    }

    #[test]
    fn chunks_hold_every_message_once_and_every_chat_with_history() {
        let account = account(50, 5, 200);
        let mut ids = BTreeSet::new();
        let mut conversations = BTreeSet::new();
        for chunk in chunks(&account) {
            let sync = decode(&account, chunk);
            for conversation in &sync.conversations {
                conversations.insert(conversation.id.clone());
                for message in &conversation.messages {
                    assert!(ids.insert(message.message.key.id.clone().unwrap()), "a message twice");
                }
            }
        }
        assert_eq!(ids.len(), 200);
        assert_eq!(conversations.len(), 55);
        assert_eq!(decode(&account, Chunk::InitialBootstrap).pushnames.len(), 50);
        assert_eq!(chunk_plaintext(&account, Chunk::Recent), chunk_plaintext(&account, Chunk::Recent), "stable");
    }

    #[test]
    fn short_histories_and_no_history() {
        assert!(chunks(&account(10, 0, 0)).is_empty());
        assert_eq!(chunks(&account(10, 0, 1)), vec![Chunk::InitialBootstrap]);
        let few = account(10, 2, 3);
        let sync = decode(&few, Chunk::InitialBootstrap);
        assert_eq!(sync.conversations.len(), 3, "only chats with a message");
    }
}
