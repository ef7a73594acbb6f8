//! Quality, measured on a small movie: no lines through the zoom's centre, each frame is the
//! previous one zoomed, and colours and the scale of detail follow the style.

use engine::params::StyleScale;
use engine::quality::{centre_line_ratio, colour_stats, detail_distance, luma_gradient, rms};
use engine::style::Style;
use engine::vgg::Vgg;
use engine::zoom::{jitter, Zoom};
use engine::{Engine, RenderParams};

#[test]
fn movie_is_a_clean_zoom_in_the_style() {
    let device = tch::Device::Cpu;
    let style = Style::open(&crate::helpers::example("immunohistochemistry.png")).unwrap();
    let params = RenderParams { width: 96, height: 80, frames: 40, warmup: 90, iters: 4, ..RenderParams::default() };
    let reference = style.tensor(style.scaled_size(80, params.style_scale).unwrap(), device);
    let engine = Engine::new(params.clone(), style, Vgg::random(params.network, device), device).unwrap();
    let mut state = engine.initial_state(&mut |_| {}).unwrap();
    let mut frames = Vec::new();
    let mut keep = |f| {
        frames.push(f);
        Ok(())
    };
    engine.render(&mut state, params.frames, &mut keep, &mut |_| {}).unwrap();

    let second_half = &frames[frames.len() / 2..];

    let (rows, cols) = centre_line_ratio(second_half);
    assert!(rows < 1.3 && cols < 1.3, "central band gradient vs median: rows {rows:.2}, columns {cols:.2}");

    for t in [25usize, 32, 39] {
        let z = Zoom::new(
            96,
            80,
            params.zoom_per_frame(),
            jitter(params.seed, t as u32 - 1),
            jitter(params.seed, t as u32),
            device,
        );
        let predicted = z.apply(&frames[t - 1].to_tensor());
        let now = frames[t].to_tensor();
        let same = rms(&now, &predicted);
        // An unrelated frame with the same texture statistics: the prediction moved by half a frame.
        let unrelated = rms(&now, &predicted.roll([40, 48], [2, 3]));
        assert!(
            same < 0.5 * unrelated,
            "frame {t}: {same:.1} levels from its zoomed predecessor vs {unrelated:.1} unrelated"
        );
    }

    let last = frames.last().unwrap().to_tensor();
    let ((m, s), (ms, ss)) = (colour_stats(&last), colour_stats(&reference));
    for c in 0..3 {
        assert!((m[c] - ms[c]).abs() < 20.0, "channel {c} mean {:.1} vs style {:.1}", m[c], ms[c]);
        assert!((s[c] - ss[c]).abs() < 20.0, "channel {c} spread {:.1} vs style {:.1}", s[c], ss[c]);
    }
    let detail = detail_distance(&last, &reference);
    assert!(detail < 1.0, "detail-scale distance {detail:.2} (1.0 = bands off by 2x on average)");
}

/// A style smaller than the output (a phone photo for an HD movie) keeps its own fine detail with
/// `--style-scale auto`; blown up to the output's size (`1.0`, the old default) it is blurred
/// first and the frames copy the blur.
#[test]
fn a_small_style_keeps_its_fine_detail_in_a_larger_movie() {
    let device = tch::Device::Cpu;
    // 96x64 of brush strokes at the painting's own resolution, for a 192x128 movie.
    let painting = image::open(crate::helpers::example("wheatfield.jpg")).unwrap().to_rgb8();
    let crop = image::imageops::crop_imm(&painting, 600, 300, 96, 64).to_image();
    let mut png = std::io::Cursor::new(Vec::new());
    crop.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let own = engine::style::rgb_to_tensor(&crop);
    let style_detail = luma_gradient(&own);
    let mut kept = Vec::new();
    for scale in [StyleScale::Auto, StyleScale::Times(1.0)] {
        let style = Style::from_bytes(png.get_ref(), std::path::Path::new("crop.png")).unwrap();
        let params = RenderParams {
            width: 192,
            height: 128,
            frames: 8,
            warmup: 80,
            iters: 4,
            style_scale: scale,
            ..RenderParams::default()
        };
        let engine = Engine::new(params.clone(), style, Vgg::random(params.network, device), device).unwrap();
        let mut state = engine.initial_state(&mut |_| {}).unwrap();
        let mut detail = Vec::new();
        let mut measure = |f: engine::Frame| {
            detail.push(luma_gradient(&f.to_tensor()));
            Ok(())
        };
        engine.render(&mut state, params.frames, &mut measure, &mut |_| {}).unwrap();
        kept.push(detail.iter().sum::<f64>() / detail.len() as f64 / style_detail);
    }
    let (auto, upscaled) = (kept[0], kept[1]);
    eprintln!("fine detail kept: auto {:.0}%, upscaled {:.0}%", auto * 100.0, upscaled * 100.0);
    assert!(auto > 0.8, "auto keeps {:.0}% of the style's fine detail", auto * 100.0);
    assert!(
        auto > upscaled * 1.2,
        "auto {:.0}% vs upscaled {:.0}% of the style's detail",
        auto * 100.0,
        upscaled * 100.0
    );
}

/// bf16 (the GPU default) must not cost picture quality: the same movie in fp32 and in bf16
/// has the same colours and scale of detail, within what two seeds of fp32 differ by.
#[test]
fn a_bf16_movie_keeps_the_texture_statistics_of_the_fp32_one() {
    use engine::params::Precision;
    let device = tch::Device::Cpu;
    let render = |precision: Precision, seed: u64| {
        let style = Style::open(&crate::helpers::example("immunohistochemistry.png")).unwrap();
        let params = RenderParams {
            width: 80,
            height: 64,
            frames: 8,
            warmup: 60,
            iters: 4,
            seed,
            precision,
            ..RenderParams::default()
        };
        let engine = Engine::new(params.clone(), style, Vgg::random(params.network, device), device).unwrap();
        let mut state = engine.initial_state(&mut |_| {}).unwrap();
        let mut last = None;
        engine
            .render(
                &mut state,
                params.frames,
                &mut |f| {
                    last = Some(f.to_tensor());
                    Ok(())
                },
                &mut |_| {},
            )
            .unwrap();
        last.unwrap()
    };
    let (fp32, bf16, other_seed) = (render(Precision::Fp32, 0), render(Precision::Bf16, 0), render(Precision::Fp32, 1));
    let colour_gap = |a: &tch::Tensor, b: &tch::Tensor| {
        let ((ma, sa), (mb, sb)) = (colour_stats(a), colour_stats(b));
        (0..3).map(|c| (ma[c] - mb[c]).abs().max((sa[c] - sb[c]).abs())).fold(0.0, f64::max)
    };
    let (bf16_colour, seed_colour) = (colour_gap(&fp32, &bf16), colour_gap(&fp32, &other_seed));
    let (bf16_detail, seed_detail) = (detail_distance(&fp32, &bf16), detail_distance(&fp32, &other_seed));
    eprintln!(
        "bf16 vs fp32: colour {bf16_colour:.1} levels, detail {bf16_detail:.3}; another seed: {seed_colour:.1}, {seed_detail:.3}"
    );
    assert!(
        bf16_colour < seed_colour.max(2.0) * 1.5,
        "bf16 moved colours by {bf16_colour:.1} levels (seed: {seed_colour:.1})"
    );
    assert!(
        bf16_detail < seed_detail.max(0.05) * 1.5,
        "bf16 detail distance {bf16_detail:.3} (seed: {seed_detail:.3})"
    );
    assert!(!fp32.equal(&bf16), "bf16 rendered exactly what fp32 did: the precision was not applied");
}
