//! Quality, measured on a small movie: no lines through the zoom's centre, each frame is the
//! previous one zoomed, and colours and the scale of detail follow the style.

use engine::quality::{centre_line_ratio, colour_stats, detail_distance, rms};
use engine::style::Style;
use engine::vgg::Vgg;
use engine::zoom::{jitter, Zoom};
use engine::{Engine, RenderParams};

#[test]
fn movie_is_a_clean_zoom_in_the_style() {
    let device = tch::Device::Cpu;
    let style = Style::open(&crate::helpers::example("immunohistochemistry.png")).unwrap();
    let params = RenderParams { width: 96, height: 80, frames: 40, warmup: 90, iters: 4, ..RenderParams::default() };
    let reference = style.tensor(style.scaled_size(80, 1.0).unwrap(), device);
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
