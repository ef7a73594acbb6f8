//! `gramzoom bench --compare-features` and `--gallery`: the built-in networks and the losses
//! measured against each style by the texture statistics the quality tests use, and shown.

use super::bench::Args;
use anyhow::{bail, Context, Result};
use engine::params::{parse_size, LossKind, OptimizerKind, RenderParams};
use engine::quality;
use engine::style::Style;
use engine::vgg::{Network, RandomDesign, Vgg};
use engine::{Engine, Frame};
use std::fmt::Write as _;
use std::path::Path;

/// How far a movie's last frames are from the style (0 is a perfect match for each).
struct Scores {
    /// Mean absolute difference of the per-channel means, 8-bit levels.
    mean_err: f64,
    /// The same for the per-channel standard deviations.
    std_err: f64,
    /// `quality::detail_distance`: octave-band energies, mean |log2| ratio.
    detail: f64,
    /// log2 of the chroma-gradient ratio to the style's: colour speckle when above 0.
    speckle: f64,
    /// The centre-line ratio over the second half (1.0: no line; the tests allow 1.3).
    lines: f64,
    /// Mean CIELAB chroma minus the style's: a grey style rendered in colour scores high.
    chroma: f64,
}

/// One candidate: a label, the network and its random design, the loss.
type Design = (String, Network, RandomDesign, LossKind);

fn designs(args: &Args) -> Result<Vec<Design>> {
    let mut nets: Vec<(String, Network, RandomDesign)> =
        RandomDesign::ALL.iter().map(|&d| (format!("vgg16-{}", d.name()), Network::Vgg16, d)).collect();
    nets.push(("multiscale".into(), Network::Multiscale, RandomDesign::He));
    if let Some(want) = &args.designs {
        let want: Vec<&str> = want.split(',').map(str::trim).collect();
        if let Some(bad) = want.iter().find(|w| !nets.iter().any(|d| d.0 == **w)) {
            let known: Vec<&str> = nets.iter().map(|d| d.0.as_str()).collect();
            bail!("--designs: no design {bad:?}; there are {}", known.join(","));
        }
        nets.retain(|d| want.contains(&d.0.as_str()));
    }
    let losses = args.loss.split(',').map(|l| LossKind::from_wire(l.trim())).collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (label, net, design) in nets {
        for &loss in &losses {
            let label = if losses.len() > 1 { format!("{label}/{}", loss.name()) } else { label.clone() };
            out.push((label, net, design, loss));
        }
    }
    Ok(out)
}

/// Renders `frames` frames of `design` on `style` at `size` and scores the result.
fn render_scored(
    args: &Args,
    design: &Design,
    style_path: &Path,
    (width, height): (u32, u32),
    frames: u32,
    layers: &[(String, f64)],
    device: tch::Device,
) -> Result<(Vec<Frame>, Scores, tch::Tensor)> {
    let style = Style::open(style_path)?;
    let params = RenderParams {
        width,
        height,
        frames,
        iters: args.iters.into(),
        warmup: 150,
        optimizer: args.optimizer.parse::<OptimizerKind>()?,
        network: design.1,
        layers: layers.to_vec(),
        loss: design.3,
        ..RenderParams::default()
    };
    params.validate()?;
    let reference = style.tensor(style.scaled_size(width.min(height), params.style_scale)?, tch::Device::Cpu);
    let engine = Engine::new(params, style, Vgg::random_with(design.1, design.2, device), device)?;
    let mut state = engine.initial_state(&mut |_| {})?;
    let mut out = Vec::new();
    engine.render(
        &mut state,
        frames,
        &mut |f| {
            out.push(f);
            Ok(())
        },
        &mut |_| {},
    )?;
    let last = out.last().context("no frame rendered")?.to_tensor();
    let ((m1, s1), (m2, s2)) = (quality::colour_stats(&last), quality::colour_stats(&reference));
    let (r, c) = quality::centre_line_ratio(&out[out.len() / 2..]);
    let scores = Scores {
        mean_err: (0..3).map(|c| (m1[c] - m2[c]).abs()).sum::<f64>() / 3.0,
        std_err: (0..3).map(|c| (s1[c] - s2[c]).abs()).sum::<f64>() / 3.0,
        detail: quality::detail_distance(&last, &reference),
        // A grey style has almost no chroma gradient: 1 level is the floor of the ratio.
        speckle: (quality::chroma_gradient(&last) / quality::chroma_gradient(&reference).max(1.0)).log2(),
        lines: r.max(c),
        chroma: quality::mean_chroma(&last) - quality::mean_chroma(&reference),
    };
    Ok((out, scores, reference))
}

/// The style (1x3xHxW in [0, 1]) scaled to cover w x h and cropped to it, centred.
fn cover(style: &tch::Tensor, w: u32, h: u32) -> Result<image::RgbImage> {
    let (sh, sw) = (style.size()[2] as f64, style.size()[3] as f64);
    let k = (f64::from(w) / sw).max(f64::from(h) / sh);
    let (nh, nw) = (((sh * k).ceil() as i64).max(h.into()), ((sw * k).ceil() as i64).max(w.into()));
    let t = style.upsample_bilinear2d([nh, nw], false, None, None);
    let t = t.narrow(2, (nh - i64::from(h)) / 2, h.into()).narrow(3, (nw - i64::from(w)) / 2, w.into());
    let bytes = (t.squeeze_dim(0) * 255.0).round().clamp(0.0, 255.0).to_kind(tch::Kind::Uint8);
    let bytes = Vec::<u8>::try_from(bytes.permute([1, 2, 0]).contiguous().flatten(0, -1))?;
    image::RgbImage::from_raw(w, h, bytes).context("style thumbnail size")
}

fn stem(path: &str) -> String {
    Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Scores each design (and loss) on each style and prints a table.
pub fn compare_features(args: &Args, device: tch::Device) -> Result<()> {
    let layers = args.layers.as_deref().map(super::render::parse_layers).transpose()?.unwrap_or_default();
    let mut designs = designs(args)?;
    if !layers.is_empty() {
        designs.retain(|d| layers.iter().all(|(name, _)| d.1.layers().iter().any(|l| l.name == *name)));
    }
    let size = parse_size(args.sizes.as_deref().unwrap_or("128x128"))?;
    let frames = args.frames.unwrap_or(3).max(8) * 4;
    println!("random-feature designs, {}x{}, {frames} frames of {} iters, warm-up 150", size.0, size.1, args.iters);
    println!(
        "{:>24} {:>26} {:>9} {:>8} {:>7} {:>8} {:>6} {:>7}",
        "design", "style", "mean err", "std err", "detail", "speckle", "lines", "chroma"
    );
    for design in &designs {
        let mut total = 0.0;
        for path in args.styles.split(',') {
            let (out, s, _) = render_scored(args, design, Path::new(path), size, frames, &layers, device)?;
            total += s.detail + s.speckle.abs();
            println!(
                "{:>24} {:>26} {:>9.1} {:>8.1} {:>7.3} {:>8.3} {:>6.2} {:>+7.1}",
                design.0,
                path.rsplit('/').next().unwrap_or(path),
                s.mean_err,
                s.std_err,
                s.detail,
                s.speckle,
                s.lines,
                s.chroma
            );
            if let Some(dir) = &args.stills {
                std::fs::create_dir_all(dir)?;
                let name = format!("{}-{}.png", design.0.replace('/', "-"), stem(path));
                out.last().context("no frame rendered")?.to_image().save(dir.join(name))?;
            }
        }
        println!(
            "{:>24} {:>26} {:>40.3}",
            design.0,
            "mean |detail|+|speckle|",
            total / args.styles.split(',').count() as f64
        );
    }
    Ok(())
}

/// A contact sheet: one row per style and design, the style then the movie's first, middle
/// and last frames; `gallery.jpg` and a `README.md` naming the rows with their scores.
pub fn gallery(args: &Args, dir: &Path, device: tch::Device) -> Result<()> {
    let size = parse_size(args.sizes.as_deref().unwrap_or("192x128"))?;
    let frames = args.frames.unwrap_or(3).max(3);
    let designs = designs(args)?;
    let (w, h, gap) = (size.0, size.1, 4u32);
    let styles: Vec<&str> = args.styles.split(',').collect();
    let rows = (styles.len() * designs.len()) as u32;
    let mut sheet = image::RgbImage::from_pixel(4 * w + 3 * gap, rows * h + (rows - 1) * gap, image::Rgb([255; 3]));
    let mut md = String::new();
    writeln!(md, "# Gallery")?;
    writeln!(md)?;
    writeln!(
        md,
        "Made by `scripts/gallery.sh` (`gramzoom bench --gallery`): {}x{}, {frames} frames of {} iterations at 30 fps, \
         zoom 2x per second, warm-up 150, random features (no pretrained weights). Each row of \
         [gallery.jpg](gallery.jpg) is the style, then the movie's first, middle and last frames. \
         Scores compare the last frame with the style (lower is better; speckle: log2 of the \
         chroma gradient against the style's; chroma: mean CIELAB chroma minus the style's; \
         lines: 1.0 is none, over the second half of a movie this short they move by 0.1 to \
         0.3 with chance details, so the tests judge them on longer or several movies). \
         `vgg16-he` was the default until stop 18, `vgg16-he-colour` until stop 37, \
         `vgg16-he-spectrum` is the default now \
         (ARCHITECTURE.md, \"Random features\").",
        w,
        h,
        args.iters
    )?;
    writeln!(md)?;
    writeln!(md, "| row | style | design | loss | mean err | std err | detail | speckle | lines | chroma |")?;
    writeln!(md, "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    let mut row = 0u32;
    for path in &styles {
        for design in &designs {
            tracing::info!(style = path, design = %design.0, "rendering");
            let (out, s, reference) = render_scored(args, design, Path::new(path), size, frames, &[], device)?;
            let picks = [
                cover(&reference, w, h)?,
                out[0].to_image(),
                out[out.len() / 2].to_image(),
                out[out.len() - 1].to_image(),
            ];
            for (col, img) in picks.iter().enumerate() {
                image::imageops::replace(&mut sheet, img, (col as u32 * (w + gap)).into(), (row * (h + gap)).into());
            }
            row += 1;
            writeln!(
                md,
                "| {row} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:+.1} |",
                stem(path),
                design.0.split('/').next().unwrap_or(&design.0),
                design.3.name(),
                s.mean_err,
                s.std_err,
                s.detail,
                s.speckle,
                s.lines,
                s.chroma
            )?;
        }
    }
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::create(dir.join("gallery.jpg"))?;
    image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 80).encode_image(&sheet)?;
    std::fs::write(dir.join("README.md"), md)?;
    println!("{}", dir.join("gallery.jpg").display());
    Ok(())
}
