//! Segments and hand-off: a movie rendered in one segment and the same movie rendered in
//! segments whose state round-trips through its file format are identical, bit for bit.

use crate::helpers::{command, example, frames_in, stderr, tempdir, SMALL};

/// Through the coordinator's store, as between cluster workers: `render --segment-frames`
/// gives the frames of one segment, bit for bit, with the user's segment length held, for a
/// directed movie whose schedules (in frames, seconds and beats) and cross-fade between two
/// styles cross the segment boundaries.
#[test]
fn segmented_render_is_bit_identical_to_one_segment() {
    let dir = tempdir();
    let (a, b) =
        (format!("a={}", example("wheatfield.jpg").display()), format!("b={}", example("gravel.png").display()));
    let mut dumps = Vec::new();
    for seg in [None, Some("4")] {
        let frames = dir.path().join(seg.unwrap_or("all"));
        let out = dir.path().join(format!("{}.mp4", seg.unwrap_or("all")));
        let mut args = vec!["render", "--style", &a, "--style", &b, "-o", out.to_str().unwrap(), "--frames", "11"];
        args.extend(["--blend", "0:(a), 0.2s:(a) ease-in-out, 2b:(b), 1s:(a:1, b:2)"]);
        args.extend(["--frames-dir", frames.to_str().unwrap()]);
        args.extend(SMALL);
        args.extend(["--fps", "10", "--bpm", "150", "--zoom", "0:(1.5), 0.6s:(3) ease-in-out, 1s:(0.8)"]);
        args.extend(["--centre", "0.5+0.2*sin(t/3), 0.5", "--angle", "0:(0) step, 2b:(30)", "--iters", "0:(1), 9:(3)"]);
        if let Some(k) = seg {
            args.retain(|a| *a != "--quiet"); // for the progress lines that name the segments
            args.extend(["--segment-frames", k]);
        }
        let r = command(dir.path()).env("RUST_LOG", "info").args(&args).output().unwrap();
        assert!(r.status.success(), "{}", stderr(&r));
        // The user's segment length holds: never resized from the measured pace, which would
        // move chunk boundaries (and the output's bytes) with the machine's load.
        if let Some(k) = seg {
            let want = format!("segment={0}/{0}", 11u32.div_ceil(k.parse().unwrap()));
            assert!(stderr(&r).contains(&want), "no {want} in {}", stderr(&r));
        }
        dumps.push(frames_in(&frames));
    }
    assert_eq!(dumps[0].len(), 11);
    for (i, (a, b)) in dumps[0].iter().zip(&dumps[1]).enumerate() {
        assert!(a == b, "segmented render differs at frame {i}");
    }
}

/// The same for every optimiser, bf16 (the GPU default) and the sliced Wasserstein loss, whose
/// random directions are drawn per frame and so must not depend on where a segment starts: in
/// segments of 4 and of 5 frames, each state round-tripped through its file format, the frames
/// are those of one segment, bit for bit.
#[test]
fn every_optimiser_precision_and_loss_resumes_bit_for_bit() {
    use engine::params::{LossKind, OptimizerKind, Precision};
    use engine::{style::Style, vgg::Vgg, Engine, RenderParams};
    let device = tch::Device::Cpu;
    let small =
        RenderParams { width: 48, height: 32, frames: 11, warmup: 12, iters: 2.into(), ..RenderParams::default() };
    let cases = [
        ("adam", small.clone()),
        ("lbfgs", RenderParams { optimizer: OptimizerKind::Lbfgs, ..small.clone() }),
        // Smaller: bf16 on a CPU without native bf16 costs about 9x fp32.
        ("adam-bf16", RenderParams { precision: Precision::Bf16, width: 32, ..small.clone() }),
        ("adam-swd", RenderParams { loss: LossKind::Swd, ..small.clone() }),
        ("directed", directed(&small)),
        ("blend-gram", blended(&small)),
        ("blend-swd", RenderParams { loss: LossKind::Swd, ..blended(&small) }),
    ];
    let jobs: Vec<_> =
        cases.iter().flat_map(|c| [(c.clone(), None), (c.clone(), Some(4)), (c.clone(), Some(5))]).collect();
    let movies = crate::helpers::in_parallel(jobs, |((_, params), seg): ((&str, RenderParams), Option<u32>)| {
        // Each segment by an engine of its own, as on another worker.
        let engine = || {
            let names = ["wheatfield.jpg", "gravel.png"];
            let styles: Vec<Style> =
                names[..params.style_count()].iter().map(|n| Style::open(&example(n)).unwrap()).collect();
            Engine::new(params.clone(), styles, Vgg::random(params.network, device), device).unwrap()
        };
        let mut state = engine().initial_state(&mut |_| {}).unwrap();
        let mut frames = Vec::new();
        while state.next_frame < params.frames {
            let end = seg.map_or(params.frames, |k| (state.next_frame + k).min(params.frames));
            let mut keep = |f: engine::Frame| {
                frames.push(f.rgb);
                Ok(())
            };
            engine().render(&mut state, end, &mut keep, &mut |_| {}).unwrap();
            // Handed over through the file format.
            state = engine::State::from_bytes(&state.to_bytes(), std::path::Path::new("state"), device).unwrap();
        }
        frames
    });
    for (c, (case, _)) in cases.iter().enumerate() {
        let whole = &movies[3 * c];
        assert_eq!(whole.len(), 11, "{case}");
        for (k, segmented) in movies[3 * c + 1..3 * c + 3].iter().enumerate() {
            for (i, (a, b)) in whole.iter().zip(segmented).enumerate() {
                assert!(a == b, "{case}: segments of {} frames differ at frame {i}", k + 4);
            }
        }
    }
}

/// `params` with every schedule moving across the boundaries of segments of 4 and 5 frames:
/// the zoom from 1.5 to 3 per second and back (and out), a moving centre, a turn, iterations.
fn directed(params: &engine::RenderParams) -> engine::RenderParams {
    use proto::schedule::{Schedule, ANGLE, CENTRE, ITERS, ZOOM};
    engine::RenderParams {
        zoom: Schedule::parse(&ZOOM, "0:(1.5), 4:(3) ease-in-out, 8:(1.5) cubic, 10:(0.7)").unwrap(),
        centre: Schedule::parse(&CENTRE, "0:(0.3, 0.6), 10:(0.7, 0.45)").unwrap(),
        angle: Schedule::parse(&ANGLE, "30*sin(t/2)").unwrap(),
        iters: Schedule::parse(&ITERS, "0:(1) step, 3:(3), 9:(2)").unwrap(),
        ..params.clone()
    }
}

/// `params` cross-fading from the wheat field to the gravel over frames 2 to 7 (both segment
/// lengths have a boundary inside the fade), then mixing them.
fn blended(params: &engine::RenderParams) -> engine::RenderParams {
    let names = ["a".to_string(), "b".to_string()];
    let blend = proto::schedule::Blend::parse(&names, "0:(a), 2:(a), 7:(b) ease-in-out, 10:(a:1, b:1)").unwrap();
    engine::RenderParams { blend: Some(blend), ..params.clone() }
}

/// A state resumes only the render that made it; when a setting a user chooses differs, the
/// error names both (a state made in fp32 is refused by a bf16 render, with the reason).
#[test]
fn a_state_only_resumes_the_render_that_made_it() {
    use engine::params::{LossKind, Precision};
    use engine::{style::Style, vgg::Vgg, Engine, RenderParams};
    let device = tch::Device::Cpu;
    let params =
        RenderParams { width: 32, height: 32, frames: 4, warmup: 2, iters: 1.into(), ..RenderParams::default() };
    let engine = Engine::new(params.clone(), Style::embedded(), Vgg::random(params.network, device), device).unwrap();
    let mut state = engine.initial_state(&mut |_| {}).unwrap();
    engine.render(&mut state, 2, &mut |_| Ok(()), &mut |_| {}).unwrap();
    // Through the file format, as between workers.
    let bytes = state.to_bytes();
    let cases = [
        (RenderParams { zoom: 3.0.into(), ..params.clone() }, "made by a render with other parameters, style or weights"),
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

/// The engine does not walk a job's schedules when it is made (the submitter did, and a
/// segment of a long job must not walk a million frames): each frame it renders evaluates its
/// own, and a value out of range stops the render at that frame, naming it.
#[test]
fn a_frame_whose_schedule_is_out_of_range_stops_the_render_there() {
    use engine::{style::Style, vgg::Vgg, Engine, RenderParams};
    use proto::schedule::{Schedule, ZOOM};
    let device = tch::Device::Cpu;
    let params = RenderParams {
        width: 32,
        height: 32,
        frames: 5,
        warmup: 1,
        iters: 1.into(),
        zoom: Schedule::parse(&ZOOM, "0:(2), 3:(40)").unwrap(),
        ..RenderParams::default()
    };
    assert!(params.validate().is_err(), "the submitter's walk refuses it");
    let style = Style::open(&example("wheatfield.jpg")).unwrap();
    let engine = Engine::new(params.clone(), style, Vgg::random(params.network, device), device).unwrap();
    let mut state = engine.initial_state(&mut |_| {}).unwrap();
    let mut frames = 0;
    let err = engine
        .render(
            &mut state,
            5,
            &mut |_| {
                frames += 1;
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
    assert_eq!(frames, 3, "frames 0 to 2 rendered");
    assert!(err.contains("--zoom: at frame 3 (0.1 s) the magnification per second is 40"), "{err}");
}
