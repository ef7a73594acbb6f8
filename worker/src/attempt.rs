//! One assignment, from set-up to upload: heartbeats start first (setting up an engine or
//! fetching a 1080p state can outlast a short lease), then the engine and start state, the
//! render on the torch thread, and the upload. Whatever happens, the attempt comes to one
//! `Outcome`, which the node's loop reports to the coordinator.
//!
//! **Rendering ahead.** A node that keeps its end states does not let its device idle while it
//! uploads: once segment k is rendered, it starts rendering segment k+1's frames from k's end
//! state (`Ahead`) and uploads k meanwhile. Nothing about k+1 is claimed: the coordinator grants
//! k+1 only after k is recorded, as always, and only a grant of exactly that segment from
//! exactly k's attempt adopts the frames rendered ahead. Any other outcome (k's upload refused,
//! its lease lost, other work granted, shutdown) drops them.

use crate::chunk::{render_segment, ChunkOut};
use crate::heartbeat::{heartbeat_loop, AbortOnDrop, Counters, StopSlot};
use crate::node::Node;
use engine::device::Pending;
use engine::{Engine, State};
use proto::v1;
use std::path::PathBuf;
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

type Rendered = (Engine, Result<(State, Vec<u8>), String>);

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

    pub(crate) async fn attempt(&mut self, a: v1::Assignment, ahead: Option<Ahead>) -> (Outcome, Option<Ahead>) {
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
                return (Outcome::Failed(e.to_string()), None);
            }
        };
        // Heartbeats start now: setting up an engine or fetching a 1080p state can take longer
        // than a short lease.
        let progress =
            ahead.as_ref().map_or_else(|| Arc::new(Counters::new(self.config.preview_every)), |x| x.progress.clone());
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
        let (render, cancel, finish) = match ahead {
            Some(x) => {
                tracing::info!(
                    attempt = a.attempt_id,
                    frames_done = x.progress.frames.load(Ordering::Relaxed),
                    "continuing with the frames rendered ahead"
                );
                (x.render, x.cancel, x.finish)
            }
            None => {
                let engine = match self.engine_for(&a).await {
                    Ok(e) => e,
                    Err(e) => return (superseded().map_or(Outcome::Failed(e), Outcome::Superseded), None),
                };
                let start = match self.start_state(&a).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.engine = Some((a.job_id.clone(), engine));
                        let failed = if e.bad { Outcome::BadStartState(e.reason) } else { Outcome::Failed(e.reason) };
                        return (superseded().map_or(failed, Outcome::Superseded), None);
                    }
                };
                let (cancel, finish) = (engine.cancel_flag(), engine.finish_flag());
                cancel.store(false, Ordering::SeqCst);
                finish.store(false, Ordering::SeqCst);
                let out = ChunkOut {
                    kind,
                    path: chunk_path(&format!("attempt-{}", a.attempt_id), kind),
                    frames_dir: self.config.frames_dir.clone(),
                };
                (self.start_render(engine, start, a.end_frame, out, progress.clone()), cancel, finish)
            }
        };
        *stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(cancel.clone());
        if superseded().is_some() {
            cancel.store(true, Ordering::SeqCst); // lost while setting up: the render stops at once
        }
        let released = Arc::new(AtomicBool::new(false));
        let mut shutdown = self.shutdown.clone();
        // On shutdown (SIGTERM: a drain, a spot reclaim, a scale-down) the render ends after the
        // frame in hand and what it finished is handed over; before its first frame (set-up,
        // warm-up) it stops at once and the segment is released.
        let _watcher = {
            let (cancel, finish, released, progress) =
                (cancel.clone(), finish.clone(), released.clone(), progress.clone());
            AbortOnDrop(tokio::spawn(async move {
                if shutdown.wait_for(|s| *s).await.is_ok() {
                    released.store(true, Ordering::SeqCst);
                    finish.store(true, Ordering::SeqCst);
                    if progress.frames.load(Ordering::SeqCst) == 0 {
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
            }))
        };
        let (engine, result) = render.wait().await;
        // From here on the engine's cancel flag belongs to the next render, not to this attempt's
        // heartbeats (which may hear "already completed" once the upload lands).
        *stop.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let (state, chunk) = match result {
            Ok(r) => r,
            Err(e) => {
                self.engine = Some((a.job_id.clone(), engine));
                if let Some(why) = superseded() {
                    return (Outcome::Superseded(why), None);
                }
                if released.load(Ordering::SeqCst) {
                    return (Outcome::Released, None);
                }
                return (Outcome::Failed(e), None);
            }
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
        let ahead = if ahead {
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
            Some(Ahead {
                job: a.job_id.clone(),
                from_attempt: a.attempt_id,
                start: a.end_frame,
                end: a.next_end_frame,
                progress,
                cancel,
                finish,
                render,
            })
        } else {
            self.engine = Some((a.job_id.clone(), engine));
            if self.config.reuse_state {
                self.held = Some((a.attempt_id, state));
            }
            None
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
                return (Outcome::Completed, ahead);
            }
            Err(s) if s.code() == Code::FailedPrecondition => Outcome::Superseded(s.message().to_string()),
            Err(s) => Outcome::Failed(format!("upload: {}", s.message())),
        };
        // The state was not accepted: nothing built on it may be used.
        self.held = None;
        if let Some(x) = ahead {
            self.drop_ahead(x, "its start state was not accepted").await;
        }
        (outcome, None)
    }
}
