//! The backup archive shared by `wagate backup` and `wagate restore`: a gzip-compressed tar
//! holding `manifest.json` first, then `wagate.db` and `engine/<id>.db`, each an online-backup
//! copy of the live database. The manifest lists every file with its size and SHA-256, so a
//! restore can prove the archive whole before it replaces anything.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::session::validate_id;
use crate::store::{DB_FILE, ENGINE_DIR};

pub const MANIFEST: &str = "manifest.json";
/// Bumped when the archive layout changes in a way older restores cannot read.
pub const FORMAT: u32 = 1;

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

/// Whether `path` is a file a data directory archive may hold: the manifest, the registry,
/// or an engine database of a valid session id. Anything else (absolute paths, `..`) is refused.
pub fn allowed_entry(path: &str) -> bool {
    if path == MANIFEST || path == DB_FILE {
        return true;
    }
    path.strip_prefix(&format!("{ENGINE_DIR}/"))
        .and_then(|name| name.strip_suffix(".db"))
        .is_some_and(|id| validate_id(id).is_ok())
}

/// The databases of a data directory, relative paths, registry first.
pub fn databases(data_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut engines = Vec::new();
    match std::fs::read_dir(data_dir.join(ENGINE_DIR)) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                let path = format!("{ENGINE_DIR}/{name}");
                if allowed_entry(&path) {
                    engines.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    engines.sort();
    Ok(std::iter::once(DB_FILE.to_string()).chain(engines).collect())
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
    fn only_data_directory_files_are_allowed() {
        for good in ["manifest.json", "wagate.db", "engine/WA-Acme.db"] {
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
        ] {
            assert!(!allowed_entry(bad), "{bad}");
        }
    }
}
