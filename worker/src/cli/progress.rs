//! Terminal progress and logging: one progress bar on stderr, and `tracing` log lines (filtered
//! by RUST_LOG) printed above it without tearing it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::{Arc, Mutex};
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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(bar.clone())
        .with_target(false)
        .with_ansi(ansi)
        .init();

    bar
}
