//! Space kept back for the calls that free space. On a full disk SQLite cannot even write the
//! journal of a cancel or a delete ("database or disk is full"), and a delete needs a cancel
//! first, so a full farm could not be emptied through its own API. The coordinator therefore
//! keeps a reserve file under `--data`; a cancel or delete that fails for want of space gives it
//! up and tries again, and it is made anew once a delete has freed space.

use std::io::Write;
use std::path::PathBuf;

pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    pub fn new(path: PathBuf, bytes: u64) -> Self {
        Self { path, bytes }
    }

    /// Makes sure the reserve is there, whole; written under a temporary name, so a full disk
    /// leaves no half reserve behind.
    pub fn ensure(&self) -> std::io::Result<()> {
        if self.bytes == 0 || std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes) {
            return Ok(());
        }
        let tmp = self.path.with_extension("partial");
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Whether the reserve is there, whole (or none is kept).
    pub fn is_whole(&self) -> bool {
        self.bytes == 0 || std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes)
    }

    /// Gives the reserve up; true when there was one.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }
}
