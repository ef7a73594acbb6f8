//! `gramzoom bench`: seconds per optimiser iteration and per frame, measured on the real engine
//! (zoom, optimisation, frame read-back; no encoding).

use anyhow::Result;
use clap::Args as ClapArgs;
use std::time::Instant;
use worker::params::{parse_size, OptimizerKind, RenderParams};
use worker::style::Style;
use worker::Engine;

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
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value = "vgg16")]
    pub network: String,
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let device = worker::device::parse(&args.device)?;
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if device.is_cuda() {
            "256x256,512x512,1920x1080".into()
        } else {
            "256x256,512x512".into()
        }
    });
    let network = args.network.parse()?;
    let net = worker::weights::resolve(network, args.weights.as_deref(), device)?;
    let weights = if net.origin == worker::vgg::WeightsOrigin::Random { "random features" } else { "pretrained" };
    println!(
        "device {device:?}, {} CPU threads, {} ({weights}), {}, {} iters per frame",
        tch::get_num_threads(),
        args.network,
        args.optimizer,
        args.iters
    );
    println!("{:>10} {:>9} {:>9} {:>11}", "size", "s/iter", "s/frame", "frames/min");
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
            ..RenderParams::default()
        };
        let net_here = match net.take() {
            Some(n) => n,
            None => worker::weights::resolve(network, args.weights.as_deref(), device)?,
        };
        let engine = Engine::new(params, Style::embedded(), net_here, device)?;
        let mut state = engine.initial_state(&mut |_| {})?;
        engine.render(&mut state, 1, &mut |_| Ok(()), &mut |_| {})?;
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let t = Instant::now();
        engine.render(&mut state, args.frames + 1, &mut |_| Ok(()), &mut |_| {})?;
        let per_frame = t.elapsed().as_secs_f64() / args.frames as f64;
        // Frames are read back to the host, so the timing includes all device work.
        println!(
            "{:>10} {:>9.4} {:>9.3} {:>11.1}",
            size.trim(),
            per_frame / args.iters as f64,
            per_frame,
            60.0 / per_frame
        );
    }
    Ok(())
}
