//! `gramzoom render`.

use crate::local::{render, Outputs};
use crate::progress::Bar;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engine::device::DeviceThread;
use engine::params::{parse_size, Fps, LossKind, OptimizerKind, Precision, RenderParams, StyleScale};
use engine::vgg::{Network, WeightsOrigin};
use engine::{Engine, ParamError};
use proto::schedule::{self, Schedule};
use std::path::PathBuf;

/// The render parameters, shared by `render` and `submit`.
#[derive(ClapArgs, Debug, Clone)]
pub struct RenderFlags {
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
    /// Magnification per second (below 1 zooms out), or a schedule: keys at frames, seconds
    /// or beats with values and easing, "0:(1.5), 4s:(3) ease-in-out, 8s:(1.5)", or a formula
    /// of t (frame), s (seconds) and b (beats), "1.5+0.5*sin(TAU*s/8)" (README, "Schedules").
    #[arg(long, default_value = "2", allow_hyphen_values = true)]
    pub zoom: String,
    /// The zoom's fixed point X,Y as fractions of the frame (0,0 top left), or a schedule of
    /// pairs: "0:(0.5,0.5), 10s:(0.3,0.6)".
    #[arg(long, visible_alias = "center", default_value = "0.5,0.5", allow_hyphen_values = true)]
    pub centre: String,
    /// Rotation about the centre in degrees per second, anticlockwise (negative: clockwise),
    /// or a schedule.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    pub angle: String,
    /// Optimiser iterations per frame, or a schedule (rounded to whole iterations).
    #[arg(long, default_value = "5")]
    pub iters: String,
    /// A named style of a movie that blends several, NAME=PATH (a bare PATH is named by its
    /// file stem); once per style, in place of the positional STYLE (README, "Styles over time").
    #[arg(long = "style", id = "styles", value_name = "NAME=PATH")]
    pub styles: Vec<String>,
    /// How the named styles mix over the movie, a schedule of weights per style:
    /// "0:(a), 20s:(a), 30s:(b) ease-in-out, 40s:(a:1, b:3)" (default: equal weights).
    #[arg(long, requires = "styles")]
    pub blend: Option<String>,
    /// A soundtrack (any format FFmpeg reads), muxed into the .mp4 (AAC and MP3 as they are,
    /// anything else as AAC), cut or padded with silence to the movie's length.
    #[arg(long, value_name = "FILE")]
    pub audio: Option<PathBuf>,
    /// The second of the soundtrack the movie's first frame plays with (negative: that many
    /// seconds of silence first).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, requires = "audio")]
    pub audio_offset: f64,
    /// Beats per minute: the unit of beat keys (8b) and of b in formulas.
    #[arg(long)]
    pub bpm: Option<f64>,
    /// Follow the soundtrack's beats: beat keys (8b) and b in formulas count the beats aubio's
    /// beat tracker finds in --audio (beat 0 the movie's first), in place of a constant --bpm.
    #[arg(long, requires = "audio", conflicts_with = "bpm")]
    pub beats: bool,
    /// Optimiser iterations of progressive growth before the first frame.
    #[arg(long, default_value_t = 150)]
    pub warmup: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The network's number format: fp32 (strict, no tensor cores), tf32 (fp32 numbers with
    /// TF32 tensor cores for convolutions and matrix products on NVIDIA GPUs; fp32 on a CPU),
    /// bf16 (weights and activations in bfloat16, for GPU tensor cores; the image, optimiser
    /// state and Gram matrices stay fp32), or auto: bf16 on
    /// a CUDA device for `render`, fp32 on the CPU (this machine's CPU has no bf16 instructions
    /// and runs bf16 slower) and for `submit` (its workers' devices are not known; pass bf16
    /// for a GPU farm).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// adam or lbfgs.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Optimiser step size (default: 0.02 for adam, 1 for lbfgs).
    #[arg(long)]
    pub lr: Option<f64>,
    /// How big the style is made before its texture is measured. auto (the default): at the
    /// output's scale when the style is larger (its shorter side made the output's), at its own
    /// pixel size when smaller, since upscaling a style adds blur, never detail. A number X: the
    /// style's shorter side X times the output's, up or down (0.05 to 8); below 1 the texture
    /// comes out finer, above 1 coarser.
    #[arg(long, default_value = "auto", value_parser = parse_style_scale)]
    pub style_scale: StyleScale,
    /// The feature network: vgg16 or vgg19, pretrained when its weights are cached (fetched on
    /// first use unless --offline, or by `gramzoom weights download`) or --weights names a
    /// file; the built-in random-feature network otherwise.
    #[arg(long, default_value = "vgg16")]
    pub network: String,
    /// The style loss: gram (Gram matrices, the original's), or swd (sliced Wasserstein
    /// distance: matches whole feature distributions rather than second moments; colours and
    /// the scale of detail come closer to the style's, but lines through the zoom's centre
    /// are likelier, and it costs 2.6x the time per iteration on a CPU; docs/gallery).
    #[arg(long, default_value = "gram")]
    pub loss: String,
    /// Style layers and weights, e.g. conv1_1=1,conv2_1=1,conv3_1=0.5 (default: all, equal).
    #[arg(long)]
    pub layers: Option<String>,
    /// Render in segments of this many frames, each handing its end state to the next (for
    /// `render`: through the hand-off format, as the cluster does between workers).
    #[arg(long)]
    pub segment_frames: Option<u32>,
}

#[derive(ClapArgs)]
pub struct Args {
    /// Style image (PNG or JPEG); the built-in Van Gogh wheat field when omitted.
    pub style: Option<PathBuf>,
    /// Output: .mp4 (H.264), .gif (looping), .png or .jpg (the last frame).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub flags: RenderFlags,
    /// Pretrained weights (.pth from torchvision or .safetensors); default: the downloaded ones.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub torch: super::TorchFlags,
    /// Also write every frame as a lossless PNG into this directory.
    #[arg(long)]
    pub frames_dir: Option<PathBuf>,
    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,
}

pub(crate) fn parse_layers(spec: &str) -> Result<Vec<(String, f64)>, ParamError> {
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

/// The parameters `args` ask for; `--precision auto` means bf16 when `cuda`.
pub fn params(args: &RenderFlags, cuda: bool) -> Result<RenderParams, ParamError> {
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
        zoom: Schedule::parse(&schedule::ZOOM, &args.zoom)?,
        iters: Schedule::parse(&schedule::ITERS, &args.iters)?,
        centre: Schedule::parse(&schedule::CENTRE, &args.centre)?,
        angle: Schedule::parse(&schedule::ANGLE, &args.angle)?,
        bpm: args.bpm,
        warmup: args.warmup,
        seed: args.seed,
        optimizer: args.optimizer.parse::<OptimizerKind>()?,
        learning_rate: args.lr,
        style_scale: args.style_scale,
        network: args.network.parse::<Network>()?,
        layers: args.layers.as_deref().map(parse_layers).transpose()?.unwrap_or_default(),
        precision: match args.precision.as_str() {
            "auto" if cuda => Precision::Bf16,
            "auto" => Precision::Fp32,
            other => Precision::from_wire(other).map_err(|_| {
                ParamError::new("--precision", format!("expected auto, fp32, tf32 or bf16, got {other:?}"))
            })?,
        },
        // An empty flag is a mistake, not the wire's "unset".
        loss: match args.loss.as_str() {
            "" => return Err(ParamError::new("--loss", "expected gram or swd, got an empty value")),
            other => LossKind::from_wire(other)?,
        },
        blend: crate::styles::blend(args)?,
        beats: None,
    };
    let p = match (&args.audio, args.beats) {
        (_, false) => p,
        (None, true) => return Err(ParamError::new("--beats", "follows the soundtrack's beats: give it with --audio")),
        (Some(audio), true) => {
            let seconds = f64::from(p.frames) / p.fps.as_f64();
            let grid = crate::beats::detect(audio, args.audio_offset, seconds)?;
            RenderParams { beats: Some(std::sync::Arc::new(grid)), ..p }
        }
    };
    p.validate()?;
    Ok(p)
}

pub fn run(args: Args, bar: &Bar) -> Result<()> {
    let device = args.torch.device()?;
    let params = params(&args.flags, device.is_cuda())?;
    // Each file is read once: decoded here (bad input fails before any work), submitted as is.
    let (styles, files) = crate::styles::read(args.style.as_deref(), &args.flags)?;
    let audio = crate::styles::read_audio(&args.flags)?;
    if audio.is_some()
        && !matches!(engine::encode::OutputKind::from_path(&args.output), Ok(engine::encode::OutputKind::Mp4))
    {
        anyhow::bail!("--audio: a soundtrack needs an .mp4 output, got {}", args.output.display());
    }
    let weights = match &args.weights {
        Some(path) => Some(path.clone()),
        None => super::weights::first_use(params.network, args.torch.offline, bar)?,
    };
    // Every libtorch call of this render, from loading weights on, runs on one thread.
    let torch = DeviceThread::spawn(args.torch.threads());
    let p = params.clone();
    let blocks = args.torch.blocks;
    let devices = args.torch.devices()?;
    let engine = torch.run_blocking(move || -> Result<Engine> {
        let net = engine::weights::resolve(p.network, weights.as_deref(), device)?;
        if matches!(net.origin, WeightsOrigin::Random(_)) {
            tracing::warn!(
                "no pretrained {} weights found: rendering with deterministic random features; run `gramzoom weights download {}` or pass --weights for the pretrained look",
                p.network.name(),
                p.network.name()
            );
        }
        Ok(Engine::with_blocks(p, styles, net, device, blocks)?.spread_over(&devices)?)
    })?;
    let outputs = Outputs {
        output: args.output.clone(),
        frames_dir: args.frames_dir.clone(),
        segment_frames: args.flags.segment_frames,
        audio_offset: args.flags.audio_offset,
    };
    // Fail on a bad output before the runtime and coordinator start.
    drop(crate::local::prepare(&engine, &outputs)?);
    // Ctrl-C or SIGTERM: cancel the job (the output is never written); a second one exits.
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    ctrlc::set_handler(move || {
        if cancel_tx.send_replace(true) {
            std::process::exit(130);
        }
    })
    .context("installing the interrupt handler")?;
    tracing::info!(
        size = %format!("{}x{}", params.width, params.height),
        frames = params.frames,
        fps = params.fps.as_f64(),
        zoom = params.zoom.text(),
        device = ?device,
        optimizer = params.optimizer.name(),
        precision = params.precision.name(),
        "rendering"
    );
    let mut follow = crate::progress::Follow::new(bar, args.quiet);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let summary = runtime
        .block_on(render(torch, engine, files, audio, &outputs, cancel_rx, |job| follow.update(job)))
        .with_context(|| format!("render to {} failed", args.output.display()))?;
    bar.clear();
    let secs = summary.wall.as_secs_f64();
    let warmup = follow.warmup_secs();
    let frame_secs = (secs - warmup) / summary.frames.max(1) as f64;
    tracing::info!(frames = summary.frames, wall_s = secs, warmup_s = warmup, s_per_frame = frame_secs, bytes = summary.output_bytes, output = %args.output.display(), "done");
    if !args.quiet {
        eprintln!(
            "rendered {} frames ({}x{}) in {:.1} s (warm-up {:.1} s, {:.2} s per frame) -> {}",
            summary.frames,
            params.width,
            params.height,
            secs,
            warmup,
            frame_secs,
            args.output.display()
        );
    }
    Ok(())
}

fn parse_style_scale(s: &str) -> Result<StyleScale, String> {
    s.parse::<StyleScale>().map_err(|e| e.message)
}
