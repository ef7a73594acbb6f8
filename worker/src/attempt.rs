//! One assignment, from set-up to upload: heartbeats start first (setting up an engine or
//! fetching a 1080p state can outlast a short lease), then the engine and start state, the
//! render on the torch thread, and the upload. Whatever happens, the attempt comes to one
//! `Outcome`, which the node's loop reports to the coordinator.

use crate::chunk::{render_segment, ChunkOut};
use crate::heartbeat::{heartbeat_loop, AbortOnDrop, Counters, StopSlot};
use crate::node::Node;
use proto::v1;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tonic::Code;

/// What one attempt came to.
pub(crate) enum Outcome {
    Completed,
    /// The coordinator no longer wants it (lease lost, job cancelled): drop it silently.
    Superseded(String),
    Released,
    Failed(String),
    /// The start state could not be loaded and looks bad itself (see `inputs::Unloadable`).
    BadStartState(String),
}

impl Node {
    pub(crate) async fn attempt(&mut self, a: v1::Assignment) -> Outcome {
        let started = Instant::now();
        tracing::info!(attempt = a.attempt_id, job = %a.job_id, segment = a.segment_index, frames = %format!("{}..{}", a.start_frame, a.end_frame), "segment started");
        let kind = match proto::wire::output_from_wire(a.output) {
            Ok(k) => k,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Heartbeats start now: setting up an engine or fetching a 1080p state can take longer
        // than a short lease.
        let progress = Arc::new(Counters::default());
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
                let failed = if e.bad { Outcome::BadStartState(e.reason) } else { Outcome::Failed(e.reason) };
                return superseded().map_or(failed, Outcome::Superseded);
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
        let (end, job, metrics) = (a.end_frame, a.job_id.clone(), self.config.metrics.clone());
        let rendered = self
            .torch
            .run(move || {
                metrics.health.rendering(true, Instant::now());
                let out = ChunkOut { kind, path: chunk_path, frames_dir };
                let result = render_segment(&engine, start, end, out, &progress, &metrics);
                metrics.health.rendering(false, Instant::now());
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
        let (state, sent, result) = self.upload(a.attempt_id, state, chunk).await;
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
                    chunk_bytes = sent.chunk_bytes,
                    state_bytes = sent.state_bytes,
                    upload_ms = sent.elapsed.as_millis() as u64,
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
