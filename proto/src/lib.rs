//! gramzoom's wire API (`gramzoom.v1`, generated from `gramzoom/v1/gramzoom.proto`) and the
//! render parameters that both the coordinator and the worker validate.
//!
//! This crate must stay free of libtorch and ffmpeg: the coordinator links it.

pub mod auth;
pub mod handoff;
pub mod limits;
pub mod network;
pub mod params;
pub mod schedule;
pub mod wire;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("gramzoom.v1");

    /// Serialized descriptors of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gramzoom_v1_descriptor");
}

/// Payloads larger than this travel as several `Blob` messages.
pub const BLOB_PIECE: usize = 1 << 20;
/// HTTP/2 flow-control windows of the job and worker connections (both sides): the defaults
/// (64 KiB) make a 75 MB hand-off state wait on a window update every 64 KiB.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
