//! One session's device on PostgreSQL: the client library's storage traits for one device id,
//! on the process's shared pool.
//!
//! Writes of one statement run as they are (autocommit); a fenced device runs them in a
//! transaction behind its lease check. Batches are one statement (`unnest` of arrays) or one
//! transaction. A batch that names one key twice keeps the last of them, as the library's
//! row-by-row SQLite store does (PostgreSQL refuses to upsert one row twice in a statement).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::Pool;
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::error::{Result, StoreError};
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceInfo, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry,
    MsgSecretStore, PendingInboundKey, PendingInboundRow, ProtocolStore, SignalStore, TcTokenEntry,
};

use super::{Fence, PgEngineError};

/// The storage of one device, given to the client library as its backend.
#[derive(Clone)]
pub struct PgDevice {
    pool: Pool,
    session: String,
    id: i32,
    /// The device id as the tables hold it.
    device: i64,
    fence: Option<Fence>,
}

impl PgDevice {
    pub(super) fn new(pool: Pool, session: String, id: i32, fence: Option<Fence>) -> Self {
        Self { pool, session, id, device: i64::from(id), fence }
    }

    /// The id of this device in the engine tables.
    pub fn device_id(&self) -> i32 {
        self.id
    }

    /// The device's credentials as the library reads them (`None`: not created yet); an
    /// error says that this session's keys are unreadable, and only this session's.
    pub async fn credentials(&self) -> std::result::Result<Option<wacore::store::Device>, PgEngineError> {
        self.load().await.map_err(|e| PgEngineError::Unreadable { session: self.session.clone(), message: chain(&e) })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| StoreError::Connection(Box::new(e)))
    }
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(Box::new(PgEngineError::Database(e)))
}

fn serialization(e: serde_json::Error) -> StoreError {
    StoreError::Serialization(Box::new(e))
}

/// Whether this node holds the lease of the fence's session at its generation; the row stays
/// share-locked until the transaction ends, so the lease cannot move on under the write.
pub(super) async fn holds_lease(
    tx: &deadpool_postgres::Transaction<'_>,
    fence: &Fence,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let statement =
        tx.prepare_cached("SELECT 1 FROM wagate_leases WHERE session = $1 AND generation = $2 FOR SHARE").await?;
    Ok(tx.query_opt(&statement, &[&fence.session, &fence.generation]).await?.is_some())
}

async fn check_fence(tx: &deadpool_postgres::Transaction<'_>, fence: &Fence) -> Result<()> {
    if holds_lease(tx, fence).await.map_err(db)? {
        Ok(())
    } else {
        Err(StoreError::Database(Box::new(PgEngineError::LeaseLost { session: fence.session.clone() })))
    }
}

/// A write of one statement: as it is, or for a fenced device in a transaction behind the
/// lease check. `$c` is the connection or the transaction (both answer `prepare_cached`,
/// `execute`, `query`).
macro_rules! writing {
    ($self:ident, |$c:ident| $body:block) => {{
        let mut client = $self.client().await?;
        match &$self.fence {
            None => {
                let $c = &*client;
                $body
            }
            Some(fence) => {
                let tx = client.transaction().await.map_err(db)?;
                check_fence(&tx, fence).await?;
                let out = {
                    let $c = &tx;
                    $body
                };
                tx.commit().await.map_err(db)?;
                out
            }
        }
    }};
}

/// Runs one prepared (cached) statement on `$c`: `exec!(c, execute | query | query_opt | query_one, SQL, params...)`.
macro_rules! exec {
    ($c:ident, $how:ident, $sql:expr $(, $param:expr)* $(,)?) => {{
        let statement = $c.prepare_cached($sql).await.map_err(db)?;
        $c.$how(&statement, &[$($param),*]).await.map_err(db)?
    }};
}

/// The items, one per key: the last of each key, at the place of its first.
fn last_per_key<T, K: Eq + Hash>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    let mut seen: HashMap<K, usize> = HashMap::new();
    for item in items {
        match seen.get(&key(&item)) {
            Some(&at) => out[at] = item,
            None => {
                seen.insert(key(&item), out.len());
                out.push(item);
            }
        }
    }
    out
}

fn now_secs() -> i64 {
    wacore::time::now_secs()
}

/// A `LIKE` pattern matching `prefix` literally, then anything.
fn starts_with_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for ch in prefix.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}

fn bytes_of(rows: Vec<tokio_postgres::Row>) -> Option<Vec<u8>> {
    rows.into_iter().next().map(|row| row.get(0))
}

fn id_of(id: u32) -> i64 {
    i64::from(id)
}

mod app_sync;
mod credentials;
mod msg_secrets;
mod protocol;
mod signal;
