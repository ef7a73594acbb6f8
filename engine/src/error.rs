//! Error types of the engine. Every user-facing failure names what was wrong and what is allowed,
//! so that the CLI (and later the coordinator's `tonic::Status` mapping) can pass it on verbatim.

use std::path::PathBuf;

pub use proto::params::ParamError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("style image {path}: {reason}")]
    Style { path: PathBuf, reason: String },
    #[error("weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("hand-off state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("optimisation diverged at frame {frame}: loss is {loss}")]
    Diverged { frame: u32, loss: f64 },
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
