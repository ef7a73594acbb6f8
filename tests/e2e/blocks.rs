//! Any size in bounded memory (`--blocks`): a render whose loss is computed in blocks is the
//! whole frame's render, resumes bit for bit from its hand-off state, and block settings that
//! cannot work are refused before any work, naming the flag.

use crate::helpers::{example, in_parallel, stderr, tempdir};
use engine::block::BlockChoice;
use engine::params::LossKind;
use engine::{style::Style, vgg::Vgg, Engine, RenderParams};

/// 96x80 frames in tiles of 64x64 (four blocks, each with a 32-pixel margin for layers down to
/// conv4_1) against the whole frame, for both losses:
/// - from the same start state, the first frame (a zoom and two iterations) is the whole
///   frame's within one grey level: the loss is the whole frame's up to rounding;
/// - over a movie the two drift apart as a render on another thread count does (the optimiser
///   turns last-bit differences into different but equally good texture: measured at frame 0
///   after the warm-up, 18 levels at most and 1.5 on average against 19 and 2.1 between one and
///   two threads), so the movies are compared by their colours: every frame's mean within one
///   grey level per channel;
/// - the block-wise movie in segments of 3, each by a fresh engine with its state through the
///   file format, is bit-identical to one piece.
#[test]
fn a_render_in_blocks_is_the_whole_frames_render_and_resumes_bit_for_bit() {
    let device = tch::Device::Cpu;
    let layers = ["conv1_1", "conv2_1", "conv3_1", "conv4_1"].iter().map(|l| (l.to_string(), 1.0)).collect();
    let gram =
        RenderParams { width: 96, height: 80, frames: 8, warmup: 12, iters: 2.into(), layers, ..Default::default() };
    let swd = RenderParams { loss: LossKind::Swd, ..gram.clone() };
    let tiles = BlockChoice::Tile { width: 64, height: 64 };
    let engine = |params: &RenderParams, blocks: BlockChoice| {
        let style = Style::open(&example("wheatfield.jpg")).unwrap();
        let net = Vgg::random(params.network, device);
        let engine = Engine::with_blocks(params.clone(), style, net, device, blocks).unwrap();
        let want = if blocks == BlockChoice::Off { None } else { Some((64, 64)) };
        assert_eq!(engine.blocks().map(|l| l.tile), want, "{blocks}");
        engine
    };
    let through_file =
        |s: &engine::State| engine::State::from_bytes(&s.to_bytes(), std::path::Path::new("state"), device).unwrap();
    // Whole movies, and the first frame from the whole render's start state, per loss.
    let jobs = vec![
        (gram.clone(), BlockChoice::Off, None),
        (gram.clone(), tiles, None),
        (gram.clone(), tiles, Some(3)),
        (swd.clone(), BlockChoice::Off, None),
        (swd.clone(), tiles, None),
    ];
    let movies = in_parallel(jobs, |(params, blocks, segment): (RenderParams, BlockChoice, Option<u32>)| {
        let mut state = engine(&params, blocks).initial_state(&mut |_| {}).unwrap();
        let mut frames = Vec::new();
        while state.next_frame < params.frames {
            let end = segment.map_or(params.frames, |k| (state.next_frame + k).min(params.frames));
            let mut keep = |f: engine::Frame| {
                frames.push(f.rgb);
                Ok(())
            };
            engine(&params, blocks).render(&mut state, end, &mut keep, &mut |_| {}).unwrap();
            state = through_file(&state);
        }
        frames
    });
    let first_frames = in_parallel(vec![gram.clone(), swd.clone()], |params: RenderParams| {
        let start = engine(&params, BlockChoice::Off).initial_state(&mut |_| {}).unwrap();
        [BlockChoice::Off, tiles].map(|blocks| {
            let mut state = through_file(&start);
            let mut frame = Vec::new();
            let mut keep = |f: engine::Frame| {
                frame = f.rgb.to_vec();
                Ok(())
            };
            engine(&params, blocks).render(&mut state, 1, &mut keep, &mut |_| {}).unwrap();
            frame
        })
    });
    let mean =
        |f: &[u8], c: usize| f.iter().skip(c).step_by(3).map(|v| f64::from(*v)).sum::<f64>() / (f.len() / 3) as f64;
    for (l, (name, whole, blocks)) in
        [("gram", &movies[0], &movies[1]), ("swd", &movies[3], &movies[4])].into_iter().enumerate()
    {
        let [a, b] = &first_frames[l];
        let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        eprintln!("{name}: the first frame from one state: {differ} of {} values differ, at most by {worst}", a.len());
        assert!(
            worst <= 1,
            "{name}: from the same state, frame 0 in blocks is {worst} grey levels from the whole frame's"
        );
        assert_eq!(whole.len(), 8);
        for (i, (a, b)) in whole.iter().zip(blocks).enumerate() {
            let worst = a.iter().zip(b.iter()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
            let means: Vec<(f64, f64)> = (0..3).map(|c| (mean(a, c), mean(b, c))).collect();
            eprintln!("{name} movie frame {i}: at most {worst} levels apart, channel means {means:.1?}");
            for (c, (x, y)) in means.iter().enumerate() {
                assert!((x - y).abs() <= 1.0, "{name}: frame {i}, channel {c}: mean {y:.2} in blocks, {x:.2} whole");
            }
        }
    }
    for (i, (a, b)) in movies[1].iter().zip(&movies[2]).enumerate() {
        assert!(a == b, "a block-wise render in segments of 3 differs at frame {i}");
    }
}

/// Settings that cannot work fail before any work, each naming the flag and what would: a
/// block smaller than the default layers' margin, a whole frame larger than the memory the
/// machine offers (capped here by GRAMZOOM_MEMORY_GIB so the check holds on any machine), and
/// a value that is not a size, a device list naming `auto` or a device that is not there.
/// None leaves an output behind.
#[test]
fn block_settings_that_cannot_work_are_refused_before_any_work() {
    let dir = tempdir();
    let out = dir.path().join("x.mp4");
    let out = out.to_str().unwrap();
    let base = ["render", "-o", out, "--frames", "2", "--quiet"];
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["--size", "256x256", "--blocks", "32x32"],
            "--blocks",
            "a block of 32x32 is smaller than the margin of 96 pixels",
        ),
        (&["--size", "7680x4320", "--blocks", "off"], "--blocks", "off: a whole 7680x4320 frame needs about"),
        (&["--size", "256x256", "--blocks", "big"], "--blocks", "expected auto, off or WIDTHxHEIGHT"),
        (&["--size", "256x256", "--device", "cpu,auto"], "--device", "a list names each device"),
        (&["--size", "256x256", "--device", "cpu,cuda:7"], "cuda:7", "CUDA device"),
    ];
    for (extra, flag, want) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let t = std::time::Instant::now();
        let mut cmd = crate::helpers::command(dir.path());
        let r = cmd.env("GRAMZOOM_MEMORY_GIB", "8").args(&args).output().unwrap();
        let err = stderr(&r);
        assert!(!r.status.success(), "{extra:?} was accepted");
        assert!(err.contains(flag) && err.contains(want), "{extra:?}: {err}");
        assert!(t.elapsed().as_secs() < 60, "{extra:?} took {:?} to refuse", t.elapsed());
        assert!(!std::path::Path::new(out).exists(), "{extra:?} left an output");
    }
}

/// Through the CLI: a movie whose blocks are spread over two CPU "devices" (a thread each, one
/// libtorch thread each) is the one-device movie with the same blocks, bit for bit.
#[test]
fn a_render_spread_over_devices_is_the_one_device_render() {
    let dir = tempdir();
    let style = example("gravel.png");
    let mut dumps = Vec::new();
    for device in ["cpu", "cpu,cpu"] {
        let frames = dir.path().join(device.replace(',', "-"));
        let out = dir.path().join(format!("{}.mp4", device.replace(',', "-")));
        let args = [
            "render",
            style.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--size",
            "96x80",
            "--frames",
            "5",
            "--warmup",
            "8",
            "--iters",
            "2",
            "--layers",
            "conv1_1=1,conv2_1=1,conv3_1=1,conv4_1=1",
            "--blocks",
            "48x48",
            "--threads",
            "1",
            "--device",
            device,
            "--frames-dir",
            frames.to_str().unwrap(),
            "--quiet",
        ];
        let r = crate::helpers::command(dir.path()).env("RUST_LOG", "info").args(args).output().unwrap();
        assert!(r.status.success(), "{device}: {}", stderr(&r));
        let spread = stderr(&r).contains("each frame's blocks are spread over devices devices=2");
        assert_eq!(spread, device == "cpu,cpu", "{device}: {}", stderr(&r));
        dumps.push(crate::helpers::frames_in(&frames));
    }
    assert_eq!(dumps[0].len(), 5);
    assert!(dumps[0] == dumps[1], "the render spread over cpu,cpu differs from the one on cpu");
}
