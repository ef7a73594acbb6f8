//! A tiny render in each output format, decoded back.

use crate::helpers::{command, decode_video, example, gramzoom, stderr, tempdir, SHALLOW, SMALL};

fn render(dir: &std::path::Path, out: &str, extra: &[&str]) -> std::path::PathBuf {
    let path = dir.join(out);
    let style = example("immunohistochemistry.png");
    let mut args = vec!["render", style.to_str().unwrap(), "-o", path.to_str().unwrap()];
    args.extend(SMALL.iter().chain(SHALLOW));
    args.extend(extra);
    let r = gramzoom(&args, dir);
    assert!(r.status.success(), "{out}: {}", stderr(&r));
    // The in-process coordinator's database is closed before its scratch folder is removed.
    assert!(!stderr(&r).contains("database failed"), "{out}: {}", stderr(&r));
    path
}

#[test]
fn mp4_has_exactly_the_frames_and_duration_asked_for() {
    let dir = tempdir();
    for (frames, fps, want_fps) in [("12", "30", 30.0), ("7", "29.97", 29.97)] {
        let path = render(dir.path(), &format!("out-{frames}.mp4"), &["--frames", frames, "--fps", fps]);
        let d = decode_video(&path);
        let n: usize = frames.parse().unwrap();
        assert_eq!(d.frames, n, "decoded frame count");
        assert_eq!(d.size, (64, 48));
        assert!((d.fps - want_fps).abs() < 1e-3, "fps {}", d.fps);
        assert!((d.duration - n as f64 / want_fps).abs() < 1e-3, "duration {} for {n} frames", d.duration);
    }
    // --seconds: 0.5 s at 30 fps is 15 frames.
    let d = decode_video(&render(dir.path(), "secs.mp4", &["--seconds", "0.5"]));
    assert_eq!(d.frames, 15);
}

#[test]
fn gif_loops_with_every_frame_and_the_right_total_delay() {
    let dir = tempdir();
    let path = render(dir.path(), "out.gif", &["--frames", "12", "--fps", "30"]);
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!((dec.width(), dec.height()), (64, 48));
    let mut delays = Vec::new();
    while let Some(f) = dec.read_next_frame().unwrap() {
        delays.push(f.delay);
    }
    assert_eq!(delays.len(), 12);
    assert_eq!(delays.iter().map(|&d| d as u32).sum::<u32>(), 40, "12 frames at 30 fps last 40 cs: {delays:?}");
    assert_eq!(dec.repeat(), gif::Repeat::Infinite);
}

#[test]
fn stills_and_frame_dumps() {
    let dir = tempdir();
    let frames = dir.path().join("frames");
    let png = render(dir.path(), "still.png", &["--frames", "3", "--frames-dir", frames.to_str().unwrap()]);
    let jpg = render(dir.path(), "still.jpg", &["--frames", "3"]);
    let still = image::open(&png).unwrap().to_rgb8();
    assert_eq!(still.dimensions(), (64, 48));
    assert_eq!(image::open(&jpg).unwrap().to_rgb8().dimensions(), (64, 48));
    let dumped = crate::helpers::frames_in(&frames);
    assert_eq!(dumped.len(), 3);
    // The still is the last frame, losslessly.
    assert_eq!(dumped[2], still.into_raw());
    assert_ne!(dumped[1], dumped[2]);
    // A render over within a second still closes its coordinator's database before the scratch
    // folder goes: once it warned "checkpointing the database failed error=disk I/O error".
    render(dir.path(), "quick.png", &["--frames", "1", "--size", "32x32", "--warmup", "1", "--iters", "1"]);
}

/// Ctrl-C (SIGINT) or SIGTERM mid-render: a non-zero exit, and neither the output nor its
/// temporary file is left behind.
#[test]
fn an_interrupted_render_leaves_nothing_behind() {
    for signal in ["-INT", "-TERM"] {
        let dir = tempdir();
        let out = dir.path().join("long.mp4");
        let child = command(dir.path())
            .args(["render", "-o", out.to_str().unwrap(), "--size", "64x48", "--frames", "100000", "--warmup", "1"])
            .env_remove("RUST_LOG") // what a user sees by default
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until it is rendering (its temporary output exists).
        let partial = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".partial"))
        };
        let start = std::time::Instant::now();
        while !partial() && start.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let killed = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let result = child.wait_with_output().unwrap();
        assert!(!result.status.success(), "{signal}: exit status {:?}", result.status);
        assert!(stderr(&result).contains("cancelled"), "{signal}: {}", stderr(&result));
        assert!(!out.exists() && !partial(), "{signal}: left files behind");
    }
}

/// Without a terminal (a log file, `kubectl logs`, CI) there is no progress bar, so progress
/// comes as log lines: frames done of total, fps, ETA and segment, ending with the last frame.
#[test]
fn progress_is_logged_where_there_is_no_terminal() {
    let dir = tempdir();
    let out = dir.path().join("logged.mp4");
    let flags = ["--size", "64x48", "--warmup", "6", "--iters", "2", "--frames", "6", "--segment-frames", "3"];
    let r = command(dir.path())
        .env_remove("RUST_LOG") // what a user sees by default
        .args(["render", "-o", out.to_str().unwrap()])
        .args(flags)
        .output()
        .unwrap();
    let err = stderr(&r);
    assert!(r.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" progress ")).collect();
    assert!(!lines.is_empty(), "no progress lines in:\n{err}");
    for line in &lines {
        for field in ["job=job-1", "frames=", "fps=", "eta_s=", "segment="] {
            assert!(line.contains(field), "{field} missing in {line:?}");
        }
    }
    let last = lines.last().unwrap();
    assert!(last.contains("frames=6/6") && last.contains("eta_s=0") && last.contains("segment=2/2"), "{last}");
    assert!(!err.contains('\u{1b}'), "terminal escapes in a log:\n{err}");
    // --quiet means quiet.
    let quiet = dir.path().join("quiet.mp4");
    let r = command(dir.path())
        .env_remove("RUST_LOG")
        .args(["render", "-o", quiet.to_str().unwrap(), "--quiet"])
        .args(flags)
        .output()
        .unwrap();
    assert!(r.status.success());
    assert!(!stderr(&r).contains("progress"), "{}", stderr(&r));
}
