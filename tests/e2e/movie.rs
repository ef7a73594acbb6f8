//! Movie files: a TOML file's keys are the flags they name, paths are relative to it, the
//! command line wins, and a bad file is refused with its line before anything runs.

use crate::helpers::{example, gramzoom, stderr, tempdir};

const MOVIE: &str = r#"# A directed movie, as a user would keep it under version control.
style = "style.jpg"
output = "out/movie.mp4"
frames_dir = "out/frames"
size = "64x48"
seconds = 1.2
fps = 10
zoom = "0:(1.5), 0.6s:(3) ease-in-out, 1.2s:(0.8)"
centre = "0:(0.4, 0.5), 1.2s:(0.6, 0.45)"
angle = "10*sin(TAU*s)"
iters = 2
warmup = 8
seed = 7
offline = true
quiet = true
# For `submit`: `render` passes it over.
priority = 3
"#;

#[test]
fn a_movie_file_is_its_flags_and_the_command_line_wins() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::copy(example("wheatfield.jpg"), d.join("style.jpg")).unwrap();
    std::fs::create_dir(d.join("out")).unwrap();
    let movie = d.join("movie.toml");
    std::fs::write(&movie, MOVIE).unwrap();
    let movie = movie.to_str().unwrap();

    // `plan` reads the file as `render` would: the same schedule as the flags give.
    let flags = [
        "--size",
        "64x48",
        "--seconds",
        "1.2",
        "--fps",
        "10",
        "--zoom",
        "0:(1.5), 0.6s:(3) ease-in-out, 1.2s:(0.8)",
        "--centre",
        "0:(0.4, 0.5), 1.2s:(0.6, 0.45)",
        "--angle",
        "10*sin(TAU*s)",
        "--iters",
        "2",
        "--warmup",
        "8",
    ];
    let from_file = gramzoom(&["plan", movie, "--no-estimate"], d);
    let from_flags = gramzoom(&[&["plan", "--no-estimate"], &flags[..]].concat(), d);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let table = String::from_utf8_lossy(&from_file.stdout).to_string();
    assert_eq!(table, String::from_utf8_lossy(&from_flags.stdout), "the file and its flags plan alike");
    assert!(
        table.contains("64x48, 12 frames at 10 fps (1.2 s), 8 warm-up iterations, 32 iterations in all"),
        "{table}"
    );
    // Second 1 (frame 10) is two thirds of the way from 3 (at 0.6 s) to 0.8 (at 1.2 s), eased
    // in and out in log space: 3 * (0.8/3)^(20/27) = 1.127.
    assert!(table.contains("1.00      10    1.1270     0.567,0.458"), "{table}");

    // `render` from another directory: paths from the file are the file's, a flag overrides.
    // At 20 fps the second keys stay in time (1.2 s is frame 24); --frames wins over seconds.
    let r = gramzoom(&["render", movie, "--iters", "1", "--fps", "20", "--frames", "24"], &std::env::temp_dir());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(d.join("out/movie.mp4").is_file());
    assert_eq!(std::fs::read_dir(d.join("out/frames")).unwrap().count(), 24);
    let short = gramzoom(&["render", movie, "--frames", "6"], d);
    assert!(
        stderr(&short).contains(
            "--zoom: key \"1.2s:(0.8)\" (character 32) is at frame 12, past the movie's end (frame 6, 0.6 s)"
        ),
        "{}",
        stderr(&short)
    );

    // Bad files: the file and line named, nothing rendered.
    let cases: [(&str, &str); 6] = [
        (
            "size = \"64x48\"\nzom = 2\n",
            "line 2: unknown key \"zom\"; render takes angle, audio, audio_offset, beats, blend, blocks, bpm, centre",
        ),
        ("size = \"64x48\"\nzoom = [\n", "line 2: unclosed array"),
        ("size = { w = 64 }\n", "line 1: size: a table is not a setting"),
        ("offline = \"yes\"\n", "line 1: offline is a switch: write offline = true or leave it out"),
        (
            "zoom = \"0:(1.5), 9s:(3)\"\nframes = 10\n",
            "--zoom: key \"9s:(3)\" (character 10) is at frame 270, past the movie's end",
        ),
        ("style = \"missing.jpg\"\n", "missing.jpg: no such file"),
    ];
    for (text, want) in cases {
        let bad = d.join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = d.join("bad.mp4");
        let r = gramzoom(&["render", bad.to_str().unwrap(), "-o", out.to_str().unwrap(), "--offline"], d);
        let err = stderr(&r);
        assert!(!r.status.success() && err.contains(want), "{text:?}: {err}");
        assert!(!out.exists(), "{text:?} wrote an output");
    }
    let huge = d.join("huge.toml");
    std::fs::write(&huge, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    let r = gramzoom(&["plan", huge.to_str().unwrap()], d);
    assert!(stderr(&r).contains("huge.toml: is 2097155 bytes, at most 1048576 allowed"), "{}", stderr(&r));
}

/// Named styles in a movie file: a table of names and paths (relative to the file) and a blend;
/// `plan` shows each second's weights, `--style` on the command line replaces the file's
/// styles, and the README's ten-minute example plans as written.
#[test]
fn a_movie_file_names_its_styles_and_plans_their_blend() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir(d.join("styles")).unwrap();
    std::fs::copy(example("wheatfield.jpg"), d.join("styles/wheat.jpg")).unwrap();
    std::fs::copy(example("gravel.png"), d.join("styles/gravel.png")).unwrap();
    let movie = d.join("fade.toml");
    let text = "size = \"64x48\"\nseconds = 3\nfps = 10\nwarmup = 4\niters = 1\n\
                styles = { wheat = \"styles/wheat.jpg\", grey = \"styles/gravel.png\" }\n\
                blend = \"0:(wheat), 0.5s:(wheat), 1.5s:(grey)\"\noutput = \"fade.gif\"\nquiet = true\n";
    std::fs::write(&movie, text).unwrap();
    let movie = movie.to_str().unwrap();
    let plan = gramzoom(&["plan", movie, "--no-estimate"], &std::env::temp_dir());
    assert!(plan.status.success(), "{}", stderr(&plan));
    let table = String::from_utf8_lossy(&plan.stdout);
    assert!(table.contains(" iters  styles\n"), "{table}");
    assert!(table.contains("1  wheat 1.00\n"), "{table}");
    assert!(table.contains("1  wheat 0.50, grey 0.50\n"), "at 1 s: {table}");
    assert!(table.contains("1  grey 1.00\n"), "{table}");
    // The command line's --style replaces the file's list: a blend naming "grey" then fails.
    let other = format!("only={}", example("wheatfield.jpg").display());
    let r = gramzoom(&["plan", movie, "--no-estimate", "--style", &other], d);
    assert!(
        stderr(&r).contains("--blend: character 4: unknown style \"wheat\"; the movie's styles are only"),
        "{}",
        stderr(&r)
    );
    // And it renders, from another directory.
    let r = gramzoom(&["render", movie], &std::env::temp_dir());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(d.join("fade.gif").is_file());

    let example_file = crate::helpers::repo_root().join("examples/ten-minutes.toml");
    let plan = gramzoom(&["plan", example_file.to_str().unwrap(), "--no-estimate"], d);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let table = String::from_utf8_lossy(&plan.stdout);
    assert!(table.contains("wheat 0.50, cells 0.50\n"), "{table}");
    assert!(table.contains("gravel 1.00\n"), "{table}");
}
