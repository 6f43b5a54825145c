//! Logs go to stderr and, appended, to the log file operators grep
//! (`WhatsApp Connected: <id>`, `Webhook delivered: ...`).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

pub fn init(log_file: &Path) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("opening the log file {}", log_file.display()))?;
    let filter =
        EnvFilter::try_from_env("WAGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info,whatsapp_rust=warn,wacore=warn"));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr))
        .with(fmt::layer().with_ansi(false).with_writer(Mutex::new(file)))
        .try_init()
        .context("setting up logging")?;
    Ok(())
}
