//! Logs go to stderr and, appended, to the log file operators grep
//! (`WhatsApp Connected: <id>`, `Webhook delivered: ...`).

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use tracing_subscriber::{fmt, EnvFilter};

use crate::store::private;

pub fn init(log_file: &Path) -> anyhow::Result<()> {
    init_with(log_file, None)
}

/// The default filter: wagate's own lines, the library's warnings.
const DEFAULT_FILTER: &str = "info,whatsapp_rust=warn,wacore=warn";

/// Like [`init`]; `terminal` is a quieter default filter for stderr (the log file still gets
/// everything). `WAGATE_LOG`, when set, applies to both.
pub fn init_with(log_file: &Path, terminal: Option<&str>) -> anyhow::Result<()> {
    // Private, like the data directory: the log names contacts and sessions.
    let file = private::options()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("opening the log file {}", log_file.display()))?;
    let tightened = private::tighten(log_file, private::FILE_MODE);
    let filter = |default: &str| EnvFilter::try_from_env("WAGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(filter(terminal.unwrap_or(DEFAULT_FILTER))))
        .with(fmt::layer().with_ansi(false).with_writer(Mutex::new(file)).with_filter(filter(DEFAULT_FILTER)))
        .try_init()
        .context("setting up logging")?;
    match tightened {
        Ok(true) => tracing::warn!("took group and other permissions away from the log file {}", log_file.display()),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot make the log file {} private: {e}", log_file.display()),
    }
    Ok(())
}
