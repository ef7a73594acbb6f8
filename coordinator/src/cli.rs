//! Flags of `gramzoom serve` and `gramzoom-coordinator` (one definition for both binaries).

use crate::Config;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:50051 (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// Directory for the database and artifacts; created if missing, reused after a restart.
    #[arg(long)]
    pub data: PathBuf,
    /// Seconds a lease lasts without a heartbeat before the segment is requeued.
    #[arg(long, default_value_t = 30.0)]
    pub lease_secs: f64,
    /// Attempts per segment before its job fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Frames per segment for jobs that do not choose.
    #[arg(long, default_value_t = crate::DEFAULT_SEGMENT_FRAMES)]
    pub segment_frames: u32,
}

impl ServeArgs {
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.data.clone());
        config.lease = Duration::from_secs_f64(self.lease_secs.clamp(0.2, 3600.0));
        // Several heartbeats per lease, so one lost packet never costs a segment.
        config.heartbeat = (config.lease / 6).clamp(Duration::from_millis(50), Duration::from_secs(2));
        config.affinity_grace = (config.lease / 4).min(Duration::from_secs(2));
        config.max_attempts = self.max_attempts.max(1);
        config.segment_frames = self.segment_frames.max(1);
        config
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a sigterm handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
