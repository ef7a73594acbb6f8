//! gramzoom's engine: infinite-zoom movies by VGG Gram-matrix texture synthesis.
//!
//! Start from noise, optimise the image so its VGG Gram matrices match a style image's, grow it
//! to full size, then for every frame zoom in a little and optimise again. See ARCHITECTURE.md.
//!
//! This crate is everything a render needs below the network: the VGG network and its weights
//! (`vgg`, `weights`, `pth`), the style loss (`loss`, by `gram` or `swd`; `style`, blended over
//! time by `blend`), the optimisers (`optim`), the
//! zoom (`zoom`, `rng`), the [`Engine`] that renders a frame range from a [`State`] (`segment`),
//! the hand-off state file (`handoff`), the thread libtorch runs on (`device`), quality metrics
//! (`quality`) and the encoders of frames into chunks and outputs (`encode`). It knows nothing
//! of coordinators or workers: the `worker` crate drives it over the network, the `cli` crate
//! locally.
//!
//! The API of a render: [`Engine::new`] from params + style(s) + weights + device,
//! [`Engine::initial_state`], [`Engine::render`] up to a frame, [`State::to_bytes`] /
//! [`State::from_bytes`] to hand the state on.

mod blend;
pub mod block;
pub mod colour;
pub mod device;
pub mod encode;
pub mod error;
pub mod gram;
pub mod handoff;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod pth;
pub mod quality;
pub mod rng;
pub mod segment;
pub mod share;
pub mod spectrum;
pub mod spread;
pub mod style;
pub mod swd;
pub mod tf32;
pub mod vgg;
pub mod weights;
pub mod zoom;

/// Render parameters live in the `proto` crate, which the coordinator links too.
pub use proto::params;

pub use device::DeviceThread;
pub use error::{EngineError, ParamError, Stage};
pub use handoff::State;
pub use params::RenderParams;
pub use segment::{Engine, Frame, Progress};
/// The device type of the engine's API, so its users need no direct `tch` dependency.
pub use tch::Device;
