//! Messages this gateway sent: their latest delivery state (which only moves forward) and
//! the idempotency keys that stop a retried API call from sending twice.

use super::sql::Db;
use crate::args;
use serde::Serialize;

use super::{Store, StoreError};
use crate::engine::DeliveryState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// The key is new and now reserved for this request, which sends as `message_id`.
    Claimed,
    /// A request with this key already reached an outcome (sent, queued or failed).
    Sent(SentMessage),
    /// A request of this run is still sending it as `message_id`.
    InProgress { message_id: String },
    /// A request of an earlier run (which died mid-send) was sending it as `message_id`
    /// and left no outcome; the key now belongs to this request, which must send under the
    /// same id, so that WhatsApp and the recipient see one message whatever happened before.
    Orphaned { message_id: String },
}

/// A message state's place in the order states move in (see [`DeliveryState`]).
fn rank(state: DeliveryState) -> i64 {
    state as i64
}

const RANK_OF_STATUS: &str = "CASE status WHEN 'queued' THEN 0 WHEN 'failed' THEN 1 WHEN 'sent' THEN 2
    WHEN 'delivered' THEN 3 WHEN 'read' THEN 4 WHEN 'played' THEN 5 ELSE 6 END";

/// Moves a sent message's state forward (never back) inside the caller's transaction;
/// true when it moved.
pub fn advance_status(
    db: &dyn Db,
    session: &str,
    id: &str,
    status: DeliveryState,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let moved = db.execute(
        &format!(
            "UPDATE sent_messages SET status = ?3, updated_ms = ?4 WHERE session = ?1 AND id = ?2 AND {RANK_OF_STATUS} < ?5"
        ),
        args![session, id, status.as_str(), now_ms as i64, rank(status)],
    )?;
    Ok(moved == 1)
}

/// Records a message WhatsApp acknowledged, inside the caller's transaction.
pub fn record_sent(db: &dyn Db, session: &str, id: &str, chat: &str, now_ms: u64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO sent_messages (session, id, chat, status, created_ms, updated_ms) VALUES (?1, ?2, ?3, 'sent', ?4, ?4)
         ON CONFLICT DO NOTHING",
        args![session, id, chat, now_ms as i64],
    )?;
    Ok(())
}

impl Store {
    /// Claims `key` for a request that will send as `message_id`; `run` names this
    /// gateway process, so a claim left by a process that died is recognised.
    pub async fn claim_idempotency_key(
        &self,
        session: &str,
        key: &str,
        message_id: &str,
        run: &str,
        now_ms: u64,
    ) -> Result<KeyClaim, StoreError> {
        let (session, key, message_id, run) =
            (session.to_string(), key.to_string(), message_id.to_string(), run.to_string());
        self.write(move |db| {
            let inserted = db.execute(
                "INSERT INTO idempotency_keys (session, key, message_id, run, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
                args![session, key, message_id, run, now_ms as i64],
            )?;
            if inserted == 1 {
                return Ok(KeyClaim::Claimed);
            }
            let row = db.query_one(
                "SELECT message_id, run FROM idempotency_keys WHERE session = ?1 AND key = ?2",
                args![session, key],
            )?;
            let (claimed_id, claimed_by): (Option<String>, Option<String>) = (row.get(0)?, row.get(1)?);
            if let Some(id) = &claimed_id {
                if let Some(message) = sent_message(db, &session, id)? {
                    return Ok(KeyClaim::Sent(message));
                }
            }
            if claimed_by.as_deref() == Some(run.as_str()) {
                if let Some(message_id) = claimed_id {
                    return Ok(KeyClaim::InProgress { message_id });
                }
            }
            // Left by a run that died mid-send: this request takes it over.
            let message_id = claimed_id.unwrap_or(message_id);
            db.execute(
                "UPDATE idempotency_keys SET message_id = ?3, run = ?4 WHERE session = ?1 AND key = ?2",
                args![session, key, message_id, run],
            )?;
            Ok(KeyClaim::Orphaned { message_id })
        })
        .await
    }

    /// Frees a key whose send failed before reaching WhatsApp, so the caller may try again.
    pub async fn release_idempotency_key(&self, session: &str, key: &str) -> Result<(), StoreError> {
        let (session, key) = (session.to_string(), key.to_string());
        self.write(move |db| {
            db.execute(
                "DELETE FROM idempotency_keys WHERE session = ?1 AND key = ?2
                 AND NOT EXISTS (SELECT 1 FROM sent_messages s WHERE s.session = ?1 AND s.id = idempotency_keys.message_id)",
                args![session, key],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets idempotency keys and sent messages created before `before_ms`, except those
    /// of messages still waiting in the outgoing queue; returns (keys, messages) deleted.
    /// A request repeated with a key older than that sends again.
    pub fn prune_sent(&self, before_ms: u64) -> Result<(usize, usize), StoreError> {
        self.write_blocking(move |db| {
            let keys = db.execute(PRUNE_KEYS, args![before_ms as i64])?;
            let messages = db.execute(PRUNE_SENT, args![before_ms as i64])?;
            Ok((keys, messages))
        })
    }

    pub fn sent_message(&self, session: &str, id: &str) -> Result<Option<SentMessage>, StoreError> {
        let (session, id) = (session.to_string(), id.to_string());
        self.read(move |db| sent_message(db, &session, &id))
    }
}

fn sent_message(db: &dyn Db, session: &str, id: &str) -> Result<Option<SentMessage>, StoreError> {
    let row = db.query_opt(
        "SELECT id, session, chat, status, created_ms, updated_ms FROM sent_messages WHERE session = ?1 AND id = ?2",
        args![session, id],
    )?;
    let row = row
        .map(|row| -> Result<(String, String, String, String, i64, i64), StoreError> {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
        })
        .transpose()?;
    row.map(|(id, session, chat, status, created, updated)| {
        let status = DeliveryState::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status '{status}'")))?;
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

const PRUNE_KEYS: &str =
    "DELETE FROM idempotency_keys WHERE created_ms < ?1 AND NOT EXISTS (SELECT 1 FROM outgoing_queue q
     WHERE q.session = idempotency_keys.session AND q.id = idempotency_keys.message_id)";
const PRUNE_SENT: &str =
    "DELETE FROM sent_messages WHERE created_ms < ?1 AND NOT EXISTS (SELECT 1 FROM outgoing_queue q
     WHERE q.session = sent_messages.session AND q.id = sent_messages.id)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_finds_old_rows_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.sqlite().expect("a SQLite store");
        for (statement, index) in [(PRUNE_KEYS, "idempotency_keys_age"), (PRUNE_SENT, "sent_messages_age")] {
            let plan: Vec<String> = db
                .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
                .unwrap()
                .query_map([0], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(plan.iter().any(|step| step.contains(index)), "{statement}: {plan:?}");
        }
    }

    #[tokio::test]
    async fn states_only_move_forward_and_keys_send_once() {
        for test in crate::store::testing::both().await {
            eprintln!("on {}", test.name);
            states_only_move_forward_and_keys_send_once_on(test.store()).await;
        }
    }

    async fn states_only_move_forward_and_keys_send_once_on(store: &Store) {
        assert_eq!(store.claim_idempotency_key("s", "k1", "m1", "run1", 1).await.unwrap(), KeyClaim::Claimed);
        assert_eq!(
            store.claim_idempotency_key("s", "k1", "m2", "run1", 2).await.unwrap(),
            KeyClaim::InProgress { message_id: "m1".into() },
            "the same run is still sending it"
        );
        assert_eq!(
            store.claim_idempotency_key("s", "k1", "m3", "run2", 2).await.unwrap(),
            KeyClaim::Orphaned { message_id: "m1".into() },
            "a later run takes over under the first id"
        );
        store.write(|db| record_sent(db, "s", "m1", "1555@s.whatsapp.net", 3)).await.unwrap();
        match store.claim_idempotency_key("s", "k1", "m4", "run2", 4).await.unwrap() {
            KeyClaim::Sent(message) => assert_eq!(message.id, "m1"),
            other => panic!("{other:?}"),
        }
        store.release_idempotency_key("s", "k1").await.unwrap();
        assert!(
            matches!(store.claim_idempotency_key("s", "k1", "m5", "run2", 5).await.unwrap(), KeyClaim::Sent(_)),
            "a key whose message went out is never released"
        );
        assert_eq!(store.claim_idempotency_key("other", "k1", "x1", "run2", 4).await.unwrap(), KeyClaim::Claimed);
        store.release_idempotency_key("other", "k1").await.unwrap();
        assert_eq!(store.claim_idempotency_key("other", "k1", "x2", "run2", 5).await.unwrap(), KeyClaim::Claimed);

        let advance = |id: &'static str, state, at| store.write(move |db| advance_status(db, "s", id, state, at));
        assert!(advance("m1", DeliveryState::Read, 5).await.unwrap());
        assert!(!advance("m1", DeliveryState::Delivered, 6).await.unwrap(), "never backwards");
        assert_eq!(store.sent_message("s", "m1").unwrap().unwrap().status, DeliveryState::Read);
        assert!(!advance("unknown", DeliveryState::Read, 7).await.unwrap());
    }
}
