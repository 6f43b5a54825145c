//! Logs go to stderr and, appended, to the log file operators grep
//! (`WhatsApp Connected: <id>`, `Webhook delivered: ...`).

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::store::private;

pub fn init(log_file: &Path) -> anyhow::Result<()> {
    // Private, like the data directory: the log names contacts and sessions.
    let file = private::options()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("opening the log file {}", log_file.display()))?;
    let tightened = private::tighten(log_file, private::FILE_MODE);
    let filter =
        EnvFilter::try_from_env("WAGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info,whatsapp_rust=warn,wacore=warn"));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr))
        .with(fmt::layer().with_ansi(false).with_writer(Mutex::new(file)))
        .try_init()
        .context("setting up logging")?;
    match tightened {
        Ok(true) => tracing::warn!("took group and other permissions away from the log file {}", log_file.display()),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot make the log file {} private: {e}", log_file.display()),
    }
    Ok(())
}
