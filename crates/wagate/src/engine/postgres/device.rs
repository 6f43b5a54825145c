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

#[async_trait]
impl SignalStore for PgDevice {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_identities (device, address, key) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, address) DO UPDATE SET key = EXCLUDED.key",
                &self.device,
                &address,
                &&key[..]
            );
        });
        Ok(())
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        if identities.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(identities.iter(), |(address, _)| address.clone());
        let addresses: Vec<&str> = rows.iter().map(|(a, _)| a.as_ref()).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|(_, k)| &k[..]).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_identities (device, address, key) \
                 SELECT $1::int8, * FROM unnest($2::text[], $3::bytea[]) \
                 ON CONFLICT (device, address) DO UPDATE SET key = EXCLUDED.key",
                &self.device,
                &addresses,
                &keys
            );
        });
        Ok(())
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT key FROM wagate_engine_identities WHERE device = $1 AND address = $2",
            &self.device,
            &address
        ));
        match found {
            None => Ok(None),
            Some(key) => key.try_into().map(Some).map_err(|key: Vec<u8>| {
                StoreError::Validation(format!(
                    "identity key for '{address}' has invalid length {} (expected 32)",
                    key.len()
                ))
            }),
        }
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_identities WHERE device = $1 AND address = $2",
                &self.device,
                &address
            );
        });
        Ok(())
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT record FROM wagate_engine_sessions WHERE device = $1 AND address = $2",
            &self.device,
            &address
        ));
        Ok(found.map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sessions (device, address, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, address) DO UPDATE SET record = EXCLUDED.record",
                &self.device,
                &address,
                &session
            );
        });
        Ok(())
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(sessions.iter(), |(address, _)| address.clone());
        let addresses: Vec<&str> = rows.iter().map(|(a, _)| a.as_ref()).collect();
        let records: Vec<&[u8]> = rows.iter().map(|(_, r)| r.as_ref()).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sessions (device, address, record) \
                 SELECT $1::int8, * FROM unnest($2::text[], $3::bytea[]) \
                 ON CONFLICT (device, address) DO UPDATE SET record = EXCLUDED.record",
                &self.device,
                &addresses,
                &records
            );
        });
        Ok(())
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sessions WHERE device = $1 AND address = $2",
                &self.device,
                &address
            );
        });
        Ok(())
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        let c = self.client().await?;
        let row = exec!(
            c,
            query_one,
            "SELECT EXISTS (SELECT 1 FROM wagate_engine_sessions WHERE device = $1 AND address = $2)",
            &self.device,
            &address
        );
        Ok(row.get(0))
    }

    /// A session or an identity of `user`: addresses `user@server` (device 0) or
    /// `user:device@server`.
    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        let (at, colon) = (starts_with_pattern(&format!("{user}@")), starts_with_pattern(&format!("{user}:")));
        let c = self.client().await?;
        let row = exec!(
            c,
            query_one,
            "SELECT EXISTS (SELECT 1 FROM wagate_engine_sessions WHERE device = $1 AND (address LIKE $2 OR address LIKE $3)) \
             OR EXISTS (SELECT 1 FROM wagate_engine_identities WHERE device = $1 AND (address LIKE $2 OR address LIKE $3))",
            &self.device,
            &at,
            &colon
        );
        Ok(row.get(0))
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_prekeys (device, id, record, uploaded) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device, id) DO UPDATE SET record = EXCLUDED.record, uploaded = EXCLUDED.uploaded",
                &self.device,
                &id_of(id),
                &record,
                &uploaded
            );
        });
        Ok(())
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(keys.iter(), |(id, _)| *id);
        let ids: Vec<i64> = rows.iter().map(|(id, _)| id_of(*id)).collect();
        let records: Vec<&[u8]> = rows.iter().map(|(_, r)| r.as_ref()).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_prekeys (device, id, record, uploaded) \
                 SELECT $1::int8, k.id, k.record, $4::bool FROM unnest($2::int8[], $3::bytea[]) AS k (id, record) \
                 ON CONFLICT (device, id) DO UPDATE SET record = EXCLUDED.record, uploaded = EXCLUDED.uploaded",
                &self.device,
                &ids,
                &records,
                &uploaded
            );
        });
        Ok(())
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT record FROM wagate_engine_prekeys WHERE device = $1 AND id = $2",
            &self.device,
            &id_of(id)
        ));
        Ok(found.map(Bytes::from))
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().copied().map(id_of).collect();
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT id, record FROM wagate_engine_prekeys WHERE device = $1 AND id = ANY($2)",
            &self.device,
            &ids
        );
        Ok(rows.iter().map(|row| (row.get::<_, i64>(0) as u32, Bytes::from(row.get::<_, Vec<u8>>(1)))).collect())
    }

    /// An update only: a key consumed since the upload snapshot stays deleted.
    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ids.iter().copied().map(id_of).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "UPDATE wagate_engine_prekeys SET uploaded = true WHERE device = $1 AND id = ANY($2)",
                &self.device,
                &ids
            );
        });
        Ok(())
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_prekeys WHERE device = $1 AND id = $2",
                &self.device,
                &id_of(id)
            );
        });
        Ok(())
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        let c = self.client().await?;
        let row = exec!(c, query_one, "SELECT max(id) FROM wagate_engine_prekeys WHERE device = $1", &self.device);
        Ok(row.get::<_, Option<i64>>(0).unwrap_or(0) as u32)
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_signed_prekeys (device, id, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, id) DO UPDATE SET record = EXCLUDED.record",
                &self.device,
                &id_of(id),
                &record
            );
        });
        Ok(())
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT record FROM wagate_engine_signed_prekeys WHERE device = $1 AND id = $2",
            &self.device,
            &id_of(id)
        )))
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT id, record FROM wagate_engine_signed_prekeys WHERE device = $1 ORDER BY id",
            &self.device
        );
        Ok(rows.iter().map(|row| (row.get::<_, i64>(0) as u32, row.get(1))).collect())
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_signed_prekeys WHERE device = $1 AND id = $2",
                &self.device,
                &id_of(id)
            );
        });
        Ok(())
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sender_keys (device, address, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, address) DO UPDATE SET record = EXCLUDED.record",
                &self.device,
                &address,
                &record
            );
        });
        Ok(())
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        if sender_keys.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(sender_keys.iter(), |(address, _)| address.clone());
        let addresses: Vec<&str> = rows.iter().map(|(a, _)| a.as_ref()).collect();
        let records: Vec<&[u8]> = rows.iter().map(|(_, r)| r.as_ref()).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sender_keys (device, address, record) \
                 SELECT $1::int8, * FROM unnest($2::text[], $3::bytea[]) \
                 ON CONFLICT (device, address) DO UPDATE SET record = EXCLUDED.record",
                &self.device,
                &addresses,
                &records
            );
        });
        Ok(())
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT record FROM wagate_engine_sender_keys WHERE device = $1 AND address = $2",
            &self.device,
            &address
        )))
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sender_keys WHERE device = $1 AND address = $2",
                &self.device,
                &address
            );
        });
        Ok(())
    }
}

#[async_trait]
impl AppSyncStore for PgDevice {
    /// A key whose row does not decode reads as absent (the library then asks for it again
    /// and the next set overwrites it), as in the library's store.
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT data FROM wagate_engine_app_state_keys WHERE device = $1 AND key_id = $2",
            &self.device,
            &key_id
        ));
        Ok(found.and_then(|data| match serde_json::from_slice(&data) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(session = %self.session, "an app-state sync key does not decode ({e}); treated as absent");
                None
            }
        }))
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        let data = serde_json::to_vec(&key).map_err(serialization)?;
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_app_state_keys (device, key_id, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, key_id) DO UPDATE SET data = EXCLUDED.data",
                &self.device,
                &key_id,
                &data
            );
        });
        Ok(())
    }

    /// A collection without a version, or whose row does not decode, is at the default (it
    /// then syncs again from version 0), as in the library's store.
    async fn get_version(&self, name: &str) -> Result<HashState> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT state FROM wagate_engine_app_state_versions WHERE device = $1 AND name = $2",
            &self.device,
            &name
        ));
        Ok(match found.map(|data| serde_json::from_slice(&data)) {
            Some(Ok(state)) => state,
            Some(Err(e)) => {
                tracing::warn!(session = %self.session, "app-state version of {name} does not decode ({e}); syncing it again from 0");
                HashState::default()
            }
            None => HashState::default(),
        })
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        let data = serde_json::to_vec(&state).map_err(serialization)?;
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_app_state_versions (device, name, state) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, name) DO UPDATE SET state = EXCLUDED.state",
                &self.device,
                &name,
                &data
            );
        });
        Ok(())
    }

    async fn put_mutation_macs(&self, name: &str, version: u64, mutations: &[AppStateMutationMAC]) -> Result<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(mutations.iter(), |m| m.index_mac.clone());
        let index_macs: Vec<&[u8]> = rows.iter().map(|m| m.index_mac.as_slice()).collect();
        let value_macs: Vec<&[u8]> = rows.iter().map(|m| m.value_mac.as_slice()).collect();
        let version = version as i64;
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_app_state_mutation_macs (device, name, index_mac, version, value_mac) \
                 SELECT $1::int8, $2::text, m.index_mac, $3::int8, m.value_mac FROM unnest($4::bytea[], $5::bytea[]) AS m (index_mac, value_mac) \
                 ON CONFLICT (device, name, index_mac) DO UPDATE SET version = EXCLUDED.version, value_mac = EXCLUDED.value_mac",
                &self.device,
                &name,
                &version,
                &index_macs,
                &value_macs
            );
        });
        Ok(())
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT value_mac FROM wagate_engine_app_state_mutation_macs WHERE device = $1 AND name = $2 AND index_mac = $3",
            &self.device,
            &name,
            &index_mac
        )))
    }

    /// One query for all of them; only the index MACs found are in the map.
    async fn get_mutation_macs(&self, name: &str, index_macs: &[[u8; 32]]) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        if index_macs.is_empty() {
            return Ok(HashMap::new());
        }
        let wanted: Vec<&[u8]> = index_macs.iter().map(|m| &m[..]).collect();
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT index_mac, value_mac FROM wagate_engine_app_state_mutation_macs \
             WHERE device = $1 AND name = $2 AND index_mac = ANY($3)",
            &self.device,
            &name,
            &wanted
        );
        Ok(rows
            .iter()
            .filter_map(|row| {
                let index: Vec<u8> = row.get(0);
                <[u8; 32]>::try_from(index.as_slice()).ok().map(|index| (index, row.get(1)))
            })
            .collect())
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        if index_macs.is_empty() {
            return Ok(());
        }
        let index_macs: Vec<&[u8]> = index_macs.iter().map(Vec::as_slice).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_app_state_mutation_macs WHERE device = $1 AND name = $2 AND index_mac = ANY($3)",
                &self.device,
                &name,
                &index_macs
            );
        });
        Ok(())
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_app_state_mutation_macs WHERE device = $1 AND name = $2",
                &self.device,
                &name
            );
        });
        Ok(())
    }

    /// The greatest key id (byte order) whose key decodes, as in the library's store.
    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT key_id, data FROM wagate_engine_app_state_keys WHERE device = $1 ORDER BY key_id DESC",
            &self.device
        );
        Ok(rows.iter().find_map(|row| {
            let data: &[u8] = row.get(1);
            serde_json::from_slice::<AppStateSyncKey>(data).ok().map(|_| row.get(0))
        }))
    }
}

fn lid_entry(row: &tokio_postgres::Row) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: row.get(0),
        phone_number: row.get(1),
        created_at: row.get(2),
        updated_at: row.get(3),
        learning_source: row.get(4),
    }
}

/// A device list row's values, serialised.
struct ListRow {
    user: String,
    devices_json: String,
    timestamp: i64,
    phash: Option<String>,
    raw_id: Option<i64>,
}

impl ListRow {
    fn of(record: DeviceListRecord) -> Result<Self> {
        Ok(Self {
            devices_json: serde_json::to_string(&record.devices).map_err(serialization)?,
            user: record.user,
            timestamp: record.timestamp,
            phash: record.phash,
            raw_id: record.raw_id.map(i64::from),
        })
    }
}

const PUT_LID_MAPPINGS: &str = "INSERT INTO wagate_engine_lid_pn_mapping \
     (device, lid, phone_number, created_at, updated_at, learning_source) \
     SELECT $1::int8, * FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[]) \
     ON CONFLICT (device, lid) DO UPDATE SET phone_number = EXCLUDED.phone_number, \
     updated_at = EXCLUDED.updated_at, learning_source = EXCLUDED.learning_source";

const PUT_DEVICE_LISTS: &str = "INSERT INTO wagate_engine_device_lists \
     (device, user_id, devices_json, list_ts, phash, raw_id, updated_at) \
     SELECT $1::int8, l.*, $7::int8 FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[]) AS l \
     ON CONFLICT (device, user_id) DO UPDATE SET devices_json = EXCLUDED.devices_json, list_ts = EXCLUDED.list_ts, \
     phash = EXCLUDED.phash, raw_id = EXCLUDED.raw_id, updated_at = EXCLUDED.updated_at";

const PUT_PENDING_INBOUND: &str = "INSERT INTO wagate_engine_pending_inbound (device, chat, sender, id, message, inserted_at) \
     SELECT $1::int8, p.*, $6::int8 FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[]) AS p \
     ON CONFLICT (device, chat, sender, id) DO UPDATE SET message = EXCLUDED.message, inserted_at = EXCLUDED.inserted_at";

const DELETE_PENDING_INBOUND: &str = "DELETE FROM wagate_engine_pending_inbound \
     WHERE device = $1 AND (chat, sender, id) IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))";

impl PgDevice {
    async fn put_lid_mapping_rows(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(entries.iter(), |e| e.lid.clone());
        let lids: Vec<&str> = rows.iter().map(|e| e.lid.as_str()).collect();
        let phones: Vec<&str> = rows.iter().map(|e| e.phone_number.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|e| e.created_at).collect();
        let updated: Vec<i64> = rows.iter().map(|e| e.updated_at).collect();
        let sources: Vec<&str> = rows.iter().map(|e| e.learning_source.as_str()).collect();
        writing!(self, |c| {
            exec!(c, execute, PUT_LID_MAPPINGS, &self.device, &lids, &phones, &created, &updated, &sources);
        });
        Ok(())
    }

    async fn put_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(records.into_iter().map(ListRow::of).collect::<Result<Vec<_>>>()?, |r| r.user.clone());
        let users: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
        let lists: Vec<&str> = rows.iter().map(|r| r.devices_json.as_str()).collect();
        let stamps: Vec<i64> = rows.iter().map(|r| r.timestamp).collect();
        let hashes: Vec<Option<&str>> = rows.iter().map(|r| r.phash.as_deref()).collect();
        let raw_ids: Vec<Option<i64>> = rows.iter().map(|r| r.raw_id).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(c, execute, PUT_DEVICE_LISTS, &self.device, &users, &lists, &stamps, &hashes, &raw_ids, &now);
        });
        Ok(())
    }

    async fn put_pending_inbound(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(rows.iter(), |r| (r.chat, r.sender, r.id));
        let chats: Vec<&str> = rows.iter().map(|r| r.chat).collect();
        let senders: Vec<&str> = rows.iter().map(|r| r.sender).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
        let messages: Vec<&[u8]> = rows.iter().map(|r| r.message).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(c, execute, PUT_PENDING_INBOUND, &self.device, &chats, &senders, &ids, &messages, &now);
        });
        Ok(())
    }
}

#[async_trait]
impl ProtocolStore for PgDevice {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT device_jid, has_key FROM wagate_engine_sender_key_devices WHERE device = $1 AND group_jid = $2 \
             ORDER BY device_jid",
            &self.device,
            &group_jid
        );
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(entries.iter(), |(jid, _)| *jid);
        let jids: Vec<&str> = rows.iter().map(|(jid, _)| *jid).collect();
        let has_keys: Vec<bool> = rows.iter().map(|(_, has)| *has).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sender_key_devices (device, group_jid, device_jid, has_key, updated_at) \
                 SELECT $1::int8, $2::text, s.jid, s.has_key, $5::int8 FROM unnest($3::text[], $4::bool[]) AS s (jid, has_key) \
                 ON CONFLICT (device, group_jid, device_jid) DO UPDATE SET has_key = EXCLUDED.has_key, updated_at = EXCLUDED.updated_at",
                &self.device,
                &group_jid,
                &jids,
                &has_keys,
                &now
            );
        });
        Ok(())
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sender_key_devices WHERE device = $1 AND group_jid = $2",
                &self.device,
                &group_jid
            );
        });
        Ok(())
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sender_key_devices WHERE device = $1 AND device_jid = ANY($2)",
                &self.device,
                &device_jids
            );
        });
        Ok(())
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        writing!(self, |c| {
            exec!(c, execute, "DELETE FROM wagate_engine_sender_key_devices WHERE device = $1", &self.device);
        });
        Ok(())
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT lid, phone_number, created_at, updated_at, learning_source FROM wagate_engine_lid_pn_mapping \
             WHERE device = $1 AND lid = $2",
            &self.device,
            &lid
        );
        Ok(rows.first().map(lid_entry))
    }

    /// The most recently updated mapping of the phone number.
    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT lid, phone_number, created_at, updated_at, learning_source FROM wagate_engine_lid_pn_mapping \
             WHERE device = $1 AND phone_number = $2 ORDER BY updated_at DESC LIMIT 1",
            &self.device,
            &phone
        );
        Ok(rows.first().map(lid_entry))
    }

    /// An upsert that keeps the first `created_at`.
    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        self.put_lid_mapping_rows(std::slice::from_ref(entry)).await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        self.put_lid_mapping_rows(entries).await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT lid, phone_number, created_at, updated_at, learning_source FROM wagate_engine_lid_pn_mapping \
             WHERE device = $1 ORDER BY lid",
            &self.device
        );
        Ok(rows.iter().map(lid_entry).collect())
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_base_keys (device, address, message_id, base_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device, address, message_id) DO UPDATE SET base_key = EXCLUDED.base_key",
                &self.device,
                &address,
                &message_id,
                &base_key,
                &now
            );
        });
        Ok(())
    }

    async fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool> {
        let c = self.client().await?;
        let stored = bytes_of(exec!(
            c,
            query,
            "SELECT base_key FROM wagate_engine_base_keys WHERE device = $1 AND address = $2 AND message_id = $3",
            &self.device,
            &address,
            &message_id
        ));
        Ok(stored.as_deref() == Some(current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_base_keys WHERE device = $1 AND address = $2 AND message_id = $3",
                &self.device,
                &address,
                &message_id
            );
        });
        Ok(())
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.put_device_lists(vec![record]).await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        self.put_device_lists(records).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT user_id, devices_json, list_ts, phash, raw_id FROM wagate_engine_device_lists \
             WHERE device = $1 AND user_id = $2",
            &self.device,
            &user
        );
        let Some(row) = rows.first() else { return Ok(None) };
        let devices: Vec<DeviceInfo> = serde_json::from_str(row.get(1)).map_err(serialization)?;
        Ok(Some(DeviceListRecord {
            user: row.get(0),
            devices,
            timestamp: row.get(2),
            phash: row.get(3),
            raw_id: row.get::<_, Option<i64>>(4).map(|id| id as u32),
        }))
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_device_lists WHERE device = $1 AND user_id = $2",
                &self.device,
                &user
            );
        });
        Ok(())
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT info FROM wagate_engine_group_metadata WHERE device = $1 AND group_jid = $2",
            &self.device,
            &group_jid
        )))
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_group_metadata (device, group_jid, info, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device, group_jid) DO UPDATE SET info = EXCLUDED.info, updated_at = EXCLUDED.updated_at",
                &self.device,
                &group_jid,
                &blob,
                &now
            );
        });
        Ok(())
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_group_metadata WHERE device = $1 AND group_jid = $2",
                &self.device,
                &group_jid
            );
        });
        Ok(())
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT token, token_timestamp, sender_timestamp FROM wagate_engine_tc_tokens WHERE device = $1 AND jid = $2",
            &self.device,
            &jid
        );
        Ok(rows.first().map(|row| TcTokenEntry {
            token: row.get(0),
            token_timestamp: row.get(1),
            sender_timestamp: row.get(2),
        }))
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_tc_tokens (device, jid, token, token_timestamp, sender_timestamp, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (device, jid) DO UPDATE SET token = EXCLUDED.token, token_timestamp = EXCLUDED.token_timestamp, \
                 sender_timestamp = EXCLUDED.sender_timestamp, updated_at = EXCLUDED.updated_at",
                &self.device,
                &jid,
                &entry.token,
                &entry.token_timestamp,
                &entry.sender_timestamp,
                &now
            );
        });
        Ok(())
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(c, execute, "DELETE FROM wagate_engine_tc_tokens WHERE device = $1 AND jid = $2", &self.device, &jid);
        });
        Ok(())
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows =
            exec!(c, query, "SELECT jid FROM wagate_engine_tc_tokens WHERE device = $1 ORDER BY jid", &self.device);
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Removes a row only when its received token is expired or absent (empty) and its
    /// sender bucket is expired or absent (NULL).
    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_tc_tokens WHERE device = $1 \
                 AND (length(token) = 0 OR token_timestamp < $2) \
                 AND (sender_timestamp IS NULL OR sender_timestamp < $3)",
                &self.device,
                &token_cutoff,
                &sender_cutoff
            )
        });
        Ok(deleted as u32)
    }

    /// One atomic upsert: the sender bucket only moves forward, the token bytes are kept.
    async fn touch_tc_token_sender_timestamp(&self, jid: &str, sender_timestamp: i64) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_tc_tokens (device, jid, token, token_timestamp, sender_timestamp, updated_at) \
                 VALUES ($1, $2, '\\x'::bytea, $3, $3, $4) \
                 ON CONFLICT (device, jid) DO UPDATE SET \
                 sender_timestamp = GREATEST(COALESCE(wagate_engine_tc_tokens.sender_timestamp, EXCLUDED.sender_timestamp), EXCLUDED.sender_timestamp), \
                 updated_at = EXCLUDED.updated_at",
                &self.device,
                &jid,
                &sender_timestamp,
                &now
            );
        });
        Ok(())
    }

    /// One atomic upsert, newer wins: the stored token is replaced only when it is a
    /// placeholder (empty) or not newer than this one; the sender bucket is kept.
    async fn store_received_tc_token(&self, jid: &str, token: &[u8], token_timestamp: i64) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_tc_tokens (device, jid, token, token_timestamp, sender_timestamp, updated_at) \
                 VALUES ($1, $2, $3, $4, NULL, $5) \
                 ON CONFLICT (device, jid) DO UPDATE SET token = EXCLUDED.token, \
                 token_timestamp = EXCLUDED.token_timestamp, updated_at = EXCLUDED.updated_at \
                 WHERE length(wagate_engine_tc_tokens.token) = 0 \
                 OR EXCLUDED.token_timestamp >= wagate_engine_tc_tokens.token_timestamp",
                &self.device,
                &jid,
                &token,
                &token_timestamp,
                &now
            );
        });
        Ok(())
    }

    /// Replaces a message of the same id (and its time).
    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sent_messages (device, chat_jid, message_id, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device, chat_jid, message_id) DO UPDATE SET payload = EXCLUDED.payload, created_at = EXCLUDED.created_at",
                &self.device,
                &chat_jid,
                &message_id,
                &payload,
                &now
            );
        });
        Ok(())
    }

    /// Read and delete in one statement: two takes of one message get it once.
    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let rows = writing!(self, |c| {
            exec!(
                c,
                query,
                "DELETE FROM wagate_engine_sent_messages WHERE device = $1 AND chat_jid = $2 AND message_id = $3 \
                 RETURNING payload",
                &self.device,
                &chat_jid,
                &message_id
            )
        });
        Ok(bytes_of(rows))
    }

    /// Deletes the messages stored before `cutoff_timestamp` (unix seconds).
    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sent_messages WHERE device = $1 AND created_at < $2",
                &self.device,
                &cutoff_timestamp
            )
        });
        Ok(deleted as u32)
    }

    /// Replaces a message of the same key (and its time).
    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        self.put_pending_inbound(&[PendingInboundRow { chat, sender, id, message }]).await
    }

    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT message FROM wagate_engine_pending_inbound WHERE device = $1 AND chat = $2 AND sender = $3 AND id = $4",
            &self.device,
            &chat,
            &sender,
            &id
        )))
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete_pending_inbound_batch(&[PendingInboundKey { chat, sender, id }]).await
    }

    /// Deletes the messages stored before `cutoff_timestamp` (unix seconds).
    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_pending_inbound WHERE device = $1 AND inserted_at < $2",
                &self.device,
                &cutoff_timestamp
            )
        });
        Ok(deleted as u32)
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        self.put_pending_inbound(rows).await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let chats: Vec<&str> = keys.iter().map(|k| k.chat).collect();
        let senders: Vec<&str> = keys.iter().map(|k| k.sender).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.id).collect();
        writing!(self, |c| {
            exec!(c, execute, DELETE_PENDING_INBOUND, &self.device, &chats, &senders, &ids);
        });
        Ok(())
    }
}

#[async_trait]
impl MsgSecretStore for PgDevice {
    /// One upsert for the batch. On a key already stored: the new secret, the later deadline
    /// (0, never, wins), the later parent time. Returns the number of entries, as the
    /// library's store does.
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        let count = entries.len();
        // One row per key, merged as the upsert would merge them one after the other.
        let mut merged: Vec<MsgSecretEntry> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<(Arc<str>, Arc<str>, Arc<str>), usize> = HashMap::new();
        for entry in entries {
            let key = (entry.chat.clone(), entry.sender.clone(), entry.msg_id.clone());
            match seen.get(&key) {
                Some(&at) => {
                    let old = &mut merged[at];
                    old.secret = entry.secret;
                    old.expires_at = wacore::store::traits::merge_msg_secret_expiry(old.expires_at, entry.expires_at);
                    old.message_ts =
                        wacore::store::traits::merge_msg_secret_message_ts(old.message_ts, entry.message_ts);
                }
                None => {
                    seen.insert(key, merged.len());
                    merged.push(entry);
                }
            }
        }
        let chats: Vec<&str> = merged.iter().map(|e| e.chat.as_ref()).collect();
        let senders: Vec<&str> = merged.iter().map(|e| e.sender.as_ref()).collect();
        let ids: Vec<&str> = merged.iter().map(|e| e.msg_id.as_ref()).collect();
        let secrets: Vec<&[u8]> = merged.iter().map(|e| &e.secret[..]).collect();
        let expiries: Vec<i64> = merged.iter().map(|e| e.expires_at).collect();
        let stamps: Vec<i64> = merged.iter().map(|e| e.message_ts).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_msg_secrets (device, chat, sender, msg_id, secret, created_at, expires_at, message_ts) \
                 SELECT $1::int8, s.chat, s.sender, s.msg_id, s.secret, $8::int8, s.expires_at, s.message_ts \
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[], $7::int8[]) \
                 AS s (chat, sender, msg_id, secret, expires_at, message_ts) \
                 ON CONFLICT (device, chat, sender, msg_id) DO UPDATE SET secret = EXCLUDED.secret, \
                 created_at = EXCLUDED.created_at, \
                 expires_at = CASE WHEN wagate_engine_msg_secrets.expires_at = 0 OR EXCLUDED.expires_at = 0 THEN 0 \
                 ELSE GREATEST(wagate_engine_msg_secrets.expires_at, EXCLUDED.expires_at) END, \
                 message_ts = GREATEST(wagate_engine_msg_secrets.message_ts, EXCLUDED.message_ts)",
                &self.device,
                &chats,
                &senders,
                &ids,
                &secrets,
                &expiries,
                &stamps,
                &now
            );
        });
        Ok(count)
    }

    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_msg_secret_with_ts(chat, sender, msg_id).await?.map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT secret, message_ts FROM wagate_engine_msg_secrets \
             WHERE device = $1 AND chat = $2 AND sender = $3 AND msg_id = $4",
            &self.device,
            &chat,
            &sender,
            &msg_id
        );
        Ok(rows.first().map(|row| (row.get(0), row.get(1))))
    }

    /// Deletes the rows whose deadline is set (not 0) and at or before the cut-off.
    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_msg_secrets WHERE device = $1 AND expires_at <> 0 AND expires_at <= $2",
                &self.device,
                &cutoff_timestamp
            )
        });
        Ok(deleted as u32)
    }
}

impl PgDevice {
    async fn save_now(&self, device: &wacore::store::Device) -> Result<()> {
        let data = serde_json::to_vec(device).map_err(serialization)?;
        let pn = device.pn.as_ref().map(|pn| pn.to_string());
        let now = chrono::Utc::now().timestamp_millis();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_credentials (device, pn, data, updated_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device) DO UPDATE SET pn = EXCLUDED.pn, data = EXCLUDED.data, updated_ms = EXCLUDED.updated_ms",
                &self.device,
                &pn,
                &data,
                &now
            );
        });
        Ok(())
    }
}

#[async_trait]
impl DeviceStore for PgDevice {
    /// Runs to its end in a task of its own, even when the caller is dropped: the library
    /// clears its "credentials changed" flag before it calls this and drops the call when
    /// the client is torn down, as it is by the 515 right after a pairing (see `shards`).
    async fn save(&self, device: &wacore::store::Device) -> Result<()> {
        let (this, device) = (self.clone(), device.clone());
        let saving = tokio::spawn(async move { this.save_now(&device).await });
        saving.await.map_err(|e| StoreError::Database(Box::new(e)))?
    }

    async fn load(&self) -> Result<Option<wacore::store::Device>> {
        let c = self.client().await?;
        let found =
            bytes_of(exec!(c, query, "SELECT data FROM wagate_engine_credentials WHERE device = $1", &self.device));
        found.map(|data| serde_json::from_slice(&data).map_err(serialization)).transpose()
    }

    async fn exists(&self) -> Result<bool> {
        let c = self.client().await?;
        let row = exec!(
            c,
            query_one,
            "SELECT EXISTS (SELECT 1 FROM wagate_engine_credentials WHERE device = $1)",
            &self.device
        );
        Ok(row.get(0))
    }

    /// Writes new credentials (the library's `Device::new()`) for this device and returns its
    /// id. Fails, changing nothing, when the device already has credentials.
    async fn create(&self) -> Result<i32> {
        self.save_new(&wacore::store::Device::new()).await?;
        Ok(self.id)
    }

    /// The library's debugging snapshot copies a database file; here that would be every
    /// session's keys, so it is not offered.
    async fn snapshot_db(&self, _name: &str, _extra_content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// The data lives in the database, not in this process.
    async fn resource_report(&self) -> wacore::stats::StorageResourceReport {
        wacore::stats::StorageResourceReport { memory_bytes: Some(0), ..Default::default() }
    }
}

impl PgDevice {
    async fn save_new(&self, device: &wacore::store::Device) -> Result<()> {
        let data = serde_json::to_vec(device).map_err(serialization)?;
        let pn = device.pn.as_ref().map(|pn| pn.to_string());
        let now = chrono::Utc::now().timestamp_millis();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_credentials (device, pn, data, updated_ms) VALUES ($1, $2, $3, $4)",
                &self.device,
                &pn,
                &data,
                &now
            );
        });
        Ok(())
    }
}
