//! Where the sessions' engine state lives: a few shared SQLite files, `engine/shard-<k>.sqlite`,
//! each holding the devices of the sessions whose id hashes to `k`.
//!
//! One file per session cost about 4.6 open files per session (the database, its -wal and -shm,
//! per connection). Here every device of a shard opens the file with SQLite's shared cache,
//! so the whole shard holds one set of descriptors however many sessions it serves, and a
//! session costs its socket and little more.
//!
//! The client library (whatsapp-rust's SQLite store) keeps many devices in one database: every
//! table is keyed by a device id. Which id belongs to which session is recorded in the shard
//! itself (`wagate_devices`), beside the rows it names, so that one file is the whole truth
//! about its sessions: a backup copies it in one consistent step, a restore cannot pair keys
//! with the wrong mapping, and a wipe removes the rows and the mapping in one transaction. Ids
//! are never reused (AUTOINCREMENT), so rows a late write leaves behind for a wiped device can
//! never be taken for another session's.
//!
//! Isolation: each session reads and writes only its device's rows, through the library's own
//! queries. A device whose rows cannot be decoded fails that session's open with the reason;
//! the others in the shard go on. Damage to the file itself (a torn page) touches the sessions
//! of that one shard, an eighth of them; `wagate doctor` checks every shard.
//!
//! The files of the older layout (`engine/<id>.db`, one per session) are moved into the shard
//! the first time their session is opened (see `legacy`).

mod backend;
mod legacy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use whatsapp_rust::store::{SqliteStore, SqliteStoreConfig};

pub use backend::ShardDevice;

/// How many shard files the sessions are spread over. Part of the data layout: a session's
/// shard is found from its id, so changing this orphans the keys of most sessions.
pub const SHARDS: u32 = 8;
/// What a shard file is called inside `engine/`. `.sqlite`, not `.db`: `shard-1.db` would be
/// the older layout's file of a session called `shard-1`.
const SHARD_PREFIX: &str = "shard-";
const SHARD_SUFFIX: &str = ".sqlite";
/// The file name of shard `index`.
pub fn shard_file_name(index: u32) -> String {
    format!("{SHARD_PREFIX}{index}{SHARD_SUFFIX}")
}

/// Whether `name` is the file name of one of the [`SHARDS`] shards.
pub fn is_shard_file_name(name: &str) -> bool {
    let Some(digits) = name.strip_prefix(SHARD_PREFIX).and_then(|rest| rest.strip_suffix(SHARD_SUFFIX)) else {
        return false;
    };
    // Only the spelling wagate writes (no sign, no leading zero).
    digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u32>().is_ok_and(|index| index < SHARDS && index.to_string() == digits)
}

/// The shard of a session: FNV-1a of its id, so that it is the same in every build and on
/// every machine (the standard library's hasher promises neither).
pub fn shard_index(session: &str) -> u32 {
    let hash = session.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    hash % SHARDS
}

/// The table that says which device id of a shard belongs to which session.
const DEVICES_TABLE: &str = "wagate_devices";
const CREATE_DEVICES_TABLE: &str = "CREATE TABLE IF NOT EXISTS wagate_devices (
    device INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
)";

/// Where a session's engine keeps its credentials and Signal state: its device in the shard
/// of its id, inside the `engine/` folder of the data directory.
#[derive(Debug, Clone)]
pub struct ShardStore {
    dir: PathBuf,
    session: String,
}

impl ShardStore {
    /// The store of `session` (a valid session id) in the engine folder `dir`.
    pub fn new(dir: impl AsRef<Path>, session: &str) -> Self {
        Self { dir: dir.as_ref().to_path_buf(), session: session.to_string() }
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// The shard file this session's device lives in.
    pub fn shard_path(&self) -> PathBuf {
        self.dir.join(shard_file_name(shard_index(&self.session)))
    }

    /// The session's file in the older layout, `engine/<id>.db`.
    pub fn legacy_path(&self) -> PathBuf {
        self.dir.join(format!("{}.db", self.session))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("{path}: the client library's store: {message}")]
    Library { path: PathBuf, message: String },
    #[error("the keys of session {session} cannot be read (the other sessions are not affected): {message}")]
    Unreadable { session: String, message: String },
    #[error("moving {legacy} into the shared store failed its check ({what}); the file is kept as it was")]
    Verify { legacy: PathBuf, what: String },
    #[error("{0}: the data directory's path is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl ShardError {
    fn sqlite(path: &Path) -> impl FnOnce(rusqlite::Error) -> Self + '_ {
        move |source| Self::Sqlite { path: path.to_path_buf(), source }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_path_buf(), source }
    }

    fn library(path: &Path) -> impl FnOnce(wacore::store::error::StoreError) -> Self + '_ {
        move |e| Self::Library { path: path.to_path_buf(), message: format!("{e:#}") }
    }
}

/// One shard file, opened once per process and shared by every session in it.
pub(crate) struct Shard {
    path: PathBuf,
    /// The library's connection URI: the file with SQLite's shared cache.
    url: String,
    /// Whose turn it is to use the file (see `backend`): every call of every device, and
    /// wagate's own statements (mapping, wipe, move), one at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// What took the turn last (for the warning about a long wait).
    holder: Mutex<&'static str>,
    /// A store of no device, kept while the shard is in use: it brings the file to the
    /// library's schema once, and keeps the shared cache (and its descriptors) open while
    /// sessions come and go.
    anchor: tokio::sync::OnceCell<SqliteStore>,
}

/// A wait for a shard's turn longer than this is logged.
const SLOW_TURN: Duration = Duration::from_secs(5);

/// No session's device has this id (AUTOINCREMENT starts at 1).
const ANCHOR_DEVICE: i32 = 0;

impl Shard {
    /// Waits for the shard's turn, for `what` (a call of the library's store, an open, a
    /// wipe). A call takes milliseconds: a wait of seconds means one is stuck, and the
    /// warning says which kind holds it.
    pub(crate) async fn turn(&self, what: &'static str) -> tokio::sync::OwnedMutexGuard<()> {
        let guard = match tokio::time::timeout(SLOW_TURN, self.turn.clone().lock_owned()).await {
            Ok(guard) => guard,
            Err(_) => {
                let holder = *self.holder.lock().unwrap_or_else(|p| p.into_inner());
                tracing::warn!(shard = %self.path.display(), waiting = what, holder, "the engine shard has been busy for {SLOW_TURN:?}");
                self.turn.clone().lock_owned().await
            }
        };
        *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = what;
        guard
    }

    /// The library's store for `device` in this shard; call with the turn held.
    async fn library_store(&self, device: i32) -> Result<SqliteStore, ShardError> {
        SqliteStore::with_config_for_device(&self.url, device, store_config())
            .await
            .map_err(ShardError::library(&self.path))
    }

    /// Brings the file to the library's schema and sweeps it (once per opening); call with
    /// the turn held.
    async fn ready(&self) -> Result<(), ShardError> {
        self.anchor
            .get_or_try_init(|| async {
                let anchor = self.library_store(ANCHOR_DEVICE).await?;
                self.sweep_orphans().await;
                Ok(anchor)
            })
            .await
            .map(|_| ())
    }

    /// Deletes rows of devices no session has. A client that was logged out can still be
    /// finishing a write when its device is wiped, and a crash can come between the two:
    /// such rows would stay in the file for ever, as nothing reads them. Ids are never
    /// reused (AUTOINCREMENT), so a leftover row can only be garbage. Only logged: the
    /// sessions work without it, and it is tried again at the next start.
    async fn sweep_orphans(&self) {
        let swept = self
            .with_connection(|conn, path| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate);
                let tx = tx.map_err(ShardError::sqlite(path))?;
                let mut removed = 0;
                for table in device_tables(&tx, "main").map_err(ShardError::sqlite(path))? {
                    removed += tx
                        .execute(
                            &format!(
                                "DELETE FROM {table} WHERE {key} <> ?1 AND {key} NOT IN (SELECT device FROM wagate_devices)",
                                table = quoted(&table.name),
                                key = table.key
                            ),
                            [ANCHOR_DEVICE],
                        )
                        .map_err(ShardError::sqlite(path))?;
                }
                tx.commit().map_err(ShardError::sqlite(path))?;
                Ok(removed)
            })
            .await;
        match swept {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                shard = %self.path.display(),
                "removed {removed} engine rows left by sessions that were logged out or deleted"
            ),
            Err(e) => tracing::warn!(shard = %self.path.display(), "could not sweep rows of removed sessions: {e}"),
        }
    }

    /// Runs wagate's own statements on a connection of their own (closed after), with the
    /// turn held; every commit reaches the disk before this returns. The connection joins
    /// the shard's shared cache: a private one would open descriptors of its own, and SQLite
    /// keeps a closed connection's descriptor open while others hold locks on the file.
    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &Path) -> Result<T, ShardError> + Send + 'static,
    ) -> Result<T, ShardError> {
        let (path, url) = (self.path.clone(), self.url.clone());
        tokio::task::spawn_blocking(move || {
            let flags =
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let mut conn = Connection::open_with_flags(&url, flags).map_err(ShardError::sqlite(&path))?;
            conn.busy_timeout(Duration::from_secs(10)).map_err(ShardError::sqlite(&path))?;
            conn.pragma_update(None, "synchronous", "FULL").map_err(ShardError::sqlite(&path))?;
            conn.execute_batch(CREATE_DEVICES_TABLE).map_err(ShardError::sqlite(&path))?;
            work(&mut conn, &path)
        })
        .await
        .map_err(|e| ShardError::Task(e.to_string()))?
    }
}

/// The library's settings for a shard's connections: one connection per device (its
/// descriptors are the shard's, in shared cache), and a page cache that, being shared,
/// serves the whole shard.
fn store_config() -> SqliteStoreConfig {
    SqliteStoreConfig { pool_size: 1, read_pool_size: 0, cache_size_kib: 4096, ..SqliteStoreConfig::default() }
}

/// The shards open in this process, by canonical path (two spellings of one file must share
/// one turn, as they share one cache).
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Shard>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Shard>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// The shard file at `path`, created (private) if needed, opened once per process.
fn shard(path: &Path) -> Result<Arc<Shard>, ShardError> {
    use crate::store::private;
    if let Some(parent) = path.parent() {
        private::create_dir(parent).map_err(ShardError::io(parent))?;
    }
    // Private before SQLite opens it: its -wal and -shm then are too.
    private::create_file(path).map_err(ShardError::io(path))?;
    let path = std::fs::canonicalize(path).map_err(ShardError::io(path))?;
    let mut open = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shard) = open.get(&path).and_then(Weak::upgrade) {
        return Ok(shard);
    }
    open.retain(|_, shard| shard.strong_count() > 0);
    let text = path.to_str().ok_or_else(|| ShardError::NotUtf8(path.clone()))?;
    let shard = Arc::new(Shard {
        url: format!("file:{}?cache=shared", uri_path(text)),
        path: path.clone(),
        turn: Arc::new(tokio::sync::Mutex::new(())),
        holder: Mutex::new(""),
        anchor: tokio::sync::OnceCell::new(),
    });
    open.insert(path, Arc::downgrade(&shard));
    Ok(shard)
}

/// A path as the path of a `file:` URI: everything but unreserved characters and `/` escaped
/// (a `?` or `#` in a directory name must not end the path).
fn uri_path(path: &str) -> String {
    path.split('/').map(crate::percent::encode).collect::<Vec<_>>().join("/")
}

/// A read-only connection for a look from outside the gateway (doctor, backup, tests).
fn open_read_only(path: &Path) -> Result<Connection, ShardError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(ShardError::sqlite(path))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(ShardError::sqlite(path))?;
    Ok(conn)
}

/// Runs `work` to its end in a task of its own, whatever happens to the caller: work that
/// holds a shard's turn across statements on blocking threads must not be cut short (see
/// `backend::Turn`).
async fn uncancelled<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ShardError>> + Send + 'static,
) -> Result<T, ShardError> {
    tokio::spawn(work).await.map_err(|e| ShardError::Task(e.to_string()))?
}

/// Opens the device of `store`'s session, moving a file of the older layout in first. With
/// `create`, a session without a device gets a new id; without, it gets `None` (and no file
/// is created for it).
pub async fn open_device(store: &ShardStore, create: bool) -> Result<Option<ShardDevice>, ShardError> {
    let store = store.clone();
    uncancelled(async move { open_device_now(&store, create).await }).await
}

async fn open_device_now(store: &ShardStore, create: bool) -> Result<Option<ShardDevice>, ShardError> {
    let legacy = store.legacy_path();
    let has_legacy = legacy.exists();
    if !create && !has_legacy && !store.shard_path().exists() {
        return Ok(None);
    }
    let shard = shard(&store.shard_path())?;
    let turn = shard.turn("open").await;
    shard.ready().await?;
    if has_legacy {
        legacy::move_into_shard(&shard, store.session(), &legacy).await?;
    }
    let session = store.session().to_string();
    let device = shard
        .with_connection(move |conn, path| {
            let found = device_of(conn, &session).map_err(ShardError::sqlite(path))?;
            match found {
                Some(device) => Ok(Some(device)),
                None if create => conn
                    .execute(
                        "INSERT INTO wagate_devices (session, created_ms) VALUES (?1, ?2)",
                        params![session, chrono::Utc::now().timestamp_millis()],
                    )
                    .map(|_| Some(conn.last_insert_rowid()))
                    .map_err(ShardError::sqlite(path)),
                None => Ok(None),
            }
        })
        .await?;
    let Some(device) = device else { return Ok(None) };
    let device = i32::try_from(device).map_err(|_| ShardError::Unreadable {
        session: store.session().to_string(),
        message: format!("device id {device} is out of range"),
    })?;
    let inner = shard.library_store(device).await?;
    drop(turn);
    let connection = inner.shared();
    Ok(Some(ShardDevice { shard, inner, connection, session: store.session().to_string() }))
}

/// The device id of `session` in the shard `conn` is on.
fn device_of(conn: &Connection, session: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT device FROM wagate_devices WHERE session = ?1", [session], |row| row.get(0)).optional()
}

/// The library's credentials of the session, `None` when it has no device; an error names a
/// device whose rows cannot be decoded.
pub async fn load_device(store: &ShardStore) -> Result<Option<wacore::store::Device>, ShardError> {
    match open_device(store, false).await? {
        Some(device) => device.credentials().await,
        None => Ok(None),
    }
}

/// Deletes the session's device: its rows in every table of the shard and its mapping, in one
/// transaction, and a file of the older layout. Other sessions' rows are not touched.
pub async fn wipe(store: &ShardStore) -> Result<(), ShardError> {
    let store = store.clone();
    uncancelled(async move { wipe_now(&store).await }).await
}

async fn wipe_now(store: &ShardStore) -> Result<(), ShardError> {
    legacy::delete_files(&store.legacy_path())?;
    if !store.shard_path().exists() {
        return Ok(());
    }
    let shard = shard(&store.shard_path())?;
    let _turn = shard.turn("wipe").await;
    shard.ready().await?;
    let session = store.session().to_string();
    shard
        .with_connection(move |conn, path| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate);
            let tx = tx.map_err(ShardError::sqlite(path))?;
            if let Some(device) = device_of(&tx, &session).map_err(ShardError::sqlite(path))? {
                delete_device_rows(&tx, "main", device).map_err(ShardError::sqlite(path))?;
                tx.execute("DELETE FROM wagate_devices WHERE session = ?1", [&session])
                    .map_err(ShardError::sqlite(path))?;
            }
            tx.commit().map_err(ShardError::sqlite(path))
        })
        .await
}

/// A table of the library's schema that holds per-device rows, and the column naming the
/// device (`id` in `device`, `device_id` everywhere else).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceTable {
    name: String,
    key: &'static str,
    columns: Vec<String>,
}

/// The tables of `schema` (`main`, or an attached database) with per-device rows. Read from
/// the schema rather than listed, so that tables a newer library adds are covered too.
fn device_tables(conn: &Connection, schema: &str) -> rusqlite::Result<Vec<DeviceTable>> {
    let names: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM {schema}.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name NOT LIKE 'wagate\\_%' ESCAPE '\\' ORDER BY name = 'device' DESC, name"
        ))?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = Vec::new();
    for name in names {
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1, ?2)")?
            .query_map([name.as_str(), schema], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let key = if name == "device" {
            "id"
        } else if columns.iter().any(|c| c == "device_id") {
            "device_id"
        } else {
            continue;
        };
        tables.push(DeviceTable { name, key, columns });
    }
    Ok(tables)
}

/// `"name"`, quoted as an SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Deletes every row of `device` in `schema`.
fn delete_device_rows(conn: &Connection, schema: &str, device: i64) -> rusqlite::Result<()> {
    for table in device_tables(conn, schema)? {
        conn.execute(&format!("DELETE FROM {schema}.{} WHERE {} = ?1", quoted(&table.name), table.key), [device])?;
    }
    Ok(())
}

/// A session with a device in a shard, as `wagate doctor`, backups and tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDevice {
    pub session: String,
    /// The shard's file name.
    pub shard: String,
    pub device: i64,
    /// Its credentials name a phone number (it was linked).
    pub linked: bool,
}

/// The shard files present in the engine folder `dir`, by file name.
pub fn shard_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if is_shard_file_name(&name) {
                    found.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    found.sort();
    Ok(found)
}

/// The devices of one shard file, read-only (safe beside a running gateway).
pub fn devices_in(path: &Path) -> Result<Vec<StoredDevice>, ShardError> {
    let conn = open_read_only(path)?;
    let shard = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let has = |table: &str| -> rusqlite::Result<bool> {
        conn.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1", [table], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| n > 0)
    };
    if !has(DEVICES_TABLE).map_err(ShardError::sqlite(path))? {
        return Ok(Vec::new());
    }
    let query = if has("device").map_err(ShardError::sqlite(path))? {
        "SELECT m.session, m.device, EXISTS (SELECT 1 FROM device d WHERE d.id = m.device AND d.pn != '') \
         FROM wagate_devices m ORDER BY m.session"
    } else {
        "SELECT session, device, 0 FROM wagate_devices ORDER BY session"
    };
    let mut statement = conn.prepare(query).map_err(ShardError::sqlite(path))?;
    let rows = statement
        .query_map([], |row| {
            Ok(StoredDevice { session: row.get(0)?, shard: shard.clone(), device: row.get(1)?, linked: row.get(2)? })
        })
        .map_err(ShardError::sqlite(path))?;
    rows.collect::<rusqlite::Result<_>>().map_err(ShardError::sqlite(path))
}

/// Every session with a device in the shards of the engine folder `dir`.
pub fn stored_devices(dir: &Path) -> Result<Vec<StoredDevice>, ShardError> {
    let mut all = Vec::new();
    for name in shard_files(dir).map_err(ShardError::io(dir))? {
        all.extend(devices_in(&dir.join(name))?);
    }
    all.sort_by(|a, b| a.session.cmp(&b.session));
    Ok(all)
}

/// Whether session `id` has keys in the engine folder `dir`: a device in its shard, or a file
/// of the older layout.
pub fn has_keys(dir: &Path, id: &str) -> Result<bool, ShardError> {
    let store = ShardStore::new(dir, id);
    if store.legacy_path().exists() {
        return Ok(true);
    }
    if !store.shard_path().exists() {
        return Ok(false);
    }
    Ok(devices_in(&store.shard_path())?.iter().any(|d| d.session == id))
}

#[cfg(test)]
mod tests;
