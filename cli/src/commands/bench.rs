//! `gramzoom bench`: seconds per optimiser iteration and per frame, measured on the real engine
//! (zoom, optimisation, frame read-back; no encoding).

use anyhow::Result;
use clap::Args as ClapArgs;
use engine::params::{parse_size, OptimizerKind, Precision, RenderParams};
use engine::style::Style;
use engine::vgg::{RandomDesign, Vgg, WeightsOrigin};
use engine::Engine;
use std::time::Instant;

#[derive(ClapArgs)]
pub struct Args {
    /// Comma-separated sizes (default: 256x256,512x512 on CPU, plus 1920x1080 on CUDA).
    #[arg(long)]
    pub sizes: Option<String>,
    /// Frames timed per size, after one untimed frame (default 3); with --concurrent, the
    /// movie's frames (default 24); with --compare-features, a quarter of each movie's frames
    /// (at least 8, so movies of 32 frames or more).
    #[arg(long)]
    pub frames: Option<u32>,
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
    /// gram or swd, as for `render` (a list such as gram,swd for --compare-features).
    #[arg(long, default_value = "gram")]
    pub loss: String,
    /// fp32, tf32, bf16, or auto (bf16 on CUDA, fp32 on the CPU), as for `render`; a list such
    /// as fp32,tf32,bf16 times each.
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Instead of timing: render with each random-feature design (and each --loss, which may
    /// be a list here) and score how close colours, the scale of detail, colour speckle and
    /// centre lines come to each style (lower is better).
    #[arg(long)]
    pub compare_features: bool,
    /// The designs --compare-features renders (default: all), e.g. vgg16-he,multiscale; when
    /// timing random features, the designs to time one after another, e.g. he,he-colour.
    #[arg(long)]
    pub designs: Option<String>,
    /// Style layers and weights for --compare-features, as for `render` (default: all, equal);
    /// designs without these layers are skipped.
    #[arg(long)]
    pub layers: Option<String>,
    /// Style images for --compare-features.
    #[arg(long, default_value = "examples/wheatfield.jpg,examples/immunohistochemistry.png")]
    pub styles: String,
    /// Write the last frame of each --compare-features render here, to look at.
    #[arg(long)]
    pub stills: Option<std::path::PathBuf>,
    /// Instead of timing: render a short movie per style, network and loss and write a contact
    /// sheet of their first, middle and last frames, with their scores, into this folder
    /// (scripts/gallery.sh makes docs/gallery with it).
    #[arg(long)]
    pub gallery: Option<std::path::PathBuf>,
    /// Instead of timing the engine: measure the coordinator (1080p hand-off state transfer,
    /// dispatch latency, stitching 100 chunks).
    #[arg(long)]
    pub cluster: bool,
    /// Instead of timing the engine: load a coordinator (`gramzoom serve`, its own process)
    /// with N simulated workers over gRPC, thousands of queued jobs and live dashboard viewers,
    /// and print call latencies, throughput, leases lost, and its CPU and memory.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20_000),
          conflicts_with_all = ["compare_features", "gallery", "cluster", "concurrent"])]
    pub farm: Option<u32>,
    /// Jobs queued before --farm's workers start.
    #[arg(long, default_value_t = 10_000, requires = "farm", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub farm_jobs: u32,
    /// Seconds --farm's workers run.
    #[arg(long, default_value_t = 60, requires = "farm", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub farm_secs: u64,
    /// Dashboard viewers with a live jobs page open during --farm.
    #[arg(long, default_value_t = 50, requires = "farm", value_parser = clap::value_parser!(u32).range(0..=256))]
    pub farm_viewers: u32,
    /// Seconds a --farm worker "renders" each segment (heartbeating) before it completes it.
    #[arg(long, default_value_t = 10.0, requires = "farm")]
    pub farm_render_secs: f64,
    /// How much --farm's render times vary: each segment takes --farm-render-secs times a
    /// factor drawn evenly from 1 +- this. 0 keeps every worker in step, all finishing their
    /// segments within the second they started in (the worst case for the coordinator).
    #[arg(long, default_value_t = 0.25, requires = "farm")]
    pub farm_render_spread: f64,
    /// Instead of timing the engine: run N `gramzoom render` processes of the same movie at
    /// once (each --sizes, default 96x64; --frames, default 24), and one alone, and print the
    /// wall times, to check how renders share this machine.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=64),
          conflicts_with_all = ["compare_features", "gallery", "cluster"])]
    pub concurrent: Option<u16>,
    /// The style image of --concurrent's renders (default: the embedded one).
    #[arg(long, requires = "concurrent")]
    pub style: Option<std::path::PathBuf>,
    /// How many times --concurrent times each case; the median is shown.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100), requires = "concurrent")]
    pub repeats: u16,
    /// Warm-up iterations of each --concurrent render (default: the render's own); a small one
    /// times the movie's frames rather than the warm-up.
    #[arg(long, requires = "concurrent")]
    pub warmup: Option<u32>,
}

pub fn run(args: Args, bar: &crate::progress::Bar) -> Result<()> {
    if let Some(n) = args.concurrent {
        return super::bench_concurrent::run(&args, usize::from(n));
    }
    let device = args.torch.device()?;
    // The benchmark runs its tensors on this thread.
    engine::device::set_threads(args.torch.threads());
    if args.compare_features {
        return super::compare::compare_features(&args, device);
    }
    if let Some(dir) = &args.gallery {
        return super::compare::gallery(&args, dir, device);
    }
    if let Some(workers) = args.farm {
        if !(args.farm_render_secs.is_finite() && (0.0..=3600.0).contains(&args.farm_render_secs)) {
            anyhow::bail!("--farm-render-secs must be 0 to 3600, got {}", args.farm_render_secs);
        }
        if !(args.farm_render_spread.is_finite() && (0.0..=1.0).contains(&args.farm_render_spread)) {
            anyhow::bail!("--farm-render-spread must be 0 to 1, got {}", args.farm_render_spread);
        }
        let farm = super::bench_farm::Farm {
            workers,
            jobs: args.farm_jobs,
            seconds: args.farm_secs,
            viewers: args.farm_viewers,
            render_secs: args.farm_render_secs,
            render_spread: args.farm_render_spread,
        };
        return super::bench_farm::run(farm);
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
    let weights_file = match &args.weights {
        Some(path) => Some(path.clone()),
        None => super::weights::first_use(network, args.torch.offline, bar)?,
    };
    let net = engine::weights::resolve(network, weights_file.as_deref(), device)?;
    let weights =
        if matches!(net.origin, engine::vgg::WeightsOrigin::Random(_)) { "random features" } else { "pretrained" };
    let precisions = args
        .precision
        .split(',')
        .map(|p| match p.trim() {
            "auto" if device.is_cuda() => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Fp32),
            other => Precision::from_wire(other),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let loss = engine::params::LossKind::from_wire(&args.loss)?;
    let peak = peak_tflops(device);
    println!(
        "device {device:?}, {} CPU threads, {} ({weights}), {} loss, {}, {} iters per frame",
        tch::get_num_threads(),
        args.network,
        args.loss,
        args.optimizer,
        args.iters
    );
    match &peak {
        Some((name, tflops)) => println!("peak assumed: {name}, {tflops} TFLOP/s dense bf16"),
        None => println!("peak: unknown for this device (TFLOP/s shown without a share)"),
    }
    println!(
        "{:>9} {:>10} {:>9} {:>9} {:>11} {:>9} {:>7} {:>9} {:>16}",
        "precision",
        "size",
        "ms/iter",
        "s/frame",
        "frames/min",
        "TFLOP/s",
        "of peak",
        if device.is_cuda() { "GPU MiB" } else { "peak RSS MiB" },
        "blocks"
    );

    // Random features: --designs times each named design (he, he-colour, ...) against another.
    let designs: Vec<Option<RandomDesign>> = match (&args.designs, &net.origin) {
        (Some(list), WeightsOrigin::Random(_)) => list
            .split(',')
            .map(|name| {
                let name = name.trim();
                let bare = name.strip_prefix(&format!("{}-", network.name())).unwrap_or(name);
                RandomDesign::ALL.into_iter().find(|d| d.name() == bare).map(Some).ok_or_else(|| {
                    let known: Vec<&str> = RandomDesign::ALL.iter().map(|d| d.name()).collect();
                    anyhow::anyhow!("--designs: no design {name:?}; there are {}", known.join(","))
                })
            })
            .collect::<Result<_>>()?,
        _ => vec![None],
    };
    let mut net = Some(net);
    let sizes: Vec<&str> = sizes.split(',').collect();
    let frames = args.frames.unwrap_or(3).max(1);
    let mut runs = Vec::new();
    for &d in &designs {
        for &p in &precisions {
            runs.extend(sizes.iter().map(|&s| (d, p, s)));
        }
    }
    for (design, precision, size) in runs {
        let (width, height) = parse_size(size.trim())?;
        let params = RenderParams {
            width,
            height,
            frames: frames + 1,
            iters: args.iters.into(),
            warmup: 0,
            optimizer: args.optimizer.parse::<OptimizerKind>()?,
            network,
            precision,
            loss,
            ..RenderParams::default()
        };
        let flop = flop_per_iteration(&params);
        let net_here = match (design, net.take()) {
            (Some(d), _) => Vgg::random_with(network, d, device),
            (None, Some(n)) => n,
            (None, None) => engine::weights::resolve(network, weights_file.as_deref(), device)?,
        };
        let engine = Engine::with_blocks(params, Style::embedded(), net_here, device, args.torch.blocks)?
            .spread_over(&args.torch.devices()?)?;
        // The blocks used and how many a frame takes, "whole" for the frame at once.
        let blocks = engine.blocks().map_or_else(
            || "whole".to_string(),
            |l| format!("{}x{} x{}", l.tile.0, l.tile.1, l.count(width as i64, height as i64)),
        );
        let blocks = match engine.device_count() {
            1 => blocks,
            n => format!("{blocks} on {n}"),
        };
        let mut state = engine.initial_state(&mut |_| {})?;
        engine.render(&mut state, 1, &mut |_| Ok(()), &mut |_| {})?;
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        // The device is waited for once per frame (the frame's read-back), not per iteration, so
        // an iteration's time is a frame's (zoom and read-back included) over its iterations:
        // gaps between iteration reports would time the host queueing work, not the device.
        let t = Instant::now();
        engine.render(&mut state, frames + 1, &mut |_| Ok(()), &mut |_| {})?;
        let per_frame = t.elapsed().as_secs_f64() / f64::from(frames);
        let per_iter = per_frame / f64::from(args.iters);
        let tflops = flop / per_iter / 1e12;
        let share = peak.as_ref().map_or_else(|| "-".to_string(), |(_, p)| format!("{:.1}%", tflops / p * 100.0));
        let memory = memory_mib(device).map_or_else(|| "-".to_string(), |m| m.to_string());
        if let Some(d) = design {
            print!("{:>18} ", d.name());
        }
        println!(
            "{:>9} {:>10} {:>9.1} {:>9.3} {:>11.1} {:>9.2} {:>7} {:>9} {:>16}",
            precision.name(),
            size.trim(),
            per_iter * 1000.0,
            per_frame,
            60.0 / per_frame,
            tflops,
            share,
            memory,
            blocks
        );
    }
    schedule_cost(&sizes[0..1], device)?;
    Ok(())
}

/// What directing a movie costs a frame: evaluating its schedules (README's ten-minute example:
/// formulas and eased keys for zoom, centre, angle and iterations), and the camera move with and
/// without a turn (a turn samples a 6x6 window instead of 6 + 6 taps).
fn schedule_cost(sizes: &[&str], device: tch::Device) -> Result<()> {
    use proto::schedule::{Schedule, ANGLE, CENTRE, ITERS, ZOOM};
    let mut params = RenderParams {
        frames: 18_000,
        zoom: Schedule::parse(
            &ZOOM,
            "0:(1.3) ease-in-out, 120s:(2.5) ease-in-out, 240s:(1.3) cubic, 420s:(2.2) cubic, 600s:(1.5)",
        )?,
        centre: Schedule::parse(&CENTRE, "0.5+0.15*sin(TAU*s/97), 0.5+0.1*cos(TAU*s/131)")?,
        angle: Schedule::parse(&ANGLE, "0:(4) ease-in-out, 300s:(-4)")?,
        iters: Schedule::parse(&ITERS, "0:(4) ease-in-out, 120s:(6) ease-in-out, 240s:(4)")?,
        ..RenderParams::default()
    };
    let t = Instant::now();
    let motion = params.motion()?;
    for i in 0..params.frames {
        std::hint::black_box((motion.camera(i)?, motion.iters(i)?));
    }
    let per_frame = t.elapsed().as_secs_f64() / f64::from(params.frames);
    println!("schedules: {:.1} µs a frame ({} frames of formulas and eased keys)", per_frame * 1e6, params.frames);
    let (width, height) = parse_size(sizes[0].trim())?;
    (params.width, params.height) = (width, height);
    let image = tch::Tensor::rand([1, 3, i64::from(height), i64::from(width)], (tch::Kind::Float, device));
    for (what, turn) in [("zoom", 0.0), ("zoom and turn", 0.002)] {
        let camera = engine::params::Camera { factor: 1.02, centre: (0.45, 0.55), turn };
        let t = Instant::now();
        let runs = 5;
        for _ in 0..runs {
            let zoom =
                engine::zoom::Zoom::new(width as usize, height as usize, &camera, (0.1, 0.2), (-0.3, 0.1), device);
            // The image and Adam's two moments, as a frame moves them.
            for _ in 0..3 {
                let _ = zoom.apply(&image).sum(tch::Kind::Float).double_value(&[]);
            }
        }
        println!(
            "camera move, {what}: {:.1} ms a frame at {}",
            t.elapsed().as_secs_f64() * 1e3 / runs as f64,
            sizes[0].trim()
        );
    }
    blend_cost(&params, &image, device);
    Ok(())
}

/// What a frame of a moving style blend adds: mixing two styles' targets at every layer, their
/// colour spaces and the preconditioner, and carrying the frame's colours along (the image's
/// and nothing else's), as `engine` does each frame the weights move.
fn blend_cost(params: &RenderParams, image: &tch::Tensor, device: tch::Device) {
    use engine::colour::{transport, ColourSpace};
    use engine::loss::StyleTarget;
    let net = Vgg::random(params.network, device);
    let wheat = Style::embedded().tensor((params.width, params.height), device);
    let grey = wheat.mean_dim(1, true, tch::Kind::Float).expand([1, 3, -1, -1], false).contiguous();
    let layers = params.loss_layers();
    let (a, b) = (
        StyleTarget::new(&net, &wheat, &layers, params.loss, 0),
        StyleTarget::new(&net, &grey, &layers, params.loss, 0),
    );
    let (ca, cb) = (ColourSpace::of_style(&wheat), ColourSpace::of_style(&grey));
    let runs = 20;
    let t = Instant::now();
    for k in 0..runs {
        let w = f64::from(k) / f64::from(runs);
        let mixed = StyleTarget::mix(&[(&a, 1.0 - w), (&b, w)]);
        let before = ColourSpace::mixture(&[(&ca, 1.0 - w), (&cb, w)]);
        let after = ColourSpace::mixture(&[(&ca, 0.95 - w), (&cb, w + 0.05)]);
        let _precond = after.preconditioner(tch::Kind::Float, device);
        let moved = transport(&before, &after, image);
        std::hint::black_box((mixed, moved.sum(tch::Kind::Float).double_value(&[])));
    }
    println!(
        "style blend on the move: {:.2} ms a frame at {}x{} (targets of every layer mixed, colours carried)",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(runs),
        params.width,
        params.height
    );
}

/// Memory this process holds: on a GPU what nvidia-smi reports for it (libtorch's caching
/// allocator keeps what it once needed, so this is the peak so far, plus the CUDA context); on
/// the CPU the resident-set peak (VmHWM).
fn memory_mib(device: tch::Device) -> Option<u64> {
    if let tch::Device::Cuda(i) = device {
        let out = std::process::Command::new("nvidia-smi")
            .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits", &format!("--id={i}")])
            .output()
            .ok()?;
        let me = std::process::id().to_string();
        return String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (pid, mib) = l.split_once(',')?;
            (pid.trim() == me).then(|| mib.trim().parse().ok()).flatten()
        });
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

/// Floating-point operations of one optimiser iteration: the conv layers up to the deepest one
/// the loss uses, forward and the backward to their input (the weights are fixed: no weight
/// gradients), and the Gram matrices, forward and backward. 2.9 TFLOP for VGG16 at 1920x1080.
/// The sliced Wasserstein loss is counted the same: its projections cost less than the Gram
/// products, and its sorts, which are most of its cost on a CPU, are not floating-point work.
fn flop_per_iteration(p: &RenderParams) -> f64 {
    let layers = p.network.layers();
    let deepest = p.loss_layers().iter().map(|(i, _)| *i).max().unwrap_or(0);
    let used: std::collections::HashSet<usize> = p.loss_layers().iter().map(|(i, _)| *i).collect();
    let (mut hw, mut conv, mut gram) = (f64::from(p.width) * f64::from(p.height), 0.0, 0.0);
    for (i, l) in layers.iter().enumerate().take(deepest + 1) {
        if l.pool_before {
            hw /= 4.0;
        }
        // Side-by-side layers (multi-scale) read the image at their own level, and only when used.
        let at = match l.image_level {
            Some(_) if !used.contains(&i) => continue,
            Some(level) => f64::from(p.width) * f64::from(p.height) / 4f64.powi(level as i32),
            None => hw,
        };
        conv += 2.0 * (l.kernel * l.kernel) as f64 * l.cin as f64 * l.cout as f64 * at;
        if used.contains(&i) {
            gram += 2.0 * (l.cout as f64).powi(2) * at;
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
