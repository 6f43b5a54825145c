//! `wagate.lock` in the data directory: the gateway serving a data directory holds an
//! exclusive lock on it, with its PID and address written inside. Operator commands
//! (`status`, `restore`) learn from it reliably whether a gateway runs there: the kernel
//! drops the lock with the process, even on `kill -9`, where a PID file would go stale.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const LOCK_FILE: &str = "wagate.lock";

/// Who holds the lock, as the holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    /// The address the gateway listens on, once it does.
    pub listen: Option<String>,
    pub started_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another wagate (pid {}) is already using the data directory {}", .owner.as_ref().map_or("unknown".to_string(), |o| o.pid.to_string()), .dir.display())]
    Held { dir: PathBuf, owner: Option<LockOwner> },
    #[error("cannot lock the data directory {}: {source}", .dir.display())]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (creating the directory and the file if needed), or
    /// says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io { dir: data_dir.to_path_buf(), source };
        super::private::create_dir(data_dir).map_err(io)?;
        let path = data_dir.join(LOCK_FILE);
        let mut file =
            super::private::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        super::private::tighten_or_warn(&path, super::private::FILE_MODE);
        match file.try_lock() {
            Ok(()) => Ok(Self { file }),
            Err(TryLockError::WouldBlock) => {
                Err(LockError::Held { dir: data_dir.to_path_buf(), owner: read_owner(&mut file) })
            }
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Writes who holds the lock (replacing what an earlier holder wrote).
    pub fn record(&mut self, owner: &LockOwner) -> std::io::Result<()> {
        let json = serde_json::to_vec(owner).expect("owners serialize");
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&json)?;
        self.file.flush()
    }
}

/// Whether a gateway holds the lock of `data_dir`, without disturbing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No gateway runs on this data directory.
    Free,
    /// A gateway runs on it; `None` when it has not written its details (yet).
    Held(Option<LockOwner>),
}

pub fn inspect(data_dir: &Path) -> std::io::Result<LockState> {
    let mut file = match File::open(data_dir.join(LOCK_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockState::Free),
        Err(e) => return Err(e),
    };
    // A shared lock is refused only while someone holds the exclusive one.
    match file.try_lock_shared() {
        Ok(()) => Ok(LockState::Free),
        Err(TryLockError::WouldBlock) => Ok(LockState::Held(read_owner(&mut file))),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

fn read_owner(file: &mut File) -> Option<LockOwner> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_others_see_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inspect(dir.path()).unwrap(), LockState::Free, "no lock file yet");
        let mut lock = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(inspect(dir.path()).unwrap(), LockState::Held(None));
        let owner = LockOwner { pid: 42, listen: Some("127.0.0.1:3000".into()), started_at: "now".into() };
        lock.record(&owner).unwrap();
        assert_eq!(inspect(dir.path()).unwrap(), LockState::Held(Some(owner.clone())));
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { owner: Some(held), .. }) => assert_eq!(held, owner),
            other => panic!("a second holder: {other:?}"),
        }
        drop(lock);
        assert_eq!(inspect(dir.path()).unwrap(), LockState::Free);
        DataDirLock::acquire(dir.path()).expect("free again after the holder let go");
    }
}
