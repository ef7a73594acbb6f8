//! Quality, measured on a small movie: no lines through the zoom's centre, each frame is the
//! previous one zoomed, and colours and the scale of detail follow the style.

use engine::params::{LossKind, StyleScale};
use engine::quality::{
    centre_line_ratio, chroma_gradient, colour_stats, detail_distance, luma_gradient, mean_chroma, rms,
};
use engine::style::Style;
use engine::vgg::{Network, Vgg};
use engine::zoom::{jitter, Zoom};
use engine::{Engine, RenderParams};

/// Every network a user can choose, with every loss, renders a clean zoom in the style: no line
/// drawn through the centre, each frame is its predecessor zoomed, colours, colour speckle and
/// the scale of detail follow the style. One test a design, so that they run beside the rest of
/// the suite rather than after it; the default design on a grey style is checked by the long
/// movie below.
///
/// Lines, three ways, each where it can be told: the mechanism of the zoom's line (the fixed
/// point escaping the resampling's blur) exactly, in `engine::zoom`'s tests, with and without
/// the jitter; the default design against the 1.2 on the long 192x108 movie, where one
/// movie judges it; and here, one 96x80 movie a design against 1.6, a line a design draws
/// itself (the wrapped border's lattice scored 1.69, the original gramzoom above 3). At 96x80
/// the content that happens to sit at the fixed point moves one movie's ratio by about 0.15
/// (rows 1.17 +- 0.17 over six seeds), and the columns cannot tell the jitter's line at all
/// (1.30 without it, 1.24 +- 0.15 with it): a tighter bound there was a draw of the CPU's last
/// bits (one seed scored 1.48 on an AVX2 CPU), not a check (ARCHITECTURE.md "Quality tests").
fn assert_clean_zoom(network: Network, loss: LossKind) {
    let style_name = "immunohistochemistry.png";
    let params = RenderParams {
        width: 96,
        height: 80,
        frames: 40,
        warmup: 90,
        iters: 4.into(),
        network,
        loss,
        ..RenderParams::default()
    };
    let frames = crate::helpers::render_movie(&params, style_name);
    let (rows, cols) = centre_line_ratio(&frames[20..]);
    let mut problems = vec![mark(
        rows.max(cols) <= 1.6,
        format!("central band gradient vs median: rows {rows:.2}, columns {cols:.2} (at most 1.6)"),
    )];
    problems.extend(movie_problems(&params, style_name, &frames));
    eprintln!("{} {} {style_name}: {}", network.name(), loss.name(), problems.join("; "));
    assert!(!problems.iter().any(|p| p.starts_with("FAIL")), "{}", problems.join("\n"));
}

/// A measurement as reported, marked FAIL when out of bounds.
fn mark(ok: bool, what: String) -> String {
    if ok {
        what
    } else {
        format!("FAIL {what}")
    }
}

/// One test a design (network and loss).
mod clean_zoom {
    use super::*;

    #[test]
    fn vgg16_gram() {
        assert_clean_zoom(Network::Vgg16, LossKind::Gram);
    }

    #[test]
    fn vgg16_swd() {
        assert_clean_zoom(Network::Vgg16, LossKind::Swd);
    }

    #[test]
    fn vgg19_gram() {
        assert_clean_zoom(Network::Vgg19, LossKind::Gram);
    }

    #[test]
    fn vgg19_swd() {
        assert_clean_zoom(Network::Vgg19, LossKind::Swd);
    }
}

/// The measurements of one movie against its style but its lines (judged per size), each
/// marked FAIL when out of bounds: three frames of the second half against their zoomed
/// predecessors, the last frame's colours and scale of detail, the second half's colour
/// speckle, and for a grey style, grey.
fn movie_problems(params: &RenderParams, style_name: &str, frames: &[engine::Frame]) -> Vec<String> {
    let device = tch::Device::Cpu;
    let style = Style::open(&crate::helpers::example(style_name)).unwrap();
    let reference = style.tensor(style.scaled_size(params.height, params.style_scale).unwrap(), device);
    let (width, height) = (params.width as usize, params.height as usize);
    let n = frames.len();
    let second_half = &frames[n / 2..];
    let mut out = Vec::new();
    let mut check = |ok: bool, what: String| out.push(mark(ok, what));

    for t in [n - 15, n - 8, n - 1] {
        let z = Zoom::new(
            width,
            height,
            &params.motion().unwrap().camera(t as u32).unwrap(),
            jitter(params.seed, t as u32 - 1),
            jitter(params.seed, t as u32),
            device,
        );
        let predicted = z.apply(&frames[t - 1].to_tensor());
        let now = frames[t].to_tensor();
        let same = rms(&now, &predicted);
        // An unrelated frame with the same texture statistics: the prediction moved by half a frame.
        let unrelated = rms(&now, &predicted.roll([height as i64 / 2, width as i64 / 2], [2, 3]));
        check(
            same < 0.5 * unrelated,
            format!("frame {t}: {same:.1} levels from its zoomed predecessor vs {unrelated:.1} unrelated"),
        );
    }

    let last = frames.last().unwrap().to_tensor();
    let ((m, s), (ms, ss)) = (colour_stats(&last), colour_stats(&reference));
    let mean_err = (0..3).map(|c| (m[c] - ms[c]).abs()).fold(0.0, f64::max);
    let spread_err = (0..3).map(|c| (s[c] - ss[c]).abs()).fold(0.0, f64::max);
    check(mean_err < 20.0, format!("channel means within {mean_err:.1} levels of the style's"));
    check(spread_err < 20.0, format!("channel spreads within {spread_err:.1} levels of the style's"));
    let detail = detail_distance(&last, &reference);
    check(detail <= 0.8, format!("detail-scale distance {detail:.2} (1.0 = bands off by 2x on average; at most 0.8)"));
    // Colour speckle: the chroma gradient of the second half's frames against the style's, as
    // log2 of the ratio (a grey style has almost none: 1 level is the floor).
    let chroma = second_half.iter().map(|f| chroma_gradient(&f.to_tensor())).sum::<f64>() / second_half.len() as f64;
    let speckle = (chroma / chroma_gradient(&reference).max(1.0)).log2();
    check(speckle <= 1.3, format!("colour speckle {speckle:.2} (log2 of the chroma gradient vs the style's)"));
    let (mine, theirs) = (mean_chroma(&last), mean_chroma(&reference));
    if theirs < 5.0 {
        check((mine - theirs).abs() <= 3.0, format!("a grey style renders grey: chroma {mine:.1} vs {theirs:.1}"));
    }
    out
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
    let kept = crate::helpers::in_parallel(vec![StyleScale::Auto, StyleScale::Times(1.0)], |scale| {
        let style = Style::from_bytes(png.get_ref(), std::path::Path::new("crop.png")).unwrap();
        let params = RenderParams {
            width: 192,
            height: 128,
            frames: 8,
            warmup: 80,
            iters: 4.into(),
            style_scale: scale,
            ..RenderParams::default()
        };
        let _turn = crate::helpers::measured_render();
        let engine = Engine::new(params.clone(), style, Vgg::random(params.network, device), device).unwrap();
        let mut state = engine.initial_state(&mut |_| {}).unwrap();
        let mut detail = Vec::new();
        let mut measure = |f: engine::Frame| {
            detail.push(luma_gradient(&f.to_tensor()));
            Ok(())
        };
        engine.render(&mut state, params.frames, &mut measure, &mut |_| {}).unwrap();
        detail.iter().sum::<f64>() / detail.len() as f64 / style_detail
    });
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
            width: 64,
            height: 48,
            frames: 8,
            warmup: 60,
            iters: 4.into(),
            seed,
            precision,
            ..RenderParams::default()
        };
        let _turn = crate::helpers::measured_render();
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
    let cases = vec![(Precision::Fp32, 0), (Precision::Bf16, 0), (Precision::Fp32, 1)];
    let [fp32, bf16, other_seed] = &crate::helpers::in_parallel(cases, |(p, seed)| render(p, seed))[..] else {
        unreachable!("three renders")
    };
    let colour_gap = |a: &tch::Tensor, b: &tch::Tensor| {
        let ((ma, sa), (mb, sb)) = (colour_stats(a), colour_stats(b));
        (0..3).map(|c| (ma[c] - mb[c]).abs().max((sa[c] - sb[c]).abs())).fold(0.0, f64::max)
    };
    let (bf16_colour, seed_colour) = (colour_gap(fp32, bf16), colour_gap(fp32, other_seed));
    let (bf16_detail, seed_detail) = (detail_distance(fp32, bf16), detail_distance(fp32, other_seed));
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
    assert!(!fp32.equal(bf16), "bf16 rendered exactly what fp32 did: the precision was not applied");
}

/// A longer movie of the default design on a grey style no other check uses, second by second:
/// colours stay near the style's, detail neither fades nor grows, the zoom keeps bringing new
/// texture (no freezing into a repeating pattern), and the clean-zoom checks above (no line
/// through the centre, grey stays grey, no colour speckle, detail at the style's scale).
/// Measured with `he-colour`, the former default: colour 0.1 to 1.8 levels off, detail 85% to
/// 89% of the gravel's, 44 to 45 levels of change a second, lines 1.00 / 1.09, detail-scale
/// distance 0.58 (the 96x80 movies of the clean-zoom checks measured 0.83 on this style),
/// speckle -0.46, chroma 1.7. With `he-spectrum` (stop 37, one thread, AMD EPYC): colour 1.1
/// to 2.1 levels off, detail 88% to 91%, 43 to 44 levels of change, lines 1.03 / 1.02,
/// detail-scale distance 0.31, speckle -0.46, chroma 1.7; holding gravel's coarsest
/// frequencies too (stop 38): colour 0.9 to 2.3 levels off, detail 88% to 91%, 43 to 44 levels
/// of change, lines 1.06 / 0.97, detail-scale distance 0.18, speckle -0.45, chroma 1.7.
#[test]
fn a_long_movie_stays_in_the_style_second_after_second() {
    let device = tch::Device::Cpu;
    let style = Style::open(&crate::helpers::example("gravel.png")).unwrap();
    let (width, height, seconds) = (192u32, 108u32, 6u32);
    let params =
        RenderParams { width, height, frames: 30 * seconds, warmup: 90, iters: 3.into(), ..RenderParams::default() };
    let reference = style.tensor(style.scaled_size(height, params.style_scale).unwrap(), device);
    let ((style_mean, _), style_detail) = (colour_stats(&reference), luma_gradient(&reference));
    let frames = crate::helpers::render_movie(&params, "gravel.png");

    let mut report = Vec::new();
    let mut failures = Vec::new();
    let details: Vec<f64> = frames
        .chunks(30)
        .map(|second| second.iter().map(|f| luma_gradient(&f.to_tensor())).sum::<f64>() / second.len() as f64)
        .collect();
    let typical = details.iter().sum::<f64>() / details.len() as f64;
    for (s, second) in frames.chunks(30).enumerate() {
        let last = second.last().unwrap().to_tensor();
        let (mean, _) = colour_stats(&last);
        let drift = (0..3).map(|c| (mean[c] - style_mean[c]).abs()).fold(0.0, f64::max);
        let detail = details[s] / style_detail;
        // Against the same frame a second earlier, zoomed 2x since: the centre is the old
        // frame's, magnified; a movie frozen into a fixed pattern would repeat itself.
        let moved = match s {
            0 => f64::INFINITY,
            _ => rms(&last, &frames[s * 30 - 1].to_tensor()),
        };
        report.push(format!(
            "second {}: colour {drift:.1} levels off, detail {:.0}%, change {moved:.1}",
            s + 1,
            detail * 100.0
        ));
        if drift > 15.0 {
            failures.push(format!("second {}: mean colour {drift:.1} levels from the style's", s + 1));
        }
        // Stable: within 15% of the movie's own average; and never washed out.
        if (details[s] / typical - 1.0).abs() > 0.15 || detail < 0.4 {
            failures.push(format!(
                "second {}: detail at {:.0}% of the style's, {:.0}% of the movie's average",
                s + 1,
                detail * 100.0,
                details[s] / typical * 100.0
            ));
        }
        if moved < 10.0 {
            failures.push(format!("second {}: only {moved:.1} levels from a second earlier (frozen)", s + 1));
        }
    }
    // At 192x108 one movie judges lines: a row averages twice the texture of 96x80's, and a
    // render with the zoom's jitter turned off scored 1.53 (rows) and 1.28 (columns) here.
    let (rows, cols) = centre_line_ratio(&frames[frames.len() / 2..]);
    report.push(format!("lines: rows {rows:.2}, columns {cols:.2}"));
    if rows.max(cols) > 1.2 {
        failures.push(format!("central band gradient vs median: rows {rows:.2}, columns {cols:.2}"));
    }
    // The clean-zoom checks of the default design on a grey style.
    let problems = movie_problems(&params, "gravel.png", &frames);
    report.extend(problems.iter().cloned());
    failures.extend(problems.into_iter().filter(|p| p.starts_with("FAIL")));
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
