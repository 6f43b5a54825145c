//! Where a session's engine keeps its credentials and Signal state: its device in a shard
//! file of the data directory (SQLite, one box), or in PostgreSQL (several nodes), there
//! fenced by the session's lease.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::postgres::{Fence, PgEngine};
use super::shards::ShardStore;
use super::EngineError;

#[derive(Debug, Clone)]
pub enum EngineStore {
    Shard(ShardStore),
    Postgres(PgStore),
}

/// A session's device in PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pub engine: PgEngine,
    pub session: String,
    /// Set when several nodes share the database: writes need the lease at this generation.
    pub fence: Option<Fence>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("session", &self.session).field("fence", &self.fence).finish()
    }
}

impl EngineStore {
    /// The store of `session` (a valid session id) in the engine folder `dir`.
    pub fn new(dir: impl AsRef<Path>, session: &str) -> Self {
        Self::Shard(ShardStore::new(dir, session))
    }

    /// The same store, whose writes need the session's lease at `generation` (several nodes).
    pub fn fenced(self, generation: i64) -> Self {
        match self {
            Self::Postgres(pg) => {
                let fence = Some(Fence { session: pg.session.clone(), generation });
                Self::Postgres(PgStore { fence, ..pg })
            }
            other => other,
        }
    }

    pub fn session(&self) -> &str {
        match self {
            Self::Shard(shard) => shard.session(),
            Self::Postgres(pg) => &pg.session,
        }
    }

    /// The shard file of the session's device (`None` on PostgreSQL).
    pub fn shard_path(&self) -> Option<PathBuf> {
        match self {
            Self::Shard(shard) => Some(shard.shard_path()),
            Self::Postgres(_) => None,
        }
    }

    /// The library's storage of the session's device, created if need be.
    pub(super) async fn backend(&self) -> Result<Arc<dyn wacore::store::traits::Backend>, EngineError> {
        let missing = || EngineError::Store("the session's device could not be created".into());
        Ok(match self {
            Self::Shard(shard) => {
                let device = super::shards::open_device(shard, true).await?.ok_or_else(missing)?;
                // Read once before the library does, so that keys that cannot be decoded are
                // reported as this session's (the library would only say that a client could
                // not be built).
                device.credentials().await?;
                Arc::new(device)
            }
            Self::Postgres(pg) => {
                let device = pg.engine.open_device(&pg.session, true, pg.fence.clone()).await?.ok_or_else(missing)?;
                device.credentials().await?;
                Arc::new(device)
            }
        })
    }

    /// The library's credentials of the session, `None` when it has no device.
    pub(super) async fn credentials(&self) -> Result<Option<wacore::store::Device>, EngineError> {
        Ok(match self {
            Self::Shard(shard) => super::shards::load_device(shard).await?,
            Self::Postgres(pg) => pg.engine.load_device(&pg.session).await?,
        })
    }

    /// Deletes the session's device.
    pub(super) async fn wipe(&self) -> Result<(), EngineError> {
        match self {
            Self::Shard(shard) => super::shards::wipe(shard).await?,
            Self::Postgres(pg) => pg.engine.wipe(&pg.session).await?,
        }
        Ok(())
    }

    /// Whether this node still holds the session's lease (always, on one box): asked before
    /// a `replaced` close is fought back.
    pub async fn holds_lease(&self) -> Result<bool, EngineError> {
        match self {
            Self::Postgres(PgStore { engine, fence: Some(fence), .. }) => Ok(engine.holds(fence).await?),
            _ => Ok(true),
        }
    }
}
