//! `--beats`: the soundtrack's beats as the movie's tempo. The part of the soundtrack the movie
//! plays is decoded to a WAV (FFmpeg, through the coordinator's soundtrack module), aubio's beat
//! tracker `aubiotrack` listens to it, and its beats become a [`BeatGrid`] (skipped beats put
//! back, the grid carried to the movie's start and end). aubio is GPL-3.0 and this project
//! Apache-2.0, so it runs as its own program, never linked; `scripts/setup.sh` installs it
//! (Debian's aubio-tools). It runs here, before submit: the job carries the beats, so the
//! coordinator and workers need neither aubio nor the tracker's run to agree.

use proto::params::ParamError;
use proto::schedule::BeatGrid;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The beat tracker's program.
const TRACKER: &str = "aubiotrack";
/// Bytes of the tracker's output read at most: a beat a line, far more than any movie's.
const MAX_OUTPUT: u64 = 4 << 20;

fn error(message: impl Into<String>) -> ParamError {
    ParamError::new("--beats", message)
}

/// Seconds of the soundtrack the tracker hears at least: it takes a few seconds to lock on, so
/// a short movie's beats come from the music that follows it too.
const LISTEN: f64 = 30.0;

/// The beats of `audio` over a movie of `seconds` whose first frame plays with its second
/// `offset`, in seconds of the movie.
pub fn detect(audio: &Path, offset: f64, seconds: f64) -> Result<BeatGrid, ParamError> {
    let lower = |e: &dyn std::fmt::Display| e.to_string().to_lowercase();
    let dir = tempfile::tempdir().map_err(|e| error(format!("cannot make a scratch folder: {}", lower(&e))))?;
    let wav = dir.path().join("soundtrack.wav");
    let start = coordinator::soundtrack::write_wav(audio, offset, seconds.max(LISTEN), &wav)
        .map_err(|e| error(format!("{}: {}", audio.display(), lower(&e))))?;
    let started = Instant::now();
    let mut child = Command::new(TRACKER)
        .arg("-i")
        .arg(&wav)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => error(format!(
                "needs aubio's beat tracker, {TRACKER}, which is not on PATH (Debian and Ubuntu: apt install \
                 aubio-tools; scripts/setup.sh installs it)"
            )),
            _ => error(format!("cannot run {TRACKER}: {}", lower(&e))),
        })?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    // The tracker hears a minute of music in about a second; a hung one is stopped.
    let limit = Duration::from_secs_f64(30.0 + seconds / 10.0);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error(format!("{TRACKER} did not finish within {} s", limit.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(error(format!("waiting for {TRACKER}: {}", lower(&e)))),
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() {
        let said = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(error(format!("{TRACKER} failed ({status}): {said}")));
    }
    let mut times = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let t: f64 = line.parse().map_err(|_| error(format!("{TRACKER} printed {line:?}, not a time in seconds")))?;
        times.push(t + start);
    }
    let grid = BeatGrid::from_tracker(&times, seconds)?;
    tracing::info!(
        found = times.len(),
        beats = grid.times().len(),
        bpm = grid.bpm(),
        seconds_taken = started.elapsed().as_secs_f64(),
        "beats of the soundtrack"
    );
    Ok(grid)
}

/// Reads what a pipe says, up to [`MAX_OUTPUT`], on a thread of its own, so that neither of the
/// tracker's pipes fills while it runs.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_OUTPUT).read_to_string(&mut text);
        }
        text
    })
}
