//! The sandbox's data directory. The simulator keeps its accounts in memory only, so what a
//! previous run linked is unknown to the next one: each `wagate sandbox` starts from an empty
//! directory. It empties only a directory it made itself (marked by [`MARKER`]); an unmarked
//! directory that holds anything is refused, never touched.

use std::io;
use std::path::{Path, PathBuf};

use crate::store::lock::{DataDirLock, LockError, LOCK_FILE};
use crate::store::private;

/// Marks a directory made by `wagate sandbox`.
pub const MARKER: &str = "WAGATE_SANDBOX";
/// The sandbox's log, kept across runs (appended).
pub const LOG_FILE: &str = "sandbox.log";
/// The simulated contact's own data directory, inside the sandbox's.
pub const CONTACT_DIR: &str = "contact";

const MARKER_TEXT: &str = "This directory was made by `wagate sandbox`, which empties it at every start \
(its simulator keeps nothing between runs). Do not keep anything here.\n";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{} holds files and was not made by `wagate sandbox`, which empties its data directory at every start; \
         it is left alone: choose another --data-dir (or an empty one)",
        .0.display()
    )]
    NotASandbox(PathBuf),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot prepare the sandbox directory {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Takes the lock of `dir` and leaves it empty but for the lock, the marker and the log;
/// returns the lock and how many entries of an earlier run were removed.
pub fn prepare(dir: &Path) -> Result<(DataDirLock, usize), DataDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { path, source }
    };
    let marked = dir.join(MARKER).is_file();
    if !marked && !leftovers(dir).map_err(io(dir))?.is_empty() {
        return Err(DataDirError::NotASandbox(dir.to_path_buf()));
    }
    // Locked before anything is removed: a sandbox running on it keeps its files.
    let lock = DataDirLock::acquire(dir)?;
    let old = leftovers(dir).map_err(io(dir))?;
    for path in &old {
        let removed = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        removed.map_err(io(path))?;
    }
    private::write(&dir.join(MARKER), MARKER_TEXT.as_bytes()).map_err(io(dir))?;
    Ok((lock, old.len()))
}

/// What an earlier run left: every entry but the lock, the marker and the log.
fn leftovers(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if ![LOCK_FILE, MARKER, LOG_FILE].iter().any(|kept| entry.file_name() == *kept) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_directory_is_emptied_and_any_other_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sandbox-data");
        let (lock, removed) = prepare(&dir).expect("a new directory is made");
        assert_eq!(removed, 0);
        assert!(dir.join(MARKER).is_file());
        assert!(matches!(prepare(&dir), Err(DataDirError::Lock(LockError::Held { .. }))), "one sandbox at a time");
        drop(lock);

        std::fs::create_dir_all(dir.join("engine")).unwrap();
        std::fs::write(dir.join("engine/demo.db"), b"keys").unwrap();
        std::fs::write(dir.join("wagate.db"), b"db").unwrap();
        std::fs::write(dir.join(LOG_FILE), b"last run\n").unwrap();
        let (_lock, removed) = prepare(&dir).expect("its own directory is emptied");
        assert_eq!(removed, 2);
        assert!(!dir.join("engine").exists() && !dir.join("wagate.db").exists());
        assert_eq!(std::fs::read(dir.join(LOG_FILE)).unwrap(), b"last run\n", "the log is kept");

        let foreign = root.path().join("sessions");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("wagate.db"), b"real sessions").unwrap();
        assert!(matches!(prepare(&foreign), Err(DataDirError::NotASandbox(_))));
        assert_eq!(std::fs::read(foreign.join("wagate.db")).unwrap(), b"real sessions");
        assert!(!foreign.join(LOCK_FILE).exists(), "not even a lock file is left in it");

        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        prepare(&empty).expect("an empty directory becomes a sandbox directory");
    }
}
