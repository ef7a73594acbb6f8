//! A directed job's motion on its page: the zoom, the turn and each style's weight over the
//! whole movie as a small chart (inline SVG, no script), a marker where the render is, and the
//! camera and style weights there in words.

use super::html::Esc;
use proto::params::RenderParams;
use std::fmt::Write as _;

/// Points a curve is drawn with, whatever the movie's length.
const SAMPLES: u32 = 240;
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 90.0;

/// The motion section of a job's page, where it is now (empty for a movie that does not move
/// but zoom).
pub(crate) fn of_job(job: &proto::v1::Job) -> String {
    let params = job.spec.as_ref().and_then(|s| s.params.as_ref());
    match params.map(proto::wire::params_walked_at_submit) {
        Some(Ok(params)) => section(&params, job.frames_done),
        _ => String::new(),
    }
}

/// The motion section of a job page, or nothing for a movie that does not move but zoom.
pub(crate) fn section(p: &RenderParams, frame: u32) -> String {
    if !p.is_directed() {
        return String::new();
    }
    let words = p.motion_words(frame).unwrap_or_else(|e| e.to_string());
    let Ok(motion) = p.motion() else { return String::new() };
    let fps = p.fps.as_f64();
    let last = p.frames.saturating_sub(1).max(1);
    let frames: Vec<u32> =
        (0..=SAMPLES).map(|k| (u64::from(last) * u64::from(k) / u64::from(SAMPLES)) as u32).collect();
    let cameras: Vec<_> = frames.iter().filter_map(|&f| motion.camera(f).ok()).collect();
    if cameras.len() != frames.len() {
        return String::new();
    }
    let zoom: Vec<f64> = cameras.iter().map(|c| c.factor.ln() * fps).collect();
    let turn: Vec<f64> = cameras.iter().map(|c| c.turn.to_degrees() * fps).collect();
    let mut svg = format!(
        "<svg class=\"motion\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-labelledby=\"motion-words\">"
    );
    for (values, class) in [(&zoom, "zoom"), (&turn, "turn")] {
        let _ = write!(svg, "<polyline class=\"{class}\" fill=\"none\" points=\"{}\"/>", points(values));
    }
    // Each style's weight, from 0 (bottom) to 1 (top).
    let weights: Vec<Vec<f64>> = frames.iter().filter_map(|&f| motion.weights(f).ok()).collect();
    let mut styles_legend = String::new();
    if let (Some(blend), true) = (&p.blend, weights.len() == frames.len()) {
        for (i, name) in blend.names().iter().enumerate() {
            let line: Vec<f64> = weights.iter().map(|w| w[i]).collect();
            let _ = write!(
                svg,
                "<polyline class=\"style\" fill=\"none\" points=\"{}\"><title>{}</title></polyline>",
                weight_points(&line),
                Esc(name)
            );
        }
        styles_legend = format!(" Style weights of {} (dotted, 0 to 1).", Esc(&blend.names().join(", ")));
    }
    let x = f64::from(frame.min(last)) / f64::from(last) * WIDTH;
    let _ = write!(svg, "<line class=\"now\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"0\" y2=\"{HEIGHT}\"/></svg>");
    let range = |v: &[f64], f: fn(f64) -> f64| {
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        (f(lo), f(hi))
    };
    let (zlo, zhi) = range(&zoom, f64::exp);
    let (tlo, thi) = range(&turn, |d| d);
    format!(
        "<section aria-labelledby=\"h-motion\"><h2 id=\"h-motion\">Motion</h2>{svg}\
         <p class=\"legend\">Zoom {zlo:.2}x to {zhi:.2}x a second (solid, log scale), turn {tlo:.1} to {thi:.1} degrees a second (dashed), over {:.0} s.{styles_legend}</p>\
         <p id=\"motion-words\">Now {}.</p></section>",
        f64::from(p.frames) / fps,
        Esc(&words)
    )
}

/// Weights (0 to 1) as SVG polyline points across the chart, on a fixed scale.
fn weight_points(values: &[f64]) -> String {
    let n = (values.len().max(2) - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 / n * WIDTH, HEIGHT - 4.0 - v * (HEIGHT - 8.0)))
        .collect();
    points.join(" ")
}

/// `values` as SVG polyline points across the chart, scaled to their own range.
fn points(values: &[f64]) -> String {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
    let n = (values.len().max(2) - 1) as f64;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if hi - lo > 1e-12 { HEIGHT - 4.0 - (v - lo) / span * (HEIGHT - 8.0) } else { HEIGHT / 2.0 };
            format!("{:.1},{y:.1}", i as f64 / n * WIDTH)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A setting that may be a schedule: the constant as users know it, or the schedule as written
/// with its unit.
pub(crate) fn shown(schedule: &str, constant: String, unit: &str) -> String {
    if schedule.is_empty() {
        constant
    } else {
        format!("{schedule} ({unit})")
    }
}

/// The movie's tempo: a constant one, or the soundtrack's beats with their mean tempo.
pub(crate) fn tempo(p: &proto::v1::RenderParams) -> String {
    match (p.bpm, proto::schedule::BeatGrid::new(p.beats.clone())) {
        (_, Ok(grid)) => {
            let t = grid.times();
            format!(
                "{} beats of the soundtrack, {:.2} s to {:.2} s ({:.1} beats per minute)",
                t.len(),
                t[0],
                t[t.len() - 1],
                grid.bpm()
            )
        }
        (Some(bpm), _) => format!("{bpm} beats per minute"),
        (None, _) => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::schedule::{Schedule, ANGLE, ZOOM};

    #[test]
    fn the_tempo_is_a_constant_or_the_soundtracks_beats() {
        let wire = |bpm: Option<f64>, beats: Vec<f64>| proto::v1::RenderParams { bpm, beats, ..Default::default() };
        assert_eq!(tempo(&wire(None, vec![])), "–");
        assert_eq!(tempo(&wire(Some(128.0), vec![])), "128 beats per minute");
        assert_eq!(
            tempo(&wire(None, vec![0.25, 0.75, 1.25])),
            "3 beats of the soundtrack, 0.25 s to 1.25 s (120.0 beats per minute)"
        );
    }

    #[test]
    fn a_directed_job_shows_its_motion_and_a_plain_one_nothing() {
        assert_eq!(section(&RenderParams::default(), 10), "");
        let p = RenderParams {
            zoom: Schedule::parse(&ZOOM, "0:(1.5), 1s:(3) ease-in-out, 3s:(1.5)").unwrap(),
            angle: Schedule::parse(&ANGLE, "10").unwrap(),
            ..RenderParams::default()
        };
        let html = section(&p, 30);
        assert!(html.contains("<svg class=\"motion\""), "{html}");
        assert_eq!(html.matches("<polyline").count(), 2);
        assert!(html.contains("Zoom 1.50x to 3.00x a second"), "{html}");
        assert!(html.contains("Now at 1.0 s (frame 30): zoom 3.00x a second about 0.50,0.50, turning 10.0 degrees a second, 4 iterations a frame."), "{html}");
        // The marker sits a third of the way along a 90-frame movie.
        assert!(html.contains("x1=\"202.2\""), "{html}");

        // A cross-fade: one dotted line per style, and the weights now in words.
        let names = ["a".to_string(), "b".to_string()];
        let blend = proto::schedule::Blend::parse(&names, "0:(a), 1s:(a), 2s:(b)").unwrap();
        let html = section(&RenderParams { blend: Some(blend), ..RenderParams::default() }, 45);
        assert_eq!(html.matches("<polyline class=\"style\"").count(), 2, "{html}");
        assert!(html.contains("Style weights of a, b (dotted, 0 to 1)."), "{html}");
        assert!(html.contains(", 4 iterations a frame, styles a 0.50, b 0.50."), "{html}");
    }
}
