//! The backup archive shared by `wagate backup` and `wagate restore`: a gzip-compressed tar
//! holding `manifest.json` first, then `wagate.db` and the engine's shards
//! (`engine/shard-<k>.sqlite`), each an online-backup copy of the live database; a session not
//! yet moved out of the older layout adds its `engine/<id>.db`. The manifest lists every file
//! with its size and SHA-256, so a restore can prove the archive whole before it replaces
//! anything.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::shards;
use crate::session::validate_id;
use crate::store::{DB_FILE, ENGINE_DIR};

pub const MANIFEST: &str = "manifest.json";
/// Bumped when the archive layout changes in a way older restores cannot read: 2 holds the
/// engine's shards instead of one file per session.
pub const FORMAT: u32 = 2;
/// The formats this build restores: 1 (one engine file per session) is still read; its
/// files move into the shards when their sessions first start.
pub const READS: std::ops::RangeInclusive<u32> = 1..=FORMAT;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub wagate_version: String,
    pub created_at: String,
    /// The registry's schema version (`PRAGMA user_version` of wagate.db).
    pub schema_version: usize,
    pub sessions: Vec<ManifestSession>,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestSession {
    pub id: String,
    /// Linked (its keys are in the archive) when it was backed up.
    pub linked: bool,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the data directory, with `/`.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Whether `path` is a file a data directory archive may hold: the manifest, the registry, a
/// shard of the engine, or an engine file of the older layout (a valid session id). Anything
/// else (absolute paths, `..`) is refused.
pub fn allowed_entry(path: &str) -> bool {
    if path == MANIFEST || path == DB_FILE {
        return true;
    }
    let Some(name) = path.strip_prefix(&format!("{ENGINE_DIR}/")) else { return false };
    shards::is_shard_file_name(name) || name.strip_suffix(".db").is_some_and(|id| validate_id(id).is_ok())
}

/// The databases of a data directory, relative paths: the registry first, then the shards,
/// then files of the older layout.
pub fn databases(data_dir: &Path) -> std::io::Result<Vec<String>> {
    let engine = data_dir.join(ENGINE_DIR);
    let mut legacy = Vec::new();
    match std::fs::read_dir(&engine) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                let path = format!("{ENGINE_DIR}/{name}");
                if !shards::is_shard_file_name(&name) && allowed_entry(&path) {
                    legacy.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    legacy.sort();
    let shard_files = shards::shard_files(&engine)?.into_iter().map(|name| format!("{ENGINE_DIR}/{name}"));
    Ok(std::iter::once(DB_FILE.to_string()).chain(shard_files).chain(legacy).collect())
}

pub fn describe(path: &Path, relative: &str) -> std::io::Result<ManifestFile> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok(ManifestFile {
        path: relative.to_string(),
        bytes,
        sha256: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// A directory that is removed on drop unless kept (staging areas of backup and restore).
pub struct TempDir {
    path: Option<PathBuf>,
}

impl TempDir {
    /// `.<name>.<purpose>-<pid>` beside `beside`, so that the final rename stays on one file
    /// system; private (0700), as the data directory it may become.
    pub fn beside(beside: &Path, purpose: &str) -> std::io::Result<Self> {
        let parent = beside.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = beside.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "wagate".into());
        let path = parent.join(format!(".{name}.{purpose}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        crate::store::private::create_dir(&path)?;
        Ok(Self { path: Some(path) })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("kept directories are not used again")
    }

    /// Stops the removal (the directory was renamed into place).
    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_then_the_shards_then_older_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(ENGINE_DIR)).unwrap();
        for name in
            ["shard-3.sqlite", "shard-3.sqlite-wal", "shard-0.sqlite", "WA-Old.db", "WA-Old.db-wal", "notes.txt"]
        {
            std::fs::write(dir.path().join(ENGINE_DIR).join(name), b"").unwrap();
        }
        assert_eq!(
            databases(dir.path()).unwrap(),
            ["wagate.db", "engine/shard-0.sqlite", "engine/shard-3.sqlite", "engine/WA-Old.db"]
        );
    }

    #[test]
    fn only_data_directory_files_are_allowed() {
        for good in
            ["manifest.json", "wagate.db", "engine/WA-Acme.db", "engine/shard-0.sqlite", "engine/shard-7.sqlite"]
        {
            assert!(allowed_entry(good), "{good}");
        }
        for bad in [
            "/etc/passwd",
            "../wagate.db",
            "engine/../../x.db",
            "engine/a b.db",
            "engine/x.txt",
            "other.db",
            "engine/..db",
            "engine/shard-8.sqlite",
            "engine/shard-1.sqlite-wal",
            "engine/../shard-1.sqlite",
        ] {
            assert!(!allowed_entry(bad), "{bad}");
        }
    }
}
