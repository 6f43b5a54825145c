//! Several wagate nodes on one PostgreSQL database: which node runs which session.
//!
//! Each session is owned through a lease (see `leases`): a node runs a session's supervisor
//! (and so opens its WhatsApp socket) only while it holds the lease, renews its leases on a
//! heartbeat, and stops a session the moment it cannot be sure it still holds it: when a
//! renewal says it lost it, and when no renewal has succeeded for two thirds of the lease
//! time, well before another node could take it. Leases that lapse (a node died, or was cut
//! off) are taken by the live nodes, each up to an even share; on SIGTERM a node closes its
//! sessions and lets their leases go at once, so the others take over within a second or
//! two instead of a lease time.
//!
//! A lease's fencing generation goes with the session's engine store: the engine's writes
//! need the lease at that generation, so a node that lost a session cannot change its keys.

pub mod forward;
pub mod leases;
pub mod overview;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::time::Instant;
use tracing::{error, info, warn};

pub use leases::{LeaseError, NodeRow, Owner};

/// A session moved to another node.
#[derive(Debug, Clone)]
pub struct Moved {
    pub from: String,
    pub to: String,
    /// From closing it here to the other node holding its lease.
    pub took: Duration,
}

/// Why a session was not moved.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("the session already runs on node '{0}'")]
    AlreadyThere(String),
    #[error("there is no node '{0}' (GET /v1/nodes lists them)")]
    NoSuchNode(String),
    #[error("node '{0}' is not alive (its last heartbeat was {1:.0} s ago)")]
    NodeDown(String, f64),
    #[error("node '{0}' is draining: it takes no sessions")]
    NodeDraining(String),
    #[error("node '{0}' is full (--max-sessions {1})")]
    NodeFull(String, i64),
    #[error("this node does not run session '{0}' (any more)")]
    NotHere(String),
    #[error(
        "node '{0}' has not taken the session within {1:.1?}; it stays offered to it for one lease time, then any node takes it"
    )]
    NotTaken(String, Duration),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

use crate::session::SessionManager;

/// How this node takes part.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub database_url: String,
    /// This node's name among the others (default: host name and port).
    pub node_id: String,
    /// Where the other nodes reach this one's API (requests for its sessions are forwarded).
    pub advertise_url: String,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Sessions this node takes at most (0: no limit).
    pub max_sessions: usize,
}

/// The default lease time: a dead node's sessions are back within about two of these.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

pub struct Cluster {
    config: ClusterConfig,
    /// Connections of their own, so that renewals never wait behind the engine's traffic.
    pool: Pool,
    /// The leases this node holds, by session.
    held: Mutex<HashMap<String, i64>>,
    /// When the last successful renewal was sent: the leases held then are good until at
    /// least this plus the lease time, by any clock running at the database's pace.
    renewed_at: Mutex<Instant>,
    manager: OnceLock<Weak<SessionManager>>,
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.config.node_id).finish()
    }
}

impl Cluster {
    /// Connects and records this node as alive.
    pub async fn join(config: ClusterConfig) -> Result<Arc<Self>, LeaseError> {
        let settings = crate::store::postgres::Settings::parse(&config.database_url)
            .map_err(|e| LeaseError::Url(e.to_string()))?;
        let manager = Manager::from_config(
            settings.config,
            settings.tls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        // Renewals, take-overs and the owner lookups of forwarded requests.
        let pool = Pool::builder(manager)
            .max_size(6)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.lease_ttl / 3))
            .create_timeout(Some(config.lease_ttl / 3))
            .recycle_timeout(Some(config.lease_ttl / 3))
            .build()
            .expect("a pool with a runtime and timeouts builds");
        leases::join(&pool, &config.node_id, &config.advertise_url, config.max_sessions as i64).await?;
        info!(node = %config.node_id, url = %config.advertise_url, "joined the cluster");
        Ok(Arc::new(Self {
            config,
            pool,
            held: Mutex::default(),
            renewed_at: Mutex::new(Instant::now()),
            manager: OnceLock::new(),
            draining: Default::default(),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the session's lease, when this node holds it.
    pub fn generation(&self, session: &str) -> Option<i64> {
        self.held().get(session).copied()
    }

    /// Starts the heartbeat: renewals, take-overs, and stops when leases are lost.
    pub fn start(self: &Arc<Self>, manager: &Arc<SessionManager>) {
        let _ = self.manager.set(Arc::downgrade(manager));
        *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        tokio::spawn(Self::heartbeat(Arc::downgrade(self)));
        tokio::spawn(Self::watchdog(Arc::downgrade(self)));
    }

    /// Stops every session when the leases can no longer be trusted; a task of its own, so
    /// that a heartbeat stuck on an unanswering database cannot delay it.
    async fn watchdog(this: Weak<Self>) {
        let Some(ttl) = this.upgrade().map(|c| c.config.lease_ttl) else { return };
        let every = (ttl / 15).clamp(Duration::from_millis(100), Duration::from_millis(500));
        loop {
            tokio::time::sleep(every).await;
            let Some(cluster) = this.upgrade() else { return };
            cluster.stop_if_unsure().await;
        }
    }

    /// No renewal has succeeded for two thirds of the lease time.
    fn unsure(&self) -> bool {
        self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= self.config.lease_ttl * 2 / 3
    }

    /// Takes this node's share of the free sessions now (at start, before the API answers,
    /// so that what it will run is known to it from the first request).
    /// Returns how many of them were linked (and reconnect).
    pub async fn take_share(&self) -> usize {
        match self.take_over().await {
            Ok(linked) => linked,
            Err(e) => {
                warn!("could not take sessions at start; the heartbeat tries again: {e}");
                0
            }
        }
    }

    fn manager(&self) -> Option<Arc<SessionManager>> {
        self.manager.get().and_then(Weak::upgrade)
    }

    /// Takes the lease of `session` now (a session created or moved here); its generation,
    /// or `None` when another node holds it.
    pub async fn claim(&self, session: &str) -> Result<Option<i64>, LeaseError> {
        let claimed = leases::claim(&self.pool, &self.config.node_id, session, self.config.lease_ttl).await?;
        if let Some(generation) = claimed {
            self.held().insert(session.to_string(), generation);
        }
        Ok(claimed)
    }

    /// Who owns `session` now, if anyone.
    pub async fn owner(&self, session: &str) -> Result<Option<Owner>, LeaseError> {
        leases::owner(&self.pool, session).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>, LeaseError> {
        leases::nodes(&self.pool, self.config.lease_ttl).await
    }

    /// The node a new session should go to: the live one with the most free room.
    pub async fn placement(&self) -> Result<Option<NodeRow>, LeaseError> {
        leases::roomiest(&self.pool, None, self.config.lease_ttl).await
    }

    /// Owners of every session with a live lease.
    pub async fn owners(&self) -> Result<HashMap<String, String>, LeaseError> {
        Ok(leases::owners(&self.pool).await?.into_iter().collect())
    }

    /// Gives one session up: closes it here, then lets its lease go (a move, a drain).
    pub async fn hand_over(&self, session: &str) -> Result<(), LeaseError> {
        if let Some(manager) = self.manager() {
            manager.release(session).await;
        }
        self.held().remove(session);
        leases::release(&self.pool, &self.config.node_id, &[session.to_string()]).await?;
        Ok(())
    }

    /// Forgets a deleted session's lease.
    pub async fn forget(&self, session: &str) -> Result<(), LeaseError> {
        self.held().remove(session);
        leases::forget(&self.pool, session).await
    }

    /// Hands every session over (SIGTERM, `wagate drain`): takes nothing more, closes each
    /// session, then lets all their leases go at once; returns how many it let go.
    pub async fn drain(&self) -> u64 {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = leases::set_draining(&self.pool, &self.config.node_id, true).await {
            warn!("could not mark this node as draining: {e}");
        }
        let sessions: Vec<String> = self.held().keys().cloned().collect();
        if let Some(manager) = self.manager() {
            manager.release_all(&sessions).await;
        }
        self.held().clear();
        match leases::release(&self.pool, &self.config.node_id, &sessions).await {
            Ok(released) => {
                info!("handed {released} sessions over to the other nodes");
                released
            }
            Err(e) => {
                warn!("could not let the leases go; the other nodes take them when they lapse: {e}");
                0
            }
        }
    }

    /// Takes sessions again after a drain (new ones, and lapsed leases up to its share; the
    /// sessions it handed over stay where they went).
    pub async fn resume(&self) -> Result<(), LeaseError> {
        leases::set_draining(&self.pool, &self.config.node_id, false).await?;
        self.draining.store(false, std::sync::atomic::Ordering::Relaxed);
        info!("this node takes sessions again");
        Ok(())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves one session this node runs to the node `to`: checks that `to` is alive and has
    /// room, closes the session here, offers its lease to `to` alone, and waits (up to a
    /// lease time and a bit) until `to` holds it.
    pub async fn move_to(&self, session: &str, to: &str) -> Result<Moved, MoveError> {
        let me = self.config.node_id.as_str();
        if to == me {
            return Err(MoveError::AlreadyThere(to.to_string()));
        }
        let nodes = self.nodes().await?;
        let target = nodes.iter().find(|n| n.id == to).ok_or_else(|| MoveError::NoSuchNode(to.to_string()))?;
        if !target.alive {
            return Err(MoveError::NodeDown(to.to_string(), target.heartbeat_age_s));
        }
        if target.draining {
            return Err(MoveError::NodeDraining(to.to_string()));
        }
        if target.room() <= 0 {
            return Err(MoveError::NodeFull(to.to_string(), target.max_sessions));
        }
        if self.generation(session).is_none() {
            return Err(MoveError::NotHere(session.to_string()));
        }
        let started = Instant::now();
        if let Some(manager) = self.manager() {
            manager.release(session).await;
        }
        self.held().remove(session);
        if !leases::offer(&self.pool, me, session, to).await? {
            return Err(MoveError::NotHere(session.to_string()));
        }
        info!(session = %session, to = %to, "closed the session here and offered it to the other node");
        // A live node looks for offers every second or less; beyond this something is wrong
        // with it, and the caller hears so while the offer stands.
        let deadline = started + self.config.lease_ttl.min(Duration::from_secs(30)) + Duration::from_secs(5);
        loop {
            if let Some(owner) = self.owner(session).await? {
                if owner.node == to {
                    return Ok(Moved { from: me.to_string(), to: to.to_string(), took: started.elapsed() });
                }
            }
            if Instant::now() >= deadline {
                return Err(MoveError::NotTaken(to.to_string(), started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The heartbeat loop, until the node is gone.
    async fn heartbeat(this: Weak<Self>) {
        let Some(ttl) = this.upgrade().map(|c| c.config.lease_ttl) else { return };
        let renew_every = ttl / 3;
        // Take-overs are looked for often: a handed-over session waits at most this long.
        let look_every = (ttl / 15).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let mut next_renewal = Instant::now();
        loop {
            tokio::time::sleep(look_every).await;
            let Some(cluster) = this.upgrade() else { return };
            if Instant::now() >= next_renewal {
                next_renewal = Instant::now() + renew_every;
                // A lost renewal is only a missed one: bounded, so that a database that stops
                // answering does not hold the loop.
                let renewed = match tokio::time::timeout(renew_every, cluster.renew()).await {
                    Ok(renewed) => renewed,
                    Err(_) => {
                        warn!("renewing this node's leases took longer than {renew_every:?}");
                        false
                    }
                };
                if !renewed {
                    // Tried again soon: one failure must not cost the sessions.
                    next_renewal = Instant::now() + look_every;
                }
            }
            // A draining node keeps its heartbeat (it is alive, and says it drains) but
            // takes nothing.
            if cluster.unsure() || cluster.is_draining() {
                continue;
            }
            if let Err(e) = cluster.take_over().await {
                warn!("could not look for sessions to take over: {e}");
            }
        }
    }

    /// Renews the held leases; false when the database could not be asked.
    async fn renew(&self) -> bool {
        let sent = Instant::now();
        // Only what was held when the renewal was sent can be found lost by its answer: a
        // lease taken meanwhile is not in it.
        let asked: HashMap<String, i64> = self.held().clone();
        let sessions: Vec<String> = asked.keys().cloned().collect();
        match leases::renew(&self.pool, &self.config.node_id, &sessions, self.config.lease_ttl).await {
            Ok(kept) => {
                *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = sent;
                let kept: HashMap<String, i64> = kept.into_iter().collect();
                let lost: Vec<String> = {
                    let held = self.held();
                    asked
                        .iter()
                        .filter(|(s, g)| kept.get(*s) != Some(g) && held.get(*s) == Some(g))
                        .map(|(s, _)| s.clone())
                        .collect()
                };
                if !lost.is_empty() {
                    warn!("lost the lease of {} sessions ({}): stopping them here", lost.len(), lost.join(", "));
                    self.stop_locally(&lost).await;
                }
                true
            }
            Err(e) => {
                warn!("could not renew this node's leases: {e}");
                false
            }
        }
    }

    /// Stops every session when no renewal succeeded for two thirds of the lease time: the
    /// leases could soon pass to another node, which must find the sockets closed.
    async fn stop_if_unsure(&self) {
        if !self.unsure() {
            return;
        }
        let since = self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        let sessions: Vec<String> = self.held().keys().cloned().collect();
        if !sessions.is_empty() {
            error!(
                "the database has not confirmed this node's leases for {:.1} s: stopping its {} sessions before \
                 another node can take them",
                since.as_secs_f64(),
                sessions.len()
            );
            self.stop_locally(&sessions).await;
        }
    }

    async fn stop_locally(&self, sessions: &[String]) {
        {
            let mut held = self.held();
            for session in sessions {
                held.remove(session);
            }
        }
        if let Some(manager) = self.manager() {
            manager.release_all(sessions).await;
        }
    }

    /// Takes the sessions moved to this node, then lapsed leases up to this node's share;
    /// returns how many linked sessions it started.
    async fn take_over(&self) -> Result<usize, LeaseError> {
        let mut linked = 0;
        // A move was checked against this node's room by the node that offered it.
        for session in leases::offered(&self.pool, &self.config.node_id).await? {
            linked += self.take(&session, "took the session moved here").await?;
        }
        let ttl = self.config.lease_ttl;
        let share = leases::fair_share(&self.pool, &self.config.node_id, self.config.max_sessions as i64, ttl).await?;
        let room = share - self.held().len() as i64;
        if room <= 0 {
            return Ok(linked);
        }
        for session in leases::unowned(&self.pool, room, ttl).await? {
            linked += self.take(&session, "took the session over").await?;
        }
        Ok(linked)
    }

    /// Claims one session and runs it here; 1 when it was linked (and reconnects).
    async fn take(&self, session: &str, what: &str) -> Result<usize, LeaseError> {
        let Some(manager) = self.manager() else { return Ok(0) };
        let Some(generation) = self.claim(session).await? else { return Ok(0) };
        info!(session = %session, generation, "{what}");
        match manager.adopt(session, generation).await {
            Ok(started) => Ok(usize::from(started)),
            Err(e) => {
                warn!(session = %session, "could not run the session taken over; letting it go: {e}");
                self.held().remove(session);
                leases::release(&self.pool, &self.config.node_id, &[session.to_string()]).await?;
                Ok(0)
            }
        }
    }
}
