//! Rendering one segment into an encoded chunk. Runs on the torch thread: the engine renders
//! frames straight into the chunk's encoder (and a PNG dump when asked), and reports progress
//! through atomics the heartbeats read.

use crate::heartbeat::Counters;
use crate::metrics::WorkerMetrics;
use engine::encode::{self, FrameSink, FramesDir, PartialFile};
use engine::{Engine, EngineError, Frame, Progress, State};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Why a segment's render did not produce its chunk.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    /// The engine failed or was cancelled.
    #[error(transparent)]
    Engine(EngineError),
    /// The encoder (or the PNG dump) could not take the frames.
    #[error("encoding the chunk: {0}")]
    Encode(String),
    /// The chunk's temporary file.
    #[error("the chunk's file: {0}")]
    File(String),
}

impl From<EngineError> for ChunkError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::FrameSink(reason) => Self::Encode(reason),
            e => Self::Engine(e),
        }
    }
}

/// Frames rendered but not yet encoded, at most.
const FRAME_QUEUE: usize = 2;

/// Where a segment's frames go: the chunk's format and file, and a PNG dump when asked.
pub(crate) struct ChunkOut {
    pub kind: proto::params::OutputKind,
    pub path: PathBuf,
    pub frames_dir: Option<PathBuf>,
}

/// Renders one segment into an encoded chunk; returns the end state and the chunk's bytes.
pub(crate) fn render_segment(
    engine: &Engine,
    start: Option<State>,
    end: u32,
    out: ChunkOut,
    progress: &Counters,
    metrics: &WorkerMetrics,
) -> Result<(State, Vec<u8>), ChunkError> {
    let ChunkOut { kind, path: chunk_path, frames_dir } = out;
    let chunk_path = chunk_path.as_path();
    let p = engine.params();
    let file = PartialFile::create(chunk_path).map_err(|e| ChunkError::File(e.to_string()))?;
    let dump =
        frames_dir.map(|dir| FramesDir::create(&dir)).transpose().map_err(|e| ChunkError::Encode(e.to_string()))?;
    let (width, height, fps) = (p.width, p.height, p.fps);
    // Encoding (and the PNG dump) on a thread of its own, overlapped with the next frame's
    // iterations; at most FRAME_QUEUE frames wait in between.
    let mut sink: Box<dyn FrameSink> = Box::new(
        encode::Threaded::spawn(
            move || {
                let main = encode::open(kind, file, width, height, fps)?;
                Ok(match dump {
                    Some(dump) => Box::new(encode::Tee(vec![main, Box::new(dump)])),
                    None => main,
                })
            },
            FRAME_QUEUE,
        )
        .map_err(|e| ChunkError::Encode(e.to_string()))?,
    );
    // Called on this (the render) thread: the counters move only while the render does, so a
    // hung device call shows in the heartbeats as progress that stopped.
    // Time between iterations: a frame's output is charged to the iteration after it.
    let mut last = Instant::now();
    let mut report = |pr: Progress| {
        if pr.is_iteration() {
            let now = Instant::now();
            metrics.iteration_seconds.observe(now.duration_since(last).as_secs_f64());
            metrics.health.progressed(now);
            last = now;
            progress.iterations.fetch_add(1, Ordering::Relaxed);
        }
        let (frames, warmup_done, warmup_total) = match pr {
            Progress::Block { .. } => {
                // Part of an iteration: the render moves (the watchdog counts it), nothing else.
                metrics.health.progressed(Instant::now());
                progress.iterations.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Progress::Warmup { done, total, .. } => (0, done, total),
            Progress::Iteration { frames_done, .. } | Progress::Frame { frames_done, .. } => (frames_done, 0, 0),
        };
        progress.frames.store(frames, Ordering::Relaxed);
        progress.warmup_done.store(warmup_done, Ordering::Relaxed);
        progress.warmup_total.store(warmup_total, Ordering::Relaxed);
    };
    let mut state = match start {
        Some(s) => s,
        None => engine.initial_state(&mut report)?,
    };
    let frames_began = Instant::now();
    let mut on_frame = |f: Frame| {
        metrics.frames_rendered.inc();
        progress.previews.offer(&f, f.index + 1 == end);
        sink.push_owned(f).map_err(|e| EngineError::FrameSink(e.to_string()))
    };
    engine.render(&mut state, end, &mut on_frame, &mut report)?;
    sink.finish().map_err(|e| ChunkError::Encode(e.to_string()))?;
    progress.frame_micros.store(frames_began.elapsed().as_micros() as u64, Ordering::Relaxed);
    let chunk = std::fs::read(chunk_path).map_err(|e| ChunkError::File(format!("reading it back: {e}")))?;
    let _ = std::fs::remove_file(chunk_path);
    Ok((state, chunk))
}
