//! Hand-offs at device speed: a worker renders the next segment from its own end state while
//! that state uploads, and uses those frames only when granted exactly that segment; a
//! preempted worker hands over the frames it finished instead of throwing them away.

use crate::cluster::{assert_frames_match_reference, MOVIE};
use crate::farm::Cluster;
use crate::helpers::{decode_video, example, frames_in, gramzoom, tempdir, SHALLOW};
use proto::v1;
use std::time::Instant;

#[test]
fn a_worker_renders_the_next_segment_while_uploading_and_the_frames_do_not_change() {
    let mut c = Cluster::start("10", &[]);
    let w = c.worker("a", &[]);
    let id = c.submit(MOVIE);
    let job = c.wait_done(&id);
    assert_eq!(job.segments.len(), 3);
    let log = c.workers[w].log();
    assert_eq!(log.matches("continuing with the frames rendered ahead").count(), 2, "{log}");
    assert!(!log.contains("dropped the frames rendered ahead"), "{log}");
    assert!(!log.contains("start state fetched"), "the state never left the worker: {log}");
    assert_frames_match_reference(&c);
}

#[test]
fn frames_rendered_ahead_are_dropped_when_other_work_comes_first() {
    let mut c = Cluster::start("10", &[]);
    let w = c.worker("a", &[]);
    let first = c.submit(MOVIE);
    // Segment 0 assigned is enough: the urgent movie must be queued before it is uploaded. (Waiting
    // for a heartbeat to report a finished frame raced the segment's end: its 4 frames took 3.2 s,
    // and once no heartbeat landed between the first frame and the upload.)
    c.wait(&first, 120, "segment 0 under way", |j| {
        j.segments.first().is_some_and(|s| s.attempts.iter().any(|a| a.state == v1::AttemptState::Running as i32))
    });
    // A more urgent movie (the same frames, so the worker's frame dumps stay comparable) arrives
    // while segment 0 renders: after uploading it, the worker is granted that one instead.
    let urgent = c.submit(&[MOVIE, &["--priority", "5"]].concat());
    c.wait_done(&urgent);
    let job = c.wait_done(&first);
    let log = c.workers[w].log();
    assert!(log.contains("dropped the frames rendered ahead") && log.contains("granted other work"), "{log}");
    // Segment 1 of the first movie then started from the stored state, not from dropped frames.
    assert!(log.contains("start state fetched"), "{log}");
    let urgent_job = c.job(&urgent);
    let (u0, f1) = (&urgent_job.segments[0].attempts[0], &job.segments[1].attempts[0]);
    assert!(u0.id < f1.id, "the urgent movie went first: {u0:?} {f1:?}");
    assert_frames_match_reference(&c);
}

/// 30 frames in one segment, slow enough per frame to be caught in the middle: on the two
/// shallowest layers ([`SHALLOW`], a third of the cost of every layer) at 20 iterations, about
/// 0.6 s a frame on a 2 GHz AVX2 core, and several heartbeats (1.7 s apart) within the segment on
/// a CPU a few times faster.
const LONG: &[&str] =
    &["--size", "64x48", "--frames", "30", "--warmup", "12", "--iters", "20", "--seed", "3", "--segment-frames", "30"];

#[test]
fn a_preempted_worker_hands_over_what_it_finished_and_the_rest_is_split_off() {
    let mut c = Cluster::start("10", &[]);
    let a = c.worker("a", &[]);
    let id = c.submit(&[LONG, SHALLOW].concat());
    c.wait(&id, 120, "a few frames into the segment", |j| {
        j.segments[0].attempts.first().is_some_and(|x| x.frames_done >= 4)
    });
    let signalled = Instant::now();
    c.workers[a].signal("-TERM");
    let status = c.workers[a].child.wait().unwrap();
    let stopped = signalled.elapsed();
    assert!(status.success(), "{}", c.workers[a].log());
    let job = c.job(&id);
    assert_eq!(job.segments.len(), 2, "split in two: {job:#?}");
    let first = &job.segments[0].attempts[0];
    assert_eq!(first.state, v1::AttemptState::Succeeded as i32);
    assert!(
        first.reason.starts_with(&format!("preempted after {} of 30 frames", first.frames_done)),
        "{}",
        first.reason
    );
    assert_eq!((job.segments[1].start_frame, job.segments[1].end_frame), (first.frames_done, 30));
    c.worker("b", &[]);
    let job = c.wait_done(&id);
    // Every frame was rendered once: the frame in hand was finished and handed over.
    let rendered: u32 = job.segments.iter().flat_map(|s| &s.attempts).map(|a| a.frames_done).sum();
    assert!(rendered <= 31, "{rendered} frames rendered for a 30-frame movie: {job:#?}");
    assert_eq!(rendered, 30);
    eprintln!("preempted worker stopped {stopped:?} after SIGTERM, handing over {} frames", first.frames_done);
    // And the movie is the one a single render makes.
    let dir = tempdir();
    let frames = dir.path().join("frames");
    let out = dir.path().join("ref.mp4");
    let style = example("wheatfield.jpg");
    let mut args = vec!["render", style.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"];
    args.extend(["--frames-dir", frames.to_str().unwrap()]);
    args.extend(LONG.iter().take(LONG.len() - 2).chain(SHALLOW));
    assert!(gramzoom(&args, dir.path()).status.success());
    assert!(frames_in(&frames) == frames_in(&c.path("frames")), "frames differ from a one-piece render");
    assert_eq!(decode_video(&c.download(&id, "split.mp4")).frames, 30);
}

#[test]
fn a_job_without_a_segment_length_gets_one_sized_from_its_first_segment() {
    // First segments of 2 frames, then about 4 s of work per segment: more than 2 frames unless
    // a 64x48 frame took over 1.3 s (it takes about 0.1 s; a CI machine loaded by other test
    // processes once took over 0.5 s, which made the 1 s of an earlier version too tight).
    let mut c = Cluster::start("10", &["--segment-frames", "2", "--segment-secs", "4"]);
    c.worker("a", &[]);
    let id = c.submit(&[&["--size", "64x48", "--frames", "120", "--warmup", "4", "--iters", "3"], SHALLOW].concat());
    let job = c.wait_done(&id);
    assert!(job.segment_frames_measured, "{job:#?}");
    let spans: Vec<(u32, u32)> = job.segments.iter().map(|s| (s.start_frame, s.end_frame)).collect();
    assert_eq!(spans[0], (0, 2), "the first segment keeps the default");
    assert!(spans.windows(2).all(|w| w[0].1 == w[1].0) && spans.last().unwrap().1 == 120, "{spans:?}");
    // The rest in the chosen length (the last one may be shorter).
    let len = job.segment_frames;
    assert!(len > 2, "a 64x48 frame takes far less than 1.3 s: {len}");
    assert!(spans[1..spans.len() - 1].iter().all(|(a, b)| b - a == len), "{spans:?} in segments of {len}");
    let out = c.run(&["status", &id, "--coordinator", &c.url()]);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains(&format!("segments of {len} frames, sized from the first")), "{line}");
    assert_eq!(decode_video(&c.download(&id, "sized.mp4")).frames, 120);
}
