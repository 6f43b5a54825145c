//! The outgoing queue: messages accepted while their session was reconnecting, kept on
//! disk until they are sent, in the order they were accepted. A queued message is already
//! listed among the sent messages, with the state `queued`.

use crate::args;

use super::{NewEvent, Store, StoreError};
use crate::engine::Outgoing;

/// At most this many messages wait per session; more are refused rather than piling up.
pub const MAX_QUEUED: usize = 1000;

/// A message waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub seq: i64,
    pub id: String,
    pub to: String,
    pub message: Outgoing,
}

impl Store {
    /// Queues a message under `id`, with its `queued` event (if the session's webhook
    /// wants one) in the same commit; false when the session's queue is full.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        session: &str,
        id: &str,
        to: &str,
        message: &Outgoing,
        idempotency_key: Option<&str>,
        event: Option<NewEvent>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let body = serde_json::to_string(message).expect("outgoing messages serialize");
        let (session, id, to) = (session.to_string(), id.to_string(), to.to_string());
        let idempotency_key = idempotency_key.map(str::to_string);
        self.write_blocking(move |tx| {
            let waiting: i64 =
                tx.query_one("SELECT COUNT(*) FROM outgoing_queue WHERE session = ?1", args![session])?.get(0)?;
            if waiting as usize >= MAX_QUEUED {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO outgoing_queue (session, id, recipient, message, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![session, id, to, body, now_ms as i64],
            )?;
            tx.execute(
                "INSERT INTO sent_messages (session, id, chat, status, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?4)",
                args![session, id, to, now_ms as i64],
            )?;
            if let Some(key) = idempotency_key {
                tx.execute(
                    "UPDATE idempotency_keys SET message_id = ?3 WHERE session = ?1 AND key = ?2",
                    args![session, key, id],
                )?;
            }
            if let Some(event) = &event {
                super::insert_event(tx, event)?;
            }
            Ok(true)
        })
    }

    /// The oldest waiting message of the session.
    pub fn next_queued(&self, session: &str) -> Result<Option<Queued>, StoreError> {
        let session = session.to_string();
        let row = self.read(move |db| {
            db.query_opt(
                "SELECT seq, id, recipient, message FROM outgoing_queue WHERE session = ?1 ORDER BY seq LIMIT 1",
                args![session],
            )?
            .map(|row| -> Result<(i64, String, String, String), StoreError> {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .transpose()
        })?;
        row.map(|(seq, id, to, body)| {
            let message = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("queued message {id} cannot be read: {e}")))?;
            Ok(Queued { seq, id, to, message })
        })
        .transpose()
    }

    pub fn queued_count(&self, session: &str) -> Result<usize, StoreError> {
        // Asked before every send: a cached statement.
        let session = session.to_string();
        let count: i64 = self.read(move |db| {
            db.query_one("SELECT COUNT(*) FROM outgoing_queue WHERE session = ?1", args![session])?.get(0)
        })?;
        Ok(count as usize)
    }

    /// Takes a message off the queue (sent, or given up).
    pub fn dequeue(&self, seq: i64) -> Result<(), StoreError> {
        self.write_blocking(move |db| {
            db.execute("DELETE FROM outgoing_queue WHERE seq = ?1", args![seq])?;
            Ok(())
        })
    }

    /// Counts a failed attempt; returns the attempts so far.
    pub fn queued_attempt_failed(&self, seq: i64) -> Result<u32, StoreError> {
        let attempts: i64 = self.write_blocking(move |db| {
            db.execute("UPDATE outgoing_queue SET attempts = attempts + 1 WHERE seq = ?1", args![seq])?;
            Ok(db
                .query_opt("SELECT attempts FROM outgoing_queue WHERE seq = ?1", args![seq])?
                .map(|row| row.get(0))
                .transpose()?
                .unwrap_or(0))
        })?;
        Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Content, DeliveryState};

    #[tokio::test]
    async fn the_queue_keeps_order_and_lists_its_messages_as_queued() {
        for mut test in crate::store::testing::both().await {
            let store = test.store();
            let text = |t: &str| Outgoing { content: Content::Text(t.into()), reply_to: None };
            assert!(store.enqueue("s", "M1", "1555@s.whatsapp.net", &text("one"), None, None, 1).unwrap());
            assert!(store.enqueue("s", "M2", "1555@s.whatsapp.net", &text("two"), None, None, 2).unwrap());
            assert_eq!(store.queued_count("s").unwrap(), 2);
            assert_eq!(store.sent_message("s", "M1").unwrap().unwrap().status, DeliveryState::Queued);
            let first = store.next_queued("s").unwrap().unwrap();
            assert_eq!((first.id.as_str(), first.message.clone()), ("M1", text("one")));
            assert_eq!(store.queued_attempt_failed(first.seq).unwrap(), 1);
            store.dequeue(first.seq).unwrap();
            assert_eq!(store.next_queued("s").unwrap().unwrap().id, "M2");
            assert!(store.next_queued("other").unwrap().is_none());
            // Reopening keeps what waits.
            test.reopen();
            assert_eq!(test.store().next_queued("s").unwrap().unwrap().id, "M2", "{}", test.name);
        }
    }
}
