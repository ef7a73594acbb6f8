//! gramzoom's engine: infinite-zoom movies by VGG Gram-matrix texture synthesis.
//!
//! Start from noise, optimise the image so its VGG Gram matrices match a style image's, grow it
//! to full size, then for every frame zoom in a little and optimise again. See ARCHITECTURE.md.

pub mod client;
pub mod device;
pub mod encode;
pub mod error;
pub mod gram;
pub mod handoff;
pub mod node;
pub mod optim;
pub mod pth;
pub mod quality;
pub mod render;
pub mod rng;
pub mod segment;
pub mod style;
pub mod vgg;
pub mod weights;
pub mod zoom;

/// Render parameters live in the `proto` crate, which the coordinator links too.
pub use proto::params;

pub use error::{EngineError, ParamError};
pub use handoff::State;
pub use params::RenderParams;
pub use segment::{Engine, Frame, Progress};
