//! `gramzoom render`.

use super::progress::Bar;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::time::Instant;
use worker::params::{parse_size, Fps, OptimizerKind, RenderParams};
use worker::render::{render, Outputs};
use worker::style::Style;
use worker::vgg::{Network, WeightsOrigin};
use worker::{Engine, ParamError};

#[derive(ClapArgs)]
pub struct Args {
    /// Style image (PNG or JPEG); the built-in Van Gogh wheat field when omitted.
    pub style: Option<PathBuf>,
    /// Output: .mp4 (H.264), .gif (looping), .png or .jpg (the last frame).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "512x512")]
    pub size: String,
    /// Number of frames (default: 4 seconds' worth).
    #[arg(long, conflicts_with = "seconds")]
    pub frames: Option<u32>,
    /// Length in seconds, instead of --frames.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Frames per second, e.g. 30 or 29.97.
    #[arg(long, default_value = "30")]
    pub fps: String,
    /// Magnification per second.
    #[arg(long, default_value_t = 2.0)]
    pub zoom: f64,
    /// Optimiser iterations per frame.
    #[arg(long, default_value_t = 5)]
    pub iters: u32,
    /// Optimiser iterations of progressive growth before the first frame.
    #[arg(long, default_value_t = 150)]
    pub warmup: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// adam or lbfgs.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Optimiser step size (default: 0.02 for adam, 1 for lbfgs).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Style image size relative to the output (shorter sides).
    #[arg(long, default_value_t = 1.0)]
    pub style_scale: f64,
    /// vgg16 or vgg19.
    #[arg(long, default_value = "vgg16")]
    pub network: String,
    /// Style layers and weights, e.g. conv1_1=1,conv2_1=1,conv3_1=0.5 (default: all, equal).
    #[arg(long)]
    pub layers: Option<String>,
    /// Pretrained weights (.pth from torchvision or .safetensors); default: the downloaded ones.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Also write every frame as a lossless PNG into this directory.
    #[arg(long)]
    pub frames_dir: Option<PathBuf>,
    /// Render in segments of this many frames, passing the state between them through its file
    /// format, as the cluster does between workers.
    #[arg(long)]
    pub segment_frames: Option<u32>,
    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_layers(spec: &str) -> Result<Vec<(String, f64)>, ParamError> {
    spec.split(',')
        .map(|item| {
            let (name, w) = item.split_once('=').unwrap_or((item, "1"));
            let w: f64 = w
                .trim()
                .parse()
                .map_err(|_| ParamError::new("--layers", format!("weight of {name} is not a number: {w:?}")))?;
            Ok((name.trim().to_string(), w))
        })
        .collect()
}

pub fn params(args: &Args) -> Result<RenderParams, ParamError> {
    let (width, height) = parse_size(&args.size)?;
    let fps: Fps = args.fps.parse()?;
    let frames = match (args.frames, args.seconds) {
        (Some(n), _) => n,
        (None, Some(s)) if s.is_finite() && s > 0.0 => (s * fps.as_f64()).round() as u32,
        (None, Some(s)) => return Err(ParamError::new("--seconds", format!("must be above 0, got {s}"))),
        (None, None) => (4.0 * fps.as_f64()).round() as u32,
    };
    let p = RenderParams {
        width,
        height,
        frames,
        fps,
        zoom: args.zoom,
        iters: args.iters,
        warmup: args.warmup,
        seed: args.seed,
        optimizer: args.optimizer.parse::<OptimizerKind>()?,
        learning_rate: args.lr,
        style_scale: args.style_scale,
        network: args.network.parse::<Network>()?,
        layers: args.layers.as_deref().map(parse_layers).transpose()?.unwrap_or_default(),
    };
    p.validate()?;
    Ok(p)
}

pub fn run(args: Args, bar: &Bar) -> Result<()> {
    let params = params(&args)?;
    let style = match &args.style {
        Some(path) => Style::open(path)?,
        None => Style::embedded(),
    };
    let device = worker::device::parse(&args.device)?;
    let net = worker::weights::resolve(params.network, args.weights.as_deref(), device)?;
    if matches!(net.origin, WeightsOrigin::Random(_)) {
        tracing::warn!(
            "no pretrained {} weights found: rendering with deterministic random features; run `gramzoom weights download {}` or pass --weights for the pretrained look",
            params.network.name(),
            params.network.name()
        );
    }
    let engine = Engine::new(params.clone(), style, net, device)?;
    // Ctrl-C or SIGTERM: stop at the next iteration and remove the unfinished output; a second
    // one exits at once.
    let cancel = engine.cancel_flag();
    ctrlc::set_handler(move || {
        if cancel.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the interrupt handler")?;

    let outputs = Outputs {
        output: args.output.clone(),
        frames_dir: args.frames_dir.clone(),
        segment_frames: args.segment_frames,
    };
    tracing::info!(
        size = %format!("{}x{}", params.width, params.height),
        frames = params.frames,
        fps = params.fps.as_f64(),
        zoom_per_frame = params.zoom_per_frame(),
        device = ?device,
        optimizer = params.optimizer.name(),
        "rendering"
    );

    let mut warm = None;
    let mut frames_bar = None;
    let (mut iters, mut phase_start) = (0u64, Instant::now());
    let mut on_progress = |p: worker::Progress| {
        iters += u64::from(p.iteration);

        let rate = iters as f64 / phase_start.elapsed().as_secs_f64().max(1e-9);
        if p.warmup_total > 0 {
            let pb = warm.get_or_insert_with(|| bar.start(p.warmup_total as u64, "warm-up", args.quiet));
            pb.set_position(p.warmup_done as u64);
            pb.set_message(format!("iters, {rate:.2} it/s, loss {:.3e}", p.loss));
        } else {
            let pb = frames_bar.get_or_insert_with(|| {
                if let Some(w) = warm.take() {
                    w.finish_and_clear();
                }
                iters = 1;
                phase_start = Instant::now();
                bar.start(p.frames_total as u64, "frames", args.quiet)
            });
            pb.set_position(p.frames_done as u64);
            pb.set_message(format!("{rate:.2} it/s, loss {:.3e}", p.loss));
        }
    };
    let summary = render(&engine, &outputs, &mut on_progress)
        .with_context(|| format!("render to {} failed", args.output.display()))?;
    bar.clear();
    let secs = summary.wall.as_secs_f64();
    let frame_secs = (secs - summary.warmup.as_secs_f64()) / summary.frames.max(1) as f64;
    tracing::info!(frames = summary.frames, wall_s = secs, warmup_s = summary.warmup.as_secs_f64(), s_per_frame = frame_secs, state_bytes = ?summary.state_bytes, output = %args.output.display(), "done");
    if !args.quiet {
        eprintln!(
            "rendered {} frames ({}x{}) in {:.1} s (warm-up {:.1} s, {:.2} s per frame) -> {}",
            summary.frames,
            params.width,
            params.height,
            secs,
            summary.warmup.as_secs_f64(),
            frame_secs,
            args.output.display()
        );
    }
    Ok(())
}
