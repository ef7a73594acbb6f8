//! Segments and hand-off: a movie rendered in one segment and the same movie rendered in
//! segments whose state round-trips through its file format are identical, bit for bit.

use crate::helpers::{command, example, frames_in, stderr, tempdir, SMALL};

#[test]
fn segmented_render_is_bit_identical_to_one_segment() {
    let dir = tempdir();
    let style = example("wheatfield.jpg");
    // Both optimisers, bf16 (the GPU default), and the sliced Wasserstein loss, whose random
    // directions are drawn per frame and so must not depend on where a segment starts.
    let cases: [(&str, &[&str]); 4] =
        [("adam", &[]), ("lbfgs", &[]), ("adam-bf16", &["--precision", "bf16"]), ("adam-swd", &["--loss", "swd"])];
    for (case, extra) in cases {
        let optimizer = case.split('-').next().unwrap();
        let mut dumps = Vec::new();
        for seg in [None, Some("4"), Some("5")] {
            let frames = dir.path().join(format!("{case}-{}", seg.unwrap_or("all")));
            let out = dir.path().join(format!("{case}-{}.mp4", seg.unwrap_or("all")));
            let mut args = vec!["render", style.to_str().unwrap(), "-o", out.to_str().unwrap(), "--frames", "11"];
            args.extend(["--optimizer", optimizer, "--frames-dir", frames.to_str().unwrap()]);
            args.extend(SMALL);
            args.extend(extra);
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
                assert!(a == b, "{case}: segmented render {k} differs at frame {i}");
            }
        }
    }
}

/// A state resumes only the render that made it; when a setting a user chooses differs, the
/// error names both (a state made in fp32 is refused by a bf16 render, with the reason).
#[test]
fn a_state_only_resumes_the_render_that_made_it() {
    use engine::params::{LossKind, Precision};
    use engine::{style::Style, vgg::Vgg, Engine, RenderParams};
    let device = tch::Device::Cpu;
    let params = RenderParams { width: 32, height: 32, frames: 4, warmup: 2, iters: 1, ..RenderParams::default() };
    let engine = Engine::new(params.clone(), Style::embedded(), Vgg::random(params.network, device), device).unwrap();
    let mut state = engine.initial_state(&mut |_| {}).unwrap();
    engine.render(&mut state, 2, &mut |_| Ok(()), &mut |_| {}).unwrap();
    // Through the file format, as between workers.
    let bytes = state.to_bytes();
    let cases = [
        (RenderParams { zoom: 3.0, ..params.clone() }, "made by a render with other parameters, style or weights"),
        (
            RenderParams { precision: Precision::Bf16, ..params.clone() },
            "other settings (\"32x32, vgg16, gram loss, fp32, adam, seed 0\"), this render is 32x32, vgg16, gram loss, bf16, adam, seed 0",
        ),
        (RenderParams { loss: LossKind::Swd, ..params.clone() }, "this render is 32x32, vgg16, swd loss, fp32"),
        (RenderParams { seed: 9, ..params.clone() }, "seed 9"),
    ];
    for (other, want) in cases {
        let mut state = engine::State::from_bytes(&bytes, std::path::Path::new("state"), device).unwrap();
        let other = Engine::new(other, Style::embedded(), Vgg::random(params.network, device), device).unwrap();
        let err = other.render(&mut state, 4, &mut |_| Ok(()), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}
