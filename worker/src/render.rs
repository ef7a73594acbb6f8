//! A whole local render: the engine on the calling thread, encoding pipelined on a dedicated
//! thread, and (with `segment_frames`) the hand-off state round-tripped through its file format
//! between segments exactly as a cluster worker would receive it.

use crate::encode::{self, EncodeError, FrameSink, FramesDir, OutputKind, PartialFile};
use crate::error::{EngineError, ParamError};
use crate::handoff::State;
use crate::segment::{Engine, Frame, Progress};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("encoding {path}: {source}")]
    Encode { path: PathBuf, source: EncodeError },
}

enum ToEncoder {
    Frame(Frame),
    /// Sent once, after the last frame of a successful render.
    Complete,
}

pub struct Outputs {
    pub output: PathBuf,
    pub frames_dir: Option<PathBuf>,
    /// Render in segments of this many frames, serialising the state between them.
    pub segment_frames: Option<u32>,
}

#[derive(Debug)]
pub struct Summary {
    pub frames: u32,
    pub wall: Duration,
    pub warmup: Duration,
    /// Size of one serialised hand-off state, when segments were used.
    pub state_bytes: Option<u64>,
}

/// Checks everything about the outputs that can be checked before any work: the extension, the
/// format's limits and that the destinations are writable. Returns the open temporary files.
pub fn prepare(engine: &Engine, outputs: &Outputs) -> Result<(OutputKind, PartialFile, Option<FramesDir>), ParamError> {
    let p = engine.params();
    let kind = OutputKind::from_path(&outputs.output)?;
    kind.check(p.width, p.height, p.fps)?;
    if let Some(k) = outputs.segment_frames {
        if k == 0 {
            return Err(ParamError::new("--segment-frames", "must be at least 1"));
        }
    }
    let file = PartialFile::create(&outputs.output)?;
    let frames_dir = outputs.frames_dir.as_deref().map(FramesDir::create).transpose()?;
    Ok((kind, file, frames_dir))
}

pub fn render(engine: &Engine, outputs: &Outputs, progress: &mut dyn FnMut(Progress)) -> Result<Summary, RenderError> {
    let (kind, file, frames_dir) = prepare(engine, outputs)?;
    let p = engine.params().clone();
    let start = Instant::now();
    let out_path = outputs.output.clone();
    let (tx, rx) = mpsc::sync_channel::<ToEncoder>(4);
    // The ffmpeg contexts are created, used and dropped on this thread alone.
    let encoder = std::thread::Builder::new()
        .name("encode".into())
        .spawn(move || -> Result<(), EncodeError> {
            let main = encode::open(kind, file, p.width, p.height, p.fps)?;
            let mut sink: Box<dyn FrameSink> = match frames_dir {
                Some(dir) => Box::new(encode::Tee(vec![main, Box::new(dir)])),
                None => main,
            };
            for msg in rx {
                match msg {
                    ToEncoder::Frame(frame) => sink.push(&frame)?,
                    ToEncoder::Complete => return sink.finish(),
                }
            }
            // The render failed or was cancelled: dropping the sink unfinished removes the
            // temporary output, so no half movie appears under the requested name.
            Ok(())
        })
        .expect("spawn encode thread");

    let result = run_engine(engine, outputs.segment_frames, &tx, progress);
    if result.is_ok() {
        // Only a render that produced every frame may complete the output.
        let _ = tx.send(ToEncoder::Complete);
    }
    drop(tx);
    let encoded = encoder.join().expect("encode thread panicked");
    let (warmup, state_bytes) = match (result, encoded) {
        // The engine stops with "cancelled" when the encoder hung up: report why it did.
        (Err(EngineError::Cancelled), Err(source)) | (Ok(_), Err(source)) => {
            return Err(RenderError::Encode { path: out_path, source })
        }
        // A failed render drops the sink unfinished: the temporary output is removed.
        (Err(e), _) => return Err(e.into()),
        (Ok(r), Ok(())) => r,
    };
    Ok(Summary { frames: engine.params().frames, wall: start.elapsed(), warmup, state_bytes })
}

fn run_engine(
    engine: &Engine,
    segment_frames: Option<u32>,
    tx: &mpsc::SyncSender<ToEncoder>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Duration, Option<u64>), EngineError> {
    let total = engine.params().frames;
    let t0 = Instant::now();
    let mut state = engine.initial_state(progress)?;
    let warmup = t0.elapsed();
    let mut send = |f: Frame| tx.send(ToEncoder::Frame(f)).map_err(|_| EngineError::Cancelled);
    let mut state_bytes = None;
    let seg = segment_frames.unwrap_or(total).max(1);
    let scratch = segment_frames
        .map(|_| std::env::temp_dir().join(format!("gramzoom-{}-handoff.safetensors", std::process::id())));
    while state.next_frame < total {
        let end = (state.next_frame.saturating_add(seg)).min(total);
        engine.render(&mut state, end, &mut send, progress)?;
        if let (Some(path), true) = (&scratch, end < total) {
            state = round_trip(&state, path, engine.device())?;
            state_bytes = std::fs::metadata(path).ok().map(|m| m.len());
        }
    }
    if let Some(path) = scratch {
        let _ = std::fs::remove_file(path);
    }
    Ok((warmup, state_bytes))
}

/// Saves the state and reads it back, as a hand-off between two workers does.
fn round_trip(state: &State, path: &Path, device: tch::Device) -> Result<State, EngineError> {
    let t = Instant::now();
    state.save(path)?;
    let back = State::load(path, device)?;
    tracing::debug!(frame = back.next_frame, elapsed_ms = t.elapsed().as_millis() as u64, "hand-off state round trip");
    Ok(back)
}
