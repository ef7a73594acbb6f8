//! CompleteSegment: a finished segment's chunk and end state go to the coordinator as one
//! client stream (a header with sizes and SHA-256s, then 1 MiB pieces), retried while the
//! coordinator may be restarting. The coordinator answers FAILED_PRECONDITION when the attempt
//! is no longer current; that is not retried.
//!
//! A 1080p Adam state is 75 MB: it is hashed once, off the async runtime, and each try builds
//! its pieces lazily from the one shared buffer as the stream is sent (no copy of the state per
//! try, no second buffer of pieces).

use crate::node::{retryable, Node};
use proto::v1::{self, complete_segment_request};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The messages of a CompleteSegment upload, made as they are sent: the header, then the
/// chunk's and the state's pieces.
pub fn piece_stream(
    header: v1::CompleteHeader,
    chunk: Arc<Vec<u8>>,
    state: Arc<Vec<u8>>,
) -> impl tokio_stream::Stream<Item = v1::CompleteSegmentRequest> + Send + 'static {
    use complete_segment_request::Part;
    let piece = proto::BLOB_PIECE;
    let chunks = chunk.len().div_ceil(piece);
    let states = state.len().div_ceil(piece);
    let first = std::iter::once(v1::CompleteSegmentRequest { part: Some(Part::Header(header)) });
    let rest = (0..chunks + states).map(move |i| {
        let part = if i < chunks {
            Part::Chunk(chunk[i * piece..((i + 1) * piece).min(chunk.len())].to_vec())
        } else {
            let j = i - chunks;
            Part::State(state[j * piece..((j + 1) * piece).min(state.len())].to_vec())
        };
        v1::CompleteSegmentRequest { part: Some(part) }
    });
    tokio_stream::iter(first.chain(rest))
}

/// What an upload moved and how long the sending took (serialising and hashing excluded).
pub(crate) struct Sent {
    pub chunk_bytes: usize,
    pub state_bytes: usize,
    pub elapsed: Duration,
}

impl Node {
    /// Uploads a finished segment: its encoded chunk and its serialised end state. `frames_done`
    /// is 0 for the whole segment, or the frames a preempted attempt finished; `frame_seconds`
    /// the time its frames took.
    pub(crate) async fn upload(
        &mut self,
        attempt_id: u64,
        chunk: Vec<u8>,
        state: Vec<u8>,
        (frames_done, frame_seconds): (u32, f64),
        poster: Option<v1::Preview>,
    ) -> (Sent, Result<(), tonic::Status>) {
        // Hashing 75 MB takes a few hundred milliseconds: off the runtime, and not on the torch
        // thread, which may be rendering ahead meanwhile.
        let (chunk, state) = (Arc::new(chunk), Arc::new(state));
        let header = {
            let (chunk, state) = (chunk.clone(), state.clone());
            tokio::task::spawn_blocking(move || v1::CompleteHeader {
                attempt_id,
                chunk_size: chunk.len() as u64,
                chunk_sha256: proto::params::hex(&Sha256::digest(chunk.as_slice())),
                state_size: state.len() as u64,
                state_sha256: proto::params::hex(&Sha256::digest(state.as_slice())),
                frames_done,
                frame_seconds,
                poster,
            })
            .await
            .expect("hashing panicked")
        };
        let upload = Instant::now();
        let mut result = Err(tonic::Status::unavailable("not sent"));
        let mut backoff = Duration::from_millis(200);
        // The coordinator may be restarting: retry while the lease can still be valid.
        for _ in 0..30 {
            let pieces = piece_stream(header.clone(), chunk.clone(), state.clone());
            result = self.client.complete_segment(pieces).await.map(|_| ());
            match &result {
                Err(s) if retryable(s) => {
                    tracing::warn!(attempt = attempt_id, error = %s.message(), "upload failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                _ => break,
            }
        }
        let sent = Sent { chunk_bytes: chunk.len(), state_bytes: state.len(), elapsed: upload.elapsed() };
        if result.is_ok() {
            self.config.metrics.handoff("upload", sent.elapsed);
        }
        (sent, result)
    }
}
