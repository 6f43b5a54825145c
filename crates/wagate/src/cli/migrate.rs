//! `wagate migrate --from DIR --to postgres://...`: copies a SQLite data directory (wagate's
//! tables and every session's engine keys) into PostgreSQL, so that `wagate serve --database`
//! then runs those sessions, and they log in with the same keys: no QR code, the pairing on
//! the phone unchanged.
//!
//! Restartable: a crash half-way leaves nothing a gateway would run. The keys go first, each
//! session's checked once written; wagate's rows, the session registry among them, go last
//! in one transaction. A gateway runs only registered sessions, so keys without a registered
//! session can only be what an interrupted run left, and a new run wipes them first.
//!
//! Received files and logs are not in the databases: they stay in the data directory, which
//! the gateway on PostgreSQL keeps using for them (and its lock).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rusqlite::{Connection, OpenFlags};

use crate::engine::migrate::{copy_device, DeviceCopy};
use crate::engine::postgres::PgEngine;
use crate::engine::shards;
use crate::store::to_postgres::{self, TransferError};
use crate::store::{postgres, Store, DB_FILE, ENGINE_DIR};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The data directory to copy, as given to `wagate serve --data-dir` (the gateway must be stopped).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The PostgreSQL database to copy into (`postgres://user@host:port/db`); wagate's schema is
    /// created there if need be. It must not hold any of the sessions yet.
    #[arg(long, value_name = "URL", env = "WAGATE_DATABASE_URL", hide_env_values = true)]
    to: String,
}

/// Connections the engine's copy uses.
const ENGINE_CONNECTIONS: usize = 2;

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let dir = &args.from;
    let shown = redacted(&args.to);
    if !dir.join(DB_FILE).is_file() {
        anyhow::bail!("{} is not a wagate data directory (there is no {DB_FILE} in it)", dir.display());
    }
    // Held to the end: no gateway can start on the directory while it is copied.
    let _lock = super::lock_stopped(dir, "migrate (it copies a data directory at rest)")?;
    // The schema of this build, as `wagate serve` would bring it to at its start.
    drop(Store::open(dir).with_context(|| format!("opening {}", dir.join(DB_FILE).display()))?);
    let source = Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let sessions = to_postgres::source_sessions(&source)?;
    let engine_dir = dir.join(ENGINE_DIR);
    let devices = shards::stored_devices(&engine_dir).context("listing the sessions' keys")?;
    println!("Copying {} into {shown}", dir.display());
    println!("  {} session(s) registered, {} with keys", sessions.len(), devices.len());

    let config = postgres::Settings::parse(&args.to)?;
    postgres::migrate(&config).context("preparing wagate's tables in the target database")?;
    let mut client = postgres::connect(&config)?;
    let taken = to_postgres::registered(&mut client, &sessions)?;
    if !taken.is_empty() {
        anyhow::bail!(
            "the target database already has the session(s) {}; nothing was copied. Copy into a database \
             without them (delete them there first if they are stale copies)",
            taken.join(", ")
        );
    }

    // The async part runs on a runtime of its own; the blocking PostgreSQL client above and
    // below must not run inside it.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let copies = runtime.block_on(copy_keys(&args.to, &engine_dir, &sessions))?;
    for device in &devices {
        if !sessions.contains(&device.session) {
            println!("  skipped the keys of {}: no such session is registered (a removed one)", device.session);
        }
    }

    let tables = match to_postgres::copy_tables(&source, &mut client) {
        Ok(tables) => tables,
        Err(TransferError::SessionsExist(taken)) => anyhow::bail!(
            "the session(s) {} appeared in the target database while this ran (another migrate?); \
             their registry was not copied. Run migrate again once that is settled",
            taken.join(", ")
        ),
        Err(e) => return Err(e).context("copying wagate's tables (nothing of them was written)"),
    };
    let summary = tables.iter().map(|t| format!("{} {}", t.table, t.rows)).collect::<Vec<_>>().join(", ");
    println!("  wagate's tables, in one transaction: {summary}");

    let registered = to_postgres::registered(&mut client, &sessions)?;
    if registered != sessions {
        anyhow::bail!("after the copy the target has {} of the {} sessions", registered.len(), sessions.len());
    }
    let marker = dir.join(crate::store::MIGRATED_MARKER);
    std::fs::write(
        &marker,
        format!(
            "wagate migrate copied the sessions of this data directory to {shown} at {}.\n\
             They run from there now: start the gateway with --database. `wagate serve` refuses these SQLite \
             files while this file exists, since a gateway on them would link the sessions a second time.\n",
            chrono::Utc::now().to_rfc3339()
        ),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    print_next_steps(dir, &args.to, &shown, sessions.len(), &copies);
    Ok(())
}

/// Copies and checks the keys of every session; first wipes keys of these sessions that an
/// interrupted run left (none of them is registered in the target: checked before).
async fn copy_keys(url: &str, engine_dir: &Path, sessions: &[String]) -> anyhow::Result<Vec<DeviceCopy>> {
    let engine = PgEngine::connect(url, ENGINE_CONNECTIONS).await.context("preparing the engine's tables")?;
    let mut copies = Vec::new();
    let total = sessions.len();
    for (index, session) in sessions.iter().enumerate() {
        let step = format!("[{}/{total}] {session}", index + 1);
        if engine.has_keys(session).await? {
            engine.wipe(session).await?;
            println!("{step}: removed the keys an interrupted migrate had left in the target");
        }
        let copy =
            copy_device(engine_dir, session, &engine).await.with_context(|| format!("copying {session}'s keys"))?;
        match copy {
            Some(copy) => {
                let linked = copy.jid.as_deref().map_or("not linked".to_string(), |jid| format!("linked as {jid}"));
                println!("{step}: keys copied and checked ({linked}): {}", describe(&copy));
                copies.push(copy);
            }
            None => println!("{step}: no keys (never linked): it will show a QR code"),
        }
    }
    Ok(copies)
}

/// `credentials 1, identities 3, ...`: the tables that had rows; a table of which the client
/// library no longer returned every row says so.
fn describe(copy: &DeviceCopy) -> String {
    let parts: Vec<String> = copy
        .tables
        .iter()
        .filter(|t| t.source > 0)
        .map(|t| {
            if t.copied == t.source {
                format!("{} {}", t.table, t.copied)
            } else {
                format!("{} {} (of {} listed; the others had expired)", t.table, t.copied, t.source)
            }
        })
        .collect();
    parts.join(", ")
}

fn print_next_steps(dir: &Path, url: &str, shown: &str, sessions: usize, copies: &[DeviceCopy]) {
    let linked = copies.iter().filter(|c| c.jid.is_some()).count();
    println!(
        "Done: {sessions} session(s) are in PostgreSQL, {linked} of them linked; those connect without a QR code."
    );
    println!("Received files and logs stay in {}: keep it as the data directory of the gateway.", dir.display());
    let database = if shown == url { url.to_string() } else { format!("'{shown}' (with its password)") };
    println!("Next: wagate serve --data-dir {} --database {database}", dir.display());
    println!(
        "The SQLite files in {} are left as they were; `wagate serve` refuses them without --database from now \
         on ({}): two gateways with the same keys would take the WhatsApp connection from each other.",
        dir.display(),
        crate::store::MIGRATED_MARKER
    );
}

/// The URL with its password hidden (it is shown on the terminal and may end up in logs).
fn redacted(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
        let scheme = &url[..url.len() - rest.len()];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!("{scheme}{}:***{}", &rest[..colon], &rest[at..]);
            }
        }
        return url.to_string();
    }
    // key=value form
    url.split_whitespace()
        .map(|part| if part.starts_with("password=") { "password=***" } else { part })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redacted("postgres://wagate:s3cret@db:5432/wagate"), "postgres://wagate:***@db:5432/wagate");
        assert_eq!(redacted("postgresql://u:p@h/d?sslmode=disable"), "postgresql://u:***@h/d?sslmode=disable");
        assert_eq!(redacted("postgres://wagate@db/wagate"), "postgres://wagate@db/wagate");
        assert_eq!(redacted("host=db user=u password=p dbname=d"), "host=db user=u password=*** dbname=d");
        assert_eq!(redacted("postgres://h/d"), "postgres://h/d");
    }
}
