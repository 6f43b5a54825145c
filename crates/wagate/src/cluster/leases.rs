//! The lease and node rows in PostgreSQL: who owns which session, at which fencing
//! generation, until when. Every time is the database's clock (`now()`), so nodes whose
//! clocks disagree still agree on who holds what.
//!
//! A lease is taken only when it has no row or its row has lapsed, and taking it moves its
//! generation on: a write of the former holder (fenced at the old generation, see
//! `engine::postgres::Fence`) fails from then on.

use std::time::Duration;

use deadpool_postgres::Pool;

/// The tables of the cluster (run by the store's migrations, `store::postgres`).
pub const SCHEMA: &str = "CREATE TABLE wagate_nodes (
        id TEXT PRIMARY KEY,
        advertise_url TEXT NOT NULL,
        max_sessions BIGINT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        draining BOOLEAN NOT NULL DEFAULT false
    );
    CREATE TABLE IF NOT EXISTS wagate_leases (
        session TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        generation BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX IF NOT EXISTS wagate_leases_owner ON wagate_leases (owner);";

/// The second migration of the cluster's tables: a lease can be offered to one node (a
/// move), and each node records how far its clock is from the database's (for `doctor`).
/// Every node looks for offers to it about once a second: the index holds the few rows
/// that have one.
pub const SCHEMA_OFFERS_AND_CLOCKS: &str = "ALTER TABLE wagate_leases ADD COLUMN offered_to TEXT;
    CREATE INDEX wagate_leases_offered ON wagate_leases (offered_to) WHERE offered_to IS NOT NULL;
    ALTER TABLE wagate_nodes ADD COLUMN clock_offset_ms DOUBLE PRECISION NOT NULL DEFAULT 0;";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no connection to the database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("the database: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Url(String),
}

/// What the server said, when it said something (the driver's own text is "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// A node as the others see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct NodeRow {
    pub id: String,
    pub advertise_url: String,
    /// Sessions this node takes at most (0: no limit).
    pub max_sessions: i64,
    /// Leases it holds now.
    pub sessions: i64,
    /// Its heartbeat is recent (within one lease time).
    pub alive: bool,
    /// It is handing its sessions over (stopping).
    pub draining: bool,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_s: f64,
    /// How far its clock was ahead of the database's (negative: behind) at its last
    /// heartbeat, in milliseconds. Leases use the database's clock only; this matters for
    /// logs and for the times in events.
    pub clock_offset_ms: f64,
}

impl NodeRow {
    /// How many more sessions it takes (`i64::MAX` less its sessions without a maximum).
    pub fn room(&self) -> i64 {
        if self.max_sessions > 0 {
            self.max_sessions - self.sessions
        } else {
            i64::MAX - self.sessions
        }
    }
}

/// Who holds a session's lease now (a lapsed lease has no owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub advertise_url: String,
}

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

/// Records this node (again) as alive, not draining, and lets go of the leases an earlier run
/// under the same name left (it is gone: node names are unique), so that they are taken at
/// once instead of when they lapse.
pub async fn join(pool: &Pool, node: &str, advertise_url: &str, max_sessions: i64) -> Result<(), LeaseError> {
    let client = pool.get().await?;
    client
        .execute("UPDATE wagate_leases SET expires_at = now() WHERE owner = $1 AND expires_at > now()", &[&node])
        .await?;
    client
        .execute(
            "INSERT INTO wagate_nodes (id, advertise_url, max_sessions) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET advertise_url = excluded.advertise_url, max_sessions = excluded.max_sessions,
             started_at = now(), heartbeat_at = now(), draining = false",
            &[&node, &advertise_url, &max_sessions],
        )
        .await?;
    Ok(())
}

/// Renews the node's heartbeat and the leases of `sessions` it still holds; returns those
/// (a lease missing from the answer was lost: it lapsed, or another node has it).
pub async fn renew(
    pool: &Pool,
    node: &str,
    sessions: &[String],
    ttl: Duration,
) -> Result<Vec<(String, i64)>, LeaseError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE wagate_nodes SET heartbeat_at = now(),
             clock_offset_ms = $2 - EXTRACT(EPOCH FROM clock_timestamp())::float8 * 1000 WHERE id = $1",
            &[&node, &(crate::webhook::now_ms() as f64)],
        )
        .await?;
    let rows = client
        .query(
            "UPDATE wagate_leases SET expires_at = now() + make_interval(secs => $3)
             WHERE owner = $1 AND session = ANY($2) AND expires_at > now()
             RETURNING session, generation",
            &[&node, &sessions, &seconds(ttl)],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Takes the lease of `session` if it is free or has lapsed (and is not offered to another
/// node, or was offered more than a lease time ago); returns the new generation, `None` when
/// another node holds it, or when a write of its former holder still has the lease row
/// locked (tried again at the next look).
pub async fn claim(pool: &Pool, node: &str, session: &str, ttl: Duration) -> Result<Option<i64>, LeaseError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
    let claimed = tx
        .query_opt(
            "INSERT INTO wagate_leases (session, owner, generation, expires_at)
             VALUES ($1, $2, 1, now() + make_interval(secs => $3))
             ON CONFLICT (session) DO UPDATE SET owner = excluded.owner, generation = wagate_leases.generation + 1,
             expires_at = excluded.expires_at, offered_to = NULL
             WHERE wagate_leases.expires_at <= now()
             AND (wagate_leases.offered_to IS NULL OR wagate_leases.offered_to = excluded.owner
                  OR wagate_leases.expires_at <= now() - make_interval(secs => $3))
             RETURNING generation",
            &[&session, &node, &seconds(ttl)],
        )
        .await;
    match claimed {
        Ok(row) => {
            tx.commit().await?;
            Ok(row.map(|row| row.get(0)))
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sessions of the registry without a live lease and not offered to a node, oldest first,
/// at most `limit`.
pub async fn unowned(pool: &Pool, limit: i64, ttl: Duration) -> Result<Vec<String>, LeaseError> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT s.id FROM sessions s LEFT JOIN wagate_leases l ON l.session = s.id
             WHERE l.session IS NULL OR (l.expires_at <= now()
                   AND (l.offered_to IS NULL OR l.expires_at <= now() - make_interval(secs => $2)))
             ORDER BY s.created_at, s.id LIMIT $1",
            &[&limit, &seconds(ttl)],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Sessions offered to `node` (moved to it) that it has not taken yet.
pub async fn offered(pool: &Pool, node: &str) -> Result<Vec<String>, LeaseError> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT session FROM wagate_leases WHERE offered_to = $1 AND expires_at <= now() ORDER BY session",
            &[&node],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Lets go of the lease of `session` for `to` alone (a move): it lapses now, and only `to`
/// may take it during the next lease time. False when `node` did not hold it.
pub async fn offer(pool: &Pool, node: &str, session: &str, to: &str) -> Result<bool, LeaseError> {
    let changed = pool
        .get()
        .await?
        .execute(
            "UPDATE wagate_leases SET expires_at = now(), offered_to = $3
             WHERE owner = $1 AND session = $2 AND expires_at > now()",
            &[&node, &session, &to],
        )
        .await?;
    Ok(changed == 1)
}

/// How many sessions this node should hold: an even share among the live nodes that are
/// not draining, within its own maximum.
pub async fn fair_share(pool: &Pool, node: &str, max_sessions: i64, ttl: Duration) -> Result<i64, LeaseError> {
    let row = pool
        .get()
        .await?
        .query_one(
            "SELECT (SELECT COUNT(*) FROM sessions),
                    (SELECT COUNT(*) FROM wagate_nodes WHERE NOT draining
                     AND heartbeat_at > now() - make_interval(secs => $2)),
                    (SELECT draining FROM wagate_nodes WHERE id = $1)",
            &[&node, &seconds(ttl)],
        )
        .await?;
    let (total, live, draining): (i64, i64, Option<bool>) = (row.get(0), row.get(1), row.get(2));
    if draining.unwrap_or(false) {
        return Ok(0);
    }
    let share = (total + live.max(1) - 1) / live.max(1);
    Ok(if max_sessions > 0 { share.min(max_sessions) } else { share })
}

/// Lets go of the leases of `sessions` at once (their connections are closed), so that
/// another node takes them over without waiting for them to lapse.
pub async fn release(pool: &Pool, node: &str, sessions: &[String]) -> Result<u64, LeaseError> {
    Ok(pool
        .get()
        .await?
        .execute(
            "UPDATE wagate_leases SET expires_at = now() WHERE owner = $1 AND session = ANY($2)",
            &[&node, &sessions],
        )
        .await?)
}

/// Removes a deleted session's lease.
pub async fn forget(pool: &Pool, session: &str) -> Result<(), LeaseError> {
    pool.get().await?.execute("DELETE FROM wagate_leases WHERE session = $1", &[&session]).await?;
    Ok(())
}

/// Marks the node as draining (it takes nothing more) or gone.
pub async fn set_draining(pool: &Pool, node: &str, draining: bool) -> Result<(), LeaseError> {
    pool.get().await?.execute("UPDATE wagate_nodes SET draining = $2 WHERE id = $1", &[&node, &draining]).await?;
    Ok(())
}

/// Who holds the lease of `session` now.
pub async fn owner(pool: &Pool, session: &str) -> Result<Option<Owner>, LeaseError> {
    let row = pool
        .get()
        .await?
        .query_opt(
            "SELECT l.owner, n.advertise_url FROM wagate_leases l JOIN wagate_nodes n ON n.id = l.owner
             WHERE l.session = $1 AND l.expires_at > now()",
            &[&session],
        )
        .await?;
    Ok(row.map(|row| Owner { node: row.get(0), advertise_url: row.get(1) }))
}

/// The owners of every session with a live lease.
pub async fn owners(pool: &Pool) -> Result<Vec<(String, String)>, LeaseError> {
    let rows = pool
        .get()
        .await?
        .query("SELECT session, owner FROM wagate_leases WHERE expires_at > now() ORDER BY session", &[])
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Every node that has joined, with its leases.
pub async fn nodes(pool: &Pool, ttl: Duration) -> Result<Vec<NodeRow>, LeaseError> {
    let client = pool.get().await?;
    Ok(nodes_with(&client, ttl).await?)
}

/// [`nodes`] on a connection of the caller's (`doctor` has no pool).
pub async fn nodes_with(client: &tokio_postgres::Client, ttl: Duration) -> Result<Vec<NodeRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.id, n.advertise_url, n.max_sessions,
                    (SELECT COUNT(*) FROM wagate_leases l WHERE l.owner = n.id AND l.expires_at > now()),
                    n.heartbeat_at > now() - make_interval(secs => $1), n.draining,
                    EXTRACT(EPOCH FROM now() - n.heartbeat_at)::float8, n.clock_offset_ms
             FROM wagate_nodes n ORDER BY n.id",
            &[&seconds(ttl)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| NodeRow {
            id: row.get(0),
            advertise_url: row.get(1),
            max_sessions: row.get(2),
            sessions: row.get(3),
            alive: row.get(4),
            draining: row.get(5),
            heartbeat_age_s: row.get(6),
            clock_offset_ms: row.get(7),
        })
        .collect())
}

/// The live node, other than `except`, with the most free room (for placing a new session
/// or a moved one); `None` when there is none.
pub async fn roomiest(pool: &Pool, except: Option<&str>, ttl: Duration) -> Result<Option<NodeRow>, LeaseError> {
    let mut nodes = nodes(pool, ttl).await?;
    nodes.retain(|n| n.alive && !n.draining && Some(n.id.as_str()) != except);
    nodes.retain(|n| n.room() > 0);
    Ok(nodes.into_iter().max_by_key(|n| (n.room(), std::cmp::Reverse(n.id.clone()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_testing::TestDatabase;

    const TTL: Duration = Duration::from_secs(30);

    async fn cluster_tables() -> (TestDatabase, tempfile::TempDir, Pool) {
        let database = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_postgres(dir.path(), &database.url()).unwrap();
        store.create_session("s1", None).unwrap();
        let config: tokio_postgres::Config = database.url().parse().unwrap();
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = Pool::builder(manager).max_size(2).build().unwrap();
        for node in ["a", "b", "c"] {
            join(&pool, node, &format!("http://{node}"), 0).await.unwrap();
        }
        (database, dir, pool)
    }

    #[tokio::test]
    async fn a_session_offered_to_a_node_is_taken_by_that_node_alone() {
        let (_database, _dir, pool) = cluster_tables().await;
        let first = claim(&pool, "a", "s1", TTL).await.unwrap().expect("free");
        assert_eq!(claim(&pool, "b", "s1", TTL).await.unwrap(), None, "a holds it");
        assert!(!offer(&pool, "b", "s1", "c").await.unwrap(), "only the holder offers");
        assert!(offer(&pool, "a", "s1", "c").await.unwrap());

        // Lapsed, yet not free for everyone: b neither finds nor takes it.
        assert!(unowned(&pool, 10, TTL).await.unwrap().is_empty());
        assert_eq!(claim(&pool, "b", "s1", TTL).await.unwrap(), None, "offered to c");
        assert!(offered(&pool, "b").await.unwrap().is_empty());
        assert_eq!(offered(&pool, "c").await.unwrap(), ["s1"]);
        let taken = claim(&pool, "c", "s1", TTL).await.unwrap().expect("c takes what it was offered");
        assert_eq!(taken, first + 1, "a new generation fences a's writes");
        assert!(offered(&pool, "c").await.unwrap().is_empty(), "the offer ends when taken");
        assert_eq!(owner(&pool, "s1").await.unwrap().map(|o| o.node), Some("c".to_string()));
    }

    #[tokio::test]
    async fn an_offer_not_taken_within_a_lease_time_frees_the_session_for_any_node() {
        let (_database, _dir, pool) = cluster_tables().await;
        claim(&pool, "a", "s1", TTL).await.unwrap().expect("free");
        assert!(offer(&pool, "a", "s1", "c").await.unwrap());
        let short = Duration::from_millis(100);
        // The database's clock decides; wait on it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while unowned(&pool, 10, short).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the offer never lapsed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(claim(&pool, "b", "s1", short).await.unwrap().is_some(), "b takes it once the offer is old");
    }

    #[tokio::test]
    async fn nodes_report_their_clock_against_the_databases() {
        let (_database, _dir, pool) = cluster_tables().await;
        let client = pool.get().await.unwrap();
        client.execute("UPDATE wagate_nodes SET clock_offset_ms = 99999", &[]).await.unwrap();
        renew(&pool, "a", &[], TTL).await.unwrap();
        let nodes = nodes(&pool, TTL).await.unwrap();
        let (a, b) = (nodes.iter().find(|n| n.id == "a").unwrap(), nodes.iter().find(|n| n.id == "b").unwrap());
        // The same machine as the database: well within a second, once it has said so.
        assert!(a.clock_offset_ms.abs() < 1_000.0, "{a:?}");
        assert_eq!(b.clock_offset_ms, 99999.0, "b has not renewed since");
        assert!(a.alive && !a.draining, "{a:?}");
    }
}
