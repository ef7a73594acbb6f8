//! The coordinator's errors, and their one mapping to gRPC status codes.

use proto::params::ParamError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A request field that is not a render parameter (ids, checksums, sizes).
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("job {0:?} not found")]
    JobNotFound(String),
    #[error("worker {0:?} is not registered; register again")]
    WorkerNotFound(String),
    /// The fencing check: the attempt's lease expired, or it was cancelled or already ended.
    #[error("attempt {id} is no longer current: {reason}")]
    StaleAttempt { id: crate::db::AttemptId, reason: String },
    #[error("job {id} has already ended: it {state}")]
    JobEnded { id: String, state: &'static str },
    #[error("job {id} has no output: it {state}")]
    NoOutput { id: String, state: &'static str },
    #[error("job {id} has not ended: it {state}; cancel it first")]
    JobNotEnded { id: String, state: &'static str },
    #[error("job {id} has not failed: it {state}; only a failed job can be retried")]
    JobNotFailed { id: String, state: &'static str },
    /// A client opened more long-lived streams than it may.
    #[error("{0}")]
    TooManyStreams(#[from] crate::streams::Refused),
    #[error("{principal:?} has {live} workers registered and heard from in the last minute, its limit is {limit}; stop some, or give the rest a token of their own")]
    TooManyWorkers { principal: String, live: u32, limit: u32 },
    /// An upload found no room in the budget of bytes in flight.
    #[error("{0}")]
    NoRoom(#[from] crate::budget::NoRoom),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The artifact store failed at `op` (which names the key or the chunk).
    #[error("artifact store: {op}: {source}")]
    Store { op: String, source: std::io::Error },
    /// Local I/O outside the store (scratch files, the data directory), with what was being done.
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("stitching: {0}")]
    Stitch(String),
    /// A chunk that cannot be joined (not a failure that can pass): the one that starts at
    /// `start_frame`; its segment can be rendered again.
    #[error("stitching: {message}")]
    BadChunk { start_frame: u32, message: String },
    #[error("starting: {0}")]
    Startup(String),
    /// A submitted spec's check did not finish (it panicked).
    #[error("checking the job: {0}")]
    Check(String),
    #[error("data directory {} is in use by another coordinator ({holder}); stop that one first, or give this one its own --data", data.display())]
    DataInUse { data: std::path::PathBuf, holder: String },
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// Whether this failed for want of disk space (SQLite or the artifact store).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Db(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DiskFull,
            Error::Store { source, .. } | Error::Io { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }

    /// Whether the same operation can pass later without anybody changing its inputs: a full
    /// disk (space gets freed), a busy or interrupted resource, a transient device error. A
    /// missing file, a malformed chunk or a refused argument fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { source, .. } | Error::Io { source, .. } => io_is_transient(source),
            Error::Db(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::OutOfMemory
            ),
            _ => false,
        }
    }

    /// A store failure at `op`, for `map_err`.
    pub fn store(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Store { op, source }
    }

    /// A local I/O failure at `op`, for `map_err`.
    pub fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }
}

/// Decided by the error's kind and, where the kind is too coarse, its errno (Linux numbers).
pub fn io_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // EIO 5, ENOMEM 12, EBUSY 16, ENFILE 23, EMFILE 24, ENOSPC 28, EDQUOT 122.
    const TRANSIENT_ERRNOS: [i32; 7] = [5, 12, 16, 23, 24, 28, 122];
    matches!(e.kind(), StorageFull | QuotaExceeded | Interrupted | TimedOut | WouldBlock | OutOfMemory | ResourceBusy)
        || e.raw_os_error().is_some_and(|n| TRANSIENT_ERRNOS.contains(&n))
}

pub use proto::limits::quoted_prefix;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        let message = e.to_string();
        if e.is_disk_full() {
            tracing::error!(error = %message, "disk full");
            return Status::resource_exhausted(format!(
                "the coordinator's disk is full ({message}); cancel or delete ended jobs to free space"
            ));
        }
        match e {
            Error::Param(_) | Error::Invalid { .. } => Status::invalid_argument(message),
            Error::JobNotFound(_) | Error::WorkerNotFound(_) => Status::not_found(message),
            Error::TooManyStreams(_) | Error::NoRoom(_) | Error::TooManyWorkers { .. } => {
                Status::resource_exhausted(message)
            }
            Error::StaleAttempt { .. }
            | Error::JobEnded { .. }
            | Error::NoOutput { .. }
            | Error::JobNotEnded { .. }
            | Error::JobNotFailed { .. } => Status::failed_precondition(message),
            Error::Db(_)
            | Error::Store { .. }
            | Error::Io { .. }
            | Error::Stitch(_)
            | Error::BadChunk { .. }
            | Error::Startup(_)
            | Error::Check(_)
            | Error::DataInUse { .. }
            | Error::Transport(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a worker is told when its attempt is fenced off: the same status whatever ended the
    /// attempt (the e2e tests reach a failed attempt over the wire; an expired lease needs a
    /// clock, which `lease::tests` injects), with the reason in words.
    #[test]
    fn a_stale_attempt_is_a_failed_precondition_naming_why() {
        for reason in ["its lease expired", "it failed (chunk_sha256: checksum mismatch)", "it already completed"] {
            let status =
                tonic::Status::from(Error::StaleAttempt { id: crate::db::AttemptId(7), reason: reason.into() });
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{reason}");
            assert_eq!(status.message(), format!("attempt 7 is no longer current: {reason}"));
        }
    }
}
