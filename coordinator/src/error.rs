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
    StaleAttempt { id: u64, reason: String },
    #[error("job {id} has already ended: it {state}")]
    JobEnded { id: String, state: &'static str },
    #[error("job {id} has no output: it {state}")]
    NoOutput { id: String, state: &'static str },
    #[error("job {id} has not ended: it {state}; cancel it first")]
    JobNotEnded { id: String, state: &'static str },
    #[error("job {id} has not failed: it {state}; only a failed job can be retried")]
    JobNotFailed { id: String, state: &'static str },
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("artifact store: {0}")]
    Store(#[from] std::io::Error),
    #[error("stitching: {0}")]
    Stitch(String),
    #[error("starting: {0}")]
    Startup(String),
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
            Error::Store(e) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }
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
            Error::StaleAttempt { .. }
            | Error::JobEnded { .. }
            | Error::NoOutput { .. }
            | Error::JobNotEnded { .. }
            | Error::JobNotFailed { .. } => Status::failed_precondition(message),
            Error::Db(_)
            | Error::Store(_)
            | Error::Stitch(_)
            | Error::Startup(_)
            | Error::DataInUse { .. }
            | Error::Transport(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal(message)
            }
        }
    }
}
