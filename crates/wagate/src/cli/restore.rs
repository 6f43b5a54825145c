//! `wagate restore FILE`: puts a `wagate backup` archive back as the data directory. It
//! refuses while a gateway runs there, and replaces nothing before the whole archive is
//! extracted beside the target and verified (manifest, checksums, SQLite integrity); the
//! swap is then two renames, and old data is moved aside, never deleted.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use flate2::read::GzDecoder;
use rusqlite::{Connection, OpenFlags};

use super::archive::{self, Manifest, TempDir, FORMAT, MANIFEST, READS};
use super::DataDirArg;
use crate::store::lock::{DataDirLock, LOCK_FILE};
use crate::store::{integrity_check, private, schema_version, DB_FILE, SCHEMA_VERSION};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// An archive written by `wagate backup`.
    file: PathBuf,
    #[command(flatten)]
    data: DataDirArg,
    /// Replace a data directory that holds data (it is moved aside, not deleted).
    #[arg(long)]
    force: bool,
}

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    // What is unpacked becomes the data directory: private (0700 / 0600).
    private::restrict_umask();
    let target = std::path::absolute(&args.data.data_dir)?;
    if !args.file.is_file() {
        anyhow::bail!("{} is not a file", args.file.display());
    }
    // Held until the swap is done: no gateway can start on the target meanwhile.
    let held = claim(&target)?;
    let has_data = has_data(&target)?;
    if has_data && !args.force {
        anyhow::bail!(
            "{} already holds data; add --force to replace it (the current contents are moved aside, not deleted)",
            target.display()
        );
    }

    let staging = TempDir::beside(&target, "restore").context("creating a staging directory beside the target")?;
    let extracted = extract(&args.file, staging.path())?;
    let manifest = verify(staging.path(), &extracted)?;

    let aside = if has_data {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "sessions".into());
        let aside = target.with_file_name(format!("{name}.before-restore-{stamp}"));
        std::fs::rename(&target, &aside)
            .with_context(|| format!("moving the current data directory aside to {}", aside.display()))?;
        Some(aside)
    } else {
        if target.exists() {
            // Nothing but the lock file we hold: an empty directory to replace.
            let _ = std::fs::remove_file(target.join(LOCK_FILE));
            std::fs::remove_dir(&target).with_context(|| format!("replacing the empty {}", target.display()))?;
        }
        None
    };
    std::fs::rename(staging.path(), &target)
        .with_context(|| format!("moving the restored data into {}", target.display()))?;
    staging.keep();
    drop(held);

    let ids: Vec<&str> = manifest.sessions.iter().map(|s| s.id.as_str()).collect();
    println!(
        "restored {} session{} ({}) from {} (made {} by wagate {}) into {}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" },
        if ids.is_empty() { "none".to_string() } else { ids.join(", ") },
        args.file.display(),
        manifest.created_at,
        manifest.wagate_version,
        target.display()
    );
    if let Some(aside) = aside {
        println!("the previous data directory was moved to {}", aside.display());
    }
    println!(
        "start the gateway: linked sessions reconnect without a QR code. Never run the same sessions from two \
         data directories at once (WhatsApp would disconnect one as replaced, 440)."
    );
    Ok(())
}

/// Refuses if a gateway runs on `target`; otherwise locks it (when it exists).
fn claim(target: &Path) -> anyhow::Result<Option<DataDirLock>> {
    if !target.exists() {
        return Ok(None);
    }
    if !target.is_dir() {
        anyhow::bail!("{} exists and is not a directory", target.display());
    }
    super::lock_stopped(target, "restore").map(Some)
}

fn has_data(target: &Path) -> anyhow::Result<bool> {
    if !target.exists() {
        return Ok(false);
    }
    for entry in std::fs::read_dir(target)? {
        if entry?.file_name() != LOCK_FILE {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Unpacks the archive into `into`, refusing any entry that is not a data directory file.
fn extract(file: &Path, into: &Path) -> anyhow::Result<BTreeSet<String>> {
    let reader = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(reader));
    let mut extracted = BTreeSet::new();
    let not_ours = || format!("{} is not an archive made by `wagate backup`", file.display());
    for entry in tar.entries().with_context(not_ours)? {
        let mut entry = entry.with_context(not_ours)?;
        let path = entry.path().with_context(not_ours)?.to_string_lossy().into_owned();
        if !entry.header().entry_type().is_file() || !archive::allowed_entry(&path) || !extracted.insert(path.clone()) {
            anyhow::bail!("{}: unexpected entry '{path}'", not_ours());
        }
        let destination = into.join(&path);
        if let Some(parent) = destination.parent() {
            private::create_dir(parent)?;
        }
        let mut out = private::options().write(true).create(true).truncate(true).open(&destination)?;
        let bytes = std::io::copy(&mut entry, &mut out).with_context(|| format!("extracting {path}"))?;
        out.sync_all()?;
        println!("extracted {path} ({bytes} bytes)");
    }
    if !extracted.contains(MANIFEST) {
        anyhow::bail!("{}: it has no {MANIFEST}", not_ours());
    }
    Ok(extracted)
}

/// The extracted files are exactly the manifest's, unchanged, and every database is intact.
fn verify(dir: &Path, extracted: &BTreeSet<String>) -> anyhow::Result<Manifest> {
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST))?).context("reading the archive's manifest")?;
    if !READS.contains(&manifest.format) {
        anyhow::bail!(
            "the archive has format {}, this wagate reads formats {} to {FORMAT}; use a matching wagate",
            manifest.format,
            READS.start()
        );
    }
    let listed: BTreeSet<String> =
        manifest.files.iter().map(|f| f.path.clone()).chain(std::iter::once(MANIFEST.to_string())).collect();
    if &listed != extracted {
        anyhow::bail!("the archive's files do not match its manifest (incomplete or altered archive)");
    }
    let total = manifest.files.len();
    for (index, expected) in manifest.files.iter().enumerate() {
        let path = dir.join(&expected.path);
        let found = archive::describe(&path, &expected.path)?;
        if &found != expected {
            anyhow::bail!(
                "{} does not match the manifest (size or checksum differs): the archive is damaged",
                expected.path
            );
        }
        let db = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", expected.path))?;
        let check = integrity_check(&db)?;
        if check != "ok" {
            anyhow::bail!("{} fails SQLite's integrity check: {check}", expected.path);
        }
        if expected.path == DB_FILE {
            let version = schema_version(&db)?;
            if version > SCHEMA_VERSION {
                anyhow::bail!("the archive comes from a newer wagate (schema {version}, this one knows {SCHEMA_VERSION}); update wagate first");
            }
        }
        println!("[{}/{total}] verified {} (checksum and integrity)", index + 1, expected.path);
    }
    if !extracted.contains(DB_FILE) {
        anyhow::bail!("the archive holds no {DB_FILE}");
    }
    Ok(manifest)
}
