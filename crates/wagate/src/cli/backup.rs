//! `wagate backup --out FILE`: a consistent archive of the data directory, also while the
//! gateway runs. Each database is copied with SQLite's online backup API (a file copy of a
//! live database can catch it half-written), checked, then packed with a manifest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flate2::write::GzEncoder;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::archive::{self, Manifest, ManifestSession, TempDir, FORMAT, MANIFEST};
use super::DataDirArg;
use crate::session::state::timestamp;
use crate::store::{private, schema_version, Store};

/// Pages copied per step (4 MiB at SQLite's default page size): big databases show progress,
/// and a writer is never held up for long.
const PAGES_PER_STEP: i32 = 1024;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The archive to write (tar + gzip).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    data: DataDirArg,
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    // The archive holds every session's keys: private, like the data directory.
    private::restrict_umask();
    let dir = &args.data.data_dir;
    if args.out.exists() && !args.force {
        anyhow::bail!("{} already exists; choose another --out, or add --force to overwrite it", args.out.display());
    }
    let store = Store::open_read_only(dir).with_context(|| format!("reading the data directory {}", dir.display()))?;
    let sessions = store.sessions()?;
    drop(store);
    let files = archive::databases(dir).context("listing the databases")?;
    let staging = TempDir::beside(&args.out, "staging").context("creating a staging directory beside --out")?;

    let total = files.len();
    let mut described = Vec::new();
    for (index, relative) in files.iter().enumerate() {
        let step = format!("[{}/{total}] {relative}", index + 1);
        let copy = staging.path().join(relative);
        if let Some(parent) = copy.parent() {
            private::create_dir(parent)?;
        }
        let pages = copy_database(&dir.join(relative), &copy, |done, all| println!("{step}: {done}/{all} pages"))
            .with_context(|| format!("copying {relative}"))?;
        let file = archive::describe(&copy, relative)?;
        println!("{step}: copied ({pages} pages, {} bytes, checked)", file.bytes);
        described.push(file);
    }

    let copy =
        Connection::open_with_flags(staging.path().join(crate::store::DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let manifest = Manifest {
        format: FORMAT,
        wagate_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: timestamp(chrono::Utc::now()),
        schema_version: schema_version(&copy)?,
        sessions: sessions
            .iter()
            .map(|r| ManifestSession {
                id: r.id.clone(),
                linked: r.me.is_some(),
                phone: r.me.as_ref().and_then(|m| m.phone.clone()),
            })
            .collect(),
        files: described,
    };
    drop(copy);
    private::write(&staging.path().join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    pack(staging.path(), &manifest, &args.out)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup written to {} ({size} bytes): {} session{}, {total} database{}",
        args.out.display(),
        manifest.sessions.len(),
        if manifest.sessions.len() == 1 { "" } else { "s" },
        if total == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Copies a live database page by page; returns its page count. `progress` hears about
/// each step of a database bigger than one step.
fn copy_database(source: &Path, target: &Path, mut progress: impl FnMut(i32, i32)) -> anyhow::Result<i32> {
    let source =
        Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(Duration::from_secs(5))?;
    private::create_file(target)?;
    let mut copy = Connection::open(target)?;
    let pages = {
        let backup = Backup::new(&source, &mut copy)?;
        loop {
            match backup.step(PAGES_PER_STEP)? {
                StepResult::Done => break,
                StepResult::More => {
                    let now = backup.progress();
                    progress(now.pagecount - now.remaining, now.pagecount);
                }
                // The gateway is writing: wait a moment and go on.
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        backup.progress().pagecount
    };
    // One self-contained file (no -wal beside it), checked before it is trusted.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = copy.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        anyhow::bail!("the copy fails SQLite's check: {check}");
    }
    Ok(pages)
}

/// Writes the archive next to `out` and renames it into place once complete, so that a
/// failure never leaves a truncated archive under the requested name.
fn pack(staging: &Path, manifest: &Manifest, out: &Path) -> anyhow::Result<()> {
    let partial = out.with_file_name(format!(
        ".{}.partial-{}",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let file = private::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        private::tighten(&partial, private::FILE_MODE)?;
        let mut tar = tar::Builder::new(GzEncoder::new(file, flate2::Compression::default()));
        tar.mode(tar::HeaderMode::Deterministic);
        tar.append_path_with_name(staging.join(MANIFEST), MANIFEST)?;
        for file in &manifest.files {
            tar.append_path_with_name(staging.join(&file.path), &file.path)?;
        }
        let mut file = tar.into_inner()?.finish()?;
        file.flush()?;
        file.sync_all()?;
        std::fs::rename(&partial, out).with_context(|| format!("moving the archive to {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
