//! CompleteSegment: a finished segment's chunk and end state go to the coordinator as one
//! client stream (a header with sizes and SHA-256s, then 1 MiB pieces), retried while the
//! coordinator may be restarting. The coordinator answers FAILED_PRECONDITION when the attempt
//! is no longer current; that is not retried.

use crate::node::{retryable, Node};
use engine::State;
use proto::v1::{self, complete_segment_request};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// The messages of a CompleteSegment upload: the header, then the chunk's and the state's pieces.
pub fn piece_stream(header: v1::CompleteHeader, chunk: Vec<u8>, state: Vec<u8>) -> Vec<v1::CompleteSegmentRequest> {
    use complete_segment_request::Part;
    let mut out = vec![v1::CompleteSegmentRequest { part: Some(Part::Header(header)) }];
    out.extend(
        chunk.chunks(proto::BLOB_PIECE).map(|c| v1::CompleteSegmentRequest { part: Some(Part::Chunk(c.to_vec())) }),
    );
    out.extend(
        state.chunks(proto::BLOB_PIECE).map(|c| v1::CompleteSegmentRequest { part: Some(Part::State(c.to_vec())) }),
    );
    out
}

/// What an upload moved and how long the sending took (serialising and hashing excluded).
pub(crate) struct Sent {
    pub chunk_bytes: usize,
    pub state_bytes: usize,
    pub elapsed: Duration,
}

impl Node {
    /// Uploads a finished segment. Gives the end state back, so that the node can keep it for
    /// the next segment of the movie.
    pub(crate) async fn upload(
        &mut self,
        attempt_id: u64,
        state: State,
        chunk: Vec<u8>,
    ) -> (State, Sent, Result<(), tonic::Status>) {
        // Serialising and hashing a 1080p state takes a few hundred milliseconds: off the runtime.
        let (state, chunk, state_bytes, header) = self
            .torch
            .run(move || {
                let bytes = state.to_bytes();
                let header = v1::CompleteHeader {
                    attempt_id,
                    chunk_size: chunk.len() as u64,
                    chunk_sha256: proto::params::hex(&Sha256::digest(&chunk)),
                    state_size: bytes.len() as u64,
                    state_sha256: proto::params::hex(&Sha256::digest(&bytes)),
                };
                (state, chunk, bytes, header)
            })
            .await;
        let upload = Instant::now();
        let mut result = Err(tonic::Status::unavailable("not sent"));
        let mut backoff = Duration::from_millis(200);
        // The coordinator may be restarting: retry while the lease can still be valid.
        for _ in 0..30 {
            let pieces = piece_stream(header.clone(), chunk.clone(), state_bytes.clone());
            result = self.client.complete_segment(tokio_stream::iter(pieces)).await.map(|_| ());
            match &result {
                Err(s) if retryable(s) => {
                    tracing::warn!(attempt = attempt_id, error = %s.message(), "upload failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                _ => break,
            }
        }
        let sent = Sent { chunk_bytes: chunk.len(), state_bytes: state_bytes.len(), elapsed: upload.elapsed() };
        if result.is_ok() {
            self.config.metrics.handoff("upload", sent.elapsed);
        }
        (state, sent, result)
    }
}
