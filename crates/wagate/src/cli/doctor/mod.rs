//! `wagate doctor`: checks what a working gateway needs, one line each (OK / WARN / FAIL),
//! with what to do about every problem. Exit 1 if anything FAILs.

mod cluster;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::client::{base_url, Client};
use super::table::SessionRow;
use super::{exit, DataDirArg, GatewayArgs};
use crate::config::check_wa_url;
use crate::engine::probe::probe;
use crate::engine::proxy::{self, Proxy};
use crate::engine::WHATSAPP_WS_URL;
use crate::session::state::COMPANION_LIMIT_HINT;
use crate::session::StateKind;
use crate::store::lock::{self, LockState};
use crate::store::{private, Store, StoreError, DB_FILE, ENGINE_DIR};

/// Each network step gets at most this long, so doctor never hangs on a closed network.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Clock offsets up to this are fine (the `Date` header has whole seconds).
const CLOCK_OK: i64 = 10;
/// Beyond this, certificates and message timestamps go wrong.
const CLOCK_BAD: i64 = 60;

const NETWORK_FIX: &str = "allow outbound 443 to *.whatsapp.net (and web.whatsapp.com), or set --proxy / WAGATE_PROXY \
     (http:// or socks5://) for both `wagate serve` and `wagate doctor`";

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    data: DataDirArg,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// WebSocket URL of a WhatsApp-compatible server such as wagate-sim (sandbox builds only).
    #[arg(long, env = "WAGATE_WA_URL")]
    wa_url: Option<String>,
    /// Outbound proxy to reach WhatsApp through, as `wagate serve --proxy` (else HTTPS_PROXY / ALL_PROXY).
    #[arg(long, env = "WAGATE_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// The cluster's PostgreSQL, as `wagate serve --database`: checks the database, the
    /// nodes, the leases and the clocks instead of the data directory's registry.
    #[arg(long, env = "WAGATE_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// The nodes' lease time in seconds, as `wagate serve --lease-ttl` (a node is alive
    /// when its heartbeat is younger).
    #[arg(long, env = "WAGATE_LEASE_TTL", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=600))]
    lease_ttl: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// Prints findings as they come (network checks take seconds) and remembers the worst.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, level: Level, what: impl AsRef<str>, fix: Option<&str>) {
        let tag = match level {
            Level::Ok => "OK  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        self.failed |= level == Level::Fail;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{tag}  {}", what.as_ref());
        if let Some(fix) = fix {
            let _ = writeln!(out, "      fix: {fix}");
        }
        let _ = out.flush();
    }

    fn ok(&mut self, what: impl AsRef<str>) {
        self.line(Level::Ok, what, None);
    }

    fn warn(&mut self, what: impl AsRef<str>, fix: &str) {
        self.line(Level::Warn, what, Some(fix));
    }

    fn fail(&mut self, what: impl AsRef<str>, fix: &str) {
        self.line(Level::Fail, what, Some(fix));
    }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<i32> {
    check_wa_url(args.wa_url.as_deref())?;
    let mut report = Report::default();
    let dir = &args.data.data_dir;
    let on_disk = data_dir(&mut report, dir);
    if on_disk {
        private_files(&mut report, dir);
    }
    // On a cluster the registry and the keys are in the database.
    let records = match args.database.as_deref().filter(|url| !url.is_empty()) {
        Some(url) => {
            cluster::checks(&mut report, url, Duration::from_secs(args.lease_ttl)).await;
            None
        }
        None if on_disk => registry(&mut report, dir),
        None => None,
    };
    if let Some(records) = &records {
        engine_databases(&mut report, dir, records);
    }
    open_files(&mut report, records.as_ref().map_or(0, Vec::len));
    let running = gateway(&mut report, dir);
    whatsapp(&mut report, &args).await?;
    sessions(&mut report, &args, running, records.as_deref()).await;
    Ok(if report.failed { exit::FAILED } else { exit::OK })
}

/// Whether the open-files limit a gateway started from here gets (its soft limit is raised
/// to the hard one) holds the data directory's sessions, with room to grow.
fn open_files(report: &mut Report, sessions: usize) {
    use crate::open_files::{limits, FileBudget};
    let Some((_, hard)) = limits() else { return };
    let budget = FileBudget::plan(hard.min(1 << 20), hard, crate::http::Limits::default().max_connections);
    let what = format!(
        "open-files limit {hard} (hard): room for {} sessions beside {} API connections; {sessions} in this data directory",
        budget.sessions, budget.connections
    );
    if sessions >= budget.sessions {
        report.warn(
            what,
            "raise the limit of the gateway's service: LimitNOFILE=65536 in its systemd unit (contrib/wagate.service), \
             or `ulimit -n 65536` (as allowed by the hard limit) in the shell that starts it",
        );
    } else {
        report.ok(what);
    }
}

/// The data directory exists, is a directory, and takes new files.
fn data_dir(report: &mut Report, dir: &Path) -> bool {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.warn(
                format!("data directory {shown} does not exist"),
                "check --data-dir / WAGATE_DATA_DIR; `wagate serve` creates it on its first start",
            );
            return false;
        }
        Err(e) => {
            report.fail(format!("data directory {shown} cannot be read: {e}"), "check its permissions");
            return false;
        }
        Ok(meta) if !meta.is_dir() => {
            report.fail(
                format!("data directory {shown} is not a directory"),
                "point --data-dir at the gateway's data directory, or move this file out of the way",
            );
            return false;
        }
        Ok(_) => {}
    }
    let probe_file = dir.join(format!(".doctor-write-test-{}", std::process::id()));
    match std::fs::write(&probe_file, b"wagate doctor").and_then(|()| std::fs::remove_file(&probe_file)) {
        Ok(()) => {
            report.ok(format!("data directory {shown} exists and is writable"));
            true
        }
        Err(e) => {
            report.fail(
                format!("data directory {shown} is not writable: {e}"),
                "give the user that runs wagate write access to it (chown / chmod), or free disk space",
            );
            false
        }
    }
}

/// The data directory, `engine/` and the databases are the owner's alone (0700 / 0600):
/// they hold every session's keys.
fn private_files(report: &mut Report, dir: &Path) {
    let mut open = 0;
    for (path, mode) in private::data_dir_entries(dir) {
        let Some(found) = private::open_to_others(&path) else { continue };
        open += 1;
        let what = if mode == private::DIR_MODE { "directory" } else { "file" };
        report.warn(
            format!("{what} {} is open to other users (mode {found:o}, should be {mode:o})", path.display()),
            &format!("chmod {mode:o} {}", shell_word(&path)),
        );
    }
    if open == 0 {
        report.ok("the data directory and its files are private (0700 / 0600)");
    }
}

/// `path` as one shell word (quoted only when it needs to be).
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,=".contains(&b)) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// `wagate.db`: intact and on the current schema. Returns its sessions.
fn registry(report: &mut Report, dir: &Path) -> Option<Vec<crate::store::SessionRecord>> {
    const FROM_BACKUP: &str =
        "stop the gateway and put back the last backup (wagate restore FILE --force); the old files are kept aside";
    let store = match Store::open_read_only(dir) {
        Ok(store) => store,
        Err(StoreError::Missing(_)) => {
            report
                .warn(format!("{DB_FILE} does not exist yet"), "start the gateway once (wagate serve); it creates it");
            return None;
        }
        Err(StoreError::SchemaBehind { found, expected }) => {
            report.warn(
                format!("{DB_FILE} has schema {found}, this wagate uses {expected}"),
                "start the gateway (wagate serve): it updates the database on start",
            );
            return None;
        }
        Err(e) => {
            report.fail(format!("{DB_FILE} cannot be opened: {e}"), FROM_BACKUP);
            return None;
        }
    };
    match store.full_integrity_check() {
        Ok(result) if result == "ok" => report.ok(format!("{DB_FILE} passes the integrity check; schema is current")),
        Ok(problems) => {
            report.fail(format!("{DB_FILE} is damaged: {problems}"), FROM_BACKUP);
            return None;
        }
        Err(e) => {
            report.fail(format!("{DB_FILE} cannot be checked: {e}"), FROM_BACKUP);
            return None;
        }
    }
    match store.sessions() {
        Ok(records) => Some(records),
        Err(e) => {
            report.fail(format!("the session registry cannot be read: {e}"), FROM_BACKUP);
            None
        }
    }
}

/// Every shard of the engine (and file of the older layout) opens and passes a quick check;
/// linked sessions have keys; keys belong to registered sessions.
fn engine_databases(report: &mut Report, dir: &Path, records: &[crate::store::SessionRecord]) {
    use crate::engine::shards;
    const RELINK: &str = "restore the last backup, or log the sessions out and link them again \
         (wagate sessions logout ID; wagate link ID)";
    let engine_dir = dir.join(ENGINE_DIR);
    let registered = |id: &str| records.iter().any(|r| r.id == id);
    let mut with_keys = Vec::new();
    for name in shards::shard_files(&engine_dir).unwrap_or_default() {
        let path = engine_dir.join(&name);
        let shown = format!("{ENGINE_DIR}/{name}");
        let devices = quick_check(&path).and_then(|()| shards::devices_in(&path).map_err(|e| e.to_string()));
        match devices {
            Ok(devices) => {
                let count = devices.len();
                report
                    .ok(format!("{shown} opens and is intact ({count} session{})", if count == 1 { "" } else { "s" }));
                for device in devices {
                    if !registered(&device.session) {
                        report.warn(
                            format!("{shown} holds keys of {}, which is no registered session", device.session),
                            "left over from a deleted session; it is ignored",
                        );
                    }
                    with_keys.push(device.session);
                }
            }
            Err(e) => report.fail(format!("{shown} (the keys of the sessions in it) is damaged: {e}"), RELINK),
        }
    }
    let mut legacy: Vec<std::path::PathBuf> =
        std::fs::read_dir(&engine_dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    legacy.retain(|p| {
        p.extension().is_some_and(|e| e == "db")
            && p.file_stem().is_some_and(|s| crate::session::validate_id(&s.to_string_lossy()).is_ok())
    });
    legacy.sort();
    for path in &legacy {
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = format!("{ENGINE_DIR}/{id}.db");
        match quick_check(path) {
            Ok(()) if registered(&id) => report
                .ok(format!("{name} opens and is intact (older layout: moved into its shard when the session starts)")),
            Ok(()) => report.warn(
                format!("{name} belongs to no registered session"),
                "left over from a deleted session; remove it, or leave it (it is ignored)",
            ),
            Err(e) => report.fail(format!("{name} is damaged: {e}"), RELINK),
        }
        with_keys.push(id);
    }
    for record in records {
        if record.me.is_some() && !with_keys.contains(&record.id) {
            report.warn(
                format!("session {} was linked but its keys are missing from {ENGINE_DIR}/", record.id),
                "it needs a new link: wagate link ID",
            );
        }
    }
}

fn quick_check(path: &Path) -> Result<(), String> {
    use rusqlite::{Connection, OpenFlags};
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| e.to_string())?;
    let result: String = db.query_row("PRAGMA quick_check", [], |row| row.get(0)).map_err(|e| e.to_string())?;
    if result == "ok" {
        Ok(())
    } else {
        Err(result)
    }
}

/// Whether a gateway serves the data directory (by its lock).
fn gateway(report: &mut Report, dir: &Path) -> bool {
    match lock::inspect(dir) {
        Ok(LockState::Held(owner)) => {
            let pid = owner.as_ref().map_or("unknown".to_string(), |o| o.pid.to_string());
            let at = owner.and_then(|o| o.listen).map(|l| format!(", listening on {l}")).unwrap_or_default();
            report.ok(format!("the gateway is running on this data directory (pid {pid}{at})"));
            true
        }
        Ok(LockState::Free) => {
            report.warn("no gateway is running on this data directory", "start it: wagate serve, or scripts/start.sh");
            false
        }
        Err(e) => {
            report
                .warn(format!("cannot tell whether a gateway runs here: {e}"), "check the permissions of wagate.lock");
            false
        }
    }
}

/// DNS, TCP, TLS and the WebSocket upgrade to WhatsApp, then the clock against its `Date`.
async fn whatsapp(report: &mut Report, args: &DoctorArgs) -> anyhow::Result<()> {
    let url = args.wa_url.as_deref().unwrap_or(WHATSAPP_WS_URL);
    let host = url.split("://").nth(1).and_then(|rest| rest.split(['/', ':']).next()).unwrap_or_default();
    let proxy: Option<Proxy> = match args.proxy.as_deref().filter(|p| !p.is_empty()) {
        Some(url) => Some(Proxy::parse(url)?),
        None => proxy::from_environment(host).transpose()?,
    };
    let result = probe(url, proxy.as_ref(), STEP_TIMEOUT).await;
    for step in &result.steps {
        match &step.outcome {
            Ok(found) => report.ok(format!("WhatsApp {}: {found}", step.name)),
            Err(why) => {
                let fix = match (&proxy, step.name) {
                    (Some(_), "TCP") => {
                        "check the proxy URL, and that the proxy allows CONNECT to port 443 of WhatsApp"
                    }
                    _ => NETWORK_FIX,
                };
                report.fail(format!("WhatsApp endpoint unreachable at the {} step ({url}): {why}", step.name), fix);
            }
        }
    }
    const NTP_FIX: &str = "keep the clock synchronised (timedatectl set-ntp true, or chrony / ntpd)";
    match result.clock_offset {
        Some(offset) => {
            let seconds = offset.num_seconds();
            let text = format!("clock offset to WhatsApp's server: {seconds:+} s");
            match seconds.abs() {
                s if s <= CLOCK_OK => report.ok(text),
                s if s <= CLOCK_BAD => report.warn(text, NTP_FIX),
                _ => report.fail(text, NTP_FIX),
            }
        }
        None if result.reached() => report.warn("clock offset could not be checked (the server sent no Date)", NTP_FIX),
        None => report.warn("clock offset could not be checked (WhatsApp not reachable)", NTP_FIX),
    }
    Ok(())
}

/// Every session's state, explained; from the running gateway, else as last recorded.
async fn sessions(
    report: &mut Report,
    args: &DoctorArgs,
    running: bool,
    records: Option<&[crate::store::SessionRecord]>,
) {
    let mut rows = None;
    if running {
        let client = Client::new(base_url(&args.gateway, Some(&args.data.data_dir)), args.gateway.api_key.clone());
        match client.map_err(|e| e.to_string()) {
            Ok(client) => match client.get("/v1/sessions").await {
                Ok(Value::Array(views)) => rows = Some(views.iter().map(SessionRow::from_api).collect::<Vec<_>>()),
                Ok(other) => report.warn(format!("unexpected session list: {other}"), "check --url"),
                Err(e) => {
                    report.warn(format!("cannot ask the gateway for its sessions: {e}"), "check --url / --api-key")
                }
            },
            Err(e) => report.warn(format!("cannot set up an HTTP client: {e}"), "-"),
        }
    }
    let (rows, source) = match rows {
        Some(rows) => (rows, "now"),
        None => match records {
            Some(records) => (records.iter().map(SessionRow::from_record).collect(), "last recorded"),
            None => return,
        },
    };
    if rows.is_empty() {
        report.ok("no sessions yet (create one: wagate link ID)");
    }
    for row in &rows {
        let since =
            row.since.map(|t| format!(" since {}", super::table::ago(t, chrono::Utc::now()))).unwrap_or_default();
        let why = row.reason.as_ref().map(|_| format!(", {}", row.reason_text())).unwrap_or_default();
        let what = format!("session {} ({source}): {}{since}{why}. {}", row.id, row.state_name(), row.explanation());
        let fix = fix_for(row);
        match row.state {
            Some(StateKind::Connected) => report.ok(what),
            Some(
                StateKind::LoggedOut
                | StateKind::Replaced
                | StateKind::Banned
                | StateKind::Outdated
                | StateKind::Failed,
            ) if !is_requested_logout(row) => report.fail(what, &fix),
            _ => report.warn(what, &fix),
        }
    }
}

fn is_requested_logout(row: &SessionRow) -> bool {
    row.reason.as_deref() == Some(crate::session::state::reason::LOGOUT_REQUESTED)
}

/// The action for a session that is not connected.
fn fix_for(row: &SessionRow) -> String {
    let action = match row.state {
        Some(StateKind::Banned) => "wait for the ban to end; wagate reconnects by itself then".to_string(),
        Some(StateKind::Outdated) => "update wagate, then start the session again (wagate link ID)".to_string(),
        Some(StateKind::Replaced) => {
            "stop the other program or wagate that uses this session (the same data directory copied elsewhere)"
                .to_string()
        }
        Some(StateKind::Reconnecting | StateKind::Connecting) => {
            "nothing unless it persists; then check the network and proxy (see the WhatsApp lines above)".to_string()
        }
        Some(StateKind::Stopped) | None => "start the gateway or the session (wagate link ID)".to_string(),
        _ => format!("link it again: wagate link {}", row.id),
    };
    if row.needs_companion_hint() {
        format!("{action}. {COMPANION_LIMIT_HINT}")
    } else {
        action
    }
}
