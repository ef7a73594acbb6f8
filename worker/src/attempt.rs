//! One assignment, from set-up to upload: heartbeats start first (setting up an engine or
//! fetching a 1080p state can outlast a short lease), then the engine and start state, the
//! render on the torch thread, and the upload. Whatever happens, the attempt comes to one
//! `Outcome` (decided in `control`), which the node's loop reports to the coordinator.
//!
//! **Rendering ahead.** A node that keeps its end states does not let its device idle while it
//! uploads: once segment k is rendered, it starts rendering segment k+1's frames from k's end
//! state (`Ahead`) and uploads k meanwhile. Nothing about k+1 is claimed: the coordinator grants
//! k+1 only after k is recorded, as always, and only a grant of exactly that segment from
//! exactly k's attempt adopts the frames rendered ahead. Any other outcome (k's upload refused,
//! its lease lost, other work granted, shutdown) drops them.

use crate::chunk::{render_segment, ChunkError, ChunkOut};
use crate::control::{outcome, Control, Failure, Flags, Outcome};
use crate::heartbeat::{heartbeat_loop, AbortOnDrop, Counters};
use crate::node::Node;
use engine::device::Pending;
use engine::{Engine, State};
use proto::v1;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tonic::Code;

type Rendered = (Engine, Result<(State, Vec<u8>), ChunkError>);

/// The next segment's frames, being rendered from this node's end state while it uploads.
pub(crate) struct Ahead {
    job: String,
    /// The attempt whose end state it starts from.
    from_attempt: u64,
    start: u32,
    end: u32,
    progress: Arc<Counters>,
    cancel: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    render: Pending<Rendered>,
}

impl Ahead {
    /// Whether `a` is the segment these frames belong to, started from the same state.
    fn fits(&self, a: &v1::Assignment) -> bool {
        a.job_id == self.job
            && a.start_state_attempt_id == self.from_attempt
            && (a.start_frame, a.end_frame) == (self.start, self.end)
    }
}

fn chunk_path(name: &str, kind: proto::params::OutputKind) -> PathBuf {
    std::env::temp_dir().join(format!("gramzoom-{}-{name}.{}", std::process::id(), kind.extension()))
}

impl Node {
    /// Queues a render on the torch thread; its result is waited for later.
    fn start_render(
        &self,
        engine: Engine,
        start: Option<State>,
        end: u32,
        out: ChunkOut,
        progress: Arc<Counters>,
    ) -> Pending<Rendered> {
        let metrics = self.config.metrics.clone();
        self.torch.start(move || {
            metrics.health.rendering(true, Instant::now());
            let result = render_segment(&engine, start, end, out, &progress, &metrics);
            metrics.health.rendering(false, Instant::now());
            (engine, result)
        })
    }

    /// Stops frames rendered ahead that will not be used, and takes the engine back.
    pub(crate) async fn drop_ahead(&mut self, ahead: Ahead, why: &str) {
        ahead.cancel.store(true, Ordering::SeqCst);
        let frames = ahead.progress.frames.load(Ordering::Relaxed);
        let (engine, _) = ahead.render.wait().await;
        self.engine = Some((ahead.job.clone(), engine));
        tracing::info!(job = %ahead.job, frames, %why, "dropped the frames rendered ahead");
    }

    /// Runs one assignment to its outcome; `ahead`: frames this node rendered ahead, used when
    /// they fit. The engine comes back to the node on every path (it is in `run_attempt`'s result).
    pub(crate) async fn attempt(&mut self, a: v1::Assignment, ahead: Option<Ahead>) -> (Outcome, Option<Ahead>) {
        let job = a.job_id.clone();
        let (outcome, engine, ahead) = self.run_attempt(a, ahead).await;
        if let Some(engine) = engine {
            self.engine = Some((job, engine));
        }
        (outcome, ahead)
    }

    async fn run_attempt(
        &mut self,
        a: v1::Assignment,
        ahead: Option<Ahead>,
    ) -> (Outcome, Option<Engine>, Option<Ahead>) {
        let started = Instant::now();
        tracing::info!(attempt = a.attempt_id, job = %a.job_id, segment = a.segment_index, frames = %format!("{}..{}", a.start_frame, a.end_frame), "segment started");
        let (ahead, other) = match ahead {
            Some(x) if x.fits(&a) => (Some(x), None),
            x => (None, x),
        };
        if let Some(x) = other {
            self.drop_ahead(x, "granted other work").await;
        }
        let kind = match proto::wire::output_from_wire(a.output) {
            Ok(k) => k,
            Err(e) => {
                if let Some(x) = ahead {
                    self.drop_ahead(x, "a bad assignment").await;
                }
                return (outcome(Failure::Setup(e.to_string()), None), None, None);
            }
        };
        // Heartbeats start now: setting up an engine or fetching a 1080p state can take longer
        // than a short lease.
        let progress =
            ahead.as_ref().map_or_else(|| Arc::new(Counters::new(self.config.preview_every)), |x| x.progress.clone());
        let control = Control::default();
        let _heartbeats = AbortOnDrop(tokio::spawn(heartbeat_loop(
            self.client.clone(),
            a.attempt_id,
            self.heartbeat,
            progress.clone(),
            control.clone(),
        )));
        let render = match ahead {
            Some(x) => {
                tracing::info!(
                    attempt = a.attempt_id,
                    frames_done = x.progress.frames.load(Ordering::Relaxed),
                    "continuing with the frames rendered ahead"
                );
                // Already running, started without a control: stops heard since reach it now.
                control.attach(Flags { cancel: x.cancel, finish: x.finish });
                x.render
            }
            None => {
                let engine = match self.engine_for(&a).await {
                    Ok(e) => e,
                    Err(e) => return (outcome(Failure::Setup(e), control.reason()), None, None),
                };
                let start = match self.start_state(&a).await {
                    Ok(s) => s,
                    Err(e) => {
                        let failure = Failure::StartState { reason: e.reason, bad: e.bad };
                        return (outcome(failure, control.reason()), Some(engine), None);
                    }
                };
                // Before the render starts: the flags may still be set from the last render.
                control.attach(Flags { cancel: engine.cancel_flag(), finish: engine.finish_flag() });
                let out = ChunkOut {
                    kind,
                    path: chunk_path(&format!("attempt-{}", a.attempt_id), kind),
                    frames_dir: self.config.frames_dir.clone(),
                };
                self.start_render(engine, start, a.end_frame, out, progress.clone())
            }
        };
        let mut shutdown = self.shutdown.clone();
        // On shutdown (SIGTERM: a drain, a spot reclaim, a scale-down) the render ends after the
        // frame in hand and what it finished is handed over; before its first frame (set-up,
        // warm-up) it stops at once and the segment is released.
        let _watcher = {
            let (control, progress) = (control.clone(), progress.clone());
            AbortOnDrop(tokio::spawn(async move {
                if shutdown.wait_for(|s| *s).await.is_ok() {
                    control.release(progress.frames.load(Ordering::SeqCst));
                }
            }))
        };
        let (engine, result) = render.wait().await;
        // From here on the engine's flags belong to the next render, not to this attempt's
        // heartbeats (which may hear "already completed" once the upload lands).
        control.detach();
        let (state, chunk) = match result {
            Ok(r) => r,
            Err(e) => return (outcome(Failure::Render(e), control.reason()), Some(engine), None),
        };
        // The wire form of the end state (read off the device on the torch thread), then the
        // next segment's frames from the state itself while the upload runs.
        let (state, bytes) = self
            .torch
            .run(move || {
                let bytes = state.to_bytes();
                (state, bytes)
            })
            .await;
        // A preempted render hands over the frames it finished; the coordinator splits the segment.
        let finished = state.next_frame.min(a.end_frame);
        let preempted = finished < a.end_frame;
        if preempted {
            tracing::info!(
                attempt = a.attempt_id,
                frames = finished - a.start_frame,
                of = a.end_frame - a.start_frame,
                "preempted: handing over the frames finished"
            );
        }
        let ahead = !preempted
            && a.next_end_frame > a.end_frame
            && self.config.reuse_state
            && self.config.render_ahead
            && !*self.shutdown.borrow();
        let (engine, ahead) = if ahead {
            let (cancel, finish) = (engine.cancel_flag(), engine.finish_flag());
            cancel.store(false, Ordering::SeqCst);
            finish.store(false, Ordering::SeqCst);
            let progress = Arc::new(Counters::new(self.config.preview_every));
            let out = ChunkOut {
                kind,
                path: chunk_path(&format!("{}-from-{}", a.job_id, a.end_frame), kind),
                frames_dir: self.config.frames_dir.clone(),
            };
            let render = self.start_render(engine, Some(state), a.next_end_frame, out, progress.clone());
            let ahead = Ahead {
                job: a.job_id.clone(),
                from_attempt: a.attempt_id,
                start: a.end_frame,
                end: a.next_end_frame,
                progress,
                cancel,
                finish,
                render,
            };
            (None, Some(ahead))
        } else {
            if self.config.reuse_state {
                self.held = Some((a.attempt_id, state));
            }
            (Some(engine), None)
        };
        let handed = if preempted { finished - a.start_frame } else { 0 };
        let frame_seconds = progress.frame_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let poster = progress.previews.take_poster();
        let (sent, result) = self.upload(a.attempt_id, chunk, bytes, (handed, frame_seconds), poster).await;
        let outcome = match result {
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
                    rendering_ahead = ahead.is_some(),
                    "segment completed"
                );
                return (Outcome::Completed, engine, ahead);
            }
            Err(s) if s.code() == Code::FailedPrecondition => Outcome::Superseded(s.message().to_string()),
            Err(s) => Outcome::Failed(format!("upload: {}", s.message())),
        };
        // The state was not accepted: nothing built on it may be used.
        self.held = None;
        if let Some(x) = ahead {
            self.drop_ahead(x, "its start state was not accepted").await;
        }
        (outcome, engine, None)
    }
}
