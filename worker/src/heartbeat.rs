//! Keeping the lease: heartbeats carry the attempt's progress, and when the coordinator says
//! the attempt is no longer current (lease lost, job cancelled) they stop the render.

use proto::v1;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Progress of the render in hand, written by the render thread, read by the heartbeats.
#[derive(Default)]
pub(crate) struct Counters {
    pub frames: AtomicU32,
    pub warmup_done: AtomicU32,
    pub warmup_total: AtomicU32,
    /// Optimiser iterations done in this attempt.
    pub iterations: AtomicU64,
    /// Microseconds spent rendering frames (warm-up excluded), once the render is done.
    pub frame_micros: AtomicU64,
    /// Previews of the frames, for the dashboard.
    pub previews: crate::preview::Previews,
}

impl Counters {
    /// Counters of a render that makes a preview every `preview_every` (`None`: never).
    pub fn new(preview_every: Option<Duration>) -> Self {
        Self { previews: crate::preview::Previews::new(preview_every), ..Self::default() }
    }
}

/// Aborts a background task when the attempt that started it ends, on every path.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Extends the lease every `every` until aborted. When the coordinator says the attempt is no
/// longer current (lease lost, job cancelled), stops the render.
pub(crate) async fn heartbeat_loop(
    mut client: crate::node::Client,
    attempt: u64,
    every: Duration,
    progress: Arc<Counters>,
    control: crate::control::Control,
) {
    loop {
        tokio::time::sleep(every).await;
        let request = v1::HeartbeatRequest {
            attempt_id: attempt,
            frames_done: progress.frames.load(Ordering::Relaxed),
            warmup_done: progress.warmup_done.load(Ordering::Relaxed),
            warmup_total: progress.warmup_total.load(Ordering::Relaxed),
            loss: 0.0,
            iterations: progress.iterations.load(Ordering::Relaxed),
            preview: progress.previews.take_latest(),
        };
        match client.heartbeat(request).await {
            Ok(_) => {}
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                tracing::warn!(attempt, reason = %s.message(), "coordinator ended this attempt; stopping");
                control.supersede(s.message().to_string());
                return;
            }
            Err(s) => tracing::warn!(attempt, error = %s.message(), "heartbeat failed; retrying"),
        }
    }
}
