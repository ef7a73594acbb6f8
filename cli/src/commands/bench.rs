//! `gramzoom bench`: seconds per optimiser iteration and per frame, measured on the real engine
//! (zoom, optimisation, frame read-back; no encoding).

use anyhow::Result;
use clap::Args as ClapArgs;
use engine::params::{parse_size, OptimizerKind, Precision, RenderParams};
use engine::style::Style;
use engine::Engine;
use std::time::Instant;

#[derive(ClapArgs)]
pub struct Args {
    /// Comma-separated sizes (default: 256x256,512x512 on CPU, plus 1920x1080 on CUDA).
    #[arg(long)]
    pub sizes: Option<String>,
    /// Frames timed per size (after one untimed frame).
    #[arg(long, default_value_t = 3)]
    pub frames: u32,
    /// Optimiser iterations per frame.
    #[arg(long, default_value_t = 5)]
    pub iters: u32,
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    #[command(flatten)]
    pub torch: super::TorchFlags,
    #[arg(long, default_value = "vgg16")]
    pub network: String,
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// fp32, bf16, or auto (bf16 on CUDA, fp32 on the CPU), as for `render`.
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Instead of timing: render with each random-feature design and score how close colours
    /// and the scale of detail come to each style (lower is better).
    #[arg(long)]
    pub compare_features: bool,
    /// Style images for --compare-features.
    #[arg(long, default_value = "examples/wheatfield.jpg,examples/immunohistochemistry.png")]
    pub styles: String,
    /// Write the last frame of each --compare-features render here, to look at.
    #[arg(long)]
    pub stills: Option<std::path::PathBuf>,
    /// Instead of timing the engine: measure the coordinator (1080p hand-off state transfer,
    /// dispatch latency, stitching 100 chunks).
    #[arg(long)]
    pub cluster: bool,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.torch.device()?;
    // The benchmark runs its tensors on this thread.
    engine::device::set_threads(args.torch.threads());
    if args.compare_features {
        return compare_features(&args, device);
    }
    if args.cluster {
        return super::bench_cluster::run();
    }
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if device.is_cuda() {
            "256x256,512x512,1920x1080".into()
        } else {
            "256x256,512x512".into()
        }
    });
    let network = args.network.parse()?;
    let net = engine::weights::resolve(network, args.weights.as_deref(), device)?;
    let weights =
        if matches!(net.origin, engine::vgg::WeightsOrigin::Random(_)) { "random features" } else { "pretrained" };
    let precision = match args.precision.as_str() {
        "auto" if device.is_cuda() => Precision::Bf16,
        "auto" => Precision::Fp32,
        other => Precision::from_wire(other)?,
    };
    let peak = peak_tflops(device);
    println!(
        "device {device:?}, {} CPU threads, {} ({weights}), {}, {}, {} iters per frame",
        tch::get_num_threads(),
        args.network,
        args.optimizer,
        precision.name(),
        args.iters
    );
    match &peak {
        Some((name, tflops)) => println!("peak assumed: {name}, {tflops} TFLOP/s dense bf16"),
        None => println!("peak: unknown for this device (TFLOP/s shown without a share)"),
    }
    println!("{:>10} {:>9} {:>9} {:>11} {:>9} {:>7}", "size", "ms/iter", "s/frame", "frames/min", "TFLOP/s", "of peak");

    let mut net = Some(net);
    for size in sizes.split(',') {
        let (width, height) = parse_size(size.trim())?;
        let params = RenderParams {
            width,
            height,
            frames: args.frames + 1,
            iters: args.iters,
            warmup: 0,
            optimizer: args.optimizer.parse::<OptimizerKind>()?,
            network,
            precision,
            ..RenderParams::default()
        };
        let flop = flop_per_iteration(&params);
        let net_here = match net.take() {
            Some(n) => n,
            None => engine::weights::resolve(network, args.weights.as_deref(), device)?,
        };
        let engine = Engine::new(params, Style::embedded(), net_here, device)?;
        let mut state = engine.initial_state(&mut |_| {})?;
        engine.render(&mut state, 1, &mut |_| Ok(()), &mut |_| {})?;
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        // The device is waited for once per frame (the frame's read-back), not per iteration, so
        // an iteration's time is a frame's (zoom and read-back included) over its iterations:
        // gaps between iteration reports would time the host queueing work, not the device.
        let t = Instant::now();
        engine.render(&mut state, args.frames + 1, &mut |_| Ok(()), &mut |_| {})?;
        let per_frame = t.elapsed().as_secs_f64() / args.frames as f64;
        let per_iter = per_frame / f64::from(args.iters);
        let tflops = flop / per_iter / 1e12;
        let share = peak.as_ref().map_or_else(|| "-".to_string(), |(_, p)| format!("{:.1}%", tflops / p * 100.0));
        println!(
            "{:>10} {:>9.1} {:>9.3} {:>11.1} {:>9.2} {:>7}",
            size.trim(),
            per_iter * 1000.0,
            per_frame,
            60.0 / per_frame,
            tflops,
            share
        );
    }
    Ok(())
}

/// Scores each random-feature design: colour error (mean and spread per channel, 8-bit levels),
/// the detail-scale distance of `quality::detail_distance`, and the centre-line ratio.
fn compare_features(args: &Args, device: tch::Device) -> Result<()> {
    use engine::quality;
    use engine::vgg::{RandomDesign, Vgg};
    let (width, height) = parse_size(args.sizes.as_deref().unwrap_or("128x128"))?;
    let frames = args.frames.max(8) * 4;
    println!("random-feature designs, {width}x{height}, {frames} frames of {} iters, warm-up 150", args.iters);
    println!(
        "{:>18} {:>26} {:>9} {:>8} {:>7} {:>8} {:>6}",
        "design", "style", "mean err", "std err", "detail", "speckle", "lines"
    );
    for design in RandomDesign::ALL {
        let mut total = 0.0;
        for path in args.styles.split(',') {
            let style = Style::open(std::path::Path::new(path))?;
            let params = RenderParams {
                width,
                height,
                frames,
                iters: args.iters,
                warmup: 150,
                optimizer: args.optimizer.parse::<OptimizerKind>()?,
                ..RenderParams::default()
            };
            let reference = style.tensor(style.scaled_size(width.min(height), params.style_scale)?, tch::Device::Cpu);
            let engine =
                Engine::new(params, style, Vgg::random_with(engine::vgg::Network::Vgg16, design, device), device)?;
            let mut state = engine.initial_state(&mut |_| {})?;
            let mut out = Vec::new();
            let mut keep = |f| {
                out.push(f);
                Ok(())
            };
            engine.render(&mut state, frames, &mut keep, &mut |_| {})?;

            let last = out.last().expect("frames rendered").to_tensor();
            let ((m1, s1), (m2, s2)) = (quality::colour_stats(&last), quality::colour_stats(&reference));
            let mean_err = (0..3).map(|c| (m1[c] - m2[c]).abs()).sum::<f64>() / 3.0;
            let std_err = (0..3).map(|c| (s1[c] - s2[c]).abs()).sum::<f64>() / 3.0;
            let detail = quality::detail_distance(&last, &reference);
            let (r, c) = quality::centre_line_ratio(&out[out.len() / 2..]);
            // Colour speckle: log2 of the chroma-gradient ratio to the style's (0 = same).
            let speckle = (quality::chroma_gradient(&last) / quality::chroma_gradient(&reference).max(1e-9)).log2();
            total += detail + speckle.abs();
            println!(
                "{:>18} {:>26} {:>9.1} {:>8.1} {:>7.3} {:>8.3} {:>6.2}",
                design.name(),
                path.rsplit('/').next().unwrap_or(path),
                mean_err,
                std_err,
                detail,
                speckle,
                r.max(c)
            );

            if let Some(dir) = &args.stills {
                std::fs::create_dir_all(dir)?;
                let name = std::path::Path::new(path)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.last()
                    .expect("frames rendered")
                    .to_image()
                    .save(dir.join(format!("{}-{name}.png", design.name())))?;
            }
        }
        println!(
            "{:>18} {:>26} {:>40.3}",
            design.name(),
            "mean |detail|+|speckle|",
            total / args.styles.split(',').count() as f64
        );
    }
    Ok(())
}

/// Floating-point operations of one optimiser iteration: the conv layers up to the deepest one
/// the loss uses, forward and the backward to their input (the weights are fixed: no weight
/// gradients), and the Gram matrices, forward and backward. 2.9 TFLOP for VGG16 at 1920x1080.
fn flop_per_iteration(p: &RenderParams) -> f64 {
    let layers = p.network.layers();
    let deepest = p.loss_layers().iter().map(|(i, _)| *i).max().unwrap_or(0);
    let used: std::collections::HashSet<usize> = p.loss_layers().iter().map(|(i, _)| *i).collect();
    let (mut hw, mut conv, mut gram) = (f64::from(p.width) * f64::from(p.height), 0.0, 0.0);
    for (i, l) in layers.iter().enumerate().take(deepest + 1) {
        if l.pool_before {
            hw /= 4.0;
        }
        conv += 2.0 * 9.0 * l.cin as f64 * l.cout as f64 * hw;
        if used.contains(&i) {
            gram += 2.0 * (l.cout as f64).powi(2) * hw;
        }
    }
    2.0 * (conv + gram)
}

/// The device's dense bf16 peak, for the share of it a run reaches: known cards by name.
fn peak_tflops(device: tch::Device) -> Option<(String, f64)> {
    let tch::Device::Cuda(i) = device else { return None };
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", &format!("--id={i}")])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, SXM parts.
    let peak = [("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]
        .into_iter()
        .find(|(k, _)| name.contains(k))?
        .1;
    Some((name, peak))
}
