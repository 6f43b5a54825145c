use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wagate_sim::{AccountProfile, ProfileOverrides, ServerKeys, SimConfig, Simulator};

/// A WhatsApp server in a box: serves the WhatsApp WebSocket at /ws/chat and a JSON control
/// API under /control/, then prints one JSON line with its URLs on stdout.
#[derive(Parser)]
#[command(name = "wagate-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0", env = "WAGATE_SIM_LISTEN")]
    listen: SocketAddr,
    /// A file holding the test root key pair; created if it does not exist. Without it a new
    /// root is made on every start.
    #[arg(long)]
    root_key: Option<PathBuf>,
    /// What every account linked to this simulator holds besides its devices: `empty`
    /// (nothing, the default) or `small-business` (500 contacts, 30 groups of up to 40,
    /// 2,000 history messages, app state, one inbound message a minute).
    #[arg(long, default_value = "empty")]
    account_profile: String,
    /// Overrides the profile's number of contacts.
    #[arg(long)]
    profile_contacts: Option<u32>,
    /// Overrides the profile's number of groups.
    #[arg(long)]
    profile_groups: Option<u32>,
    /// Overrides the profile's largest group size (members, the account included).
    #[arg(long)]
    profile_group_size: Option<u32>,
    /// Overrides the profile's number of history messages.
    #[arg(long)]
    profile_history: Option<u32>,
    /// Overrides the profile's inbound messages per account per minute (0 = none).
    #[arg(long)]
    profile_trickle_per_minute: Option<f64>,
}

impl Args {
    fn account_profile(&self) -> anyhow::Result<AccountProfile> {
        let overrides = ProfileOverrides {
            preset: Some(self.account_profile.clone()),
            contacts: self.profile_contacts,
            groups: self.profile_groups,
            group_size: self.profile_group_size,
            history: self.profile_history,
            trickle_per_minute: self.profile_trickle_per_minute,
        };
        AccountProfile::with_overrides(&AccountProfile::empty(), &overrides)
            .context("the account profile given by --account-profile and --profile-*")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = SimConfig { account_profile: args.account_profile()?, ..SimConfig::default() };
    let keys = match &args.root_key {
        Some(path) => ServerKeys::load_or_create(path)?,
        None => ServerKeys::generate(),
    };
    let simulator = Simulator::start(args.listen, keys, config)
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", simulator.ready_line())?;
    stdout.flush()?;
    drop(stdout);
    shutdown_signal().await;
    tracing::info!("stopping");
    simulator.stop().await;
    Ok(())
}

async fn shutdown_signal() {
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
