//! wagate's own records in the data directory, in one embedded SQLite database, `wagate.db`:
//! the session registry, the webhook outbox, sent and received messages, the outgoing queue
//! and events waiting for a download. The sessions' engine state lives beside it in
//! `engine/shard-<k>.sqlite` (see `engine::shards`); `wagate.lock` marks the running gateway.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::args;
use crate::engine::{EngineStore, Me};
use crate::session::state::LastState;
use crate::session::validate_id;
use sql::{Db, Row, ToValue, Value};

pub mod cloud;
pub mod lock;
mod messages;
mod outbox;
mod pending_upserts;
pub(crate) mod pg_settings;
pub(crate) mod postgres;
pub mod private;
mod queue;
mod received;
pub mod sql;
pub mod to_postgres;
mod writer;
pub use messages::{advance_status, record_sent, KeyClaim, SentMessage};
pub use outbox::{insert_event, Delivery, DeliveryStatus, NewEvent, OutboxEvent, HELD};
pub use pending_upserts::{add_pending_upsert, remove_pending_upsert, PendingUpsert};
pub use queue::{Queued, MAX_QUEUED};
pub use received::{claim_inbound, record_received, ReceivedMessage, StoredMedia};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("{0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("there is no wagate database at {0}")]
    Missing(PathBuf),
    #[error("the database has schema {found}, this wagate expects {expected}; run `wagate serve` once to update it")]
    SchemaBehind { found: usize, expected: usize },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("the batch this write was part of could not be committed: {0}")]
    BatchFailed(String),
    #[error("{0:?} is not a valid session id")]
    InvalidSessionId(String),
}

impl StoreError {
    /// Every write of a failed batch hears the batch's error.
    fn batch_failed(error: &StoreError) -> StoreError {
        StoreError::BatchFailed(error.to_string())
    }
}

/// Where a session's events go. Never serialized: the API shows a webhook without its
/// secrets (`WebhookView`), the store keeps it as `StoredWebhook`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// Signing secret (`whsec_<base64>` or any string); never shown by the API.
    #[serde(default)]
    pub secret: Option<String>,
    /// Only these events are sent; all when absent.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Sent as `X-Webhook-Token` (the ERPNext app's token); never shown by the API.
    #[serde(default)]
    pub token: Option<String>,
    /// `native` (the signed envelope) or `compat` (the ERPNext Node service's bodies).
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Native,
    Compat,
    /// Meta's Cloud API webhooks; set by `PUT /v1/sessions/{id}/cloud-api` only.
    Cloud,
}

impl WebhookConfig {
    pub fn wants(&self, event: &str) -> bool {
        self.events.as_ref().is_none_or(|events| events.iter().any(|e| e == event))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub webhook: Option<WebhookConfig>,
    pub created_at: String,
    /// Who the session was last linked as (kept for display while it reconnects); set at
    /// pair-success, cleared when the keys are wiped.
    pub me: Option<Me>,
    /// WhatsApp accepted a login with the current credentials at least once. Credentials
    /// saved at pair-success but never confirmed may belong to a pairing the server dropped.
    pub link_confirmed: bool,
    /// This session's outbound proxy URL (secret: shown masked only).
    pub proxy: Option<String>,
    /// The last state the gateway recorded (see [`LastState`]).
    pub last_state: Option<LastState>,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts those done.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        webhook TEXT,
        created_at TEXT NOT NULL,
        me TEXT
    );",
    "ALTER TABLE sessions ADD COLUMN link_confirmed INTEGER NOT NULL DEFAULT 0;",
    "CREATE TABLE webhook_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        session TEXT NOT NULL,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        finished_ms INTEGER
    );
    CREATE INDEX webhook_events_queue ON webhook_events (status, session, seq);",
    "CREATE TABLE sent_messages (
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        chat TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (session, id)
    );
    CREATE TABLE idempotency_keys (
        session TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (session, key)
    );",
    "ALTER TABLE sessions ADD COLUMN proxy TEXT;",
    "CREATE TABLE received_messages (
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        kind TEXT NOT NULL,
        text TEXT,
        media TEXT,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (session, id)
    );
    CREATE INDEX received_messages_age ON received_messages (received_ms);",
    "ALTER TABLE sessions ADD COLUMN last_state TEXT;",
    "CREATE TABLE outgoing_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        message TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX outgoing_queue_order ON outgoing_queue (session, seq);",
    "CREATE TABLE pending_upserts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session TEXT NOT NULL,
        data TEXT NOT NULL,
        media TEXT
    );",
    // Received messages already committed, so a redelivery makes no second event. A
    // message id is unique only within its chat and sender.
    "CREATE TABLE inbound_keys (
        session TEXT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        id TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (session, chat, sender, id)
    ) WITHOUT ROWID;
    CREATE INDEX inbound_keys_age ON inbound_keys (received_ms);
    ALTER TABLE idempotency_keys ADD COLUMN run TEXT;",
    // The hourly pruning finds old rows by age instead of reading both tables whole.
    "CREATE INDEX sent_messages_age ON sent_messages (created_ms);
    CREATE INDEX idempotency_keys_age ON idempotency_keys (created_ms);",
    // The Cloud API face of sessions (docs/cloud-api.md).
    cloud::MIGRATION,
];

/// The schema version this build writes (`PRAGMA user_version` once migrated).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The registry's file inside a data directory.
pub const DB_FILE: &str = "wagate.db";
/// Left in a data directory by `wagate migrate`: its sessions run from PostgreSQL now, and a
/// gateway on its SQLite files would link them a second time (the two would take the
/// WhatsApp connection from each other), so `wagate serve` without `--database` refuses it.
pub const MIGRATED_MARKER: &str = "MIGRATED-TO-POSTGRESQL.txt";
/// The folder of the sessions' engine databases inside a data directory.
pub const ENGINE_DIR: &str = "engine";

const SESSION_COLUMNS: &str = "id, webhook, created_at, me, link_confirmed, proxy, last_state";

pub struct Store {
    data_dir: PathBuf,
    /// The engine's store in PostgreSQL (`None`: the shard files of the data directory).
    engine: Option<crate::engine::postgres::PgEngine>,
    /// Where reads go.
    reader: Reader,
    /// The hot writes, group-committed on their own thread (`None`: opened read-only).
    writer: Option<writer::Writer>,
    /// Each session's own webhook, read for every event; kept current by the setters.
    webhooks: Mutex<std::collections::HashMap<String, Option<WebhookConfig>>>,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    // Every committed change reaches the disk before the call returns: a crash right
    // after never loses what the API already confirmed.
    db.pragma_update(None, "synchronous", "FULL")?;
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(db)
}

/// How the store reads: on the caller's thread from SQLite, or through the threads that
/// hold PostgreSQL connections.
enum Reader {
    Sqlite(Mutex<Connection>),
    Postgres(postgres::Readers),
}

impl Store {
    /// Opens (creating and migrating) the SQLite database of the data directory.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let create = |source| StoreError::CreateDir { path: data_dir.to_path_buf(), source };
        private::create_dir(data_dir).map_err(create)?;
        private::create_dir(&data_dir.join(ENGINE_DIR)).map_err(create)?;
        let path = data_dir.join(DB_FILE);
        // Private before SQLite opens it: its -wal and -shm then are too.
        private::create_file(&path).map_err(create)?;
        let mut db = open_connection(&path)?;
        migrate(&mut db)?;
        let writer = writer::Writer::spawn(open_connection(&path)?);
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            reader: Reader::Sqlite(Mutex::new(db)),
            writer: Some(writer),
            webhooks: Default::default(),
            engine: None,
        })
    }

    /// Opens (migrating) wagate's tables in the PostgreSQL database at `url`; the data
    /// directory keeps only this node's files (downloads, the lock, logs).
    pub fn open_postgres(data_dir: &Path, url: &str) -> Result<Self, StoreError> {
        let create = |source| StoreError::CreateDir { path: data_dir.to_path_buf(), source };
        private::create_dir(data_dir).map_err(create)?;
        let config = postgres::Settings::parse(url)?;
        // The blocking client runs a runtime of its own: never on an async worker's thread.
        let migrating = config.clone();
        std::thread::spawn(move || postgres::migrate(&migrating))
            .join()
            .map_err(|_| StoreError::Database("the migration of the database panicked".into()))??;
        let writer_config = config.clone();
        let writer = writer::Writer::spawn_postgres(move || postgres::connect(&writer_config));
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            reader: Reader::Postgres(postgres::Readers::spawn(config)),
            writer: Some(writer),
            webhooks: Default::default(),
            engine: None,
        })
    }

    /// [`Store::open_postgres`] with the engine's store in the same database (`connections`:
    /// the most the engine may open).
    pub async fn connect_postgres(data_dir: &Path, url: &str, connections: usize) -> Result<Self, StoreError> {
        let (dir, text) = (data_dir.to_path_buf(), url.to_string());
        let mut store = tokio::task::spawn_blocking(move || Self::open_postgres(&dir, &text))
            .await
            .map_err(|e| StoreError::Database(format!("opening the database: {e}")))??;
        let engine = crate::engine::postgres::PgEngine::connect(url, connections)
            .await
            .map_err(|e| StoreError::Database(format!("the engine's tables: {e}")))?;
        store.engine = Some(engine);
        Ok(store)
    }

    /// Whether this store is PostgreSQL's (shared by several nodes).
    pub fn is_postgres(&self) -> bool {
        matches!(self.reader, Reader::Postgres(_))
    }

    /// Opens an existing registry for reading only (the operator commands): creates
    /// nothing, migrates nothing, and refuses a schema this build does not read.
    pub fn open_read_only(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Missing(path));
        }
        let db =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        let found = schema_version(&db)?;
        if found < SCHEMA_VERSION {
            return Err(StoreError::SchemaBehind { found, expected: SCHEMA_VERSION });
        }
        if found > SCHEMA_VERSION {
            return Err(newer_schema(found));
        }
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            reader: Reader::Sqlite(Mutex::new(db)),
            writer: None,
            webhooks: Default::default(),
            engine: None,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `work` on a reading connection and returns its answer.
    fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.reader {
            Reader::Sqlite(db) => work(&*db.lock().unwrap_or_else(|p| p.into_inner())),
            Reader::Postgres(readers) => readers.read(work),
        }
    }

    /// The SQLite connection of reads (the checks that only SQLite has); `None` on PostgreSQL.
    fn sqlite(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        match &self.reader {
            Reader::Sqlite(db) => Some(db.lock().unwrap_or_else(|p| p.into_inner())),
            Reader::Postgres(_) => None,
        }
    }

    fn writer(&self) -> Result<&writer::Writer, StoreError> {
        self.writer.as_ref().ok_or_else(|| StoreError::Corrupt("the database was opened read-only".into()))
    }

    /// Runs `work` in the writer's next group commit; resolves once it is on disk.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer()?.write(work).await
    }

    /// [`Store::write`] for synchronous callers; blocks the thread until the commit.
    pub fn write_blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer()?.write_blocking(work)
    }

    /// Runs one statement through the writer (a rare write from synchronous code);
    /// returns how many rows it changed.
    fn execute(&self, sql: &'static str, values: Vec<Value>) -> Result<usize, StoreError> {
        self.write_blocking(move |db| {
            let params: Vec<&dyn ToValue> = values.iter().map(|v| v as &dyn ToValue).collect();
            db.execute(sql, &params)
        })
    }

    /// The session's own webhook (`None` when it has none or is unknown), from memory
    /// after the first read.
    pub fn session_webhook(&self, id: &str) -> Result<Option<WebhookConfig>, StoreError> {
        if let Some(known) = self.webhooks.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(known.clone());
        }
        let webhook = self.session(id)?.and_then(|record| record.webhook);
        self.webhooks.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), webhook.clone());
        Ok(webhook)
    }

    fn forget_webhook(&self, id: &str) {
        self.webhooks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Where the engine of session `id` keeps its state. Refused for an id that is not a
    /// valid session id: such an id could name a file outside `engine/`.
    pub fn engine_store(&self, id: &str) -> Result<EngineStore, StoreError> {
        validate_id(id).map_err(|_| StoreError::InvalidSessionId(id.to_string()))?;
        Ok(match &self.engine {
            Some(engine) => EngineStore::Postgres(crate::engine::PgStore {
                engine: engine.clone(),
                session: id.to_string(),
                fence: None,
            }),
            None => EngineStore::new(self.data_dir.join(ENGINE_DIR), id),
        })
    }

    /// Creates the session unless it exists; returns the stored record and whether it is new.
    pub fn create_session(
        &self,
        id: &str,
        webhook: Option<&WebhookConfig>,
    ) -> Result<(SessionRecord, bool), StoreError> {
        let now = crate::session::state::timestamp(chrono::Utc::now());
        let webhook_json = webhook.map(|w| serde_json::to_string(&StoredWebhook::from(w)).expect("webhook serializes"));
        let inserted = self.execute(
            "INSERT INTO sessions (id, webhook, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO NOTHING",
            vec![id.to_value(), webhook_json.to_value(), now.to_value()],
        )?;
        self.forget_webhook(id);
        let record = self.session(id)?.ok_or_else(|| StoreError::Corrupt(format!("session {id} vanished")))?;
        Ok((record, inserted == 1))
    }

    /// The session `id`; `None` also for an id that is not a valid session id.
    pub fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        if validate_id(id).is_err() {
            return Ok(None);
        }
        let id = id.to_string();
        self.read(move |db| {
            db.query_opt(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"), args![id])?
                .map(|row| row_to_record(&row))
                .transpose()
        })
    }

    /// Every session of the registry. A row whose id is not a valid session id (the file
    /// was edited, or comes from elsewhere) is skipped with a warning: ids name files.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self
            .read(|db| db.query(&format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at, id"), args![]))?;
        let mut records = Vec::new();
        for row in rows {
            let id: String = row.get(0)?;
            if let Err(e) = validate_id(&id) {
                tracing::warn!("skipping the stored session {id:?}: {e}");
                continue;
            }
            records.push(row_to_record(&row)?);
        }
        Ok(records)
    }

    pub fn set_me(&self, id: &str, me: Option<&Me>) -> Result<(), StoreError> {
        let json = me.map(|m| serde_json::to_string(m).expect("me serializes"));
        self.execute("UPDATE sessions SET me = ?2 WHERE id = ?1", vec![id.to_value(), json.to_value()])?;
        Ok(())
    }

    /// Replaces (or with `None` removes) a session's webhook; false for an unknown session.
    pub fn set_webhook(&self, id: &str, webhook: Option<&WebhookConfig>) -> Result<bool, StoreError> {
        let json = webhook.map(|w| serde_json::to_string(&StoredWebhook::from(w)).expect("webhook serializes"));
        let changed =
            self.execute("UPDATE sessions SET webhook = ?2 WHERE id = ?1", vec![id.to_value(), json.to_value()])? == 1;
        self.forget_webhook(id);
        Ok(changed)
    }

    /// Sets (or with `None` removes) the session's proxy; false for an unknown session.
    pub fn set_proxy(&self, id: &str, proxy: Option<&str>) -> Result<bool, StoreError> {
        Ok(self.execute("UPDATE sessions SET proxy = ?2 WHERE id = ?1", vec![id.to_value(), proxy.to_value()])? == 1)
    }

    pub fn set_link_confirmed(&self, id: &str, confirmed: bool) -> Result<(), StoreError> {
        self.execute(
            "UPDATE sessions SET link_confirmed = ?2 WHERE id = ?1",
            vec![id.to_value(), confirmed.to_value()],
        )?;
        Ok(())
    }

    pub fn set_last_state(&self, id: &str, state: &LastState) -> Result<(), StoreError> {
        let json = serde_json::to_string(state).expect("states serialize");
        self.execute("UPDATE sessions SET last_state = ?2 WHERE id = ?1", vec![id.to_value(), json.to_value()])?;
        Ok(())
    }

    /// Forgets a session and everything kept for it, in one transaction.
    pub fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        let deleted = self.write_blocking({
            let id = id.clone();
            move |db| {
                for table in [
                    "received_messages",
                    "outgoing_queue",
                    "pending_upserts",
                    "inbound_keys",
                    "idempotency_keys",
                    "sent_messages",
                ] {
                    db.execute(&format!("DELETE FROM {table} WHERE session = ?1"), args![id])?;
                }
                cloud::delete_session_rows(db, &id)?;
                // Events still to deliver (the logout among them) go out; the history goes.
                db.execute("DELETE FROM webhook_events WHERE session = ?1 AND status != 'pending'", args![id])?;
                Ok(db.execute("DELETE FROM sessions WHERE id = ?1", args![id])? == 1)
            }
        })?;
        self.forget_webhook(&id);
        Ok(deleted)
    }

    /// Checks the database file itself (for `doctor` and `/health`); on PostgreSQL, that
    /// the server answers.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        match self.sqlite() {
            Some(db) => Ok(db.query_row("PRAGMA quick_check", [], |row| row.get(0))?),
            None => self.read(|db| db.query_one("SELECT 'ok'", args![])?.get(0)),
        }
    }

    /// The thorough check (`PRAGMA integrity_check`): "ok", or the problems found.
    pub fn full_integrity_check(&self) -> Result<String, StoreError> {
        match self.sqlite() {
            Some(db) => integrity_check(&db),
            None => self.integrity_check(),
        }
    }
}

/// `PRAGMA integrity_check` of any SQLite database: "ok", or its first problems.
pub fn integrity_check(db: &Connection) -> Result<String, StoreError> {
    let mut statement = db.prepare("PRAGMA integrity_check(5)")?;
    let lines = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(lines.join("; "))
}

/// `PRAGMA user_version`: how many migrations a registry has had.
pub fn schema_version(db: &Connection) -> Result<usize, StoreError> {
    let done: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    Ok(usize::try_from(done).unwrap_or(usize::MAX))
}

fn newer_schema(found: usize) -> StoreError {
    StoreError::Corrupt(format!(
        "the database is from a newer wagate (schema {found}, this build knows {SCHEMA_VERSION})"
    ))
}

/// The stored form keeps the secrets (the API form never shows them).
#[derive(Serialize, Deserialize)]
struct StoredWebhook {
    url: String,
    secret: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    format: WebhookFormat,
}

impl From<&WebhookConfig> for StoredWebhook {
    fn from(w: &WebhookConfig) -> Self {
        Self {
            url: w.url.clone(),
            secret: w.secret.clone(),
            events: w.events.clone(),
            token: w.token.clone(),
            format: w.format,
        }
    }
}

type RowResult = Result<SessionRecord, StoreError>;

fn row_to_record(row: &Row) -> RowResult {
    let id: String = row.get(0)?;
    let webhook: Option<String> = row.get(1)?;
    let created_at: String = row.get(2)?;
    let me: Option<String> = row.get(3)?;
    let link_confirmed: bool = row.get(4)?;
    let proxy: Option<String> = row.get(5)?;
    let last_state: Option<String> = row.get(6)?;
    {
        let webhook = webhook
            .map(|json| serde_json::from_str::<StoredWebhook>(&json))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("webhook of {id}: {e}")))?
            .map(|w| WebhookConfig {
                url: w.url,
                secret: w.secret,
                events: w.events,
                token: w.token,
                format: w.format,
            });
        let me = me
            .map(|json| serde_json::from_str::<Me>(&json))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("identity of {id}: {e}")))?;
        // An unreadable last state only costs the display of it.
        let last_state = last_state.and_then(|json| serde_json::from_str(&json).ok());
        Ok(SessionRecord { id: id.clone(), webhook, created_at, me, link_confirmed, proxy, last_state })
    }
}

fn migrate(db: &mut Connection) -> Result<(), StoreError> {
    let done = schema_version(db)?;
    if done > SCHEMA_VERSION {
        return Err(newer_schema(done));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = db.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Stores on both databases for the tests of the store's code, which must behave alike.
#[cfg(test)]
pub(crate) mod testing {
    use super::Store;
    use crate::pg_testing::TestDatabase;

    /// A store to test, which can be opened again (as after a restart).
    pub(crate) struct TestStore {
        pub name: &'static str,
        store: Option<Store>,
        dir: tempfile::TempDir,
        database: Option<TestDatabase>,
    }

    impl TestStore {
        pub(crate) fn store(&self) -> &Store {
            self.store.as_ref().expect("the store is open")
        }

        /// Closes the store and opens the same database anew (as after a restart).
        pub(crate) fn reopen(&mut self) {
            self.store = None;
            self.store = Some(match &self.database {
                None => Store::open(self.dir.path()).unwrap(),
                Some(database) => Store::open_postgres(self.dir.path(), &database.url()).unwrap(),
            });
        }
    }

    /// A fresh store on SQLite and one on PostgreSQL.
    pub(crate) async fn both() -> Vec<TestStore> {
        let sqlite_dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(sqlite_dir.path()).unwrap();
        let database = TestDatabase::create().await;
        let pg_dir = tempfile::tempdir().unwrap();
        let postgres = Store::open_postgres(pg_dir.path(), &database.url()).unwrap();
        vec![
            TestStore { name: "sqlite", store: Some(sqlite), dir: sqlite_dir, database: None },
            TestStore { name: "postgres", store: Some(postgres), dir: pg_dir, database: Some(database) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_created_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hook = WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            secret: Some("s3cret".into()),
            events: Some(vec!["connection.update".into()]),
            token: Some("t".into()),
            format: WebhookFormat::Compat,
        };
        let (record, created) = store.create_session("WA-Acme", Some(&hook)).unwrap();
        assert!(created);
        assert_eq!(record.webhook, Some(hook.clone()));
        let (_, created_again) = store.create_session("WA-Acme", None).unwrap();
        assert!(!created_again, "a second create keeps the first record");
        let me = Me { jid: Some("1555:1@s.whatsapp.net".into()), phone: Some("1555".into()), ..Default::default() };
        store.set_me("WA-Acme", Some(&me)).unwrap();
        store.set_link_confirmed("WA-Acme", true).unwrap();
        let last = LastState {
            state: crate::session::StateKind::LoggedOut,
            reason: Some("logged_out".into()),
            code: Some(401),
            since: "2026-01-01T00:00:00.000Z".into(),
            banned_until: None,
        };
        store.set_last_state("WA-Acme", &last).unwrap();
        drop(store);

        let read_only = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(read_only.sessions().unwrap()[0].last_state, Some(last));
        assert!(read_only.set_me("WA-Acme", None).is_err(), "a read-only registry refuses writes");
        assert_eq!(read_only.full_integrity_check().unwrap(), "ok");
        drop(read_only);
        assert!(matches!(Store::open_read_only(&dir.path().join("nowhere")), Err(StoreError::Missing(_))));

        let store = Store::open(dir.path()).unwrap();
        let records = store.sessions().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].webhook, Some(hook));
        assert_eq!(records[0].me, Some(me));
        assert!(records[0].link_confirmed);
        assert!(store.delete_session("WA-Acme").unwrap());
        assert!(store.session("WA-Acme").unwrap().is_none());
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[tokio::test]
    async fn the_registry_is_the_same_on_both_databases() {
        for mut test in testing::both().await {
            let hook = WebhookConfig {
                url: "http://127.0.0.1:9/hook".into(),
                secret: Some("s3cret".into()),
                events: None,
                token: None,
                format: WebhookFormat::Native,
            };
            let store = test.store();
            assert!(store.create_session("WA-B", Some(&hook)).unwrap().1, "{}", test.name);
            assert!(store.create_session("WA-A", None).unwrap().1);
            assert!(!store.create_session("WA-A", Some(&hook)).unwrap().1, "{}: created once", test.name);
            let me = Me { jid: Some("1555:1@s.whatsapp.net".into()), ..Default::default() };
            store.set_me("WA-A", Some(&me)).unwrap();
            store.set_link_confirmed("WA-A", true).unwrap();
            assert!(store.set_proxy("WA-A", Some("socks5://127.0.0.1:1")).unwrap());
            assert!(!store.set_proxy("WA-none", None).unwrap(), "{}: unknown session", test.name);
            assert_eq!(store.session_webhook("WA-B").unwrap(), Some(hook.clone()));
            let a = store.session("WA-A").unwrap().unwrap();
            assert_eq!((a.me, a.link_confirmed, a.proxy.as_deref()), (Some(me), true, Some("socks5://127.0.0.1:1")));
            assert_eq!(store.integrity_check().unwrap(), "ok");
            assert!(store.delete_session("WA-B").unwrap());
            test.reopen();
            let ids: Vec<String> = test.store().sessions().unwrap().into_iter().map(|r| r.id).collect();
            assert_eq!(ids, ["WA-A"], "{}: what was written survives reopening", test.name);
        }
    }

    #[test]
    fn stored_ids_that_are_not_valid_are_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_session("WA-Ok", None).unwrap();
        store
            .write_blocking(|db| {
                for id in ["../../x", "/etc/x", ""] {
                    db.execute("INSERT INTO sessions (id, created_at) VALUES (?1, 'then')", args![id])?;
                }
                Ok(())
            })
            .unwrap();
        let ids: Vec<String> = store.sessions().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["WA-Ok"], "the others are skipped");
        assert!(store.session("../../x").unwrap().is_none());
        assert!(store.session("WA-Ok").unwrap().is_some());
        for bad in ["../../x", "/etc/x", "", "a/b", ".."] {
            assert!(matches!(store.engine_store(bad), Err(StoreError::InvalidSessionId(_))), "{bad}");
        }
        let engine = store.engine_store("WA-Ok").unwrap().shard_path().unwrap();
        assert_eq!(engine.parent(), Some(dir.path().join("engine").as_path()));
    }

    #[tokio::test]
    async fn old_keys_sent_messages_and_dead_events_are_pruned() {
        for test in testing::both().await {
            eprintln!("on {}", test.name);
            old_keys_sent_messages_and_dead_events_are_pruned_on(test.store()).await;
        }
    }

    async fn old_keys_sent_messages_and_dead_events_are_pruned_on(store: &Store) {
        use crate::engine::{Content, Outgoing};
        const DAY: u64 = 24 * 3600 * 1000;
        let now = 100 * DAY;
        let (old, recent) = (now - 31 * DAY, now - DAY);
        let chat = "1555@s.whatsapp.net";
        for (key, id, at) in [("k-old", "m-old", old), ("k-new", "m-new", recent)] {
            assert_eq!(store.claim_idempotency_key("s", key, id, "run1", at).await.unwrap(), KeyClaim::Claimed);
            store.write(move |db| record_sent(db, "s", id, chat, at)).await.unwrap();
        }
        // Old, but still waiting in the outgoing queue: its key and state stay.
        assert_eq!(
            store.claim_idempotency_key("s", "k-queued", "m-queued", "run1", old).await.unwrap(),
            KeyClaim::Claimed
        );
        let text = Outgoing { content: Content::Text("hi".into()), reply_to: None };
        assert!(store.enqueue("s", "m-queued", chat, &text, Some("k-queued"), None, old).unwrap());
        // A key whose send never finished, long ago.
        assert_eq!(store.claim_idempotency_key("s", "k-lost", "m-lost", "run0", old).await.unwrap(), KeyClaim::Claimed);

        let before = now - 30 * DAY;
        assert_eq!(store.prune_sent(before).unwrap(), (2, 1), "(keys, sent messages)");
        assert!(store.sent_message("s", "m-old").unwrap().is_none());
        assert!(store.sent_message("s", "m-new").unwrap().is_some());
        assert!(store.sent_message("s", "m-queued").unwrap().is_some());
        assert_eq!(store.next_queued("s").unwrap().unwrap().id, "m-queued");
        assert_eq!(store.claim_idempotency_key("s", "k-old", "m-again", "run2", now).await.unwrap(), KeyClaim::Claimed);
        assert!(matches!(
            store.claim_idempotency_key("s", "k-new", "x", "run2", now).await.unwrap(),
            KeyClaim::Sent(_)
        ));
        assert!(matches!(
            store.claim_idempotency_key("s", "k-queued", "x", "run2", now).await.unwrap(),
            KeyClaim::Sent(m) if m.id == "m-queued"
        ));

        let event = |id: &str| NewEvent {
            id: id.into(),
            session: "s".into(),
            event: "message.received".into(),
            body: "{}".into(),
            created_ms: old,
            held: false,
        };
        store.enqueue_events(["dead-old", "dead-new", "delivered-new", "pending"].map(event).to_vec()).await.unwrap();
        let queued = store.next_pending("s", 0, 10).unwrap();
        store.mark_dead(queued[0].seq, Some(410), "gone", old).await.unwrap();
        store.mark_dead(queued[1].seq, Some(410), "gone", recent).await.unwrap();
        store.mark_delivered_soon(queued[2].seq, 200, recent);
        store.flush().await.unwrap();
        assert_eq!(store.prune_dead(before).unwrap(), 1);
        let left: Vec<String> = store.deliveries(Some("s"), None, 10).unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(left, ["pending", "delivered-new", "dead-new"]);
        assert_eq!(store.prune_dead(now).unwrap(), 1);
        assert_eq!(store.prune_delivered(now).unwrap(), 1);
        assert_eq!(store.pending_count().unwrap(), 1, "pending events are never pruned");
    }
}
