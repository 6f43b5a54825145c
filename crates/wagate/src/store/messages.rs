//! Messages this gateway sent: their latest delivery state (which only moves forward) and
//! the idempotency keys that stop a retried API call from sending twice.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Store, StoreError};
use crate::engine::DeliveryState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentMessage {
    pub id: String,
    pub session: String,
    pub chat: String,
    pub status: DeliveryState,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// What an idempotency key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new and now reserved for this request.
    Claimed,
    /// A request with this key already sent this message.
    Sent(SentMessage),
    /// A request with this key is still being sent.
    InProgress,
}

impl Store {
    pub fn claim_idempotency_key(&self, session: &str, key: &str, now_ms: u64) -> Result<KeyClaim, StoreError> {
        let db = self.db();
        let inserted = db.execute(
            "INSERT INTO idempotency_keys (session, key, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![session, key, now_ms as i64],
        )?;
        if inserted == 1 {
            return Ok(KeyClaim::Claimed);
        }
        let message_id: Option<String> = db.query_row(
            "SELECT message_id FROM idempotency_keys WHERE session = ?1 AND key = ?2",
            params![session, key],
            |row| row.get(0),
        )?;
        drop(db);
        match message_id {
            Some(id) => Ok(self.sent_message(session, &id)?.map_or(KeyClaim::InProgress, KeyClaim::Sent)),
            None => Ok(KeyClaim::InProgress),
        }
    }

    /// Frees a key whose send failed, so the caller may try again with it.
    pub fn release_idempotency_key(&self, session: &str, key: &str) -> Result<(), StoreError> {
        self.db().execute(
            "DELETE FROM idempotency_keys WHERE session = ?1 AND key = ?2 AND message_id IS NULL",
            params![session, key],
        )?;
        Ok(())
    }

    pub fn record_sent(
        &self,
        session: &str,
        id: &str,
        chat: &str,
        idempotency_key: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO sent_messages (session, id, chat, status, created_ms, updated_ms) VALUES (?1, ?2, ?3, 'sent', ?4, ?4)
             ON CONFLICT DO NOTHING",
            params![session, id, chat, now_ms as i64],
        )?;
        if let Some(key) = idempotency_key {
            tx.execute(
                "UPDATE idempotency_keys SET message_id = ?3 WHERE session = ?1 AND key = ?2",
                params![session, key, id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves a sent message's state forward (never back); returns the message when it moved.
    pub fn advance_status(
        &self,
        session: &str,
        id: &str,
        status: DeliveryState,
        now_ms: u64,
    ) -> Result<Option<SentMessage>, StoreError> {
        let Some(current) = self.sent_message(session, id)? else {
            return Ok(None);
        };
        if status <= current.status {
            return Ok(None);
        }
        self.db().execute(
            "UPDATE sent_messages SET status = ?3, updated_ms = ?4 WHERE session = ?1 AND id = ?2",
            params![session, id, status.as_str(), now_ms as i64],
        )?;
        Ok(Some(SentMessage { status, updated_ms: now_ms, ..current }))
    }

    pub fn sent_message(&self, session: &str, id: &str) -> Result<Option<SentMessage>, StoreError> {
        let row = self
            .db()
            .query_row(
                "SELECT id, session, chat, status, created_ms, updated_ms FROM sent_messages WHERE session = ?1 AND id = ?2",
                params![session, id],
                |row| <(String, String, String, String, i64, i64)>::try_from(row),
            )
            .optional()?;
        row.map(|(id, session, chat, status, created, updated)| {
            let status =
                DeliveryState::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status '{status}'")))?;
            Ok(SentMessage {
                id,
                session,
                chat,
                status,
                created_ms: u64::try_from(created).unwrap_or(0),
                updated_ms: u64::try_from(updated).unwrap_or(0),
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward_and_keys_send_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.claim_idempotency_key("s", "k1", 1).unwrap(), KeyClaim::Claimed);
        assert_eq!(store.claim_idempotency_key("s", "k1", 2).unwrap(), KeyClaim::InProgress);
        store.record_sent("s", "m1", "1555@s.whatsapp.net", Some("k1"), 3).unwrap();
        match store.claim_idempotency_key("s", "k1", 4).unwrap() {
            KeyClaim::Sent(message) => assert_eq!(message.id, "m1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.claim_idempotency_key("other-session", "k1", 4).unwrap(), KeyClaim::Claimed);
        store.release_idempotency_key("other-session", "k1").unwrap();
        assert_eq!(store.claim_idempotency_key("other-session", "k1", 5).unwrap(), KeyClaim::Claimed);

        assert!(store.advance_status("s", "m1", DeliveryState::Read, 5).unwrap().is_some());
        assert!(store.advance_status("s", "m1", DeliveryState::Delivered, 6).unwrap().is_none(), "never backwards");
        assert_eq!(store.sent_message("s", "m1").unwrap().unwrap().status, DeliveryState::Read);
        assert!(store.advance_status("s", "unknown", DeliveryState::Read, 7).unwrap().is_none());
    }
}
