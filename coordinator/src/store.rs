//! Artifacts (style images, hand-off states, encoded chunks, outputs) live outside the database,
//! behind `ArtifactStore`, so that they could move to object storage without touching the
//! scheduling code. Keys are relative paths like `jobs/7/attempt-12.state`.
//!
//! Writers first write a scratch file (hashing as they go) and then `put_file` it: a key is
//! either absent or complete, never half written.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` (and its parents) readable by this user only, as everything under `--data`
/// is tenants' data; an existing directory is left as it is.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes `file` readable and writable by this user only.
pub fn make_private(file: &Path) -> io::Result<()> {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}

pub trait ArtifactStore: Send + Sync + 'static {
    /// Moves a finished local file into the store under `key`, atomically.
    fn put_file(&self, key: &str, file: &Path) -> io::Result<()>;
    /// A local file holding `key` (a cache copy, for remote stores).
    fn local_path(&self, key: &str) -> io::Result<PathBuf>;
    fn exists(&self, key: &str) -> bool;
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Deletes every key under `prefix` (`jobs/7`); returns the bytes freed.
    fn delete_all(&self, prefix: &str) -> io::Result<u64>;
    /// A directory for scratch files on the same filesystem as the store's files.
    fn scratch_dir(&self) -> &Path;
}

/// Artifacts as files under `<data>/artifacts`; scratch files under `<data>/scratch`, emptied at
/// start (anything there belonged to an upload that never finished).
pub struct FsStore {
    root: PathBuf,
    scratch: PathBuf,
}

impl FsStore {
    pub fn open(data: &Path) -> io::Result<Self> {
        let root = data.join("artifacts");
        let scratch = data.join("scratch");
        private_dir(&root)?;
        let _ = std::fs::remove_dir_all(&scratch);
        private_dir(&scratch)?;
        Ok(Self { root, scratch })
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad artifact key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

impl ArtifactStore for FsStore {
    fn put_file(&self, key: &str, file: &Path) -> io::Result<()> {
        let dest = self.path(key)?;
        if let Some(dir) = dest.parent() {
            private_dir(dir)?;
        }
        make_private(file)?;
        std::fs::File::open(file)?.sync_all()?;
        std::fs::rename(file, &dest)
    }

    fn local_path(&self, key: &str) -> io::Result<PathBuf> {
        let p = self.path(key)?;
        if p.is_file() {
            Ok(p)
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("artifact {key} is missing")))
        }
    }

    fn exists(&self, key: &str) -> bool {
        self.path(key).map(|p| p.is_file()).unwrap_or(false)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn delete_all(&self, prefix: &str) -> io::Result<u64> {
        let dir = self.path(prefix)?;
        let freed = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        std::fs::remove_dir_all(&dir)?;
        Ok(freed)
    }

    fn scratch_dir(&self) -> &Path {
        &self.scratch
    }
}

/// Where each artifact of a job lives.
pub mod keys {
    use crate::db::{AttemptId, JobId};

    /// Style images are stored by content, before their job exists.
    pub fn style(sha256: &str) -> String {
        format!("styles/{sha256}")
    }

    /// A soundtrack, stored once by content like a style.
    pub fn audio(sha256: &str) -> String {
        format!("audio/{sha256}")
    }
    pub fn state(job: JobId, attempt: AttemptId) -> String {
        format!("jobs/{}/attempt-{attempt}.state", job.0)
    }
    pub fn chunk(job: JobId, attempt: AttemptId) -> String {
        format!("jobs/{}/attempt-{attempt}.chunk", job.0)
    }
    pub fn output(job: JobId, ext: &str) -> String {
        format!("jobs/{}/output.{ext}", job.0)
    }
    /// The movie's last frame as a small JPEG, for the dashboard.
    pub fn poster(job: JobId) -> String {
        format!("jobs/{}/poster.jpg", job.0)
    }
    /// Everything stored for a job.
    pub fn job(job: JobId) -> String {
        format!("jobs/{}", job.0)
    }
}
