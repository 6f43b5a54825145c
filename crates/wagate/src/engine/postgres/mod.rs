//! The sessions' engine state on PostgreSQL, for several nodes: the PostgreSQL sibling of
//! `shards` (SQLite).
//!
//! Every device of every session lives in one database, each table keyed by a device id, as
//! in the client library's own SQLite store; `wagate_engine_devices` says which id belongs to
//! which session. Ids are never reused, and every engine table references the mapping, so a
//! write that comes late for a wiped device fails instead of leaving rows behind.
//!
//! One pool serves all the devices of the process: a session costs no connection of its own.
//!
//! Fencing: a device opened with a [`Fence`] runs each of its writes in a transaction that
//! first takes a share lock on its session's lease row at the fence's generation. When
//! another node has taken the lease over (the generation moved on), the write fails and
//! changes nothing; while it holds, the row lock keeps the lease from moving on under it.
//!
//! The semantics of each method follow the library's SQLite store
//! (whatsapp-rust-sqlite-storage 0.7): what it returns, what the expiry cut-offs compare,
//! where it upserts. Values the library serialises itself are stored as serde JSON.

mod device;
mod schema;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

pub use device::PgDevice;
pub use schema::{MIGRATION_LOCK_KEY, SCHEMA_VERSION};

/// Fencing: only the holder of a session's lease, at this generation, may write the
/// session's engine rows.
#[derive(Clone, Debug)]
pub struct Fence {
    pub session: String,
    pub generation: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PgEngineError {
    /// The URL, or the TLS settings it names (`sslrootcert`).
    #[error("{0}")]
    BadUrl(String),
    #[error("the PostgreSQL connection pool cannot be set up: {0}")]
    PoolSetup(String),
    #[error("no PostgreSQL connection could be had: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("migrating the engine tables to version {version} failed: {}", describe(.source))]
    Migration { version: i32, source: tokio_postgres::Error },
    #[error(
        "the database's engine tables are at version {found}, newer than this build knows ({known}): \
         upgrade wagate on this node"
    )]
    NewerSchema { found: i32, known: i32 },
    #[error("this node no longer holds the lease of session {session}; its engine state was not changed")]
    LeaseLost { session: String },
    #[error("the keys of session {session} cannot be read (the other sessions are not affected): {message}")]
    Unreadable { session: String, message: String },
    #[error("session {session} has device id {device}, out of the client library's range")]
    DeviceIdOutOfRange { session: String, device: i64 },
}

/// A PostgreSQL error with what the server said, when it said something (the driver's own
/// `Display` of a server error is only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// How long a call waits for a connection of the pool, and for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The engine store on PostgreSQL: one pool shared by every device of the process.
#[derive(Clone)]
pub struct PgEngine {
    pool: Pool,
}

impl PgEngine {
    /// Connects (pool of at most `max_connections`) and runs this module's migrations.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, PgEngineError> {
        let settings =
            crate::store::postgres::Settings::parse(url).map_err(|e| PgEngineError::BadUrl(e.to_string()))?;
        let manager = Manager::from_config(
            settings.config,
            settings.tls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| PgEngineError::PoolSetup(e.to_string()))?;
        let mut client = pool.get().await?;
        schema::migrate(&mut client).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The device of `session`; with `create`, a session without one gets a new device id;
    /// without, `None`. Creating the mapping is a write: with a fence, only the lease holder
    /// does it.
    pub async fn open_device(
        &self,
        session: &str,
        create: bool,
        fence: Option<Fence>,
    ) -> Result<Option<PgDevice>, PgEngineError> {
        let mut client = self.pool.get().await?;
        let found = device_of(&client, session).await?;
        let device = match found {
            Some(device) => device,
            None if create => {
                let tx = client.transaction().await?;
                if let Some(fence) = &fence {
                    if !device::holds_lease(&tx, fence).await? {
                        return Err(PgEngineError::LeaseLost { session: fence.session.clone() });
                    }
                }
                // Two opens at once: one inserts, the other finds its row.
                let inserted = tx
                    .query_opt(
                        "INSERT INTO wagate_engine_devices (session, created_ms) VALUES ($1, $2) \
                         ON CONFLICT (session) DO NOTHING RETURNING device",
                        &[&session, &chrono::Utc::now().timestamp_millis()],
                    )
                    .await?;
                let device = match inserted {
                    Some(row) => row.get(0),
                    None => tx
                        .query_one("SELECT device FROM wagate_engine_devices WHERE session = $1", &[&session])
                        .await?
                        .get(0),
                };
                tx.commit().await?;
                device
            }
            None => return Ok(None),
        };
        let id = i32::try_from(device)
            .map_err(|_| PgEngineError::DeviceIdOutOfRange { session: session.to_string(), device })?;
        Ok(Some(PgDevice::new(self.pool.clone(), session.to_string(), id, fence)))
    }

    /// Whether the fence's lease is still held at its generation and has not lapsed.
    pub async fn holds(&self, fence: &Fence) -> Result<bool, PgEngineError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM wagate_leases WHERE session = $1 AND generation = $2 AND expires_at > now()",
                &[&fence.session, &fence.generation],
            )
            .await?;
        Ok(row.is_some())
    }

    /// The library's credentials of the session, `None` when it has no device (or its device
    /// was never saved); an error names a session whose credentials cannot be decoded.
    pub async fn load_device(&self, session: &str) -> Result<Option<wacore::store::Device>, PgEngineError> {
        match self.open_device(session, false, None).await? {
            Some(device) => device.credentials().await,
            None => Ok(None),
        }
    }

    /// Deletes every row of the session's device and its mapping, in one transaction. Other
    /// sessions' rows are not touched.
    pub async fn wipe(&self, session: &str) -> Result<(), PgEngineError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let found =
            tx.query_opt("SELECT device FROM wagate_engine_devices WHERE session = $1 FOR UPDATE", &[&session]).await?;
        if let Some(row) = found {
            let device: i64 = row.get(0);
            for table in schema::DEVICE_TABLES {
                tx.execute(&format!("DELETE FROM {table} WHERE device = $1"), &[&device]).await?;
            }
            tx.execute("DELETE FROM wagate_engine_devices WHERE device = $1", &[&device]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether the session has a device (keys, or at least an id reserved for them).
    pub async fn has_keys(&self, session: &str) -> Result<bool, PgEngineError> {
        let client = self.pool.get().await?;
        Ok(device_of(&client, session).await?.is_some())
    }

    /// (session, device id, linked) of every device, ordered by session (byte order).
    /// Linked: its credentials name a phone number.
    pub async fn stored_devices(&self) -> Result<Vec<(String, i64, bool)>, PgEngineError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT m.session, m.device, COALESCE(c.pn <> '', false) \
                 FROM wagate_engine_devices m LEFT JOIN wagate_engine_credentials c ON c.device = m.device \
                 ORDER BY m.session COLLATE \"C\"",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
    }
}

/// The device id of `session`.
async fn device_of(client: &tokio_postgres::Client, session: &str) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client.query_opt("SELECT device FROM wagate_engine_devices WHERE session = $1", &[&session]).await?;
    Ok(row.map(|row| row.get(0)))
}

#[cfg(test)]
pub(crate) mod tests;
