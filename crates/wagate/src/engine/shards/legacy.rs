//! Moving a session's file of the older layout (`engine/<id>.db`, the library's store with one
//! device) into its shard.
//!
//! The rule that keeps it safe across crashes: while the old file exists, it is the truth.
//! Every open that finds it copies it into the shard again, replacing what an earlier attempt
//! left there, and the session is used from the shard only once the old file is gone. The copy
//! is one transaction, checked before it commits (row counts per table, the identity keys) and
//! written through to disk (`synchronous = FULL`) before the old file is deleted; the deletion
//! is made durable (the folder synced) before the session goes on. So a crash at any point
//! leaves either the old file, or a committed copy in the shard and no old file.

use std::path::Path;

use rusqlite::{params, Connection};
use wacore::store::traits::DeviceStore;
use whatsapp_rust::store::SqliteStore;

use super::{delete_device_rows, device_of, device_tables, quoted, Shard, ShardError};

/// The device id of every file of the older layout: it was opened with `SqliteStore::new`,
/// which is device 1.
const LEGACY_DEVICE: i64 = 1;

/// Moves the device in `legacy` into `shard` as `session`'s, then deletes `legacy`. Called
/// with the shard's turn held and the shard on the library's schema.
pub(super) async fn move_into_shard(shard: &Shard, session: &str, legacy: &Path) -> Result<(), ShardError> {
    let text = legacy.to_str().ok_or_else(|| ShardError::NotUtf8(legacy.to_path_buf()))?.to_string();
    // An older wagate may have written it with an older schema of the library: bring it up to
    // the shard's, through the library, so that both have the same tables and columns.
    drop(SqliteStore::new(&text).await.map_err(ShardError::library(legacy))?);

    let (session_owned, legacy_owned) = (session.to_string(), legacy.to_path_buf());
    let device = shard.with_connection(move |conn, path| copy(conn, path, &session_owned, &legacy_owned)).await?;

    // Readable through the library as the session will read it, before the original goes.
    let device = i32::try_from(device).map_err(|_| verify_failed(legacy, "device id out of range"))?;
    let copied = shard.library_store(device).await?;
    copied.load().await.map_err(|e| verify_failed(legacy, &format!("the copy cannot be loaded: {e:#}")))?;
    drop(copied);
    delete_files(legacy)?;
    tracing::info!(session, "moved the session's keys from {} into {}", legacy.display(), shard.path.display());
    Ok(())
}

fn verify_failed(legacy: &Path, what: &str) -> ShardError {
    ShardError::Verify { legacy: legacy.to_path_buf(), what: what.to_string() }
}

/// Copies the old file's device into the shard `conn` is on, as a new device of `session`
/// (replacing any it had), in one checked transaction; returns the new device id.
fn copy(conn: &mut Connection, path: &Path, session: &str, legacy: &Path) -> Result<i64, ShardError> {
    let legacy_text = legacy.to_str().ok_or_else(|| ShardError::NotUtf8(legacy.to_path_buf()))?;
    conn.execute("ATTACH DATABASE ?1 AS legacy", [legacy_text]).map_err(ShardError::sqlite(legacy))?;
    let copied = copy_attached(conn, session, legacy);
    let detached = conn.execute_batch("DETACH DATABASE legacy").map_err(ShardError::sqlite(path));
    let device = copied?;
    detached?;
    Ok(device)
}

fn copy_attached(conn: &mut Connection, session: &str, legacy: &Path) -> Result<i64, ShardError> {
    let sql = ShardError::sqlite;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql(legacy))?;
    if let Some(earlier) = device_of(&tx, session).map_err(sql(legacy))? {
        // A copy of an attempt that committed but did not get to delete the old file, or
        // keys of an older link: the old file wins either way.
        delete_device_rows(&tx, "main", earlier).map_err(sql(legacy))?;
        tx.execute("DELETE FROM wagate_devices WHERE session = ?1", [session]).map_err(sql(legacy))?;
    }
    tx.execute(
        "INSERT INTO wagate_devices (session, created_ms) VALUES (?1, ?2)",
        params![session, chrono::Utc::now().timestamp_millis()],
    )
    .map_err(sql(legacy))?;
    let device = tx.last_insert_rowid();

    let ours = device_tables(&tx, "main").map_err(sql(legacy))?;
    let theirs = device_tables(&tx, "legacy").map_err(sql(legacy))?;
    let count = |schema: &str, table: &str, key: &str, id: i64| -> rusqlite::Result<i64> {
        tx.query_row(&format!("SELECT count(*) FROM {schema}.{} WHERE {key} = ?1", quoted(table)), [id], |row| {
            row.get(0)
        })
    };
    for old in &theirs {
        let rows = count("legacy", &old.name, old.key, LEGACY_DEVICE).map_err(sql(legacy))?;
        let Some(new) = ours.iter().find(|t| t.name == old.name) else {
            if rows > 0 {
                return Err(verify_failed(legacy, &format!("the shard has no table {} for its {rows} rows", old.name)));
            }
            continue;
        };
        // The columns both have; the device column takes the new id.
        let columns: Vec<&String> =
            new.columns.iter().filter(|c| c.as_str() != new.key && old.columns.contains(c)).collect();
        let names: Vec<String> = columns.iter().map(|c| quoted(c)).collect();
        tx.execute(
            &format!(
                "INSERT INTO main.{table} ({names}, {key}) SELECT {names}, ?1 FROM legacy.{table} WHERE {key} = ?2",
                table = quoted(&new.name),
                names = names.join(", "),
                key = new.key,
            ),
            params![device, LEGACY_DEVICE],
        )
        .map_err(sql(legacy))?;
        let copied = count("main", &new.name, new.key, device).map_err(sql(legacy))?;
        if copied != rows {
            return Err(verify_failed(
                legacy,
                &format!("{} has {copied} rows in the shard, {rows} in the file", new.name),
            ));
        }
    }
    // The credentials themselves, byte for byte.
    let (had, same): (i64, i64) = tx
        .query_row(
            "SELECT (SELECT count(*) FROM legacy.device WHERE id = ?2), \
             (SELECT count(*) FROM main.device m JOIN legacy.device l ON l.id = ?2 WHERE m.id = ?1 \
              AND m.identity_key IS l.identity_key AND m.noise_key IS l.noise_key \
              AND m.registration_id IS l.registration_id AND m.adv_secret_key IS l.adv_secret_key \
              AND m.pn IS l.pn AND m.lid IS l.lid)",
            params![device, LEGACY_DEVICE],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(sql(legacy))?;
    if had != same {
        return Err(verify_failed(legacy, "the copied credentials differ from the file's"));
    }
    tx.commit().map_err(sql(legacy))?;
    Ok(device)
}

/// Deletes a file of the older layout: the database first (once it is gone, the shard is the
/// truth), then its -wal, -shm and -journal, then makes the deletion durable.
pub(super) fn delete_files(legacy: &Path) -> Result<(), ShardError> {
    let mut deleted = false;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut path = legacy.as_os_str().to_os_string();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => deleted = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ShardError::Io { path: path.into(), source: e }),
        }
    }
    if let Some(dir) = legacy.parent().filter(|_| deleted) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(ShardError::io(dir))?;
    }
    Ok(())
}
