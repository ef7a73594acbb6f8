//! `gramzoom worker`: a render node for a coordinator, until Ctrl-C or SIGTERM (which releases
//! the segment in hand) or `--max-segments`.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use worker::metrics::WorkerMetrics;
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
    /// The full SHA-256 (64 hex digits) --weights must have: the worker refuses to start with
    /// any other file, e.g. a half-filled or wrong weights volume.
    #[arg(long, value_name = "HEX", requires = "weights")]
    pub weights_sha256: Option<String>,
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
    /// Serve HTTP here: GET /metrics (Prometheus) and GET /healthz (for a liveness probe).
    /// Unauthenticated: bind it to the pod network only and restrict it with a NetworkPolicy.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// /healthz fails once the render in hand has made no optimiser iteration for this long
    /// (a hung GPU). Set-up, downloads and waiting for work never count.
    #[arg(long, default_value_t = 300.0)]
    pub health_stall_secs: f64,
    /// Do not render the next segment's frames while the last one uploads (for comparisons:
    /// with it, the device idles for the whole upload).
    #[arg(long)]
    pub no_render_ahead: bool,
    /// Send the coordinator a small JPEG of the latest frame this often, for the dashboard's
    /// live preview (0: never; the last frame of each segment is still sent, as the poster).
    #[arg(long, default_value_t = 3.0)]
    pub preview_secs: f64,
}

pub fn run(args: Args, bar: &crate::progress::Bar) -> Result<()> {
    if let (Some(want), Some(path)) = (&args.weights_sha256, &args.weights) {
        let want = want.trim().to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("--weights-sha256: expected 64 hex digits, got {:?}", proto::limits::quoted_prefix(&want));
        }
        let got = engine::weights::file_sha256(path)?;
        if got != want {
            anyhow::bail!("--weights-sha256: {} has sha256 {got}, expected {want}", path.display());
        }
    }
    let device = args.torch.device()?;
    // Without --weights, VGG16 (what jobs use unless they ask for vgg19) is fetched on first
    // use before the worker registers, so that it registers the digest it renders with.
    if args.weights.is_none() {
        super::weights::first_use(engine::vgg::Network::Vgg16, args.torch.offline, bar)?;
    }
    let threads = args.torch.threads();
    let token = crate::client::token(args.token_file.as_deref())?;
    let tls = args.tls.load()?;
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
    let config = NodeConfig {
        coordinator: args.coordinator,
        name: args.name.unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        device,
        devices: args.torch.devices()?,
        blocks: args.torch.blocks,
        weights: args.weights,
        frames_dir: args.frames_dir,
        max_segments: args.max_segments,
        reuse_state: true,
        render_ahead: !args.no_render_ahead,
        preview_every: (args.preview_secs > 0.0).then(|| Duration::from_secs_f64(args.preview_secs.min(86_400.0))),
        token,
        tls,
        metrics: Arc::new(WorkerMetrics::new(
            device,
            Duration::from_secs_f64(args.health_stall_secs.clamp(1.0, 86_400.0)),
        )),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        if let Some(addr) = &args.http {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --http {addr}"))?;
            // Tests and scripts that pass port 0 read the real address from this line.
            eprintln!("http listening on {}", listener.local_addr()?);
            tokio::spawn(worker::metrics::serve(listener, config.metrics.clone()));
        }
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
