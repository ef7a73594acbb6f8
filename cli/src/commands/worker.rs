//! `gramzoom worker`: a render node for a coordinator, until Ctrl-C or SIGTERM (which releases
//! the segment in hand) or `--max-segments`.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use worker::node::{Node, NodeConfig};

#[derive(ClapArgs)]
pub struct Args {
    /// The coordinator, e.g. http://coordinator:50051.
    #[arg(long, env = "GRAMZOOM_COORDINATOR")]
    pub coordinator: String,
    #[command(flatten)]
    pub torch: super::TorchFlags,
    /// Pretrained weights (.pth or .safetensors); default: the downloaded ones.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A name for logs and job histories (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Also write every frame this worker renders as a lossless PNG into this directory.
    #[arg(long)]
    pub frames_dir: Option<PathBuf>,
    /// Exit after this many segments.
    #[arg(long)]
    pub max_segments: Option<u32>,
    /// A file whose first line is the worker token, for a coordinator with --auth (default: the
    /// GRAMZOOM_TOKEN environment variable).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: super::TlsFlags,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.torch.device()?;
    let threads = args.torch.threads();
    let token = crate::client::token(args.token_file.as_deref())?;
    let tls = args.tls.load()?;
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
    let config = NodeConfig {
        coordinator: args.coordinator,
        name: args.name.unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        device,
        weights: args.weights,
        frames_dir: args.frames_dir,
        max_segments: args.max_segments,
        reuse_state: true,
        token,
        tls,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            coordinator::cli::shutdown_signal().await;
            tracing::info!("stopping: the segment in hand is released to the coordinator");
            let _ = tx.send(true);
            coordinator::cli::shutdown_signal().await;
            std::process::exit(130);
        });
        let node = Node::connect(config, engine::device::DeviceThread::spawn(threads), rx).await?;
        node.run().await?;
        Ok(())
    })
}
