//! `messages.upsert` events waiting for their file to be downloaded (for webhooks in the
//! Node service's format, which carry the file). Kept on disk from the moment the message
//! arrives until its event is in the outbox, so a crash during a download loses nothing:
//! the next run downloads again and records the event then.

use super::sql::Db;
use crate::args;

use super::{Store, StoreError};
use crate::engine::MediaRef;

/// An event waiting for its download.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingUpsert {
    pub seq: i64,
    pub data: serde_json::Value,
    pub media: Option<MediaRef>,
}

/// Keeps an event that waits for its file, inside the caller's transaction; returns its
/// place in the list.
pub fn add_pending_upsert(
    db: &dyn Db,
    session: &str,
    data: &serde_json::Value,
    media: Option<&MediaRef>,
) -> Result<i64, StoreError> {
    let media = media.map(|m| serde_json::to_string(m).expect("media references serialize"));
    db.query_one(
        "INSERT INTO pending_upserts (session, data, media) VALUES (?1, ?2, ?3) RETURNING seq",
        args![session, data.to_string(), media],
    )?
    .get(0)
}

/// Removes a waiting event (its event is in the outbox now), inside the caller's transaction.
pub fn remove_pending_upsert(db: &dyn Db, seq: i64) -> Result<(), StoreError> {
    db.execute("DELETE FROM pending_upserts WHERE seq = ?1", args![seq])?;
    Ok(())
}

impl Store {
    /// The session's waiting events, oldest first.
    pub fn pending_upserts(&self, session: &str) -> Result<Vec<PendingUpsert>, StoreError> {
        let session = session.to_string();
        let rows = self.read(move |db| {
            db.query_map(
                "SELECT seq, data, media FROM pending_upserts WHERE session = ?1 ORDER BY seq",
                args![session],
                |row| -> Result<(i64, String, Option<String>), StoreError> {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                },
            )
        })?;
        rows.into_iter()
            .map(|(seq, data, media)| {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("pending event {seq}: {e}"));
                Ok(PendingUpsert {
                    seq,
                    data: serde_json::from_str(&data).map_err(corrupt)?,
                    media: media.map(|m| serde_json::from_str(&m)).transpose().map_err(corrupt)?,
                })
            })
            .collect()
    }
}
