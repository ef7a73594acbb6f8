//! `gramzoom bench --concurrent N`: how renders share this machine. Times one `gramzoom render`
//! process alone, then N of the same movie at once, each case `--repeats` times, and prints the
//! medians: N renders that share the CPUs well take about N times one alone divided by what
//! the extra cores give, never many times that (see `engine::share`).

use super::bench::Args;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

pub fn run(args: &Args, n: usize) -> Result<()> {
    let exe = std::env::current_exe().context("finding the gramzoom executable")?;
    let sizes = args.sizes.as_deref().unwrap_or("96x64");
    let frames = args.frames.unwrap_or(24).max(1);
    let dir = tempfile::tempdir().context("making a folder for the renders' outputs")?;
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "{n} renders at once against one alone: {frames} frames, {} iters, warm-up {}, {}, style {}, \
         {cpus} CPUs available, median of {}",
        args.iters,
        args.warmup.map_or("the render's".into(), |w| format!("{w} iters")),
        args.loss,
        args.style.as_deref().map_or("embedded".into(), |s| s.display().to_string()),
        args.repeats
    );
    println!("{:>10} {:>9} {:>12} {:>7} {:>14}", "size", "alone s", format!("{n} at once s"), "ratio", "s per render");
    for size in sizes.split(',').map(str::trim) {
        engine::params::parse_size(size).with_context(|| format!("--sizes: {size:?}"))?;
        let mut alone = Vec::new();
        let mut together = Vec::new();
        for _ in 0..args.repeats {
            alone.push(wall(&exe, args, size, frames, 1, dir.path())?);
            together.push(wall(&exe, args, size, frames, n, dir.path())?);
        }
        let (alone, together) = (median(&mut alone), median(&mut together));
        println!("{size:>10} {alone:>9.1} {together:>12.1} {:>6.2}x {:>14.1}", together / alone, together / n as f64);
    }
    Ok(())
}

/// Seconds from starting `n` renders to the last one's exit.
fn wall(exe: &Path, args: &Args, size: &str, frames: u32, n: usize, dir: &Path) -> Result<f64> {
    let t = Instant::now();
    let children: Vec<(Child, std::path::PathBuf)> =
        (0..n).map(|i| spawn(exe, args, size, frames, i, dir)).collect::<Result<_>>()?;
    for (child, log) in children {
        let status = child.wait_with_output().context("waiting for a render")?.status;
        if !status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!("a render failed ({status}): {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

fn spawn(
    exe: &Path,
    args: &Args,
    size: &str,
    frames: u32,
    i: usize,
    dir: &Path,
) -> Result<(Child, std::path::PathBuf)> {
    let log = dir.join(format!("render-{i}.log"));
    let mut cmd = Command::new(exe);
    cmd.arg("render");
    if let Some(style) = &args.style {
        cmd.arg(style);
    }
    let frames = frames.to_string();
    let iters = args.iters.to_string();
    cmd.args(["--size", size, "--frames", &frames, "--fps", "12", "--seed", "1", "--iters", &iters])
        .args(["--loss", &args.loss, "--network", &args.network, "--optimizer", &args.optimizer])
        .args(["--precision", &args.precision, "--device", &args.torch.device])
        .arg("-o")
        .arg(dir.join(format!("movie-{i}.mp4")));
    cmd.args(["--blocks", &args.torch.blocks.to_string()]);
    if let Some(w) = args.warmup {
        cmd.args(["--warmup", &w.to_string()]);
    }
    if let Some(t) = args.torch.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if let Some(w) = &args.weights {
        cmd.arg("--weights").arg(w);
    }
    if args.torch.offline {
        cmd.arg("--offline");
    }
    let out = std::fs::File::create(&log).context("creating a render's log")?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    Ok((cmd.spawn().context("starting a render")?, log))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
