//! Progress and logging: one progress bar on stderr, and `tracing` log lines (filtered by
//! RUST_LOG) printed above it without tearing it. Where stderr is not a terminal (a log file,
//! `kubectl logs`, CI) there is no bar; progress then comes as a log line now and then.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::v1;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The active progress bar, shared with the log writer so logs print above it.
#[derive(Clone, Default)]
pub struct Bar(Arc<Mutex<Option<ProgressBar>>>);

impl Bar {
    /// Starts a bar of `len` steps; hidden when `quiet`.
    pub fn start(&self, len: u64, prefix: &str, quiet: bool) -> ProgressBar {
        let pb = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4))
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} {msg} elapsed {elapsed_precise} ETA {eta_precise}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(prefix.to_string());
        *self.0.lock().expect("bar lock") = Some(pb.clone());
        pb
    }

    pub fn clear(&self) {
        if let Some(pb) = self.0.lock().expect("bar lock").take() {
            pb.finish_and_clear();
        }
    }
}

pub struct LogWriter(Bar);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let guard = (self.0).0.lock().expect("bar lock");
        match guard.as_ref() {
            Some(pb) => pb.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Bar {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.clone())
    }
}

/// RUST_LOG wins; otherwise info (warn with --quiet).
/// `default` is the filter when RUST_LOG is unset.
pub fn init_logging(default: &str) -> Bar {
    let bar = Bar::default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(bar.clone())
        .with_target(false)
        .with_ansi(ansi)
        .init();

    bar
}

/// How often a progress line is logged where there is no bar.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// Follows a job's updates: a warm-up bar, then a frames bar with fps and segment; without a
/// terminal, a `progress` log line on the first frame, every [`LINE_EVERY`] and on the last.
pub struct Follow<'a> {
    bar: &'a Bar,
    quiet: bool,
    /// No terminal: log lines instead of bars.
    lines: bool,
    last_line: Option<Instant>,
    /// Frames done at the last progress line, so the last frame is logged once.
    logged_frames: Option<u32>,
    warm: Option<ProgressBar>,
    frames: Option<ProgressBar>,
    frames_start: Option<(Instant, u32)>,
    started: Instant,
    warmup_secs: f64,
}

impl<'a> Follow<'a> {
    pub fn new(bar: &'a Bar, quiet: bool) -> Self {
        let lines = !quiet && !std::io::stderr().is_terminal();
        Self {
            bar,
            quiet,
            lines,
            last_line: None,
            logged_frames: None,
            warm: None,
            frames: None,
            frames_start: None,
            started: Instant::now(),
            warmup_secs: 0.0,
        }
    }

    /// True when a plain progress line is due; `last` forces one.
    fn line_due(&mut self, last: bool) -> bool {
        let due = self.lines && (last || self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY));
        if due {
            self.last_line = Some(Instant::now());
        }
        due
    }

    pub fn update(&mut self, job: &v1::Job) {
        if job.frames_done == 0 && job.warmup_total > 0 && job.warmup_done < job.warmup_total {
            let pb = self.warm.get_or_insert_with(|| self.bar.start(job.warmup_total as u64, "warm-up", self.quiet));
            pb.set_position(job.warmup_done as u64);
            if job.warmup_done > 0 && self.line_due(false) {
                tracing::info!(job = %job.id, warmup = %format!("{}/{}", job.warmup_done, job.warmup_total), "warming up");
            }
            return;
        }
        if job.frames_done == 0 && self.frames.is_none() {
            return;
        }
        let (bar, quiet, warm) = (self.bar, self.quiet, &mut self.warm);
        let first = self.frames.is_none();
        let pb = self.frames.get_or_insert_with(|| {
            if let Some(w) = warm.take() {
                w.finish_and_clear();
            }
            bar.start(job.frames_total as u64, "frames", quiet)
        });
        let (t0, f0) = *self.frames_start.get_or_insert_with(|| {
            self.warmup_secs = self.started.elapsed().as_secs_f64();
            (Instant::now(), job.frames_done)
        });
        pb.set_position(job.frames_done as u64);
        let segment =
            format!("{}/{}", (job.segments_done + 1).min(job.segments_total.max(1)), job.segments_total.max(1));
        let secs = t0.elapsed().as_secs_f64();
        let fps = (secs > 0.0 && job.frames_done > f0).then(|| (job.frames_done - f0) as f64 / secs);
        if let Some(fps) = fps {
            pb.set_message(format!("{fps:.2} fps, segment {segment}"));
        }
        let last = job.frames_done >= job.frames_total && self.logged_frames != Some(job.frames_done);
        if self.line_due(first || last) {
            self.logged_frames = Some(job.frames_done);
            let left = job.frames_total.saturating_sub(job.frames_done);
            let eta_s = fps.map(|fps| (f64::from(left) / fps).round());
            tracing::info!(
                job = %job.id,
                frames = %format!("{}/{}", job.frames_done, job.frames_total),
                fps = %fps.map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into()),
                eta_s = %eta_s.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
                segment = %segment,
                "progress"
            );
        }
    }

    /// Seconds from the start until the first frame arrived.
    pub fn warmup_secs(&self) -> f64 {
        self.warmup_secs
    }
}
