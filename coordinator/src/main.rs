//! `gramzoom-coordinator`: the coordinator alone, for nodes without libtorch (its container
//! image carries only FFmpeg and SQLite). `gramzoom serve` runs the same code.

use clap::Parser;

#[derive(Parser)]
#[command(name = "gramzoom-coordinator", version, about = "gramzoom's coordinator (job and worker gRPC APIs)")]
struct Args {
    #[command(flatten)]
    serve: coordinator::cli::ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    coordinator::cli::serve(&Args::parse().serve).await?;
    Ok(())
}
