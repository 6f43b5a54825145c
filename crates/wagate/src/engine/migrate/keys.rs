//! What one device holds in a shard, listed by key: the client library's traits read a value
//! by its key but cannot list the keys, so they are read here from the shard's tables
//! (the library's schema, whatsapp-rust-sqlite-storage 0.7). Values are read through the
//! traits (`super`), except the two the library can only consume or compare (`take_sent_message`,
//! `has_same_base_key`); those it stores as given, so their bytes are read here.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, Row};

/// The keys (and the few values the traits cannot read) of one device of a shard.
#[derive(Debug, Default)]
pub(super) struct DeviceKeys {
    pub identities: Vec<String>,
    pub sessions: Vec<String>,
    /// Id and whether it was uploaded to the server.
    pub prekeys: Vec<(u32, bool)>,
    pub signed_prekeys: Vec<u32>,
    pub sender_keys: Vec<String>,
    pub sync_keys: Vec<Vec<u8>>,
    pub versions: Vec<String>,
    /// Collection, the version the mac was written at, index mac.
    pub mutation_macs: Vec<(String, u64, Vec<u8>)>,
    /// Group and member device: the traits read a group's members at once.
    pub sender_key_devices: Vec<(String, String)>,
    pub lid_mappings: Vec<String>,
    /// Address, message id, base key.
    pub base_keys: Vec<(String, String, Vec<u8>)>,
    pub device_lists: Vec<String>,
    pub group_metadata: Vec<String>,
    pub tc_tokens: Vec<String>,
    /// Chat, message id, payload.
    pub sent_messages: Vec<(String, String, Vec<u8>)>,
    /// Chat, sender, message id.
    pub pending_inbound: Vec<(String, String, String)>,
    /// Chat, sender, message id, expiry (unix seconds, 0: never).
    pub msg_secrets: Vec<(String, String, String, i64)>,
}

/// Lists the rows of `device` in the shard at `path` (read-only: the shard is not changed).
pub(super) fn read(path: &Path, device: i32) -> rusqlite::Result<DeviceKeys> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let all = |sql: &str| format!("{sql} WHERE device_id = ?1");
    Ok(DeviceKeys {
        identities: rows(&conn, &all("SELECT address FROM identities"), device, |r| r.get(0))?,
        sessions: rows(&conn, &all("SELECT address FROM sessions"), device, |r| r.get(0))?,
        prekeys: rows(&conn, &all("SELECT id, uploaded FROM prekeys"), device, |r| Ok((r.get(0)?, r.get(1)?)))?,
        signed_prekeys: rows(&conn, &all("SELECT id FROM signed_prekeys"), device, |r| r.get(0))?,
        sender_keys: rows(&conn, &all("SELECT address FROM sender_keys"), device, |r| r.get(0))?,
        sync_keys: rows(&conn, &all("SELECT key_id FROM app_state_keys"), device, |r| r.get(0))?,
        versions: rows(&conn, &all("SELECT name FROM app_state_versions"), device, |r| r.get(0))?,
        mutation_macs: rows(
            &conn,
            &all("SELECT name, version, index_mac FROM app_state_mutation_macs"),
            device,
            |r| Ok((r.get(0)?, unsigned(r, 1)?, r.get(2)?)),
        )?,
        sender_key_devices: rows(&conn, &all("SELECT group_jid, device_jid FROM sender_key_devices"), device, |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?,
        lid_mappings: rows(&conn, &all("SELECT lid FROM lid_pn_mapping"), device, |r| r.get(0))?,
        base_keys: rows(&conn, &all("SELECT address, message_id, base_key FROM base_keys"), device, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?,
        device_lists: rows(&conn, &all("SELECT user_id FROM device_registry"), device, |r| r.get(0))?,
        group_metadata: rows(&conn, &all("SELECT group_jid FROM group_metadata"), device, |r| r.get(0))?,
        tc_tokens: rows(&conn, &all("SELECT jid FROM tc_tokens"), device, |r| r.get(0))?,
        sent_messages: rows(&conn, &all("SELECT chat_jid, message_id, payload FROM sent_messages"), device, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?,
        pending_inbound: rows(&conn, &all("SELECT chat, sender, id FROM pending_inbound_messages"), device, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?,
        msg_secrets: rows(&conn, &all("SELECT chat, sender, msg_id, expires_at FROM msg_secrets"), device, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?,
    })
}

/// Every row of a query of one device.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    device: i32,
    read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    conn.prepare(sql)?.query_map([device], read)?.collect()
}

/// A column the library writes as an unsigned number (a negative one is corrupt).
fn unsigned(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Integer, e.into()))
}
