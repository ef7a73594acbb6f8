//! `gramzoom-coordinator`: the coordinator alone, for nodes without libtorch (its container
//! image carries only FFmpeg). `gramzoom serve` runs the same code.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "gramzoom-coordinator", version, about = "gramzoom's coordinator (job and worker gRPC APIs)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:50051")]
    listen: String,
    /// Directory for the database and artifacts.
    #[arg(long)]
    data: PathBuf,
    /// Seconds a lease lasts without a heartbeat.
    #[arg(long, default_value_t = 30.0)]
    lease_secs: f64,
    /// Attempts per segment before its job fails.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Default frames per segment.
    #[arg(long, default_value_t = coordinator::DEFAULT_SEGMENT_FRAMES)]
    segment_frames: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = coordinator::Config::new(args.data);
    config.lease = Duration::from_secs_f64(args.lease_secs.max(0.1));
    config.heartbeat = (config.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(2));
    config.max_attempts = args.max_attempts.max(1);
    config.segment_frames = args.segment_frames.max(1);
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    coordinator::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
