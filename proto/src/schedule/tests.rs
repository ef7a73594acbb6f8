use super::*;

const TEN_FPS: Timing = Timing { fps: 10.0, bpm: None, beats: None };
const WITH_BPM: Timing = Timing { fps: 10.0, bpm: Some(120.0), beats: None };

fn value(spec: &Spec, text: &str, timing: &Timing, frame: u32) -> f64 {
    Schedule::parse(spec, text).unwrap().at(spec, timing, frame).unwrap()[0]
}

#[test]
#[allow(clippy::approx_constant)] // Deforum's default zoom writes 3.14
fn values_follow_their_keys_units_and_easing() {
    // (spec, schedule, timing, frame, value)
    let cases: &[(&Spec, &str, &Timing, u32, f64)] = &[
        (&ZOOM, "2", &TEN_FPS, 7, 2.0),
        // Deforum's default zoom, at frame 0 and frame 12 (a quarter of its sine's period).
        (&ZOOM, "1.0025+0.002*sin(1.25*3.14*t/30)", &TEN_FPS, 0, 1.0025),
        (
            &ZOOM,
            "1.0025+0.002*sin(1.25*3.14*t/30)",
            &TEN_FPS,
            12,
            1.0025 + 0.002 * (1.25 * 3.14 * 12.0f64 / 30.0).sin(),
        ),
        // Float-only formulas: 1/2 is a half.
        (&ANGLE, "1/2*t", &TEN_FPS, 4, 2.0),
        // The zoom moves in log space: halfway from 1 to 4 is 2; an angle linearly: 2.5.
        (&ZOOM, "0:(1), 2s:(4)", &TEN_FPS, 10, 2.0),
        (&ANGLE, "0:(1), 2s:(4)", &TEN_FPS, 10, 2.5),
        // Before the first key the first value holds, after the last the last.
        (&ANGLE, "5:(3), 10:(4)", &TEN_FPS, 0, 3.0),
        (&ANGLE, "5:(3), 10:(4)", &TEN_FPS, 30, 4.0),
        // Beats: 4 beats at 120 bpm are 2 s, frame 20.
        (&ANGLE, "0:(0), 4b:(90)", &WITH_BPM, 10, 45.0),
        (&ANGLE, "0:(0), 4b:(90)", &WITH_BPM, 20, 90.0),
        (&ANGLE, "0:(b)", &WITH_BPM, 5, 1.0),
        // Easing from a key to the next, at a quarter and at half way.
        (&ANGLE, "0:(0) step, 8:(8)", &TEN_FPS, 7, 0.0),
        (&ANGLE, "0:(0) ease-in, 8:(8)", &TEN_FPS, 4, 2.0),
        (&ANGLE, "0:(0) ease-out, 8:(8)", &TEN_FPS, 4, 6.0),
        (&ANGLE, "0:(0) ease-in-out, 8:(8)", &TEN_FPS, 2, 8.0 * 0.15625),
        (&ANGLE, "0:(0) EASE-IN-OUT, 8:(8)", &TEN_FPS, 4, 4.0),
        // A cubic goes through its keys and, on keys in a line, is the line.
        (&ANGLE, "0:(0) cubic, 4:(4) cubic, 8:(8)", &TEN_FPS, 4, 4.0),
        (&ANGLE, "0:(0) cubic, 4:(4) cubic, 8:(8)", &TEN_FPS, 3, 3.0),
        // Formulas at keys are evaluated at the frame and interpolated.
        (&ANGLE, "0:(t), 10:(2*t)", &TEN_FPS, 5, 7.5),
        // Fractional keys: 1.5 s is frame 15.
        (&ANGLE, "0:(0), 1.5s:(15)", &TEN_FPS, 15, 15.0),
    ];
    for (spec, text, timing, frame, want) in cases {
        let got = value(spec, text, timing, *frame);
        assert!((got - want).abs() < 1e-9, "{} {text:?} at frame {frame}: {got}, want {want}", spec.flag);
    }
}

#[test]
fn a_centre_has_two_values_and_a_cubic_passes_through_a_peak_smoothly() {
    let centre = Schedule::parse(&CENTRE, "0:(0.5, 0.5), 10:(0.25, max(0.75, 0.1))").unwrap();
    assert_eq!(centre.at(&CENTRE, &TEN_FPS, 10).unwrap(), [0.25, 0.75]);
    assert_eq!(Schedule::parse(&CENTRE, "0.3,0.6").unwrap().as_constant(), Some([0.3, 0.6]));
    // Around a peak, a cubic's neighbours on each side of the key are close to it (no kink);
    // linear easing has the same steps on both sides.
    let cubic = Schedule::parse(&ANGLE, "0:(0) cubic, 10:(10) cubic, 20:(0)").unwrap();
    let at = |f| cubic.at(&ANGLE, &TEN_FPS, f).unwrap()[0];
    assert!((at(10) - 10.0).abs() < 1e-9);
    assert!(at(9) > 9.5 && at(11) > 9.5, "{} {}", at(9), at(11));
}

#[test]
fn second_and_beat_keys_stay_in_time_when_the_movie_is_longer() {
    let s = Schedule::parse(&ANGLE, "0:(0), 2s:(20), 8b:(0)").unwrap();
    for frames in [40, 400] {
        s.check(&ANGLE, &WITH_BPM, frames).unwrap();
        assert_eq!(s.at(&ANGLE, &WITH_BPM, 20).unwrap()[0], 20.0, "{frames} frames");
    }
    // At 20 fps the same keys fall on other frames, at the same seconds.
    let fast = Timing { fps: 20.0, bpm: Some(120.0), beats: None };
    assert_eq!(s.at(&ANGLE, &fast, 40).unwrap()[0], 20.0);
}

#[test]
fn bad_schedules_name_the_key_and_the_character() {
    let huge_formula = format!("0:({})", "t+".repeat(50 << 20) + "1");
    let keys = |n: u32| (0..n).map(|i| format!("{i}:(2)")).collect::<Vec<_>>().join(",");
    // (spec, schedule, frames, timing, what the message says)
    let cases: Vec<(&Spec, String, u32, &Timing, &str)> = vec![
        (&ZOOM, "".into(), 10, &TEN_FPS, "--zoom: is empty"),
        (&ZOOM, "0:(1), 10:(2".into(), 20, &TEN_FPS, "--zoom: character 11: this '(' is never closed"),
        (&ZOOM, "2)".into(), 20, &TEN_FPS, "--zoom: character 2: this ')' closes nothing"),
        (&ZOOM, "0:(1), 5:(2) cubc".into(), 20, &TEN_FPS, "--zoom: character 14: unknown easing \"cubc\""),
        (&ZOOM, "0:(1), x5:(2)".into(), 20, &TEN_FPS, "--zoom: character 8: \"x5\" is not a key"),
        (&ZOOM, "0:(1), 5:2".into(), 20, &TEN_FPS, "--zoom: character 10: a key's value goes in parentheses"),
        (&ZOOM, "0:(1), 5:()".into(), 20, &TEN_FPS, "--zoom: character 11: a value is missing"),
        (
            &ZOOM,
            "0:(1), 2s:(2)".into(),
            10,
            &TEN_FPS,
            "--zoom: key \"2s:(2)\" (character 8) is at frame 20, past the movie's end (frame 10, 1 s)",
        ),
        (
            &ZOOM,
            "0:(1), 12:(2), 1s:(3)".into(),
            20,
            &TEN_FPS,
            "key \"1s:(3)\" (character 16) is at frame 10, not after the key before it (12:(2) at frame 12)",
        ),
        (&ZOOM, "0:(1), 5:(2), 5:(3)".into(), 20, &TEN_FPS, "not after the key before it"),
        (&ANGLE, "0:(1/(t-5))".into(), 20, &TEN_FPS, "--angle: key \"0:(1/(t-5))\" (character 1) gives inf at frame 5"),
        (
            &ANGLE,
            "0:(1), 4:(sqrt(3-t))".into(),
            20,
            &TEN_FPS,
            "--angle: key \"4:(sqrt(3-t))\" (character 8) gives NaN at frame 4",
        ),
        (&ZOOM, "0:(2-t)".into(), 20, &TEN_FPS, "gives 0 at frame 2; a magnification per second must be above 0"),
        (&ZOOM, "0:(1), 3:(20)".into(), 20, &TEN_FPS, "--zoom: at frame 3 (0.3 s) the magnification per second is 20"),
        (&ZOOM, "0".into(), 20, &TEN_FPS, "--zoom: at frame 0 (0 s) the magnification per second is 0"),
        (&ZOOM, "0:(x*2)".into(), 20, &TEN_FPS, "--zoom: character 4: unknown name \"x\""),
        (&ZOOM, "0:(sin(t)".into(), 20, &TEN_FPS, "character 3: this '(' is never closed"),
        (&ZOOM, "0:(2*/t)".into(), 20, &TEN_FPS, "character 4: \"2*/t\" is not a formula"),
        (&ZOOM, "0:(1), 4b:(2)".into(), 80, &TEN_FPS, "key \"4b:(2)\" (character 8) is in beats, which needs --bpm"),
        (&ANGLE, "0:(b)".into(), 80, &TEN_FPS, "--angle: uses beats (b), which needs --bpm"),
        (
            &CENTRE,
            "0:(0.5)".into(),
            20,
            &TEN_FPS,
            "--centre: character 4: expected 2 values separated by a comma (X,Y), got \"0.5\"",
        ),
        (&CENTRE, "0.5,1.5".into(), 20, &TEN_FPS, "the fraction of the frame is 1.5; it must be between 0 and 1"),
        (
            &ITERS,
            "0:(4), 10:(0.2)".into(),
            20,
            &TEN_FPS,
            "--iters: at frame 8 (0.8 s) the iterations per frame is 0.96; it must be between 1 and 10000",
        ),
        (&ZOOM, keys(1001), 20_000, &TEN_FPS, "--zoom: has 1001 keys, at most 1000 allowed"),
        (&ZOOM, keys(10_000), 20_000, &TEN_FPS, "--zoom: is 88889 bytes, at most 65536 allowed"),
        (&ZOOM, huge_formula, 20, &TEN_FPS, "--zoom: is 104857605 bytes, at most 65536 allowed"),
        (
            &ZOOM,
            format!("0:({})", "t+".repeat(200) + "1"),
            20,
            &TEN_FPS,
            "character 4: a formula is 401 bytes, at most 256 allowed",
        ),
    ];
    for (spec, text, frames, timing, want) in cases {
        let got = Schedule::parse(spec, &text).and_then(|s| s.check(spec, timing, frames));
        let err = got.expect_err(&crate::limits::quoted_prefix(&text)).to_string();
        assert!(err.contains(want), "{:?}: {err:?} does not say {want:?}", crate::limits::quoted_prefix(&text));
        assert!(err.len() < 400, "{err}");
    }
}
