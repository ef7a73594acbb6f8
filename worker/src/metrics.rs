//! A render node's own metrics and health, served on `worker --http ADDR`: `GET /metrics`
//! (Prometheus) and `GET /healthz` (a liveness probe).
//!
//! The coordinator's watchdog already takes a segment back from a render that stopped making
//! progress; `/healthz` lets Kubernetes restart the process that hung, which the coordinator
//! cannot. It fails only while a render is in hand and its optimiser has not moved for
//! `stall`: set-up (a style, a 1080p state download) and idle waiting are healthy.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engine::Device;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

type Histograms = Family<DirectionLabel, Histogram, fn() -> Histogram>;

fn handoff_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14)) // 10 ms .. 82 s
}

/// Whether the render in hand still moves.
pub struct Health {
    epoch: Instant,
    rendering: AtomicBool,
    /// Milliseconds since `epoch` of the last optimiser iteration (or of the render's start).
    last_progress_ms: AtomicU64,
    stall: Duration,
}

impl Health {
    pub fn new(stall: Duration) -> Self {
        Self { epoch: Instant::now(), rendering: AtomicBool::new(false), last_progress_ms: AtomicU64::new(0), stall }
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A render starts (`true`) or ends (`false`) on the render thread.
    pub fn rendering(&self, on: bool, at: Instant) {
        self.last_progress_ms.store(self.since_epoch(at), Ordering::Relaxed);
        self.rendering.store(on, Ordering::Relaxed);
    }

    pub fn progressed(&self, at: Instant) {
        self.last_progress_ms.store(self.since_epoch(at), Ordering::Relaxed);
    }

    /// `Err` with how long the render has been stuck, when it has been for longer than `stall`.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        if !self.rendering.load(Ordering::Relaxed) {
            return Ok(());
        }
        let quiet =
            Duration::from_millis(self.since_epoch(now).saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)));
        if quiet > self.stall {
            Err(quiet)
        } else {
            Ok(())
        }
    }
}

pub struct WorkerMetrics {
    registry: Registry,
    pub frames_rendered: Counter,
    pub iteration_seconds: Histogram,
    /// `fetch`: a start state downloaded; `upload`: a finished segment sent (retries included).
    pub handoff_seconds: Histograms,
    pub segments: Family<OutcomeLabel, Counter>,
    gpu_memory: Family<DeviceLabel, Gauge>,
    pub health: Health,
    device: Device,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").field("device", &self.device).finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    pub fn new(device: Device, stall: Duration) -> Self {
        let mut registry = Registry::default();
        let frames_rendered = Counter::default();
        let iteration_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16)); // 1 ms .. 33 s
        let handoff_seconds: Histograms = Family::new_with_constructor(handoff_histogram);
        let segments = Family::<OutcomeLabel, Counter>::default();
        let gpu_memory = Family::<DeviceLabel, Gauge>::default();
        registry.register("gramzoom_frames_rendered", "Frames this worker rendered", frames_rendered.clone());
        registry.register_with_unit(
            "gramzoom_iteration",
            "Wall time of one optimiser iteration",
            Unit::Seconds,
            iteration_seconds.clone(),
        );
        registry.register_with_unit(
            "gramzoom_handoff",
            "Wall time of moving hand-off states: fetch (start state in) and upload (segment out)",
            Unit::Seconds,
            handoff_seconds.clone(),
        );
        registry.register("gramzoom_worker_segments", "Segments this worker ended, by outcome", segments.clone());
        registry.register_with_unit(
            "gramzoom_gpu_memory_used",
            "GPU memory in use on the worker's device, as nvidia-smi reports it",
            Unit::Bytes,
            gpu_memory.clone(),
        );
        Self {
            registry,
            frames_rendered,
            iteration_seconds,
            handoff_seconds,
            segments,
            gpu_memory,
            health: Health::new(stall),
            device,
        }
    }

    pub fn handoff(&self, direction: &str, d: Duration) {
        self.handoff_seconds.get_or_create(&DirectionLabel { direction: direction.into() }).observe(d.as_secs_f64());
    }

    pub fn segment_ended(&self, outcome: &str) {
        self.segments.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// The OpenMetrics text; reads the GPU's memory first (blocking: call off the runtime).
    pub fn encode(&self) -> String {
        if let Device::Cuda(index) = self.device {
            if let Some(bytes) = gpu_memory_used(index) {
                self.gpu_memory.get_or_create(&DeviceLabel { device: format!("cuda:{index}") }).set(bytes);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a string");
        out
    }
}

/// Memory in use on GPU `index`, from `nvidia-smi` (the NVIDIA container runtime mounts it with
/// the `utility` capability); `None` where it is missing. The whole GPU's figure: a worker has
/// its GPU to itself, and libtorch's caching allocator is not visible through tch.
fn gpu_memory_used(index: usize) -> Option<i64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", &index.to_string()])
        .output()
        .ok()?;
    let mib: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    out.status.success().then_some(mib << 20)
}

/// Serves `router` on `listener` for the life of the process.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<WorkerMetrics>) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::error!(error = %e, "the http listener failed");
    }
}

pub fn router(metrics: Arc<WorkerMetrics>) -> axum::Router {
    axum::Router::new().route("/metrics", get(scrape)).route("/healthz", get(healthz)).with_state(metrics)
}

async fn scrape(State(m): State<Arc<WorkerMetrics>>) -> Response {
    let body = tokio::task::spawn_blocking(move || m.encode()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn healthz(State(m): State<Arc<WorkerMetrics>>) -> Response {
    match m.health.check(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(quiet) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the render has made no progress for {:.0} s\n", quiet.as_secs_f64()),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_only_while_a_render_in_hand_stands_still() {
        let h = Health::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(h.check(at(100)), Ok(()), "idle for long is healthy");
        h.rendering(true, at(100));
        for s in [101, 105, 109] {
            h.progressed(at(s));
            assert_eq!(h.check(at(s + 9)), Ok(()));
        }
        // The device hangs: no iteration for 11 s.
        assert_eq!(h.check(at(120)), Err(Duration::from_secs(11)));
        h.progressed(at(121));
        assert_eq!(h.check(at(121)), Ok(()), "moving again");
        h.rendering(false, at(122));
        assert_eq!(h.check(at(500)), Ok(()), "the render ended");
    }

    #[tokio::test]
    async fn healthz_answers_503_for_a_stalled_render_and_metrics_count_frames() {
        let m = Arc::new(WorkerMetrics::new(Device::Cpu, Duration::from_millis(200)));
        m.frames_rendered.inc_by(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(m.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = move |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let mut r = agent.get(&format!("http://{addr}{path}")).call().unwrap();
                (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
            })
        };
        let (status, body) = get("/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("gramzoom_frames_rendered_total 3"), "{body}");
        assert_eq!(get("/healthz").await.unwrap().0, 200);
        // A render starts and its thread hangs.
        m.health.rendering(true, Instant::now());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = get("/healthz").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("the render has made no progress for"), "{body}");
        m.health.progressed(Instant::now());
        assert_eq!(get("/healthz").await.unwrap().0, 200);
    }
}
