//! Messages this gateway received: enough of each to download its file later and to reply
//! or react to it (a reply names the quoted message's author and shows its text).

use super::sql::Db;
use crate::args;

use super::{Store, StoreError};
use crate::engine::{Inbound, MediaRef};

/// A received message as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    pub chat: String,
    pub sender: String,
    pub kind: String,
    pub text: Option<String>,
    pub media: Option<StoredMedia>,
}

/// Where a received file is and what it is called.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMedia {
    #[serde(flatten)]
    pub location: MediaRef,
    pub mimetype: Option<String>,
    pub filename: Option<String>,
}

/// Claims a received message's identity inside the caller's transaction: true the first
/// time, false for a redelivery (same chat, sender and id), which must make no new event.
pub fn claim_inbound(db: &dyn Db, session: &str, message: &Inbound, now_ms: u64) -> Result<bool, StoreError> {
    let inserted = db.execute(
        "INSERT INTO inbound_keys (session, chat, sender, id, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO NOTHING",
        args![session, message.chat, message.sender, message.id, now_ms as i64],
    )?;
    Ok(inserted == 1)
}

/// Keeps what replies, reactions and downloads need of a received message, inside the
/// caller's transaction.
pub fn record_received(db: &dyn Db, session: &str, message: &Inbound, now_ms: u64) -> Result<(), StoreError> {
    let media = message.media.as_ref().map(|m| {
        let stored =
            StoredMedia { location: m.location.clone(), mimetype: m.mimetype.clone(), filename: m.filename.clone() };
        serde_json::to_string(&stored).expect("media references serialize")
    });
    db.execute(
        "INSERT INTO received_messages (session, id, chat, sender, kind, text, media, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        args![session, message.id, message.chat, message.sender, message.kind, message.text, media, now_ms as i64],
    )?;
    Ok(())
}

impl Store {
    pub fn received_message(&self, session: &str, id: &str) -> Result<Option<ReceivedMessage>, StoreError> {
        let (owner, wanted) = (session.to_string(), id.to_string());
        let row = self.read(move |db| {
            db.query_opt(
                "SELECT id, chat, sender, kind, text, media FROM received_messages WHERE session = ?1 AND id = ?2",
                args![owner, wanted],
            )?
            .map(|row| -> Result<_, StoreError> {
                Ok((
                    ReceivedMessage {
                        id: row.get(0)?,
                        chat: row.get(1)?,
                        sender: row.get(2)?,
                        kind: row.get(3)?,
                        text: row.get(4)?,
                        media: None,
                    },
                    row.get::<Option<String>>(5)?,
                ))
            })
            .transpose()
        })?;
        row.map(|(mut message, media)| {
            message.media = media
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("media of message {id}: {e}")))?;
            Ok(message)
        })
        .transpose()
    }

    /// Forgets received messages older than `before_ms`; WhatsApp's CDN drops their files
    /// after a few weeks anyway.
    /// The keys that recognise redeliveries go with them: WhatsApp keeps a message for an
    /// offline device for a few weeks at most.
    pub fn prune_received(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.write_blocking(move |db| {
            db.execute("DELETE FROM inbound_keys WHERE received_ms < ?1", args![before_ms as i64])?;
            db.execute("DELETE FROM received_messages WHERE received_ms < ?1", args![before_ms as i64])
        })
    }
}
