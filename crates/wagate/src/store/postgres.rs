//! wagate's tables in PostgreSQL, for several nodes sharing their sessions: the schema, its
//! migrations, and the threads that hold the connections.
//!
//! The store's code is the same as on SQLite (see `sql`); the blocking client runs on
//! threads of its own (one writer, a few readers), as SQLite's connections do, so no async
//! worker ever waits on the network inside the client, and the client's own runtime never
//! meets the gateway's.

use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use super::sql::{Db, PgDb, PreparedStatements};
use super::StoreError;

/// The schema on PostgreSQL, one entry per version; the same tables and columns as the
/// SQLite `MIGRATIONS` reach, with PostgreSQL's types (every integer BIGINT). A change of
/// the schema adds an entry to both lists.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        webhook TEXT,
        created_at TEXT NOT NULL,
        me TEXT,
        link_confirmed BIGINT NOT NULL DEFAULT 0,
        proxy TEXT,
        last_state TEXT
    );
    CREATE TABLE webhook_events (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        session TEXT NOT NULL,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_ms BIGINT NOT NULL,
        last_status BIGINT,
        last_error TEXT,
        finished_ms BIGINT
    );
    CREATE INDEX webhook_events_queue ON webhook_events (status, session, seq);
    CREATE TABLE sent_messages (
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        chat TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (session, id)
    );
    CREATE INDEX sent_messages_age ON sent_messages (created_ms);
    CREATE TABLE idempotency_keys (
        session TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT,
        created_ms BIGINT NOT NULL,
        run TEXT,
        PRIMARY KEY (session, key)
    );
    CREATE INDEX idempotency_keys_age ON idempotency_keys (created_ms);
    CREATE TABLE received_messages (
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        kind TEXT NOT NULL,
        text TEXT,
        media TEXT,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (session, id)
    );
    CREATE INDEX received_messages_age ON received_messages (received_ms);
    CREATE TABLE outgoing_queue (
        seq BIGSERIAL PRIMARY KEY,
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        message TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX outgoing_queue_order ON outgoing_queue (session, seq);
    CREATE TABLE pending_upserts (
        seq BIGSERIAL PRIMARY KEY,
        session TEXT NOT NULL,
        data TEXT NOT NULL,
        media TEXT
    );
    CREATE TABLE inbound_keys (
        session TEXT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        id TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        PRIMARY KEY (session, chat, sender, id)
    );
    CREATE INDEX inbound_keys_age ON inbound_keys (received_ms);",
    // Several nodes: who runs which session (see `cluster`).
    crate::cluster::leases::SCHEMA,
    super::cloud::POSTGRES_MIGRATION,
    crate::cluster::leases::SCHEMA_OFFERS_AND_CLOCKS,
];

/// The version of wagate's own tables this build brings them to.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The advisory lock every wagate migration of a database runs under, so that nodes
/// starting together migrate one after the other.
pub const MIGRATION_LOCK: i64 = 0x7761_6761_7465;

/// The versions of each part of the schema (`store` here, `engine` for the client library's
/// tables); created by whichever migrates first.
pub const CREATE_MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS wagate_migrations (component TEXT PRIMARY KEY, version INTEGER NOT NULL)";

pub use super::pg_settings::Settings;

/// A new connection.
pub fn connect(settings: &Settings) -> Result<::postgres::Client, StoreError> {
    settings
        .blocking()
        .connect(settings.tls.clone())
        .map_err(|e| StoreError::Database(format!("cannot reach the database: {e}")))
}

/// Brings wagate's tables to this build's schema (refusing a newer one).
pub fn migrate(config: &Settings) -> Result<(), StoreError> {
    let mut client = connect(config)?;
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(CREATE_MIGRATIONS_TABLE)?;
    let done: i32 = tx
        .query_opt("SELECT version FROM wagate_migrations WHERE component = 'store'", &[])?
        .map(|row| row.get(0))
        .unwrap_or(0);
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database is from a newer wagate (schema {done}, this build knows {})",
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[done..] {
        tx.batch_execute(migration)?;
    }
    let version = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO wagate_migrations (component, version) VALUES ('store', $1)
         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        &[&version],
    )?;
    tx.commit()?;
    Ok(())
}

/// A read: runs on a reader's connection.
type ReadJob = Box<dyn FnOnce(&dyn Db) + Send>;

/// How many connections serve reads.
const READERS: usize = 2;

/// The reading threads, each with its own connection (made again after it broke).
pub struct Readers {
    jobs: Mutex<mpsc::Sender<ReadJob>>,
}

impl Readers {
    pub fn spawn(config: Settings) -> Self {
        let (jobs, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..READERS {
            let (queue, config) = (queue.clone(), config.clone());
            thread::Builder::new()
                .name(format!("wagate-store-reader-{index}"))
                .spawn(move || read_loop(&config, &queue))
                .expect("a store reader thread starts");
        }
        Self { jobs: Mutex::new(jobs) }
    }

    /// Runs `work` on the next free reader and waits for its answer.
    pub fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: ReadJob = Box::new(move |db| {
            let _ = reply.send(work(db));
        });
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).send(job).map_err(|_| StoreError::WriterGone)?;
        answer.recv().map_err(|_| StoreError::Database("the database could not be reached for a read".into()))?
    }
}

fn read_loop(config: &Settings, queue: &Mutex<mpsc::Receiver<ReadJob>>) {
    let mut client: Option<::postgres::Client> = None;
    let mut prepared = PreparedStatements::default();
    loop {
        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let open = match &mut client {
            Some(open) if !open.is_closed() => open,
            _ => match connect(config) {
                Ok(fresh) => {
                    prepared = PreparedStatements::default();
                    client.insert(fresh)
                }
                Err(e) => {
                    // Dropping the job tells its caller that the read failed.
                    tracing::warn!("a read of the database failed: {e}");
                    continue;
                }
            },
        };
        job(&PgDb::new(open, &prepared));
    }
}
