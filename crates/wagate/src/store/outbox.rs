//! The webhook outbox: every event to deliver, in order per session, with its delivery
//! state. Rows are written before any attempt and survive crashes; an attempt in flight at
//! a crash is simply made again (same event id).

use super::sql::{Db, Row};
use crate::args;
use serde::Serialize;

use super::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// An event to add to the outbox (see [`Store::insert_event`]).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub session: String,
    pub event: String,
    pub body: String,
    pub created_ms: u64,
    /// Kept back (it still waits for a detail, see [`HELD`]) and, with it, every later
    /// event of its session.
    pub held: bool,
}

/// `next_attempt_ms` of an event that is not to be sent until released (a group message
/// whose subject is being looked up). Released at the latest when the gateway starts.
pub const HELD: i64 = i64::MAX;

/// Adds an event inside the caller's transaction; returns its place in the outbox.
pub fn insert_event(db: &dyn Db, event: &NewEvent) -> Result<i64, StoreError> {
    let next = if event.held { HELD } else { event.created_ms as i64 };
    db.query_one(
        "INSERT INTO webhook_events (id, session, event, body, created_ms, next_attempt_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         RETURNING seq",
        args![event.id, event.session, event.event, event.body, event.created_ms as i64, next],
    )?
    .get(0)
}

impl Store {
    /// Adds events; resolves once they are on disk.
    pub async fn enqueue_events(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        self.write(move |db| events.iter().try_for_each(|event| insert_event(db, event).map(drop))).await
    }

    /// The session's pending events after `after_seq`, oldest first, at most `limit`.
    pub fn next_pending(&self, session: &str, after_seq: i64, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        let session = session.to_string();
        self.read(move |db| {
            db.query_map(
                "SELECT seq, id, session, event, body, created_ms, attempts, next_attempt_ms FROM webhook_events
             WHERE status = 'pending' AND session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                args![session, after_seq, limit],
                |row| {
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
                },
            )
        })
    }

    /// Every session that has events to deliver.
    pub fn sessions_with_pending(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            db.query_map("SELECT DISTINCT session FROM webhook_events WHERE status = 'pending'", args![], |row| {
                row.get(0)
            })
        })
    }

    /// Lets held events go (at start-up: whatever held them died with the last run).
    pub fn release_held(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.write_blocking(move |db| {
            db.execute(
                "UPDATE webhook_events SET next_attempt_ms = ?2 WHERE status = 'pending' AND next_attempt_ms = ?1",
                args![HELD, now_ms as i64],
            )
        })
    }

    /// Gives a held event its final body and lets it go.
    pub async fn release_event(&self, id: &str, body: String, now_ms: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |db| {
            db.execute(
                "UPDATE webhook_events SET body = ?2, next_attempt_ms = ?3 WHERE id = ?1 AND next_attempt_ms = ?4",
                args![id, body, now_ms as i64, HELD],
            )?;
            Ok(())
        })
        .await
    }

    /// Records a delivery without waiting for the disk: a crash before the commit only
    /// means the event is sent again (same id), which at-least-once allows.
    pub fn mark_delivered_soon(&self, seq: i64, status: u16, now_ms: u64) {
        let Ok(writer) = self.writer() else { return };
        writer.submit_logged(move |db| {
            db.execute(
                "UPDATE webhook_events SET status = 'delivered', attempts = attempts + 1, last_status = ?2, last_error = NULL,
                 finished_ms = ?3 WHERE seq = ?1",
                args![seq, status, now_ms as i64],
            )?;
            Ok(())
        });
    }

    /// Resolves once every write submitted before it is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(())).await
    }

    pub async fn mark_retry(
        &self,
        seq: i64,
        status: Option<u16>,
        error: &str,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        let error = error.to_string();
        self.write(move |db| {
            db.execute(
                "UPDATE webhook_events SET attempts = attempts + 1, last_status = ?2, last_error = ?3, next_attempt_ms = ?4
                 WHERE seq = ?1",
                args![seq, status, error, next_attempt_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn mark_dead(&self, seq: i64, status: Option<u16>, error: &str, now_ms: u64) -> Result<(), StoreError> {
        let error = error.to_string();
        self.write(move |db| {
            db.execute(
                "UPDATE webhook_events SET status = 'dead', attempts = attempts + 1, last_status = ?2, last_error = ?3,
                 finished_ms = ?4 WHERE seq = ?1",
                args![seq, status, error, now_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Puts a dead (or pending) event back at the front of its session's queue, to be sent
    /// now. `Ok(None)` for an unknown id, `Ok(Some((status, session)))` with the status it had.
    pub async fn retry_event(&self, id: &str, now_ms: u64) -> Result<Option<(DeliveryStatus, String)>, StoreError> {
        let id = id.to_string();
        self.write(move |db| {
            let Some(row) = db.query_opt("SELECT status, session FROM webhook_events WHERE id = ?1", args![id])? else {
                return Ok(None);
            };
            let (status, session): (String, String) = (row.get(0)?, row.get(1)?);
            let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Dead);
            if status != DeliveryStatus::Delivered {
                db.execute(
                    "UPDATE webhook_events SET status = 'pending', next_attempt_ms = ?2, finished_ms = NULL WHERE id = ?1",
                    args![id, now_ms as i64],
                )?;
            }
            Ok(Some((status, session)))
        })
        .await
    }

    pub fn deliveries(
        &self,
        session: Option<&str>,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let session = session.map(str::to_string);
        self.read(move |db| {
            db.query_map(
                "SELECT id, session, event, status, attempts, last_status, last_error, created_ms, next_attempt_ms, finished_ms
             FROM webhook_events WHERE (CAST(?1 AS TEXT) IS NULL OR session = ?1) AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
             ORDER BY seq DESC LIMIT ?3",
                args![session, status.map(DeliveryStatus::as_str), limit],
                delivery_of,
            )
        })
    }

    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let id = id.to_string();
        self.read(move |db| {
            db.query_opt(
                "SELECT id, session, event, status, attempts, last_status, last_error, created_ms, next_attempt_ms, finished_ms
                 FROM webhook_events WHERE id = ?1",
                args![id],
            )?
            .as_ref()
            .map(delivery_of)
            .transpose()
        })
    }

    /// Deletes delivered events finished before `before_ms`; returns how many.
    pub fn prune_delivered(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.write_blocking(move |db| {
            db.execute(
                "DELETE FROM webhook_events WHERE status = 'delivered' AND finished_ms < ?1",
                args![before_ms as i64],
            )
        })
    }

    /// Deletes dead events (given up on) finished before `before_ms`; returns how many.
    /// Pending events are never pruned.
    pub fn prune_dead(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.write_blocking(move |db| {
            db.execute("DELETE FROM webhook_events WHERE status = 'dead' AND finished_ms < ?1", args![before_ms as i64])
        })
    }

    /// Pending events, for the outbox-depth figure.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .read(|db| db.query_one("SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'", args![])?.get(0))?;
        Ok(to_u64(count))
    }
}

fn delivery_of(row: &Row) -> Result<Delivery, StoreError> {
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
        finished_ms: row.get::<Option<i64>>(9)?.map(to_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, session: &str, held: bool) -> NewEvent {
        NewEvent {
            id: id.into(),
            session: session.into(),
            event: "connection.update".into(),
            body: "{}".into(),
            created_ms: 1000,
            held,
        }
    }

    #[tokio::test]
    async fn each_session_reads_its_own_queue_in_order() {
        for test in crate::store::testing::both().await {
            eprintln!("on {}", test.name);
            each_session_reads_its_own_queue_in_order_on(test.store()).await;
        }
    }

    async fn each_session_reads_its_own_queue_in_order_on(store: &Store) {
        let events = [("e1", "a"), ("e2", "b"), ("e3", "a"), ("e4", "b")].map(|(id, s)| event(id, s, false));
        store.enqueue_events(events.to_vec()).await.unwrap();
        let mut sessions = store.sessions_with_pending().unwrap();
        sessions.sort();
        assert_eq!(sessions, ["a", "b"]);
        let a: Vec<_> = store.next_pending("a", 0, 10).unwrap();
        assert_eq!(a.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e1", "e3"]);
        assert_eq!(store.next_pending("a", a[0].seq, 10).unwrap()[0].id, "e3", "after the cursor");

        store.mark_retry(a[0].seq, Some(500), "server error", 5000).await.unwrap();
        let head = &store.next_pending("a", 0, 1).unwrap()[0];
        assert_eq!((head.id.as_str(), head.attempts, head.next_attempt_ms), ("e1", 1, 5000), "still first");
        store.mark_dead(head.seq, Some(404), "not found", 6000).await.unwrap();
        let head = &store.next_pending("a", 0, 1).unwrap()[0];
        assert_eq!(head.id, "e3", "a dead event no longer blocks its session");
        store.mark_delivered_soon(head.seq, 200, 7000);
        store.flush().await.unwrap();
        assert!(store.next_pending("a", 0, 10).unwrap().is_empty());

        assert_eq!(store.retry_event("e1", 8000).await.unwrap(), Some((DeliveryStatus::Dead, "a".into())));
        assert_eq!(store.next_pending("a", 0, 1).unwrap()[0].id, "e1", "a retried event is sent next");
        let delivered = store.retry_event("e3", 8000).await.unwrap();
        assert_eq!(delivered, Some((DeliveryStatus::Delivered, "a".into())), "delivered stays delivered");
        assert_eq!(store.retry_event("nope", 8000).await.unwrap(), None);

        let done = store.deliveries(Some("a"), Some(DeliveryStatus::Delivered), 10).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].last_status, Some(200));
        assert_eq!(store.prune_delivered(7001).unwrap(), 1);
        assert_eq!(store.pending_count().unwrap(), 3);
    }

    #[tokio::test]
    async fn a_held_event_waits_until_released_with_its_final_body() {
        for test in crate::store::testing::both().await {
            a_held_event_waits_until_released_with_its_final_body_on(test.store()).await;
        }
    }

    async fn a_held_event_waits_until_released_with_its_final_body_on(store: &Store) {
        store.enqueue_events(vec![event("h1", "g", true), event("h2", "g", false)]).await.unwrap();
        assert_eq!(store.next_pending("g", 0, 1).unwrap()[0].next_attempt_ms, HELD as u64);
        store.release_event("h1", "{\"subject\":\"Team\"}".into(), 2000).await.unwrap();
        let head = &store.next_pending("g", 0, 1).unwrap()[0];
        assert_eq!((head.body.as_str(), head.next_attempt_ms), ("{\"subject\":\"Team\"}", 2000));
        store.enqueue_events(vec![event("h3", "g", true)]).await.unwrap();
        assert_eq!(store.release_held(3000).unwrap(), 1, "start-up lets every held event go");
    }
}
