//! The data directory is private to the user wagate runs as (DESIGN.md, Guarantees): its
//! directories are 0700 and its files 0600, as are the log file and backups. wagate creates
//! them so whatever the umask, and tightens what it finds more open (left by an older
//! version, a copy or an unpack). SQLite gives a database's -wal, -shm and -journal files
//! the mode of the database, so a database created here private keeps them private too.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::ENGINE_DIR;

/// Directories: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files: the owner only, read and write.
pub const FILE_MODE: u32 = 0o600;

/// Makes whatever the process creates from now on private (umask 077), files of libraries
/// included.
pub fn restrict_umask() {
    #[cfg(unix)]
    // SAFETY: umask(2) only swaps the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// `OpenOptions` that create a file 0600 (an existing file keeps its mode: see [`tighten`]).
pub fn options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// Creates `dir` and its missing parents 0700; `dir` itself is tightened if it exists.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)?;
    tighten(dir, DIR_MODE).map(drop)
}

/// Creates `path` empty and 0600 unless it exists (then it is tightened, or a warning says
/// why not), so that SQLite, which opens it next, finds a private file.
pub fn create_file(path: &Path) -> io::Result<()> {
    match options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            tighten_or_warn(path, FILE_MODE);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` (replacing it), as a private file.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = options().write(true).create(true).truncate(true).open(path)?;
    tighten(path, FILE_MODE)?;
    file.write_all(bytes)
}

/// Takes away from `path` every permission `mode` does not have (group and others, for
/// [`DIR_MODE`] and [`FILE_MODE`]); true if it changed. A missing path changes nothing,
/// nor does anything but a regular file or a directory (`--log-file /dev/null` must leave
/// `/dev/null` alone).
pub fn tighten(path: &Path, mode: u32) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let current = match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() || meta.is_dir() => meta.permissions().mode() & 0o7777,
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let wanted = current & mode;
        if wanted == current {
            return Ok(false);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(false)
    }
}

/// The permission bits of `path` that let others than its owner in (0 when private, or
/// when it cannot be read).
pub fn open_to_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(path).ok()?.permissions().mode() & 0o777;
        Some(mode).filter(|m| m & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// What wagate keeps in a data directory, with the mode each should have: the directory,
/// the files in it (`wagate.db` with its -wal/-shm, `wagate.lock`), `engine/` and the
/// files in it (the shards `shard-<k>.sqlite` with theirs). Symbolic links are not followed.
pub fn data_dir_entries(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = vec![(dir.to_path_buf(), DIR_MODE)];
    found.extend(files_in(dir).into_iter().map(|p| (p, FILE_MODE)));
    let engine = dir.join(ENGINE_DIR);
    if std::fs::symlink_metadata(&engine).is_ok_and(|m| m.is_dir()) {
        found.push((engine.clone(), DIR_MODE));
        found.extend(files_in(&engine).into_iter().map(|p| (p, FILE_MODE)));
    }
    found
}

/// The regular files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).map(|e| e.path()).collect();
    files.sort();
    files
}

/// [`tighten`], with a warning when it cannot (a file of another owner): not a reason to stop.
pub fn tighten_or_warn(path: &Path, mode: u32) {
    if let Err(e) = tighten(path, mode) {
        tracing::warn!("cannot make {} private (chmod {mode:o}): {e}", path.display());
    }
}

/// Tightens everything [`data_dir_entries`] lists; returns what it changed. What it
/// cannot change (another owner) is logged, not fatal.
pub fn tighten_data_dir(dir: &Path) -> Vec<PathBuf> {
    let mut changed = Vec::new();
    for (path, mode) in data_dir_entries(dir) {
        match tighten(&path, mode) {
            Ok(true) => changed.push(path),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot make {} private (chmod {mode:o}): {e}", path.display()),
        }
    }
    changed
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn made_private_whatever_the_umask_and_tightened_never_loosened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        create_dir(&data).unwrap();
        assert_eq!((mode(&dir.path().join("a")), mode(&data)), (0o700, 0o700));
        create_file(&data.join("x.db")).unwrap();
        assert_eq!(mode(&data.join("x.db")), 0o600);
        write(&data.join("y"), b"hello").unwrap();
        assert_eq!((mode(&data.join("y")), std::fs::read(data.join("y")).unwrap()), (0o600, b"hello".to_vec()));

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(data.join("y"), std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(open_to_others(&data), Some(0o755));
        let changed = tighten_data_dir(&data);
        assert_eq!(changed, [data.clone(), data.join("y")]);
        assert_eq!((mode(&data), mode(&data.join("y"))), (0o700, 0o400), "only taken away, never added");
        assert_eq!(open_to_others(&data), None);
        assert!(tighten_data_dir(&data).is_empty());
        assert!(!tighten(&data.join("missing"), FILE_MODE).unwrap());
        assert!(!tighten(Path::new("/dev/null"), FILE_MODE).unwrap(), "devices are left alone");
    }
}
