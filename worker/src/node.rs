//! A render node: registers with the coordinator, takes segments by long poll, renders each on a
//! blocking thread, heartbeats while it works, and uploads the encoded chunk and end state.
//!
//! It keeps the last job's engine (network, style Grams) and the last end state it produced, so
//! the next segment of the same movie, which the coordinator offers to it first, starts without
//! any download or set-up.
//!
//! Shutdown (Ctrl-C, SIGTERM): the segment in hand stops at the next optimiser iteration and is
//! released, so the coordinator requeues it at once without charging it a retry; a worker that
//! dies instead loses its lease and the segment is requeued when the lease runs out.

use crate::device::DeviceThread;
use crate::encode::{self, FrameSink, FramesDir, PartialFile};
use crate::error::EngineError;
use crate::handoff::State;
use crate::segment::{Engine, Frame, Progress};
use crate::style::Style;
use proto::v1::worker_service_client::WorkerServiceClient;
use proto::v1::{self, complete_segment_request};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Device;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("coordinator address {url:?}: {reason}")]
    Address { url: String, reason: String },
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub coordinator: String,
    pub name: String,
    pub device: Device,
    pub weights: Option<PathBuf>,
    /// Also write every rendered frame here as a lossless PNG.
    pub frames_dir: Option<PathBuf>,
    /// Stop after this many segments (tests and batch use); `None` runs until shutdown.
    pub max_segments: Option<u32>,
    /// Start the next segment from the end state held in memory when this node produced it.
    /// Off, every hand-off goes through the coordinator's store in its wire format.
    pub reuse_state: bool,
}

/// What one attempt came to.
enum Outcome {
    Completed,
    /// The coordinator no longer wants it (lease lost, job cancelled): drop it silently.
    Superseded(String),
    Released,
    Failed(String),
}

pub struct Node {
    config: NodeConfig,
    torch: DeviceThread,
    client: WorkerServiceClient<Channel>,
    worker_id: String,
    heartbeat: Duration,
    engine: Option<(String, Engine)>,
    /// The end state this node produced last, by attempt id.
    held: Option<(u64, State)>,
    shutdown: watch::Receiver<bool>,
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
}

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

/// Receives a `Blob` stream and checks it against its declared size and checksum, and against
/// `expected` (the checksum the assignment named) when given. Hashing a 1080p state takes a few
/// hundred milliseconds, so it runs off the async runtime.
async fn receive(
    mut stream: tonic::Streaming<v1::Blob>,
    what: &'static str,
    expected: &str,
) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let mut declared = None;
    while let Some(blob) = stream.message().await.map_err(|e| format!("fetching the {what}: {}", e.message()))? {
        if declared.is_none() {
            declared = Some((blob.total_size, blob.sha256));
        }
        data.extend_from_slice(&blob.data);
    }
    let (size, declared_sha) = declared.unwrap_or_default();
    let expected = expected.to_string();
    tokio::task::spawn_blocking(move || {
        let actual = proto::params::hex(&Sha256::digest(&data));
        let wanted = [declared_sha.as_str(), expected.as_str()];
        if size != data.len() as u64 || wanted.iter().any(|w| !w.is_empty() && *w != actual) {
            return Err(format!(
                "the {what} arrived corrupt: {} bytes with sha256 {actual}, declared {size} bytes with sha256 {declared_sha}, assigned sha256 {expected:?}",
                data.len()
            ));
        }
        Ok(data)
    })
    .await
    .expect("hashing panicked")
}

impl Node {
    /// Connects (lazily: a coordinator that is not up yet is retried) and registers. All
    /// libtorch work runs on `torch`.
    pub async fn connect(
        config: NodeConfig,
        torch: DeviceThread,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, NodeError> {
        let endpoint = tonic::transport::Endpoint::from_shared(config.coordinator.clone())
            .map_err(|e| NodeError::Address { url: config.coordinator.clone(), reason: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Self::with_channel(config, endpoint.connect_lazy(), torch, shutdown).await
    }

    /// Registers over an existing channel (an in-process coordinator's, for `gramzoom render`).
    pub async fn with_channel(
        config: NodeConfig,
        channel: Channel,
        torch: DeviceThread,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, NodeError> {
        let mut node = Self {
            config,
            torch,
            client: WorkerServiceClient::new(channel),
            worker_id: String::new(),
            heartbeat: Duration::from_secs(2),
            engine: None,
            held: None,
            shutdown,
        };
        node.register().await?;
        Ok(node)
    }

    /// Hands the node a ready engine for `job`, so a local render builds it only once.
    pub fn preload(&mut self, job: &str, engine: Engine) {
        self.engine = Some((job.to_string(), engine));
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn register(&mut self) -> Result<(), NodeError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let request =
                v1::RegisterRequest { name: self.config.name.clone(), device: format!("{:?}", self.config.device) };
            match self.client.register(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    self.worker_id = r.worker_id;
                    self.heartbeat = Duration::from_millis(r.heartbeat_ms.max(50) as u64);
                    tracing::info!(worker = %self.worker_id, coordinator = %self.config.coordinator, "registered");
                    return Ok(());
                }
                Err(s) if retryable(&s) && !self.stopping() => {
                    tracing::warn!(error = %s.message(), "coordinator unreachable; retrying");
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    async fn pause(&mut self, d: Duration) {
        let mut shutdown = self.shutdown.clone();
        let _ = tokio::time::timeout(d, shutdown.wait_for(|s| *s)).await;
    }

    /// Takes and renders segments until shutdown (or `max_segments`).
    pub async fn run(mut self) -> Result<(), NodeError> {
        let mut done = 0u32;
        let mut backoff = Duration::from_millis(200);
        while !self.stopping() && self.config.max_segments.is_none_or(|m| done < m) {
            let request = v1::AcquireRequest { worker_id: self.worker_id.clone(), wait_ms: 20_000 };
            let mut shutdown = self.shutdown.clone();
            let reply = tokio::select! {
                r = self.client.acquire(request) => r,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let assignment = match reply {
                Ok(r) => {
                    backoff = Duration::from_millis(200);
                    match r.into_inner().assignment {
                        Some(a) => a,
                        None => continue,
                    }
                }
                Err(s) if s.code() == Code::NotFound => {
                    tracing::warn!(error = %s.message(), "coordinator forgot this worker; registering again");
                    self.register().await?;
                    continue;
                }
                Err(s) if retryable(&s) => {
                    tracing::warn!(error = %s.message(), "coordinator unreachable; retrying");
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(s) => return Err(s.into()),
            };
            let attempt = assignment.attempt_id;
            let outcome = self.attempt(assignment).await;
            done += 1;
            match outcome {
                Outcome::Completed => {}
                Outcome::Superseded(why) => tracing::warn!(attempt, %why, "segment dropped"),
                Outcome::Released => {
                    let request = v1::FailSegmentRequest {
                        attempt_id: attempt,
                        reason: "worker shut down".into(),
                        released: true,
                    };
                    if let Err(s) = self.client.fail_segment(request).await {
                        tracing::warn!(attempt, error = %s.message(), "could not release the segment; leaving will retry");
                    }
                }
                Outcome::Failed(reason) => {
                    tracing::error!(attempt, %reason, "segment failed");
                    let request = v1::FailSegmentRequest { attempt_id: attempt, reason, released: false };
                    if let Err(s) = self.client.fail_segment(request).await {
                        tracing::warn!(attempt, error = %s.message(), "could not report the failure; the coordinator will offer the segment again");
                    }
                }
            }
        }
        self.leave().await;
        tracing::info!(worker = %self.worker_id, segments = done, "worker stopped");
        Ok(())
    }

    /// Tells the coordinator this worker is gone, so that a segment granted while an Acquire was
    /// being cut short by the shutdown is requeued now, not after its lease, and not charged.
    async fn leave(&mut self) {
        let request = v1::LeaveRequest { worker_id: self.worker_id.clone() };
        match tokio::time::timeout(Duration::from_secs(2), self.client.leave(request)).await {
            Ok(Ok(r)) => {
                let released = r.into_inner().released_attempt_ids;
                if !released.is_empty() {
                    tracing::info!(attempts = ?released, "gave back a segment granted while stopping");
                }
            }
            Ok(Err(s)) => tracing::warn!(error = %s.message(), "could not tell the coordinator this worker left"),
            Err(_) => tracing::warn!("could not tell the coordinator this worker left: no answer within 2 s"),
        }
    }

    /// Gets the engine for the assignment's job, building it (weights, style) when it changed.
    async fn engine_for(&mut self, a: &v1::Assignment) -> Result<Engine, String> {
        if let Some((job, engine)) = self.engine.take() {
            if job == a.job_id {
                return Ok(engine);
            }
        }
        let stream = self
            .client
            .fetch_style(v1::FetchRequest { attempt_id: a.attempt_id })
            .await
            .map_err(|s| format!("fetching the style: {}", s.message()))?
            .into_inner();
        let style = receive(stream, "style image", &a.style_sha256).await?;
        let params = proto::wire::params_from_wire(a.params.as_ref().unwrap_or(&Default::default()))
            .map_err(|e| e.to_string())?;
        let (device, weights, job) = (self.config.device, self.config.weights.clone(), a.job_id.clone());
        self.torch
            .run(move || -> Result<Engine, EngineError> {
                let style = Style::from_bytes(&style, &PathBuf::from(format!("<style of {job}>")))?;
                let net = crate::weights::resolve(params.network, weights.as_deref(), device)?;
                Engine::new(params, style, net, device)
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn start_state(&mut self, a: &v1::Assignment) -> Result<Option<State>, String> {
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
            .fetch_state(v1::FetchRequest { attempt_id: a.attempt_id })
            .await
            .map_err(|s| format!("fetching the start state: {}", s.message()))?
            .into_inner();
        let bytes = receive(stream, "start state", &a.start_state_sha256).await?;
        let (device, n) = (self.config.device, bytes.len());
        let state =
            tokio::task::spawn_blocking(move || State::from_bytes(&bytes, &PathBuf::from("<start state>"), device))
                .await
                .expect("state decode panicked")
                .map_err(|e| e.to_string())?;
        tracing::info!(
            attempt = a.attempt_id,
            bytes = n,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "start state fetched"
        );
        Ok(Some(state))
    }

    async fn attempt(&mut self, a: v1::Assignment) -> Outcome {
        let started = Instant::now();
        tracing::info!(attempt = a.attempt_id, job = %a.job_id, segment = a.segment_index, frames = %format!("{}..{}", a.start_frame, a.end_frame), "segment started");
        let kind = match proto::wire::output_from_wire(a.output) {
            Ok(k) => k,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Heartbeats start now: setting up an engine or fetching a 1080p state can take longer
        // than a short lease.
        let progress = Arc::new((AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)));
        let lost = Arc::new(std::sync::Mutex::new(None::<String>));
        let stop: StopSlot = Arc::default();
        let _heartbeats = AbortOnDrop(tokio::spawn(heartbeat_loop(
            self.client.clone(),
            a.attempt_id,
            self.heartbeat,
            progress.clone(),
            stop.clone(),
            lost.clone(),
        )));
        let superseded = || lost.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let engine = match self.engine_for(&a).await {
            Ok(e) => e,
            Err(e) => return superseded().map_or(Outcome::Failed(e), Outcome::Superseded),
        };
        let start = match self.start_state(&a).await {
            Ok(s) => s,
            Err(e) => {
                self.engine = Some((a.job_id.clone(), engine));
                return superseded().map_or(Outcome::Failed(e), Outcome::Superseded);
            }
        };
        let cancel = engine.cancel_flag();
        cancel.store(false, Ordering::SeqCst);
        *stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(cancel.clone());
        if superseded().is_some() {
            cancel.store(true, Ordering::SeqCst); // lost while setting up: the render stops at once
        }
        let released = Arc::new(AtomicBool::new(false));
        let mut shutdown = self.shutdown.clone();
        let _watcher = {
            let (cancel, released) = (cancel.clone(), released.clone());
            AbortOnDrop(tokio::spawn(async move {
                if shutdown.wait_for(|s| *s).await.is_ok() {
                    released.store(true, Ordering::SeqCst);
                    cancel.store(true, Ordering::SeqCst);
                }
            }))
        };
        let chunk_path = std::env::temp_dir().join(format!(
            "gramzoom-{}-attempt-{}.{}",
            std::process::id(),
            a.attempt_id,
            kind.extension()
        ));
        let frames_dir = self.config.frames_dir.clone();
        let (end, job) = (a.end_frame, a.job_id.clone());
        let rendered = self
            .torch
            .run(move || {
                let result = render_segment(&engine, start, end, kind, &chunk_path, frames_dir, &progress);
                (engine, result)
            })
            .await;
        let (engine, result) = rendered;
        self.engine = Some((job, engine));
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(why) = superseded() {
                    return Outcome::Superseded(why);
                }
                if released.load(Ordering::SeqCst) {
                    return Outcome::Released;
                }
                return Outcome::Failed(e);
            }
        };
        let (state, chunk) = result;
        // Serialising and hashing a 1080p state takes a few hundred milliseconds: off the runtime.
        let attempt_id = a.attempt_id;
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
        let (chunk_len, state_len) = (chunk.len(), state_bytes.len());
        let upload = Instant::now();
        let mut result = Err(tonic::Status::unavailable("not sent"));
        let mut backoff = Duration::from_millis(200);
        // The coordinator may be restarting: retry while the lease can still be valid.
        for _ in 0..30 {
            let pieces = piece_stream(header.clone(), chunk.clone(), state_bytes.clone());
            result = self.client.complete_segment(tokio_stream::iter(pieces)).await.map(|_| ());
            match &result {
                Err(s) if retryable(s) => {
                    tracing::warn!(attempt = a.attempt_id, error = %s.message(), "upload failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                _ => break,
            }
        }
        match result {
            Ok(()) => {
                let secs = started.elapsed().as_secs_f64();
                let frames = a.end_frame - a.start_frame;
                tracing::info!(
                    attempt = a.attempt_id,
                    job = %a.job_id,
                    segment = a.segment_index,
                    frames,
                    wall_s = secs,
                    fps = frames as f64 / secs,
                    chunk_bytes = chunk_len,
                    state_bytes = state_len,
                    upload_ms = upload.elapsed().as_millis() as u64,
                    "segment completed"
                );
                if self.config.reuse_state {
                    self.held = Some((a.attempt_id, state));
                }
                Outcome::Completed
            }
            Err(s) if s.code() == Code::FailedPrecondition => Outcome::Superseded(s.message().to_string()),
            Err(s) => Outcome::Failed(format!("upload: {}", s.message())),
        }
    }
}

/// The render's cancel flag, once there is a render to cancel.
type StopSlot = Arc<std::sync::Mutex<Option<Arc<AtomicBool>>>>;

/// Aborts a background task when the attempt that started it ends, on every path.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renders one segment into an encoded chunk; returns the end state and the chunk's bytes.
fn render_segment(
    engine: &Engine,
    start: Option<State>,
    end: u32,
    kind: proto::params::OutputKind,
    chunk_path: &std::path::Path,
    frames_dir: Option<PathBuf>,
    progress: &(AtomicU32, AtomicU32, AtomicU32),
) -> Result<(State, Vec<u8>), String> {
    let p = engine.params();
    let file = PartialFile::create(chunk_path).map_err(|e| e.to_string())?;
    let main = encode::open(kind, file, p.width, p.height, p.fps).map_err(|e| e.to_string())?;
    let mut sink: Box<dyn FrameSink> = match frames_dir {
        Some(dir) => Box::new(encode::Tee(vec![main, Box::new(FramesDir::create(&dir).map_err(|e| e.to_string())?)])),
        None => main,
    };
    let mut report = |pr: Progress| {
        progress.0.store(pr.frames_done, Ordering::Relaxed);
        progress.1.store(pr.warmup_done, Ordering::Relaxed);
        progress.2.store(pr.warmup_total, Ordering::Relaxed);
    };
    let mut state = match start {
        Some(s) => s,
        None => engine.initial_state(&mut report).map_err(|e| e.to_string())?,
    };
    let mut encode_error = None;
    let mut on_frame = |f: Frame| {
        sink.push(&f).map_err(|e| {
            encode_error = Some(e.to_string());
            EngineError::Cancelled
        })
    };
    engine
        .render(&mut state, end, &mut on_frame, &mut report)
        .map_err(|e| encode_error.take().unwrap_or(e.to_string()))?;
    sink.finish().map_err(|e| e.to_string())?;
    let chunk = std::fs::read(chunk_path).map_err(|e| format!("reading the chunk: {e}"))?;
    let _ = std::fs::remove_file(chunk_path);
    Ok((state, chunk))
}

/// Extends the lease every `every` until aborted. When the coordinator says the attempt is no
/// longer current (lease lost, job cancelled), stops the render.
async fn heartbeat_loop(
    mut client: WorkerServiceClient<Channel>,
    attempt: u64,
    every: Duration,
    progress: Arc<(AtomicU32, AtomicU32, AtomicU32)>,
    stop: StopSlot,
    lost: Arc<std::sync::Mutex<Option<String>>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let request = v1::HeartbeatRequest {
            attempt_id: attempt,
            frames_done: progress.0.load(Ordering::Relaxed),
            warmup_done: progress.1.load(Ordering::Relaxed),
            warmup_total: progress.2.load(Ordering::Relaxed),
            loss: 0.0,
        };
        match client.heartbeat(request).await {
            Ok(_) => {}
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                tracing::warn!(attempt, reason = %s.message(), "coordinator ended this attempt; stopping");
                *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.message().to_string());
                if let Some(cancel) = stop.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    cancel.store(true, Ordering::SeqCst);
                }
                return;
            }
            Err(s) => tracing::warn!(attempt, error = %s.message(), "heartbeat failed; retrying"),
        }
    }
}
