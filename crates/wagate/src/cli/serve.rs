//! `wagate serve`: the gateway in the foreground, as `bench start` (honcho) and the
//! compat scripts run it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::info;

use crate::config::Config;
use crate::http::trust::{Access, Cidr};
use crate::server::Gateway;
use crate::session::SessionConfig;
use crate::store::WebhookConfig;
use crate::webhook::WebhookSettings;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "WAGATE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Data directory (SQLite database and the sessions' keys).
    #[arg(long, env = "WAGATE_DATA_DIR", default_value = "./sessions")]
    data_dir: PathBuf,
    /// Log file (appended; logs also go to stderr).
    #[arg(long, env = "WAGATE_LOG_FILE", default_value = "whatsapp-service.log")]
    log_file: PathBuf,
    /// WebSocket URL of a WhatsApp-compatible server such as wagate-sim (sandbox builds only).
    #[arg(long, env = "WAGATE_WA_URL")]
    wa_url: Option<String>,
    /// API key required from callers that are not on this machine (a request through a
    /// reverse proxy is not on this machine, even when the proxy is).
    #[arg(long, env = "WAGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Public host names this gateway answers to (behind a reverse proxy, the names it
    /// serves); requests for any other non-loopback `Host` get 421. Comma-separated.
    #[arg(long, env = "WAGATE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Reverse proxies (addresses or CIDR ranges) whose X-Forwarded-For names the client,
    /// for logs; their requests still need the key. Comma-separated.
    #[arg(long, env = "WAGATE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<Cidr>,
    /// The gateway's address as webhook receivers reach it, e.g. `https://wa.example.com`;
    /// media links in events start with it. Default: `http://<listen address>`.
    #[arg(long, env = "WAGATE_PUBLIC_URL")]
    public_url: Option<String>,
    /// QR cycles to offer before a session gives up waiting for a scan.
    #[arg(long, env = "WAGATE_QR_CYCLES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    qr_cycles: u32,
    /// Outbound proxy for WhatsApp traffic, `http://[user:pass@]host:port` (CONNECT) or
    /// `socks5://[user:pass@]host:port`. Without it HTTPS_PROXY / ALL_PROXY / NO_PROXY apply.
    #[arg(long, env = "WAGATE_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// PostgreSQL instead of the data directory's SQLite (`postgres://user@host:port/db`):
    /// several wagate nodes on one database share the sessions, with failover. The data
    /// directory then keeps only this node's files (downloads, logs, the lock).
    #[arg(long, env = "WAGATE_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// This node's name among the others on the database (default: host name and port).
    #[arg(long, env = "WAGATE_NODE_ID", requires = "database")]
    node_id: Option<String>,
    /// The URL the other nodes reach this one's API at (default: http:// and --listen).
    #[arg(long, env = "WAGATE_ADVERTISE_URL", requires = "database")]
    advertise_url: Option<String>,
    /// Seconds a session's lease lasts without renewal: a dead node's sessions are taken
    /// over within about twice this.
    #[arg(long, env = "WAGATE_LEASE_TTL", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=600))]
    lease_ttl: u64,
    /// At most this many sessions; creating one more answers 503. 0: no limit.
    #[arg(long, env = "WAGATE_MAX_SESSIONS", default_value_t = 0)]
    max_sessions: usize,
    /// HTTP connections served at once; further ones wait until one ends.
    #[arg(long, env = "WAGATE_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Event streams (`GET /v1/sessions/{id}/events`) open at once; more answer 503.
    #[arg(long, env = "WAGATE_MAX_EVENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_event_streams: u32,
    /// Linked sessions reconnecting per second after a start (each gap up to a quarter
    /// longer, at random), so WhatsApp sees no burst of logins; a session a caller needs
    /// goes first.
    #[arg(long, env = "WAGATE_RECONNECT_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    reconnect_rate: u32,
    /// The largest received file downloaded (via `/v1/.../media/...` or for a Node-format
    /// webhook): bytes, or with a unit (`KB`, `MB`, `GB`; powers of 1024). Downloads go to
    /// disk, never whole into memory.
    #[arg(long, env = "WAGATE_MEDIA_MAX", default_value = "100MB", value_parser = crate::config::parse_size)]
    media_max: u64,
    /// The largest file a Node-format (compat) `messages.upsert` webhook carries as base64;
    /// a bigger one goes with `media.data: null` and `media.reason`.
    #[arg(long, env = "WAGATE_COMPAT_MEDIA_MAX", default_value = "16MB", value_parser = crate::config::parse_size)]
    compat_media_max: u64,
    /// Webhook for sessions that have none of their own.
    #[arg(long, env = "WAGATE_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Signing secret of that default webhook (`whsec_<base64>` or any string).
    #[arg(long, env = "WAGATE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Seconds to wait for a webhook receiver's answer.
    #[arg(long, env = "WAGATE_WEBHOOK_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    webhook_timeout: u64,
    /// Hours an event is retried before it goes to the dead letter.
    #[arg(long, env = "WAGATE_WEBHOOK_RETRY_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    webhook_retry_hours: u64,
    /// Hours delivered events are kept for the deliveries API.
    #[arg(long, env = "WAGATE_WEBHOOK_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=8760))]
    webhook_retention_hours: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Whatever the gateway and its libraries create (databases, their -wal and -shm, the
    // log file) is its user's alone.
    crate::store::private::restrict_umask();
    super::logging::init(&args.log_file)?;
    let default_webhook = match args.webhook_url {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("--webhook-url must be an http:// or https:// URL, got '{url}'");
            }
            Some(WebhookConfig {
                url,
                secret: args.webhook_secret,
                events: None,
                token: None,
                format: Default::default(),
            })
        }
        None => None,
    };
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        wa_url: args.wa_url,
        access: Access {
            api_key: args.api_key.filter(|k| !k.is_empty()),
            allowed_hosts: args
                .allowed_hosts
                .into_iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
            trusted_proxies: args.trusted_proxies,
        },
        sessions: SessionConfig {
            qr_cycles: args.qr_cycles,
            public_url: public_url(args.public_url.as_deref())?,
            max_sessions: args.max_sessions,
            media_max: args.media_max,
            compat_media_max: args.compat_media_max,
            reconnect_rate: args.reconnect_rate,
            ..SessionConfig::default()
        },
        proxy: args.proxy.filter(|p| !p.is_empty()),
        limits: crate::http::Limits {
            max_connections: args.max_connections as usize,
            max_event_streams: args.max_event_streams as usize,
            ..crate::http::Limits::default()
        },
        database: args.database.filter(|url| !url.is_empty()).map(|url| crate::config::DatabaseSettings {
            url,
            node_id: args.node_id.filter(|n| !n.is_empty()),
            advertise_url: args.advertise_url.map(|u| u.trim_end_matches('/').to_string()).filter(|u| !u.is_empty()),
            lease_ttl: Duration::from_secs(args.lease_ttl),
        }),
        webhooks: WebhookSettings {
            default: default_webhook,
            timeout: Duration::from_secs(args.webhook_timeout),
            retry_for: Duration::from_secs(args.webhook_retry_hours * 3600),
            retention: Duration::from_secs(args.webhook_retention_hours * 3600),
        },
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let gateway = Gateway::start(config).await?;
        let line = format!(
            "wagate listening on http://{} ({} linked session{} restored)",
            gateway.addr,
            gateway.restored,
            if gateway.restored == 1 { "" } else { "s" }
        );
        println!("{line}");
        info!("{line}");
        shutdown_signal().await;
        info!("shutting down: closing WhatsApp connections");
        gateway.stop().await;
        info!("stopped");
        anyhow::Ok(())
    })
}

fn public_url(url: Option<&str>) -> anyhow::Result<String> {
    match url.map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty()) {
        None => Ok(String::new()),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => Ok(url.to_string()),
        Some(url) => anyhow::bail!("--public-url must be an http:// or https:// URL, got '{url}'"),
    }
}

/// Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
