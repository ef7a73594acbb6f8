//! One attempt's control: why its render is being stopped (decided once), the render's flags,
//! and the one decision of what an attempt that did not upload came to.
//!
//! Three things can stop an attempt's render besides its own end: the coordinator saying the
//! attempt is no longer current (the heartbeats hear it), the node shutting down, and a
//! failure of the render itself. They arrive on different tasks at any time, also before the
//! render has started (while the engine is built or the start state fetched); the control
//! keeps them, applies them to the render's flags as soon as there is a render, and
//! [`outcome`] turns them into one [`Outcome`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What one attempt came to.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Completed,
    /// The coordinator no longer wants it (lease lost, job cancelled): drop it silently.
    Superseded(String),
    Released,
    Failed(String),
    /// The start state could not be loaded and looks bad itself (see `inputs::Unloadable`).
    BadStartState(String),
}

/// Why an attempt's render is being stopped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StopReason {
    /// The coordinator no longer wants the attempt (lease lost, job cancelled).
    Superseded(String),
    /// The node is shutting down: the frame in hand is finished and what is done handed over
    /// (a render that has no frame yet stops at once and its segment is released).
    Released,
}

/// What kept an attempt from uploading.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Building the engine or fetching the style.
    Setup(String),
    /// The start state could not be loaded; `bad` when it looks bad itself.
    StartState { reason: String, bad: bool },
    /// The render or its encoder failed (or was cancelled).
    Render(crate::chunk::ChunkError),
}

/// The render's flags (the engine's), once there is a render.
#[derive(Clone)]
pub(crate) struct Flags {
    pub cancel: Arc<AtomicBool>,
    pub finish: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    reason: Option<StopReason>,
    flags: Option<Flags>,
    /// Whether the render has finished a frame (a released render then hands over).
    framed: bool,
}

/// Shared by the attempt, its heartbeats and its shutdown watcher.
#[derive(Default, Clone)]
pub(crate) struct Control(Arc<Mutex<Inner>>);

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The coordinator ended the attempt: the render stops at once. This overrides a release
    /// (the coordinator has moved on: there is nothing left to hand over).
    pub fn supersede(&self, why: String) {
        let mut inner = self.lock();
        inner.reason = Some(StopReason::Superseded(why));
        Self::apply(&inner);
    }

    /// The node is shutting down. `frames_done`: frames the render has finished.
    pub fn release(&self, frames_done: u32) {
        let mut inner = self.lock();
        if inner.reason.is_none() {
            inner.reason = Some(StopReason::Released);
        }
        inner.framed |= frames_done > 0;
        Self::apply(&inner);
    }

    /// The render's flags from now on (cleared first, then set as the reason so far says).
    pub fn attach(&self, flags: Flags) {
        flags.cancel.store(false, Ordering::SeqCst);
        flags.finish.store(false, Ordering::SeqCst);
        let mut inner = self.lock();
        inner.flags = Some(flags);
        Self::apply(&inner);
    }

    /// The render is over: its engine's flags belong to the next render, not to this attempt.
    pub fn detach(&self) {
        self.lock().flags = None;
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.lock().reason.clone()
    }

    fn apply(inner: &Inner) {
        let Some(flags) = &inner.flags else { return };
        match inner.reason {
            Some(StopReason::Superseded(_)) => flags.cancel.store(true, Ordering::SeqCst),
            Some(StopReason::Released) => {
                flags.finish.store(true, Ordering::SeqCst);
                if !inner.framed {
                    flags.cancel.store(true, Ordering::SeqCst);
                }
            }
            None => {}
        }
    }
}

/// What an attempt that could not upload came to: a superseded attempt is dropped whatever
/// else went wrong (the coordinator has moved on), a render stopped for a shutdown is
/// released, and the rest is a failure, charged to the start state when that looked bad.
pub(crate) fn outcome(failure: Failure, stop: Option<StopReason>) -> Outcome {
    match (stop, failure) {
        (Some(StopReason::Superseded(why)), _) => Outcome::Superseded(why),
        (Some(StopReason::Released), Failure::Render(_)) => Outcome::Released,
        (_, Failure::StartState { reason, bad: true }) => Outcome::BadStartState(reason),
        (_, Failure::StartState { reason, bad: false } | Failure::Setup(reason)) => Outcome::Failed(reason),
        (_, Failure::Render(e)) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkError;

    fn flags() -> Flags {
        Flags { cancel: Arc::default(), finish: Arc::default() }
    }

    fn set(f: &Flags) -> (bool, bool) {
        (f.cancel.load(Ordering::SeqCst), f.finish.load(Ordering::SeqCst))
    }

    /// Each way an attempt can end without an upload, decided in one place.
    #[test]
    fn every_failure_and_stop_comes_to_one_outcome() {
        let render = || Failure::Render(ChunkError::Encode("disk full".into()));
        let superseded = || Some(StopReason::Superseded("lease expired".into()));
        let cases: Vec<(Failure, Option<StopReason>, Outcome)> = vec![
            (Failure::Setup("no style".into()), None, Outcome::Failed("no style".into())),
            (Failure::Setup("no style".into()), superseded(), Outcome::Superseded("lease expired".into())),
            (
                Failure::StartState { reason: "corrupt".into(), bad: true },
                None,
                Outcome::BadStartState("corrupt".into()),
            ),
            (Failure::StartState { reason: "offline".into(), bad: false }, None, Outcome::Failed("offline".into())),
            (render(), None, Outcome::Failed("encoding the chunk: disk full".into())),
            (render(), Some(StopReason::Released), Outcome::Released),
            (render(), superseded(), Outcome::Superseded("lease expired".into())),
            (
                Failure::Render(ChunkError::Engine(engine::EngineError::Cancelled)),
                superseded(),
                Outcome::Superseded("lease expired".into()),
            ),
        ];
        for (failure, stop, want) in cases {
            let what = format!("{failure:?} with {stop:?}");
            assert_eq!(outcome(failure, stop), want, "{what}");
        }
    }

    /// A stop that comes before the render starts still reaches it; a release before the first
    /// frame stops the render at once, after one it lets the frame in hand finish; the
    /// coordinator ending the attempt wins over a release.
    #[test]
    fn stops_reach_the_render_whenever_they_come() {
        let c = Control::default();
        c.supersede("cancelled".into());
        let f = flags();
        c.attach(f.clone());
        assert_eq!(set(&f), (true, false), "superseded before the render started");

        let c = Control::default();
        let f = flags();
        c.attach(f.clone());
        c.release(0);
        assert_eq!(set(&f), (true, true), "released before the first frame: stop now");
        assert_eq!(c.reason(), Some(StopReason::Released));

        let c = Control::default();
        let f = flags();
        c.attach(f.clone());
        c.release(3);
        assert_eq!(set(&f), (false, true), "released after frames: finish the frame in hand");
        c.supersede("lease expired".into());
        assert_eq!(set(&f), (true, true));
        assert_eq!(c.reason(), Some(StopReason::Superseded("lease expired".into())));

        let c = Control::default();
        let f = flags();
        c.attach(f.clone());
        c.detach();
        c.supersede("late".into());
        assert_eq!(set(&f), (false, false), "a detached render belongs to the next attempt");
    }
}
