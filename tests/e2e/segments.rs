//! Segments and hand-off: a movie rendered in one segment and the same movie rendered in
//! segments whose state round-trips through its file format are identical, bit for bit.

use crate::helpers::{command, example, frames_in, stderr, tempdir, SMALL};

#[test]
fn segmented_render_is_bit_identical_to_one_segment() {
    let dir = tempdir();
    let style = example("wheatfield.jpg");
    for optimizer in ["adam", "lbfgs"] {
        let mut dumps = Vec::new();
        for seg in [None, Some("4"), Some("5")] {
            let frames = dir.path().join(format!("{optimizer}-{}", seg.unwrap_or("all")));
            let out = dir.path().join(format!("{optimizer}-{}.mp4", seg.unwrap_or("all")));
            let mut args = vec!["render", style.to_str().unwrap(), "-o", out.to_str().unwrap(), "--frames", "11"];
            args.extend(["--optimizer", optimizer, "--frames-dir", frames.to_str().unwrap()]);
            args.extend(SMALL);
            if let Some(k) = seg {
                args.extend(["--segment-frames", k]);
            }
            if seg.is_some() {
                args.retain(|a| *a != "--quiet"); // for the progress lines that name the segments
            }
            let r = command(dir.path()).env("RUST_LOG", "info").args(&args).output().unwrap();
            assert!(r.status.success(), "{}", stderr(&r));
            // The user's segment length holds: never resized from the measured pace, which
            // would move chunk boundaries (and the output's bytes) with the machine's load.
            if let Some(k) = seg {
                let want = format!("segment={0}/{0}", 11u32.div_ceil(k.parse().unwrap()));
                assert!(stderr(&r).contains(&want), "no {want} in {}", stderr(&r));
            }
            dumps.push(frames_in(&frames));
        }
        assert_eq!(dumps[0].len(), 11);
        for (k, d) in dumps.iter().enumerate().skip(1) {
            for (i, (a, b)) in dumps[0].iter().zip(d).enumerate() {
                assert!(a == b, "{optimizer}: segmented render {k} differs at frame {i}");
            }
        }
    }
}

#[test]
fn a_state_only_resumes_the_render_that_made_it() {
    use engine::{style::Style, vgg::Vgg, Engine, RenderParams};
    let device = tch::Device::Cpu;
    let params = RenderParams { width: 32, height: 32, frames: 4, warmup: 2, iters: 1, ..RenderParams::default() };
    let engine = Engine::new(params.clone(), Style::embedded(), Vgg::random(params.network, device), device).unwrap();
    let mut state = engine.initial_state(&mut |_| {}).unwrap();
    engine.render(&mut state, 2, &mut |_| Ok(()), &mut |_| {}).unwrap();
    let other = RenderParams { seed: 9, ..params.clone() };
    let other = Engine::new(other, Style::embedded(), Vgg::random(params.network, device), device).unwrap();
    let err = other.render(&mut state, 4, &mut |_| Ok(()), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("made by a render with other parameters"), "{err}");
}
