//! `gramzoom plan`: a movie's schedules resolved second by second (zoom, centre, angle,
//! iterations, style weights), what it will cost on this machine, and with `--plot` a chart of
//! them.

use super::render::RenderFlags;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engine::params::{style_words, RenderParams};
use engine::Engine;
use std::path::PathBuf;
use std::time::Instant;

/// `println!` into a String (for `emit`).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

#[derive(ClapArgs)]
pub struct Args {
    /// Style image, as for `render` (used to time an iteration).
    pub style: Option<PathBuf>,
    #[command(flatten)]
    pub flags: RenderFlags,
    /// Pretrained weights, as for `render` (never fetched here).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub torch: super::TorchFlags,
    /// Also draw the schedules into this PNG: zoom (log scale), centre x and y, angle and
    /// iterations, one panel each, over the movie's length.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Print the schedule only; do not time an iteration on this machine.
    #[arg(long)]
    pub no_estimate: bool,
}

/// One frame's resolved settings.
struct Row {
    frame: u32,
    zoom: f64,
    centre: (f64, f64),
    angle: f64,
    iters: u32,
    /// Each style's share (`[1.0]` for a movie of one style).
    weights: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let mut out = String::new();
    let device = args.torch.device()?;
    let params = super::render::params(&args.flags, device.is_cuda())?;
    let rows = resolve(&params)?;
    let fps = params.fps.as_f64();
    let seconds = f64::from(params.frames) / fps;
    let iterations: u64 = u64::from(params.warmup) + rows.iter().map(|r| u64::from(r.iters)).sum::<u64>();
    outln!(
        out,
        "{}x{}, {} frames at {} fps ({seconds:.1} s), {} warm-up iterations, {iterations} iterations in all",
        params.width,
        params.height,
        params.frames,
        fps,
        params.warmup
    );
    if let Some(grid) = &params.beats {
        let t = grid.times();
        let shown: Vec<String> = t.iter().take(8).map(|s| format!("{s:.2}")).collect();
        outln!(
            out,
            "tempo: {} beats of the soundtrack ({:.1} beats per minute), at {}{} s",
            t.len(),
            grid.bpm(),
            shown.join(", "),
            if t.len() > 8 { ", ..." } else { "" }
        );
    } else if let Some(bpm) = params.bpm {
        outln!(out, "tempo: {bpm} beats per minute");
    }
    let names = params.blend.as_ref().map(|b| b.names().to_vec());
    let styles_column = if names.is_some() { "  styles" } else { "" };
    outln!(
        out,
        "{:>8} {:>7} {:>9} {:>15} {:>9} {:>6}{styles_column}",
        "second",
        "frame",
        "zoom/s",
        "centre",
        "angle/s",
        "iters"
    );
    let mut next = 0.0;
    for r in &rows {
        let s = f64::from(r.frame) / fps;
        if s + 1e-9 >= next || r.frame + 1 == params.frames {
            let styles = names.as_ref().map_or_else(String::new, |n| format!("  {}", style_words(n, &r.weights)));
            outln!(
                out,
                "{s:>8.2} {:>7} {:>9.4} {:>15} {:>9.2} {:>6}{styles}",
                r.frame,
                r.zoom,
                format!("{:.3},{:.3}", r.centre.0, r.centre.1),
                r.angle,
                r.iters
            );
            next = s.floor() + 1.0;
        }
    }
    emit(&mut out)?;
    if !args.no_estimate {
        let per_iter = time_an_iteration(&args, &params, device)?;
        let total = per_iter * iterations as f64;
        outln!(
            out,
            "estimated render time on this machine ({device:?}): {} ({:.0} ms an iteration at {}x{})",
            human(total),
            per_iter * 1e3,
            params.width,
            params.height
        );
    }
    if let Some(path) = &args.plot {
        let ranges = plot(&rows, names.as_deref().unwrap_or_default(), path)
            .with_context(|| format!("--plot: writing {}", path.display()))?;
        outln!(out, "plot: {}, top to bottom: {}", path.display(), ranges.join("; "));
    }
    emit(&mut out)
}

/// Writes what `out` holds to stdout and empties it; a reader that went away (`plan | head`)
/// is not an error.
fn emit(out: &mut String) -> Result<()> {
    use std::io::Write;
    let result = std::io::stdout().lock().write_all(out.as_bytes());
    out.clear();
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn resolve(params: &RenderParams) -> Result<Vec<Row>> {
    let motion = params.motion()?;
    let fps = params.fps.as_f64();
    (0..params.frames)
        .map(|frame| {
            let camera = motion.camera(frame)?;
            Ok(Row {
                frame,
                zoom: camera.factor.powf(fps),
                centre: camera.centre,
                angle: camera.turn.to_degrees() * fps,
                iters: motion.iters(frame)?,
                weights: motion.weights(frame)?,
            })
        })
        .collect()
}

/// Seconds an optimiser iteration takes at the movie's size on this machine: one frame untimed,
/// then one frame of two iterations.
fn time_an_iteration(args: &Args, params: &RenderParams, device: tch::Device) -> Result<f64> {
    let (styles, _) = crate::styles::read(args.style.as_deref(), &args.flags)?;
    // Explicit weights, else the cached ones, else the built-in network; never a fetch.
    let net = engine::weights::resolve(params.network, args.weights.as_deref(), device)?;
    // The movie's settings but for its motion: three frames cannot hold its schedules.
    let defaults = RenderParams::default();
    let probe = RenderParams {
        frames: 3,
        warmup: 0,
        iters: 2.into(),
        zoom: defaults.zoom,
        centre: defaults.centre,
        angle: defaults.angle,
        ..params.clone()
    };
    let engine = Engine::new(probe, styles, net, device)?;
    let mut state = engine.initial_state(&mut |_| {})?;
    engine.render(&mut state, 2, &mut |_| Ok(()), &mut |_| {})?;
    let t = Instant::now();
    engine.render(&mut state, 3, &mut |_| Ok(()), &mut |_| {})?;
    Ok(t.elapsed().as_secs_f64() / 2.0)
}

fn human(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// A plotted series: its name and how it is read from a row.
type Series = (String, Box<dyn Fn(&Row) -> f64>);

/// One panel per series (zoom, centre x and y, angle, iterations, then each named style's
/// weight), each scaled to its own range (the zoom's in log space), with a grey line at each
/// panel's middle; returns each panel's name and range, for the legend.
fn plot(rows: &[Row], styles: &[String], path: &std::path::Path) -> Result<Vec<String>> {
    let (width, panel, gap) = (800u32, 100u32, 12u32);
    let mut series: Vec<Series> = vec![
        ("zoom".into(), Box::new(|r: &Row| r.zoom.ln())),
        ("centre x".into(), Box::new(|r: &Row| r.centre.0)),
        ("centre y".into(), Box::new(|r: &Row| r.centre.1)),
        ("angle".into(), Box::new(|r: &Row| r.angle)),
        ("iters".into(), Box::new(|r: &Row| f64::from(r.iters))),
    ];
    for (i, name) in styles.iter().enumerate() {
        series.push((format!("style {name}"), Box::new(move |r: &Row| r.weights[i])));
    }
    let height = series.len() as u32 * (panel + gap) + gap;
    let mut img = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let n = rows.len().max(2) as f64 - 1.0;
    let mut legend = Vec::new();
    for (k, (name, f)) in series.iter().enumerate() {
        let top = gap + k as u32 * (panel + gap);
        let values: Vec<f64> = rows.iter().map(f).collect();
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
        let shown = |v: f64| if k == 0 { v.exp() } else { v };
        legend.push(format!("{name} {:.3} to {:.3}", shown(lo), shown(hi)));
        for x in 0..width {
            img.put_pixel(x, top + panel / 2, image::Rgb([220, 220, 220]));
            img.put_pixel(x, top + panel, image::Rgb([160, 160, 160]));
        }
        let y_of = |v: f64| top + panel - 1 - (((v - lo) / span) * f64::from(panel - 1)).round() as u32;
        let mut last: Option<(u32, u32)> = None;
        for (i, &v) in values.iter().enumerate() {
            let x = ((i as f64 / n) * f64::from(width - 1)).round() as u32;
            let y = if hi - lo > 1e-12 { y_of(v) } else { top + panel / 2 };
            // A straight segment from the last point, one pixel per step of its longer side.
            let (x0, y0) = last.unwrap_or((x, y));
            let steps = x.abs_diff(x0).max(y.abs_diff(y0)).max(1);
            for s in 0..=steps {
                let t = f64::from(s) / f64::from(steps);
                let px = (f64::from(x0) + t * (f64::from(x) - f64::from(x0))).round() as u32;
                let py = (f64::from(y0) + t * (f64::from(y) - f64::from(y0))).round() as u32;
                img.put_pixel(px, py, image::Rgb([40, 70, 160]));
            }
            last = Some((x, y));
        }
    }
    img.save(path)?;
    Ok(legend)
}
