//! Starting and stopping the whole gateway: store, engine, sessions, HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterConfig};
use crate::config::{check_wa_url, Config};
use crate::engine::proxy::Proxy;
use crate::engine::scratch::Scratch;
use crate::engine::WhatsAppEngine;
use crate::http::{self, AppState};
use crate::session::state::timestamp;
use crate::session::SessionManager;
use crate::store::lock::{DataDirLock, LockOwner};
use crate::store::private;
use crate::store::Store;
use crate::webhook::{Dispatcher, Outbox};

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub manager: Arc<SessionManager>,
    pub restored: usize,
    stop: Option<oneshot::Sender<()>>,
    http: JoinHandle<std::io::Result<()>>,
    dispatcher: Dispatcher,
    /// Held while the gateway runs: no second gateway on this data directory, and
    /// `wagate status` / `restore` can tell that this one runs.
    _lock: DataDirLock,
}

/// What a gateway may be started with besides its [`Config`].
#[derive(Default)]
pub struct Extras {
    /// The data directory's lock, when the caller took it already (to prepare the
    /// directory first); otherwise the gateway takes it.
    pub lock: Option<DataDirLock>,
    /// `wagate sandbox`: the in-process simulator and its contact, and the routes and
    /// console button that use them.
    #[cfg(feature = "sandbox")]
    pub sandbox: Option<Arc<crate::sandbox::Sandbox>>,
}

impl Gateway {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, Extras::default()).await
    }

    pub async fn start_with(mut config: Config, extras: Extras) -> anyhow::Result<Self> {
        check_wa_url(config.wa_url.as_deref())?;
        plan_open_files(&mut config);
        // Files are private: what an older version, a copy or an unpack left open is closed.
        let opened_up = private::tighten_data_dir(&config.data_dir);
        if !opened_up.is_empty() {
            let paths: Vec<String> = opened_up.iter().map(|p| p.display().to_string()).collect();
            tracing::warn!("took group and other permissions away from {}", paths.join(", "));
        }
        let mut lock = match extras.lock {
            Some(lock) => lock,
            None => DataDirLock::acquire(&config.data_dir)?,
        };
        let started_at = chrono::Utc::now();
        let store = match &config.database {
            Some(database) => Store::connect_postgres(&config.data_dir, &database.url, ENGINE_CONNECTIONS)
                .await
                .context("opening the PostgreSQL database (--database)")?,
            None => {
                let migrated = config.data_dir.join(crate::store::MIGRATED_MARKER);
                if migrated.exists() {
                    anyhow::bail!(
                        "the sessions of {} were copied to PostgreSQL by `wagate migrate` ({}): run the gateway \
                         with --database; on these SQLite files it would link them a second time. Delete that \
                         file only if the PostgreSQL copy is gone for good",
                        config.data_dir.display(),
                        migrated.display()
                    );
                }
                Store::open(&config.data_dir)
                    .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?
            }
        };
        let proxy = config.proxy.as_deref().map(Proxy::parse).transpose().context("--proxy / WAGATE_PROXY")?;
        if let Some(proxy) = &proxy {
            tracing::info!("WhatsApp traffic goes through the proxy {proxy}");
        }
        // Downloads are written here, as unnamed files: a crash leaves nothing to clean up.
        let scratch_dir = config.data_dir.join("tmp");
        private::create_dir(&scratch_dir).with_context(|| format!("creating {}", scratch_dir.display()))?;
        let scratch = Scratch::new(scratch_dir);
        let engine = WhatsAppEngine::new(config.wa_url.clone(), proxy, scratch.clone());
        // The sandbox's simulator is in this process: never reached through a proxy.
        #[cfg(feature = "sandbox")]
        let engine = match (&extras.sandbox, &config.wa_url) {
            (Some(_), Some(url)) => WhatsAppEngine::direct(url.clone(), scratch),
            _ => engine,
        };
        let engine = Arc::new(engine);
        // Events held for a detail by the last run (which died) go out as they are.
        store.release_held(crate::webhook::now_ms()).context("releasing held webhook events")?;
        let outbox = Outbox::new(Arc::new(store), config.webhooks.clone());
        // Deliveries left pending by the last run (a crash included) start going out at once.
        let dispatcher = Dispatcher::spawn(outbox.clone()).context("setting up webhook delivery")?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let owner =
            LockOwner { pid: std::process::id(), listen: Some(addr.to_string()), started_at: timestamp(started_at) };
        lock.record(&owner).context("writing the data directory's lock file")?;
        let mut sessions = config.sessions.clone();
        if sessions.public_url.is_empty() {
            // Links in events must be usable: a wildcard address is not one.
            let host = if addr.ip().is_unspecified() {
                tracing::warn!(
                    "listening on {addr}: media links in events will use 127.0.0.1; set --public-url to the address webhook receivers can reach"
                );
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
            } else {
                addr
            };
            sessions.public_url = format!("http://{host}");
        }
        let manager = SessionManager::new(engine, outbox, sessions);
        let restored = match &config.database {
            Some(database) => {
                let cluster = Cluster::join(cluster_config(database, addr, config.sessions.max_sessions))
                    .await
                    .context("joining the other nodes on the database")?;
                manager.join_cluster(cluster.clone());
                cluster.take_share().await
            }
            None => manager.restore().context("restoring the sessions of the data directory")?,
        };
        let state = Arc::new(AppState {
            manager: manager.clone(),
            access: config.access.clone(),
            started: Instant::now(),
            started_at,
            event_streams: http::EventStreams::new(config.limits.max_event_streams),
            #[cfg(feature = "sandbox")]
            sandbox: extras.sandbox,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let http = tokio::spawn(http::serve(listener, state, config.limits.clone(), async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, manager, restored, stop: Some(stop), http, dispatcher, _lock: lock })
    }

    /// Closes every WhatsApp connection cleanly, then stops serving.
    pub async fn stop(mut self) {
        // On a cluster the sessions are handed over first, so the other nodes take them at
        // once instead of waiting for the leases to lapse.
        if let Some(cluster) = self.manager.cluster() {
            cluster.drain().await;
        }
        self.manager.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.http).await.is_err() {
            self.http.abort();
        }
        self.dispatcher.stop().await;
    }
}

/// Connections the engine's store may open to PostgreSQL (shared by all sessions).
const ENGINE_CONNECTIONS: usize = 16;

/// How this node joins the others: its name and URL default to the host name and the
/// listening address.
fn cluster_config(database: &crate::config::DatabaseSettings, addr: SocketAddr, max_sessions: usize) -> ClusterConfig {
    let reachable = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    ClusterConfig {
        database_url: database.url.clone(),
        node_id: database.node_id.clone().unwrap_or_else(|| format!("{}:{}", host_name(), addr.port())),
        advertise_url: database.advertise_url.clone().unwrap_or_else(|| format!("http://{reachable}")),
        lease_ttl: database.lease_ttl,
        max_sessions,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "wagate".into())
}

/// Raises the open-files limit and fits the API's connections and the sessions into it.
fn plan_open_files(config: &mut Config) {
    let Some((budget, before)) = crate::open_files::raise(config.limits.max_connections) else {
        tracing::warn!("could not read the open-files limit; sessions are not capped by it");
        return;
    };
    let raised = if budget.soft > before { format!(" (raised from {before})") } else { String::new() };
    tracing::info!(
        "open files: limit {}{raised}, hard limit {}; room for {} sessions beside {} API connections",
        budget.soft,
        budget.hard,
        budget.sessions,
        budget.connections
    );
    if budget.connections < config.limits.max_connections {
        tracing::warn!(
            "the open-files limit ({}) allows {} API connections at once, not the {} of --max-connections",
            budget.soft,
            budget.connections,
            config.limits.max_connections
        );
        config.limits.max_connections = budget.connections;
    }
    config.sessions.open_files = Some(budget);
}
