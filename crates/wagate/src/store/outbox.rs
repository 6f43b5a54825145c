//! The webhook outbox: every event to deliver, in order per session, with its delivery
//! state. Rows are written before any attempt and survive crashes; an attempt in flight at
//! a crash is simply made again (same event id).

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// An event waiting at the head of its session's queue.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub seq: i64,
    pub id: String,
    pub session: String,
    pub event: String,
    pub body: String,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
}

/// What operators see of one event's delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: String,
    pub session: String,
    pub event: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_ms: u64,
    pub next_attempt_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Store {
    pub fn enqueue_event(
        &self,
        id: &str,
        session: &str,
        event: &str,
        body: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO webhook_events (id, session, event, body, created_ms, next_attempt_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![id, session, event, body, now_ms as i64],
        )?;
        Ok(())
    }

    /// The oldest pending event of every session: only these may be sent now.
    pub fn queue_heads(&self) -> Result<Vec<OutboxEvent>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT seq, id, session, event, body, created_ms, attempts, next_attempt_ms FROM webhook_events
             WHERE seq IN (SELECT MIN(seq) FROM webhook_events WHERE status = 'pending' GROUP BY session)",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(OutboxEvent {
                seq: row.get(0)?,
                id: row.get(1)?,
                session: row.get(2)?,
                event: row.get(3)?,
                body: row.get(4)?,
                created_ms: to_u64(row.get(5)?),
                attempts: row.get(6)?,
                next_attempt_ms: to_u64(row.get(7)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn mark_delivered(&self, seq: i64, status: u16, now_ms: u64) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE webhook_events SET status = 'delivered', attempts = attempts + 1, last_status = ?2, last_error = NULL,
             finished_ms = ?3 WHERE seq = ?1",
            params![seq, status, now_ms as i64],
        )?;
        Ok(())
    }

    pub fn mark_retry(
        &self,
        seq: i64,
        status: Option<u16>,
        error: &str,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE webhook_events SET attempts = attempts + 1, last_status = ?2, last_error = ?3, next_attempt_ms = ?4
             WHERE seq = ?1",
            params![seq, status, error, next_attempt_ms as i64],
        )?;
        Ok(())
    }

    pub fn mark_dead(&self, seq: i64, status: Option<u16>, error: &str, now_ms: u64) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE webhook_events SET status = 'dead', attempts = attempts + 1, last_status = ?2, last_error = ?3,
             finished_ms = ?4 WHERE seq = ?1",
            params![seq, status, error, now_ms as i64],
        )?;
        Ok(())
    }

    /// Puts a dead (or pending) event back at the front of its session's queue, to be sent
    /// now. `Ok(None)` for an unknown id, `Ok(Some(status))` with the status it had.
    pub fn retry_event(&self, id: &str, now_ms: u64) -> Result<Option<DeliveryStatus>, StoreError> {
        let db = self.db();
        let status: Option<String> = db
            .query_row("SELECT status FROM webhook_events WHERE id = ?1", params![id], |row| row.get(0))
            .optional()?;
        let Some(status) = status.as_deref().and_then(DeliveryStatus::parse) else {
            return Ok(None);
        };
        if status != DeliveryStatus::Delivered {
            db.execute(
                "UPDATE webhook_events SET status = 'pending', next_attempt_ms = ?2, finished_ms = NULL WHERE id = ?1",
                params![id, now_ms as i64],
            )?;
        }
        Ok(Some(status))
    }

    pub fn deliveries(
        &self,
        session: Option<&str>,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT id, session, event, status, attempts, last_status, last_error, created_ms, next_attempt_ms, finished_ms
             FROM webhook_events WHERE (?1 IS NULL OR session = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(params![session, status.map(DeliveryStatus::as_str), limit], delivery_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT id, session, event, status, attempts, last_status, last_error, created_ms, next_attempt_ms, finished_ms
                 FROM webhook_events WHERE id = ?1",
                params![id],
                delivery_of,
            )
            .optional()?)
    }

    /// Deletes delivered events finished before `before_ms`; returns how many.
    pub fn prune_delivered(&self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self.db().execute(
            "DELETE FROM webhook_events WHERE status = 'delivered' AND finished_ms < ?1",
            params![before_ms as i64],
        )?)
    }

    /// Pending events, for the outbox-depth figure.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let count: i64 =
            self.db()
                .query_row("SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'", [], |row| row.get(0))?;
        Ok(to_u64(count))
    }
}

fn delivery_of(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let status: String = row.get(3)?;
    let pending = status == "pending";
    Ok(Delivery {
        id: row.get(0)?,
        session: row.get(1)?,
        event: row.get(2)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Dead),
        attempts: row.get(4)?,
        last_status: row.get(5)?,
        last_error: row.get(6)?,
        created_ms: to_u64(row.get(7)?),
        next_attempt_ms: if pending { Some(to_u64(row.get(8)?)) } else { None },
        finished_ms: row.get::<_, Option<i64>>(9)?.map(to_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_holds_one_head_per_session_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, session) in [("e1", "a"), ("e2", "b"), ("e3", "a"), ("e4", "b")] {
            store.enqueue_event(id, session, "connection.update", "{}", 1000).unwrap();
        }
        let heads: Vec<String> = store.queue_heads().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(heads, ["e1", "e2"]);
        let first = store.queue_heads().unwrap().into_iter().find(|e| e.id == "e1").unwrap();
        store.mark_retry(first.seq, Some(500), "server error", 5000).unwrap();
        let head = store.queue_heads().unwrap().into_iter().find(|e| e.session == "a").unwrap();
        assert_eq!(
            (head.id.as_str(), head.attempts, head.next_attempt_ms),
            ("e1", 1, 5000),
            "still first after a failure"
        );
        store.mark_dead(head.seq, Some(404), "not found", 6000).unwrap();
        let head = store.queue_heads().unwrap().into_iter().find(|e| e.session == "a").unwrap();
        assert_eq!(head.id, "e3", "a dead event no longer blocks its session");
        store.mark_delivered(head.seq, 200, 7000).unwrap();

        assert_eq!(store.retry_event("e1", 8000).unwrap(), Some(DeliveryStatus::Dead));
        let head = store.queue_heads().unwrap().into_iter().find(|e| e.session == "a").unwrap();
        assert_eq!(head.id, "e1", "a retried event is sent next");
        assert_eq!(
            store.retry_event("e3", 8000).unwrap(),
            Some(DeliveryStatus::Delivered),
            "delivered stays delivered"
        );
        assert_eq!(store.retry_event("nope", 8000).unwrap(), None);

        let dead = store.deliveries(Some("a"), Some(DeliveryStatus::Delivered), 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].last_status, Some(200));
        assert_eq!(store.prune_delivered(7001).unwrap(), 1);
        assert_eq!(store.pending_count().unwrap(), 3);
    }
}
