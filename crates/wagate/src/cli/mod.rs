//! `wagate <command>`.

mod archive;
mod backup;
mod client;
mod doctor;
mod drain;
mod link;
mod logging;
mod migrate;
mod restore;
#[cfg(feature = "sandbox")]
mod sandbox;
mod serve;
mod sessions;
mod status;
mod table;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wagate", version, about = "WhatsApp linked-device gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (logs to stderr and the log file; stops on SIGTERM/SIGINT).
    Serve(Box<serve::ServeArgs>),
    /// Is the gateway running, since when, and how are its sessions (exit 0 running, 3 stopped).
    Status(status::StatusArgs),
    /// Check the data directory, the clock, the way to WhatsApp and every session; explain what to do.
    Doctor(doctor::DoctorArgs),
    /// Write a consistent archive of the data directory, also while the gateway runs.
    Backup(backup::BackupArgs),
    /// Put an archive made by `wagate backup` back as the data directory (the gateway must be stopped).
    Restore(restore::RestoreArgs),
    /// Copy a stopped gateway's data directory (sessions, keys, webhook outbox) into PostgreSQL,
    /// for `wagate serve --database`: the sessions connect there without a new QR code.
    Migrate(migrate::MigrateArgs),
    /// List, log out or delete sessions through the running gateway.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
    /// On a cluster: hand every session of a node over to the other nodes (before stopping it).
    Drain(drain::DrainArgs),
    /// Link a session: show its QR code here (or a pairing code) and wait until it is connected.
    Link(link::LinkArgs),
    /// Try wagate offline: a WhatsApp simulator, a simulated phone and a contact that answers,
    /// all in this process, with the web console (sandbox builds only).
    #[cfg(feature = "sandbox")]
    Sandbox(sandbox::SandboxArgs),
}

/// The data directory an operator command looks at.
#[derive(Args, Debug, Clone)]
struct DataDirArg {
    /// Data directory of the gateway (as given to `wagate serve`).
    #[arg(long, env = "WAGATE_DATA_DIR", default_value = "./sessions")]
    data_dir: PathBuf,
}

/// Takes the lock of a data directory no gateway runs on (held until dropped), or refuses,
/// naming the gateway that runs there and how to stop it before `then`.
fn lock_stopped(dir: &std::path::Path, then: &str) -> anyhow::Result<crate::store::lock::DataDirLock> {
    use crate::store::lock::{self, DataDirLock, LockState};
    let refuse = |pid: Option<u32>| {
        let pid = pid.map_or("unknown".to_string(), |p| p.to_string());
        anyhow::anyhow!(
            "the gateway is running on {} (pid {pid}); stop it first (scripts/stop.sh, or SIGTERM to that pid), then {then}",
            dir.display()
        )
    };
    if let LockState::Held(owner) = lock::inspect(dir)? {
        return Err(refuse(owner.map(|o| o.pid)));
    }
    match DataDirLock::acquire(dir) {
        Ok(held) => Ok(held),
        Err(lock::LockError::Held { owner, .. }) => Err(refuse(owner.map(|o| o.pid))),
        Err(e) => Err(e.into()),
    }
}

/// How an operator command reaches the running gateway.
#[derive(Args, Debug, Clone)]
struct GatewayArgs {
    /// The gateway's URL [default: the address the gateway of the data directory listens on,
    /// else http://127.0.0.1:3000].
    #[arg(long, env = "WAGATE_URL")]
    url: Option<String>,
    /// API key, needed only when the gateway is on another machine.
    #[arg(long, env = "WAGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// Exit codes of the operator commands (LSB-like for `status`).
pub mod exit {
    pub const OK: i32 = 0;
    /// Something failed (a FAIL in `doctor`, an error answer, a failed link).
    pub const FAILED: i32 = 1;
    /// The gateway is not running.
    pub const NOT_RUNNING: i32 = 3;
    /// A gateway process exists but does not answer.
    pub const UNKNOWN: i32 = 4;
}

/// Entry point of the binary; returns the exit code.
pub fn main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args).map(|()| exit::OK),
        Command::Status(args) => block_on(status::run(args)),
        Command::Doctor(args) => block_on(doctor::run(args)),
        Command::Backup(args) => backup::run(args).map(|()| exit::OK),
        Command::Restore(args) => restore::run(args).map(|()| exit::OK),
        Command::Migrate(args) => migrate::run(args).map(|()| exit::OK),
        Command::Sessions(command) => block_on(sessions::run(command)),
        Command::Link(args) => block_on(link::run(args)),
        Command::Drain(args) => block_on(drain::run(args)),
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => sandbox::run(args).map(|()| exit::OK),
    }
}

/// Runs an operator command's async part. Name lookups that outlive their deadline must
/// not hold up the exit, hence the short shutdown.
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
