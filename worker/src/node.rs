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

use crate::control::Outcome;
use engine::{Device, DeviceThread, Engine, State};
use proto::auth::Credentials;
use proto::v1;
use proto::v1::worker_service_client::WorkerServiceClient;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Credentials(#[from] proto::auth::AuthError),
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    /// Hashing the network weights this node reports when it registers.
    #[error("hashing the network weights: {0}")]
    Weights(#[source] engine::EngineError),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub coordinator: String,
    pub name: String,
    pub device: Device,
    /// Every device of `--device`, `device` first: a list spreads each frame's blocks over
    /// them (`engine::spread`).
    pub devices: Vec<Device>,
    /// How a frame's loss is computed (`--blocks`).
    pub blocks: engine::block::BlockChoice,
    pub weights: Option<PathBuf>,
    /// Also write every rendered frame here as a lossless PNG.
    pub frames_dir: Option<PathBuf>,
    /// Stop after this many segments (tests and batch use); `None` runs until shutdown.
    pub max_segments: Option<u32>,
    /// Start the next segment from the end state held in memory when this node produced it.
    /// Off, every hand-off goes through the coordinator's store in its wire format.
    pub reuse_state: bool,
    /// With `reuse_state`, render the next segment's frames while the last one uploads.
    pub render_ahead: bool,
    /// Send a preview of the latest frame this often (for the dashboard); `None`: never.
    pub preview_every: Option<Duration>,
    /// The worker token, for a coordinator with --auth.
    pub token: Option<String>,
    /// For an `https://` coordinator.
    pub tls: proto::auth::ClientTls,
    /// What `--http` serves; updated whether served or not.
    pub metrics: std::sync::Arc<crate::metrics::WorkerMetrics>,
}

/// The worker API with this node's token, and its session once registered, on every call.
pub(crate) type Client = WorkerServiceClient<InterceptedService<Channel, Credentials>>;

pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) torch: DeviceThread,
    pub(crate) client: Client,
    credentials: Credentials,
    pub(crate) worker_id: String,
    pub(crate) heartbeat: Duration,
    pub(crate) engine: Option<(String, Engine)>,
    /// The end state this node produced last, by attempt id.
    pub(crate) held: Option<(u64, State)>,
    /// The weights digests this node registers with, hashed at its first registration.
    weights: Option<Vec<v1::NetworkWeights>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Errors worth retrying: the coordinator is restarting or the network blinked.
pub(crate) fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
}

impl Node {
    /// Connects (lazily: a coordinator that is not up yet is retried) and registers. All
    /// libtorch work runs on `torch`.
    pub async fn connect(
        config: NodeConfig,
        torch: DeviceThread,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, NodeError> {
        let endpoint = proto::auth::endpoint(&config.coordinator, &config.tls)?
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
        let credentials = Credentials::new(config.token.as_deref())?;
        let mut node = Self {
            config,
            torch,
            client: WorkerServiceClient::with_interceptor(channel, credentials.clone()),
            credentials,
            worker_id: String::new(),
            heartbeat: Duration::from_secs(2),
            engine: None,
            held: None,
            weights: None,
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
        let weights = match &self.weights {
            Some(w) => w.clone(),
            None => {
                // Hashing 0.5 GB of weights takes seconds: off the runtime, once per process.
                let explicit = self.config.weights.clone();
                let digests = tokio::task::spawn_blocking(move || engine::weights::digests(explicit.as_deref()))
                    .await
                    .expect("hashing the weights panicked")
                    .map_err(NodeError::Weights)?;
                let w: Vec<_> = digests
                    .into_iter()
                    .map(|(n, digest)| v1::NetworkWeights { network: n.name().into(), digest })
                    .collect();
                self.weights = Some(w.clone());
                w
            }
        };
        loop {
            let request = v1::RegisterRequest {
                name: self.config.name.clone(),
                device: format!("{:?}", self.config.device),
                weights: weights.clone(),
                devices: self.config.devices.len() as u32,
            };
            match self.client.register(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    self.credentials.set_session(&r.session);
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
        // Frames of the next segment being rendered while the last one uploaded (see `attempt`).
        let mut ahead = None;
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
                        None => {
                            // The segment was not ours to continue (taken, cancelled, reserved
                            // for too long): the frames rendered ahead are of no use.
                            if let Some(x) = ahead.take() {
                                self.drop_ahead(x, "its segment was not granted").await;
                            }
                            continue;
                        }
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
            let (outcome, next) = self.attempt(assignment, ahead.take()).await;
            ahead = next;
            done += 1;
            let bad_start_state = matches!(outcome, Outcome::BadStartState(_));
            let ended = match &outcome {
                Outcome::Completed => "completed",
                Outcome::Superseded(_) => "superseded",
                Outcome::Released => "released",
                Outcome::Failed(_) | Outcome::BadStartState(_) => "failed",
            };
            self.config.metrics.segment_ended(ended);
            match outcome {
                Outcome::Completed => {}
                Outcome::Superseded(why) => tracing::warn!(attempt, %why, "segment dropped"),
                Outcome::Released => {
                    let request = v1::FailSegmentRequest {
                        attempt_id: attempt,
                        reason: "worker shut down".into(),
                        released: true,
                        bad_start_state: false,
                    };
                    if let Err(s) = self.client.fail_segment(request).await {
                        tracing::warn!(attempt, error = %s.message(), "could not release the segment; leaving will retry");
                    }
                }
                Outcome::Failed(reason) | Outcome::BadStartState(reason) => {
                    tracing::error!(attempt, %reason, bad_start_state, "segment failed");
                    let request =
                        v1::FailSegmentRequest { attempt_id: attempt, reason, released: false, bad_start_state };
                    if let Err(s) = self.client.fail_segment(request).await {
                        tracing::warn!(attempt, error = %s.message(), "could not report the failure; the coordinator will offer the segment again");
                    }
                }
            }
        }
        if let Some(x) = ahead.take() {
            self.drop_ahead(x, "the worker is stopping").await;
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
}
