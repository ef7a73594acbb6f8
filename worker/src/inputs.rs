//! What an attempt needs from the coordinator before it can render: the engine for its job
//! (built from the fetched style, cached across the job's segments) and its start state (held
//! in memory when this node produced it, fetched otherwise). Every download is checked against
//! its declared size and checksum and against the one the assignment named.

use crate::node::Node;
use engine::style::Style;
use engine::{Engine, EngineError, State};
use proto::v1;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Instant;
use tonic::Code;

/// Why an input could not be had. `bad` when the input itself looks wrong (missing or corrupt
/// on the coordinator, or unusable), not merely the way to it: for a start state the worker then
/// says so, and the coordinator re-checks its copy instead of blaming this worker.
#[derive(Debug)]
pub(crate) struct Unloadable {
    pub reason: String,
    pub bad: bool,
}

impl Unloadable {
    fn bad(reason: String) -> Self {
        Self { reason, bad: true }
    }

    /// A failed call: the coordinator could not read or find its copy (NOT_FOUND, INTERNAL,
    /// DATA_LOSS), or the network or the lease failed (anything else).
    fn fetching(what: &str, s: &tonic::Status) -> Self {
        let bad = matches!(s.code(), Code::NotFound | Code::Internal | Code::DataLoss);
        Self { reason: format!("fetching the {what}: {}", s.message()), bad }
    }
}

/// hundred milliseconds, so it runs off the async runtime.
async fn receive(
    mut stream: tonic::Streaming<v1::Blob>,
    what: &'static str,
    expected: &str,
    most: u64,
) -> Result<Vec<u8>, Unloadable> {
    let mut data = Vec::new();
    let mut declared = None;
    while let Some(blob) = stream.message().await.map_err(|s| Unloadable::fetching(what, &s))? {
        if declared.is_none() {
            if blob.total_size > most {
                let reason = format!("the {what} is declared {} bytes, at most {most} can be right", blob.total_size);
                return Err(Unloadable::bad(reason));
            }
            declared = Some((blob.total_size, blob.sha256));
        }
        // Held in memory: never more than was declared.
        if (data.len() + blob.data.len()) as u64 > declared.as_ref().map_or(0, |d| d.0) {
            return Err(Unloadable::bad(format!("the {what} sent more bytes than it declared")));
        }
        data.extend_from_slice(&blob.data);
    }
    let (size, declared_sha) = declared.unwrap_or_default();
    let expected = expected.to_string();
    tokio::task::spawn_blocking(move || {
        let actual = proto::params::hex(&Sha256::digest(&data));
        let wanted = [declared_sha.as_str(), expected.as_str()];
        if size != data.len() as u64 || wanted.iter().any(|w| !w.is_empty() && *w != actual) {
            return Err(Unloadable::bad(format!(
                "the {what} arrived corrupt: {} bytes with sha256 {actual}, declared {size} bytes with sha256 {declared_sha}, assigned sha256 {expected:?}",
                data.len()
            )));
        }
        Ok(data)
    })
    .await
    .expect("hashing panicked")
}

impl Node {
    /// Gets the engine for the assignment's job, building it (weights, style) when it changed.
    pub(crate) async fn engine_for(&mut self, a: &v1::Assignment) -> Result<Engine, String> {
        if let Some((job, engine)) = self.engine.take() {
            if job == a.job_id {
                return Ok(engine);
            }
        }
        // Every style of the job, in order (a coordinator from before blends names only one).
        let shas = if a.style_sha256s.is_empty() { vec![a.style_sha256.clone()] } else { a.style_sha256s.clone() };
        let mut images = Vec::with_capacity(shas.len());
        for (i, sha) in shas.iter().enumerate() {
            let stream = self
                .client
                .fetch_style(v1::FetchRequest { attempt_id: a.attempt_id, style_index: i as u32 })
                .await
                .map_err(|s| format!("fetching the style: {}", s.message()))?
                .into_inner();
            let most = proto::limits::MAX_STYLE_BYTES;
            images.push(receive(stream, "style image", sha, most).await.map_err(|u| u.reason)?);
        }
        let wire = a.params.clone().unwrap_or_default();
        let (device, weights, job) = (self.config.device, self.config.weights.clone(), a.job_id.clone());
        let blocks = self.config.blocks;
        let devices = self.config.devices.clone();
        self.torch
            .run(move || -> Result<Engine, EngineError> {
                let params = proto::wire::params_walked_at_submit(&wire)?;
                let styles = images
                    .iter()
                    .enumerate()
                    .map(|(i, bytes)| Style::from_bytes(bytes, &PathBuf::from(format!("<style {} of {job}>", i + 1))))
                    .collect::<Result<Vec<_>, _>>()?;
                let net = engine::weights::resolve(params.network, weights.as_deref(), device)?;
                Engine::with_blocks(params, styles, net, device, blocks)?.spread_over(&devices)
            })
            .await
            .map_err(|e| e.to_string())
    }

    pub(crate) async fn start_state(&mut self, a: &v1::Assignment) -> Result<Option<State>, Unloadable> {
        if a.start_frame == 0 {
            return Ok(None);
        }
        if let Some((attempt, state)) = self.held.take() {
            if attempt == a.start_state_attempt_id {
                tracing::debug!(attempt = a.attempt_id, "start state held locally");
                return Ok(Some(state));
            }
        }
        let t = Instant::now();
        let stream = self
            .client
            .fetch_state(v1::FetchRequest { attempt_id: a.attempt_id, ..Default::default() })
            .await
            .map_err(|s| Unloadable::fetching("start state", &s))?
            .into_inner();
        let (w, h) = a.params.as_ref().map_or((0, 0), |p| (p.width, p.height));
        let bytes = receive(stream, "start state", &a.start_state_sha256, proto::limits::max_state_bytes(w, h)).await?;
        let (device, n) = (self.config.device, bytes.len());
        let state =
            tokio::task::spawn_blocking(move || State::from_bytes(&bytes, &PathBuf::from("<start state>"), device))
                .await
                .expect("state decode panicked")
                .map_err(|e| Unloadable::bad(e.to_string()))?;
        self.config.metrics.handoff("fetch", t.elapsed());
        tracing::info!(
            attempt = a.attempt_id,
            bytes = n,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "start state fetched"
        );
        Ok(Some(state))
    }
}
