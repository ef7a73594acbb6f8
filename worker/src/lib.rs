//! gramzoom's render node: registers with a coordinator, takes segments by long poll, renders
//! each through the `engine` on the process's one torch thread, heartbeats while it works,
//! uploads the encoded chunk and end state, and releases its work when asked to stop.
//!
//! - `node`: the node's life: connect, register, the acquire loop, leave.
//! - `attempt`: one assignment from set-up to upload.
//! - `control`: what stops an attempt (the coordinator, a shutdown, a failure) and what it came to.
//! - `inputs`: what an attempt needs from the coordinator: the style (engine) and start state.
//! - `chunk`: rendering a segment into an encoded chunk, on the torch thread.
//! - `upload`: CompleteSegment: the chunk and end state in pieces, retried across restarts.
//! - `heartbeat`: keeping the lease, and stopping the render when the coordinator ends it.
//! - `preview`: small JPEGs of the latest frame for the dashboard, and each segment's poster.

mod attempt;
mod chunk;
mod control;
mod heartbeat;
mod inputs;
pub mod metrics;
pub mod node;
pub mod preview;
pub mod upload;

pub use node::{Node, NodeConfig, NodeError};
