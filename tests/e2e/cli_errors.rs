//! Bad input: a non-zero exit, one clear message naming the field, and nothing left at OUT.

use crate::helpers::{example, gramzoom, stderr, tempdir, SMALL};

#[test]
fn bad_input_is_rejected_with_the_field_named_and_no_output_left() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "not an image").unwrap();
    std::fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::write(d.join("bad.safetensors"), b"nope").unwrap();
    std::fs::create_dir(d.join("readonly")).unwrap();
    let wheat = example("wheatfield.jpg");
    let wheat = wheat.to_str().unwrap();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    let (missing, notes, broken, bad_w) = (p("missing.jpg"), p("notes.txt"), p("broken.png"), p("bad.safetensors"));
    let (out, webm, gif) = (p("out.mp4"), p("out.webm"), p("out.gif"));
    let (named_a, named_b) = (format!("a={wheat}"), format!("b={}", example("gravel.png").display()));
    let (named_notes, notes_bare) = (format!("b={notes}"), p("2020 notes.txt"));
    // (arguments after `render`, text the error must contain)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&missing, "-o", &out], "style image"),
        (vec![&missing, "-o", &out], "no such file"),
        (vec![&notes, "-o", &out], "not a readable png or jpeg image"),
        (vec![&broken, "-o", &out], "not a readable png or jpeg image"),
        (vec![wheat, "-o", &out, "--size", "0x48"], "--size: width must be between 32 and 7680, got 0"),
        (vec![wheat, "-o", &out, "--size", "8000x48"], "--size: width must be between 32 and 7680"),
        (vec![wheat, "-o", &out, "--size", "big"], "--size: expected WIDTHxHEIGHT"),
        (vec![wheat, "-o", &out, "--size", "65x48"], "--size: an .mp4 (H.264, yuv420p) needs an even width and height"),
        (vec![wheat, "-o", &out, "--frames", "0"], "--frames: must be between 1 and"),
        (vec![wheat, "-o", &out, "--seconds", "-1"], "--seconds: must be above 0"),
        (vec![wheat, "-o", &out, "--fps", "0"], "--fps: expected a number between 1 and 240"),
        (vec![wheat, "-o", &out, "--fps", "500"], "--fps: expected a number between 1 and 240"),
        (
            vec![wheat, "-o", &out, "--zoom", "20"],
            "--zoom: at frame 0 (0 s) the magnification per second is 20; it must be between 0.0625 and 16",
        ),
        (
            vec![wheat, "-o", &out, "--iters", "0"],
            "--iters: at frame 0 (0 s) the iterations per frame is 0; it must be between 1 and 10000",
        ),
        // Schedules: the key and the character, keys past the end, a formula that fails at a
        // frame, a tempo missing, and the centre's pairs.
        (
            vec![wheat, "-o", &out, "--frames", "30", "--zoom", "0:(1.5), 2s:(3)"],
            "--zoom: key \"2s:(3)\" (character 10) is at frame 60, past the movie's end (frame 30, 1 s)",
        ),
        (
            vec![wheat, "-o", &out, "--frames", "30", "--zoom", "0:(1.5), 10:(3) wobble"],
            "--zoom: character 17: unknown easing \"wobble\"",
        ),
        (
            vec![wheat, "-o", &out, "--frames", "30", "--angle", "10/(t-20)"],
            "--angle: key \"10/(t-20)\" (character 1) gives inf at frame 20",
        ),
        (
            vec![wheat, "-o", &out, "--frames", "30", "--angle", "0:(0), 2b:(90)"],
            "--angle: key \"2b:(90)\" (character 8) is in beats, which needs --bpm",
        ),
        (
            vec![wheat, "-o", &out, "--frames", "30", "--centre", "0:(0.5), 10:(0.2,0.2)"],
            "--centre: character 4: expected 2 values separated by a comma (X,Y), got \"0.5\"",
        ),
        (
            vec![wheat, "-o", &out, "--frames", "30", "--bpm", "0"],
            "--bpm: must be between 1 and 1000 beats per minute, got 0",
        ),
        (vec![wheat, "-o", &out, "--warmup", "1000000"], "--warmup: must be at most"),
        // Styles over time: names, the blend, and each style's file.
        (
            vec!["-o", &out, "--style", &named_a, "--style", &named_b, "--blend", "0:(a), 10:(c)"],
            "--blend: character 12: unknown style \"c\"; the movie's styles are a, b",
        ),
        (
            vec!["-o", &out, "--style", &named_a, "--style", &named_b, "--blend", "0:(a:1-t/5, b:0)"],
            "--blend: at frame 5 (0.167 s) every style weighs 0",
        ),
        (vec!["-o", &out, "--style", &named_a, "--style", &named_a], "--style: two styles are named \"a\""),
        (vec![wheat, "-o", &out, "--style", &named_a], "--style: give the style as STYLE"),
        (vec!["-o", &out, "--style", &named_a, "--style", &named_notes], "not a readable png or jpeg image"),
        (vec!["-o", &out, "--style", &notes_bare], "--style: \""),
        (
            vec![wheat, "-o", &out, "--blend", "0:(a)"],
            "the following required arguments were not provided:\n  --style <NAME=PATH>",
        ),
        (
            vec![wheat, "-o", &out, "--style-scale", "0"],
            "'--style-scale <STYLE_SCALE>': must be auto or a number between 0.05 and 8.0",
        ),
        (vec![wheat, "-o", &out, "--optimizer", "sgd"], "--optimizer: expected adam or lbfgs"),
        (vec![wheat, "-o", &out, "--network", "resnet"], "--network: expected vgg16 or vgg19"),
        (vec![wheat, "-o", &out, "--network", "multiscale"], "--network: multiscale is an experimental design"),
        (vec![wheat, "-o", &out, "--loss", "l1"], "--loss: expected gram or swd, got \"l1\""),
        (vec![wheat, "-o", &out, "--loss", ""], "--loss: expected gram or swd, got an empty value"),
        (vec![wheat, "-o", &out, "--precision", "fp16"], "--precision: expected auto, fp32, tf32 or bf16"),
        (vec![wheat, "-o", &out, "--layers", "conv9_1"], "--layers: vgg16 has no layer \"conv9_1\""),
        (vec![wheat, "-o", &out, "--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N"),
        (vec![wheat, "-o", &out, "--segment-frames", "0"], "--segment-frames: must be at least 1"),
        (vec![wheat, "-o", &out, "--threads", "0"], "invalid value '0' for '--threads <THREADS>': 0 is not in 1.."),
        (vec![wheat, "-o", &out, "--weights", &bad_w], "not a safetensors file"),
        (vec![wheat, "-o", &webm], "--output: unknown output extension \"webm\"; use .mp4, .gif, .png or .jpg"),
        (vec![wheat, "-o", "/nonexistent-dir/out.mp4"], "--output: cannot write to /nonexistent-dir"),
        (vec![wheat, "-o", &gif, "--fps", "60"], "--fps: a .gif stores frame delays in 1/100 s"),
    ];
    for (args, want) in cases {
        // The shared small-render flags first: the case's own flags override them.
        let mut all = vec!["render"];
        all.extend(SMALL);
        all.extend(&args);

        let r = gramzoom(&all, d);
        let err = stderr(&r);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: expected {want:?} in:\n{err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{args:?}: one error line:\n{err}");
        let left: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(
            !left.iter().any(|n| n.to_string_lossy().starts_with("out") || n.to_string_lossy().contains(".partial")),
            "{args:?} left {left:?}"
        );
    }
}

#[test]
fn weights_with_missing_or_misshapen_tensors_are_rejected_by_name() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = tempdir();
    let good: Vec<f32> = vec![0.0; 64 * 3 * 9];
    let wrong: Vec<f32> = vec![0.0; 64 * 3 * 25];
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (gb, wb) = (bytes(&good), bytes(&wrong));
    let cases = [
        ("missing.safetensors", vec![64usize, 3, 3, 3], &gb, "missing tensor features.0.bias"),
        (
            "misshapen.safetensors",
            vec![64, 3, 5, 5],
            &wb,
            "tensor features.0.weight has shape [64, 3, 5, 5], vgg16 conv1_1 needs [64, 3, 3, 3]",
        ),
    ];
    for (name, shape, data, want) in cases {
        let view = TensorView::new(Dtype::F32, shape, data).unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, safetensors::tensor::serialize([("features.0.weight", view)], &None).unwrap()).unwrap();
        let out = dir.path().join("out.png");
        let mut args = vec!["render", "-o", out.to_str().unwrap(), "--weights", file.to_str().unwrap()];
        args.extend(crate::helpers::SMALL);
        let r = gramzoom(&args, dir.path());
        assert!(!r.status.success());
        assert!(stderr(&r).contains(want), "{name}: {}", stderr(&r));
        assert!(!out.exists());
    }
}
