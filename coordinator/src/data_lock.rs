//! One coordinator per `--data`. Two coordinators on the same directory each believe they own
//! the database and the store: the second wipes the first's scratch (failing its uploads) and
//! both rerun unfinished stitches into the same keys. So a coordinator takes an exclusive
//! advisory lock on `<data>/lock` before it touches anything there, and holds it for as long as
//! it runs; the kernel drops it when the process dies, however it dies, so a crash never leaves
//! a stale lock behind.
//!
//! The lock file also says who holds it (process id, host, start time), so that the refused
//! second coordinator can name the first.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held for the coordinator's life; dropping it releases the directory.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    path: PathBuf,
}

impl DataLock {
    /// Locks `data`, or says who holds it.
    pub fn acquire(data: &Path) -> Result<Self> {
        let path = data.join("lock");
        let io = || Error::io(format!("locking the data directory ({})", path.display()));
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io())?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder writes its line right after locking; an empty file means it is
                // just starting.
                let _ = Read::by_ref(&mut file).take(256).read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::DataInUse {
                    data: data.to_path_buf(),
                    holder: if holder.is_empty() { "a coordinator that is starting".into() } else { holder.into() },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io()(e)),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "an unknown host".into());
        file.set_len(0).map_err(io())?;
        file.seek(SeekFrom::Start(0)).map_err(io())?;
        writeln!(file, "pid {} on {host}, since unix time {} ms", std::process::id(), crate::now_ms()).map_err(io())?;
        file.sync_all().map_err(io())?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataLock::acquire(dir.path()).unwrap();
        let err = DataLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {} on ", std::process::id())), "{err}");
        assert!(err.starts_with(&format!("data directory {} is in use by another coordinator", dir.path().display())));
        drop(first);
        DataLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
