//! Where downloads land: unnamed temporary files in the data directory's `tmp/`, written
//! through a sink that refuses more bytes than the file may have. On disk rather than in
//! memory, so a 2 GB document costs the gateway a file handle and a few kilobytes; unnamed,
//! so a crash leaves nothing behind and no other process can open them.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The directory of the temporary files (private, like the rest of the data directory).
#[derive(Debug, Clone)]
pub struct Scratch {
    dir: Arc<Path>,
}

impl Scratch {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir: dir.into() }
    }

    /// A new empty file with no name (`O_TMPFILE` where the file system has it, else
    /// created and unlinked at once).
    pub fn file(&self) -> std::io::Result<File> {
        tempfile::tempfile_in(&self.dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("a temporary file in {}: {e}", self.dir.display())))
    }
}

/// A download's sink: a file that refuses to grow beyond `cap` bytes, so a CDN answer longer
/// than its message declared fails mid-stream instead of filling the disk.
pub struct CappedFile {
    file: File,
    cap: u64,
    position: u64,
}

impl CappedFile {
    pub fn new(file: File, cap: u64) -> Self {
        Self { file, cap, position: 0 }
    }

    /// The file, positioned at its start, and its length.
    pub fn finish(mut self) -> std::io::Result<(File, u64)> {
        let len = self.file.seek(SeekFrom::End(0))?;
        self.file.rewind()?;
        Ok((self.file, len))
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.position.saturating_add(buf.len() as u64) > self.cap {
            return Err(std::io::Error::other(format!(
                "the file is larger than the {} bytes allowed for it",
                self.cap
            )));
        }
        let written = self.file.write(buf)?;
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for CappedFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.position = self.file.seek(pos)?;
        Ok(self.position)
    }
}

impl whatsapp_rust::download::DownloadWriter for CappedFile {
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use whatsapp_rust::download::DownloadWriter;

    #[test]
    fn a_download_sink_holds_no_more_than_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(dir.path().to_path_buf());
        let mut sink = CappedFile::new(scratch.file().unwrap(), 10);
        sink.write_all(b"0123456789").unwrap();
        assert!(sink.write_all(b"x").is_err(), "an eleventh byte is refused");
        // A retry starts over on an emptied sink.
        sink.truncate(0).unwrap();
        sink.rewind().unwrap();
        sink.write_all(b"abc").unwrap();
        assert!(sink.write_all(&[0; 8]).is_err());
        let (mut file, len) = sink.finish().unwrap();
        assert_eq!(len, 3);
        let mut read = Vec::new();
        file.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file has no name in the directory");
    }
}
