//! Styles over time: a cross-fade is seen in the frames' colours, and a movie of several styles
//! is checked style by style at submit, stored once per style, and forgotten whole.

use crate::farm::Cluster;
use crate::helpers::{example, render_movie_of, tiny_spec};
use engine::quality::{colour_stats, mean_chroma};
use engine::RenderParams;
use proto::schedule::Blend;
use proto::v1;
use tonic::Code;

/// From the grey gravel to the wheat field over seconds 1 to 3: the frames' colourfulness and
/// mean colour move from the gravel's to the wheat field's, steadily (a 5-frame moving average
/// never steps back by more than a little), and are each style's before and right after the
/// fade. Measured (96x64, 4 iterations a frame): chroma 1.7 before, 29.6 at the fade's last key
/// and 30 to 35 after it, where the wheat field alone renders 32 to 35; without the colour
/// transport of a moving blend (`engine::colour::transport`) the frames reached 9 at the last
/// key and 24 two seconds later.
#[test]
fn a_cross_fade_moves_the_colours_from_one_style_to_the_other() {
    let names = ["grey".to_string(), "wheat".to_string()];
    let params = RenderParams {
        width: 96,
        height: 64,
        frames: 45,
        fps: "10".parse().unwrap(),
        warmup: 60,
        iters: 4.into(),
        zoom: 1.5.into(),
        blend: Some(Blend::parse(&names, "0:(grey), 1s:(grey) ease-in-out, 3s:(wheat)").unwrap()),
        ..RenderParams::default()
    };
    let frames = render_movie_of(&params, &["gravel.png", "wheatfield.jpg"]);
    let style = |name: &str| engine::style::Style::open(&example(name)).unwrap().tensor((96, 64), tch::Device::Cpu);
    let (grey, wheat) = (style("gravel.png"), style("wheatfield.jpg"));
    let (chroma_grey, chroma_wheat) = (mean_chroma(&grey), mean_chroma(&wheat));
    let wheat_mean = colour_stats(&wheat).0;
    let distance = |t: &tch::Tensor| {
        let m = colour_stats(t).0;
        (0..3).map(|c| (m[c] - wheat_mean[c]).powi(2)).sum::<f64>().sqrt()
    };
    let chroma: Vec<f64> = frames.iter().map(|f| mean_chroma(&f.to_tensor())).collect();
    let away: Vec<f64> = frames.iter().map(|f| distance(&f.to_tensor())).collect();
    let smooth = |v: &[f64]| -> Vec<f64> { v.windows(5).map(|w| w.iter().sum::<f64>() / 5.0).collect() };
    let (chroma_s, away_s) = (smooth(&chroma), smooth(&away));
    eprintln!("style chroma: gravel {chroma_grey:.1}, wheat field {chroma_wheat:.1}; mean colour of the gravel {:.1} levels from the wheat field's", distance(&grey));
    let line = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" ");
    eprintln!("chroma by frame: {}", line(&chroma));
    eprintln!("mean colour's distance from the wheat field's: {}", line(&away));
    let span = chroma_wheat - chroma_grey;
    assert!(span > 10.0, "the styles are too alike to measure a fade: {chroma_grey} vs {chroma_wheat}");
    // Before the fade the frames are the gravel's, after it the wheat field's.
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&chroma[..10]) < chroma_grey + 0.15 * span, "before: {}", line(&chroma[..10]));
    assert!(mean(&chroma[31..]) > chroma_wheat - 0.3 * span, "after: {}", line(&chroma[31..]));
    assert!(mean(&away[31..]) < 0.25 * distance(&grey), "after: {}", line(&away[31..]));
    // Through the fade (frames 10 to 30, with the averaging's reach), steadily.
    for i in 8..32 {
        assert!(
            chroma_s[i + 1] > chroma_s[i] - 0.03 * span,
            "chroma steps back at frame {}: {}",
            i + 3,
            line(&chroma_s)
        );
        assert!(away_s[i + 1] < away_s[i] + 1.5, "colour moves away at frame {}: {}", i + 3, line(&away_s));
    }
}

/// Submits `spec` with `styles` (bytes, file name) as alice.
fn submit(c: &Cluster, spec: v1::JobSpec, styles: &[(&[u8], &str)]) -> Result<v1::Job, tonic::Status> {
    let mut jobs = c.jobs();
    c.runtime.block_on(cli::client::submit_styles(&mut jobs, spec, styles, None)).map_err(|e| match e {
        cli::client::ClientError::Rpc(s) => s,
        other => panic!("{other}"),
    })
}

fn stored_styles(c: &Cluster) -> usize {
    std::fs::read_dir(c.path("data/artifacts/styles")).map_or(0, |d| d.count())
}

/// What is sent, what the coordinator must answer.
type Case<'a> = (&'a str, v1::JobSpec, Vec<(&'a [u8], &'a str)>, &'a str);

/// Each style of a blend is checked as a lone style is; a submit refused at any of them (or
/// sending too few or too many) stores no job and no style; a good one stores each style once,
/// and deleting the job removes the styles no other job uses.
#[test]
fn several_styles_are_checked_each_and_a_refused_submit_stores_nothing() {
    let c = Cluster::start("30", &[]);
    let wheat = std::fs::read(example("wheatfield.jpg")).unwrap();
    let gravel = std::fs::read(example("gravel.png")).unwrap();
    let text = b"not an image at all".to_vec();
    let spec = |styles: &[&str], blend: &str| {
        let mut s = tiny_spec();
        let p = s.params.as_mut().unwrap();
        p.styles = styles.iter().map(|n| n.to_string()).collect();
        p.blend = blend.into();
        s
    };
    let two = spec(&["a", "b"], "0:(a), 2:(b)");
    let cases: [Case; 6] = [
        (
            "second not an image",
            two.clone(),
            vec![(&wheat, "wheat.jpg"), (&text, "notes.txt")],
            "styles: \"notes.txt\" is not a PNG or JPEG image",
        ),
        ("too few", two.clone(), vec![(&wheat, "wheat.jpg")], "styles: style 2 (\"b\"): the upload ended before"),
        (
            "too many",
            two.clone(),
            vec![(&wheat, "a.jpg"), (&gravel, "b.png"), (&gravel, "c.png")],
            "style: more style images arrived than the 2 the job names",
        ),
        (
            "unknown name",
            spec(&["a", "b"], "0:(a), 2:(c)"),
            vec![(&wheat, "a.jpg"), (&gravel, "b.png")],
            "--blend: character 11: unknown style \"c\"; the movie's styles are a, b",
        ),
        ("blend without names", spec(&[], "0:(a)"), vec![(&wheat, "a.jpg")], "--blend: blends named styles"),
        (
            "a name twice",
            spec(&["a", "a"], ""),
            vec![(&wheat, "a.jpg"), (&gravel, "b.png")],
            "--style: two styles are named \"a\"",
        ),
    ];
    for (what, spec, styles, want) in cases {
        let status = submit(&c, spec, &styles).expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", status.message());
        assert!(status.message().starts_with(want), "{what}: {}", status.message());
        assert_eq!(stored_styles(&c), 0, "{what}: a style of a refused submit was kept");
    }
    let mut jobs = c.jobs();
    let listed = c.runtime.block_on(jobs.list_jobs(v1::ListJobsRequest {})).unwrap().into_inner().jobs;
    assert!(listed.is_empty(), "a refused job was stored: {listed:?}");

    // Two jobs: one blends both styles, one uses the gravel alone.
    let both = submit(&c, two, &[(&wheat, "wheat.jpg"), (&gravel, "gravel.png")]).unwrap();
    let alone = submit(&c, tiny_spec(), &[(&gravel, "gravel.png")]).unwrap();
    assert_eq!(stored_styles(&c), 2, "each style once");
    for id in [&both.id, &alone.id] {
        c.runtime.block_on(jobs.cancel_job(v1::CancelJobRequest { job_id: id.clone() })).unwrap();
    }
    c.runtime.block_on(jobs.delete_job(v1::DeleteJobRequest { job_id: both.id.clone() })).unwrap();
    assert_eq!(stored_styles(&c), 1, "the wheat field is gone, the gravel is still used");
    c.runtime.block_on(jobs.delete_job(v1::DeleteJobRequest { job_id: alone.id.clone() })).unwrap();
    assert_eq!(stored_styles(&c), 0);
}
