//! What `wagate serve` runs with.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::session::SessionConfig;
use crate::webhook::WebhookSettings;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// WebSocket URL of a server other than WhatsApp (the simulator). Only sandbox builds
    /// accept it: see [`check_wa_url`].
    pub wa_url: Option<String>,
    /// Who may call without the API key, and the key (see [`crate::http::trust`]).
    pub access: crate::http::trust::Access,
    pub sessions: SessionConfig,
    pub webhooks: WebhookSettings,
    /// Outbound proxy for WhatsApp traffic (`http://` or `socks5://`), for sessions
    /// without their own; webhooks do not use it.
    pub proxy: Option<String>,
    /// Connections, header time and event streams the HTTP server allows.
    pub limits: crate::http::Limits,
    /// PostgreSQL instead of the data directory's SQLite: several nodes share the sessions.
    pub database: Option<DatabaseSettings>,
}

/// A node of several on one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// This node's name among the others (default: host name and port).
    pub node_id: Option<String>,
    /// Where the other nodes reach this one (default: `http://` and the listening address).
    pub advertise_url: Option<String>,
    /// How long a session's lease lasts without renewal.
    pub lease_ttl: std::time::Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--wa-url / WAGATE_WA_URL points wagate at a server other than WhatsApp, which only a sandbox build \
         allows (cargo build --features sandbox); this build talks to WhatsApp only"
    )]
    WaUrlNeedsSandbox,
    #[error("--wa-url must be a ws:// or wss:// URL, got '{0}'")]
    WaUrlScheme(String),
}

/// Sandbox builds skip the check of WhatsApp's certificate chain, so only they may connect
/// anywhere else; a production build refuses, instead of silently trusting any server.
pub fn check_wa_url(url: Option<&str>) -> Result<(), ConfigError> {
    let Some(url) = url else { return Ok(()) };
    if !cfg!(feature = "sandbox") {
        return Err(ConfigError::WaUrlNeedsSandbox);
    }
    if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(())
    } else {
        Err(ConfigError::WaUrlScheme(url.to_string()))
    }
}

/// A size in bytes as operators write it: `1048576`, `512KB`, `16MB`, `2GB` (units are
/// powers of 1024; `K`/`M`/`G` and `KiB`/`MiB`/`GiB` too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| format!("'{text}' is not a size (e.g. 16MB)"))?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' in '{text}' (use KB, MB or GB)")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_operators_write_them() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("16 mb"), Ok(16 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        for bad in ["", "MB", "-1MB", "1.5MB", "16TB", "99999999999999999999", "18446744073709551615GB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wa_url_needs_a_sandbox_build() {
        assert_eq!(check_wa_url(None), Ok(()));
        if cfg!(feature = "sandbox") {
            assert_eq!(check_wa_url(Some("ws://127.0.0.1:9/ws/chat")), Ok(()));
            assert_eq!(check_wa_url(Some("http://x")), Err(ConfigError::WaUrlScheme("http://x".into())));
        } else {
            assert_eq!(check_wa_url(Some("ws://127.0.0.1:9/ws/chat")), Err(ConfigError::WaUrlNeedsSandbox));
        }
    }
}
