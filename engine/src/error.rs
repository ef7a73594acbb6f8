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
    /// A state (already read) that this render cannot resume.
    #[error("the hand-off state does not fit this render: {reason}")]
    StateMismatch { reason: String },
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("optimisation diverged in {at}: loss is {loss}")]
    Diverged { at: Stage, loss: f64 },
    #[error("cancelled")]
    Cancelled,
    /// The caller's frame callback could not take a frame (its encoder failed).
    #[error("{0}")]
    FrameSink(String),
}

/// Where in a render something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The warm-up from noise, at its `iteration`th iteration (from 1).
    Warmup {
        iteration: u32,
    },
    Frame(u32),
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Warmup { iteration } => write!(f, "the warm-up (iteration {iteration})"),
            Self::Frame(i) => write!(f, "frame {i}"),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
