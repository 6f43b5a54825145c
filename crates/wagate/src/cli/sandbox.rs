//! `wagate sandbox` (sandbox builds only): try wagate offline in one command. The WhatsApp
//! simulator runs in this process, a simulated contact answers messages, and the gateway
//! serves its API and console against them, with a session ready to be linked by a
//! simulated phone from the console.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tracing::info;

use crate::config::Config;
use crate::sandbox::data_dir::{self, CONTACT_DIR, LOG_FILE};
use crate::sandbox::{Sandbox, CONTACT_PHONE, FILE_KEYWORD};
use crate::server::{Extras, Gateway};
use crate::session::SessionConfig;
use crate::store::WebhookConfig;
use crate::webhook::WebhookSettings;

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Address to listen on (port 0: a free one; the address is printed either way).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The sandbox's own data directory, emptied at every start (its simulator keeps
    /// nothing between runs). A directory that holds anything else is refused.
    #[arg(long, default_value = "./sandbox-data")]
    data_dir: PathBuf,
    /// The session made ready to link, shown first in the console.
    #[arg(long, default_value = "demo")]
    session: String,
    /// Where that session's webhook events go (http:// or https://).
    #[arg(long)]
    webhook: Option<String>,
    /// The webhook's signing secret (`whsec_<base64>` or any string).
    #[arg(long, requires = "webhook", hide_env_values = true)]
    webhook_secret: Option<String>,
}

/// Enough QR cycles that the code a newcomer looks at does not run out (about 50 minutes).
const QR_CYCLES: u32 = 20;

pub fn run(args: SandboxArgs) -> anyhow::Result<()> {
    crate::session::validate_id(&args.session).with_context(|| format!("--session '{}'", args.session))?;
    let webhook = match args.webhook {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(WebhookConfig {
            url,
            secret: args.webhook_secret,
            events: None,
            token: None,
            format: Default::default(),
        }),
        Some(url) => anyhow::bail!("--webhook must be an http:// or https:// URL, got '{url}'"),
        None => None,
    };
    crate::store::private::restrict_umask();
    let (lock, removed) = data_dir::prepare(&args.data_dir)?;
    // The terminal keeps the banner in view: wagate's warnings only (the library's remarks
    // on the simulator's shortcuts too go to the log), everything in the log.
    super::logging::init_with(&args.data_dir.join(LOG_FILE), Some("warn,whatsapp_rust=error,wacore=error"))?;
    if removed > 0 {
        info!(
            "sandbox: emptied {} (what the last run linked is unknown to this run's simulator)",
            args.data_dir.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let sandbox =
            Sandbox::start(&args.data_dir.join(CONTACT_DIR)).await.context("starting the simulator and its contact")?;
        let config = Config {
            database: None,
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            wa_url: Some(sandbox.endpoints.ws_url.clone()),
            access: Default::default(),
            sessions: SessionConfig { qr_cycles: QR_CYCLES, ..SessionConfig::default() },
            webhooks: WebhookSettings::default(),
            proxy: None,
            limits: Default::default(),
        };
        let extras = Extras { lock: Some(lock), sandbox: Some(sandbox.clone()) };
        let gateway = match Gateway::start_with(config, extras).await {
            Ok(gateway) => gateway,
            Err(e) => {
                sandbox.stop().await;
                return Err(e);
            }
        };
        if let Err(e) = gateway.manager.create(&args.session, webhook.as_ref(), None).await {
            gateway.stop().await;
            sandbox.stop().await;
            return Err(e).with_context(|| format!("creating the session {}", args.session));
        }
        println!("{}", banner(gateway.addr, &args.session, &args.data_dir, webhook.as_ref()));
        info!("wagate sandbox listening on http://{}", gateway.addr);
        super::serve::shutdown_signal().await;
        info!("shutting down: closing the connections, then the simulator");
        gateway.stop().await;
        sandbox.stop().await;
        info!("stopped");
        anyhow::Ok(())
    })
}

/// What the newcomer reads first: where to click, what to type, how to stop.
fn banner(addr: SocketAddr, session: &str, data_dir: &Path, webhook: Option<&WebhookConfig>) -> String {
    let base = format!("http://{addr}");
    let webhook = match webhook {
        Some(webhook) => format!("Webhook: every event of {session} is POSTed to {}.", webhook.url),
        None => "Webhook: none (add --webhook URL to have every event POSTed there).".to_string(),
    };
    format!(
        "wagate sandbox listening on {base}
  A WhatsApp simulator runs inside this process: nothing here reaches WhatsApp.

  Open {base}/console#session={session} in a browser, then:
    1. click \"Scan with a simulated phone\" beside the QR code: the session links, restarts
       once (515, normal after pairing) and shows Connected;
    2. send a message to the simulated contact +{CONTACT_PHONE}: it echoes every text, and
       answers \"{FILE_KEYWORD}\" with a small PDF you can download.

  The same with curl:
    curl -X POST {base}/v1/sandbox/scan -H 'content-type: application/json' -d '{{\"session\": \"{session}\"}}'
    curl -X POST {base}/v1/sessions/{session}/messages -H 'content-type: application/json' \\
      -d '{{\"to\": \"+{CONTACT_PHONE}\", \"text\": \"hello\"}}'
    curl -N {base}/v1/sessions/{session}/events      # states and received messages, live

  {webhook}
  Data: {data} (emptied at every start). What happens: tail -f {log}
  Ctrl-C stops it.",
        data = data_dir.display(),
        log = data_dir.join(LOG_FILE).display(),
    )
}
