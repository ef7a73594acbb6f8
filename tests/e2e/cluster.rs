//! The distributed path with real processes on loopback ports: `gramzoom serve`, `gramzoom
//! worker` (several), and the job API. Frames are compared bit for bit with a one-segment local
//! render through the workers' lossless frame dumps. The harness is in `farm.rs`.

use crate::farm::{Cluster, FakeWorker, Proc, ALICE};
use crate::helpers::{decode_video, example, frames_in, gramzoom, stderr, tempdir};
use proto::v1;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tonic::Code;

/// The movie tests 1-4 render: 12 frames in 3 segments, slow enough per frame (10 iterations)
/// that a worker can be caught in the middle of a segment. It is directed: its zoom eases from
/// 1.5 to 3 per second and back, its centre moves and it turns, every schedule across segment
/// boundaries, so every hand-off between workers must keep the camera where the one-piece
/// render has it.
pub(crate) const MOVIE: &[&str] = &[
    "--size",
    "64x48",
    "--frames",
    "12",
    "--warmup",
    "12",
    "--iters",
    "10",
    "--seed",
    "3",
    "--zoom",
    "0:(1.5), 6:(3) ease-in-out, 11:(1.5)",
    "--centre",
    "0:(0.3,0.6), 11:(0.7,0.4)",
    "--angle",
    "0:(0) cubic, 5:(20) cubic, 12:(-10)",
    "--style",
    "a=wheatfield.jpg",
    "--style",
    "b=gravel.png",
    "--blend",
    "0:(a), 3:(a), 9:(b) ease-in-out",
    "--segment-frames",
    "4",
];

/// A running attempt of segment `idx` that has rendered at least one frame.
pub(crate) fn mid_segment(job: &v1::Job, idx: usize) -> Option<&v1::Attempt> {
    let s = job.segments.get(idx)?;
    s.attempts.iter().find(|a| a.state == v1::AttemptState::Running as i32 && a.frames_done >= 1)
}

/// The frames of `MOVIE` rendered locally in one segment, computed once.
fn reference() -> &'static Vec<Vec<u8>> {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let dir = tempdir();
        let frames = dir.path().join("frames");
        let out = dir.path().join("ref.mp4");
        let movie = crate::helpers::with_examples(&MOVIE[..MOVIE.len() - 2]); // one segment
        let mut args = vec!["render", "-o", out.to_str().unwrap(), "-q"];
        args.extend(["--frames-dir", frames.to_str().unwrap()]);
        args.extend(movie.iter().map(String::as_str));
        let r = gramzoom(&args, dir.path());
        assert!(r.status.success(), "{}", stderr(&r));
        frames_in(&frames)
    })
}

pub(crate) fn assert_frames_match_reference(cluster: &Cluster) {
    let got = frames_in(&cluster.path("frames"));
    let want = reference();
    assert_eq!(got.len(), want.len(), "frame count");
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!(a == b, "frame {i} differs from the one-segment local render");
    }
}

fn assert_movie(path: &Path, frames: usize, fps: f64) {
    let d = decode_video(path);
    assert_eq!(d.frames, frames);
    assert!((d.fps - fps).abs() < 1e-6, "fps {}", d.fps);
    assert!((d.duration - frames as f64 / fps).abs() < 1e-3, "duration {}", d.duration);
}

fn workers_of(job: &v1::Job) -> Vec<String> {
    let mut w: Vec<String> = job.segments.iter().flat_map(|s| s.attempts.iter().map(|a| a.worker_id.clone())).collect();
    w.sort();
    w.dedup();
    w
}

#[test]
fn two_workers_hand_off_and_match_a_local_render_bit_for_bit() {
    let mut c = Cluster::start("10", &[]);
    // The first worker takes segment 0 and leaves; the second must fetch its end state from the
    // coordinator (a hand-off between processes), then keeps its own for segment 2 (affinity).
    c.worker("a", &["--max-segments", "1"]);
    let id = c.submit(MOVIE);
    c.wait(&id, 120, "segment 0 to start", |j| j.segments[0].attempts.len() == 1);
    c.worker("b", &[]);
    let job = c.wait_done(&id);
    assert_eq!(job.segments.len(), 3);
    assert_eq!(workers_of(&job).len(), 2, "both workers rendered: {job:#?}");
    assert!(c.logs().contains("start state fetched"), "no state crossed processes\n{}", c.logs());
    assert_frames_match_reference(&c);
    assert_movie(&c.download(&id, "out.mp4"), 12, 30.0);
    // `status` says where the directed movie's camera is, in words: at its end, zoomed back to
    // 1.5x a second by frame 11, the centre moved to 0.7,0.4, the turn easing towards -10, the
    // cross-fade done.
    let status = c.run(&["status", &id, "--coordinator", &c.url()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("  motion at 0.4 s (frame 11): zoom 1.50x a second about 0.70,0.40, turning "),
        "{text}{}",
        stderr(&status)
    );
    assert!(text.contains(" iterations a frame, styles b 1.00\n"), "{text}");
}

#[test]
fn a_worker_killed_mid_segment_costs_one_attempt_and_nothing_else() {
    let mut c = Cluster::start("2", &[]);
    let a = c.worker("a", &[]);
    let id = c.submit(MOVIE);
    c.wait(&id, 120, "worker a in the middle of segment 1", |j| mid_segment(j, 1).is_some());
    c.workers[a].kill(); // SIGKILL
    c.worker("b", &[]);
    let job = c.wait_done(&id);
    let attempts = &job.segments[1].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].state, v1::AttemptState::Expired as i32);
    assert!(attempts[0].reason.contains("lease expired"), "{}", attempts[0].reason);
    assert_eq!(attempts[1].state, v1::AttemptState::Succeeded as i32);
    assert_frames_match_reference(&c);
    assert_movie(&c.download(&id, "out.mp4"), 12, 30.0);
}

#[test]
fn a_coordinator_restart_loses_nothing() {
    let mut c = Cluster::start("5", &[]);
    c.worker("a", &[]);
    let id = c.submit(MOVIE);
    let queued = c.submit(&["--size", "64x48", "--frames", "2", "--warmup", "4", "--iters", "1", "--format", "png"]);
    let before = c.wait(&id, 120, "segment 1 under way", |j| mid_segment(j, 1).is_some());
    c.coordinator.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_millis(500));
    c.start_coordinator("5", &[]);
    let job = c.wait_done(&id);
    // Segment 0 finished before the crash and was not redone.
    assert_eq!(job.segments[0].attempts, before.segments[0].attempts);
    assert_frames_match_reference(&c);
    c.wait_done(&queued);
    let movie = c.download(&id, "out.mp4");
    assert_movie(&movie, 12, 30.0);
    // And once more, after the job: its output is still there.
    c.coordinator.as_mut().unwrap().kill();
    c.start_coordinator("5", &[]);
    let again = c.download(&id, "again.mp4");
    assert_eq!(std::fs::read(&movie).unwrap(), std::fs::read(&again).unwrap());
    assert!(c.download(&queued, "still.png").exists());
}

#[test]
fn a_stale_worker_is_fenced_off() {
    let mut c = Cluster::start("1.5", &[]);
    let a = c.worker("a", &[]);
    let id = c.submit(MOVIE);
    let job = c.wait(&id, 120, "worker a in the middle of segment 1", |j| mid_segment(j, 1).is_some());
    let stale = mid_segment(&job, 1).unwrap().id;
    c.workers[a].signal("-STOP");
    c.worker("b", &[]);
    c.wait(&id, 120, "segment 1 to be redone", |j| j.segments[1].state == v1::SegmentState::Done as i32);
    c.workers[a].signal("-CONT");
    let job = c.wait_done(&id);
    let first = job.segments[1].attempts.iter().find(|x| x.id == stale).unwrap();
    assert_eq!(first.state, v1::AttemptState::Expired as i32);
    // The woken worker learns it lost the lease (by heartbeat or by a refused upload) and
    // drops its work.
    c.wait(&id, 30, "worker a to drop its stale attempt", |_| {
        let log = c.workers[a].log();
        log.contains("coordinator ended this attempt") || log.contains("segment dropped")
    });
    assert!(!c.workers[a].log().contains(&format!("attempt={stale} job={id} segment=1 frames=4 wall_s")));
    assert_frames_match_reference(&c);
    assert_movie(&c.download(&id, "out.mp4"), 12, 30.0);
}

#[test]
fn four_jobs_on_two_workers_run_in_order_without_idling() {
    let mut c = Cluster::start("10", &[]);
    let small = ["--size", "64x48", "--frames", "6", "--warmup", "6", "--iters", "2", "--segment-frames", "2"];
    let mut ids: Vec<String> = (0..3).map(|_| c.submit(&small)).collect();
    let mut urgent = small.to_vec();
    urgent.extend(["--priority", "5", "--format", "gif"]);
    ids.push(c.submit(&urgent));
    c.worker("a", &[]);
    c.worker("b", &[]);
    let jobs: Vec<v1::Job> = ids.iter().map(|id| c.wait_done(id)).collect();
    let mut attempts: Vec<(String, u64, i64, i64, u32)> = Vec::new();
    for job in &jobs {
        let mut prev_end = 0;
        for s in &job.segments {
            let ok: Vec<_> = s.attempts.iter().filter(|a| a.state == v1::AttemptState::Succeeded as i32).collect();
            assert_eq!(ok.len(), 1);
            assert!(
                ok[0].started_unix_ms >= prev_end,
                "{}: segment {} started before its predecessor ended",
                job.id,
                s.index
            );
            prev_end = ok[0].ended_unix_ms;
            for a in &s.attempts {
                attempts.push((a.worker_id.clone(), a.id, a.started_unix_ms, a.ended_unix_ms, s.index));
            }
        }
    }
    // Priority first: the urgent job's first segment was the first one handed out.
    let first = attempts.iter().min_by_key(|a| a.1).unwrap();
    let urgent_first = jobs[3].segments[0].attempts[0].id;
    assert_eq!(first.1, urgent_first, "the priority job did not go first");
    // No idling: with 12 segments and more ready than workers until the end, each worker
    // picks up its next segment right after finishing one.
    for worker in workers_of(&jobs[0]).iter().chain(workers_of(&jobs[1]).iter()) {
        let mut mine: Vec<_> = attempts.iter().filter(|a| &a.0 == worker).collect();
        mine.sort_by_key(|a| a.2);
        assert!(mine.len() >= 2, "{worker} did too little: {mine:?}");
        for pair in mine.windows(2) {
            let gap = pair[1].2 - pair[0].3;
            assert!(gap < 1500, "{worker} idled {gap} ms between segments\n{}", c.logs());
        }
    }
    let total: usize = jobs.iter().map(|j| j.segments.len()).sum();
    assert_eq!(total, 12);
    assert_movie(&c.download(&ids[0], "0.mp4"), 6, 30.0);
    let gif = c.download(&ids[3], "3.gif");
    let decoder = gif::DecodeOptions::new().read_info(std::fs::File::open(gif).unwrap()).unwrap();
    assert_eq!(decoder.into_iter().count(), 6);
}

fn submit_raw(c: &Cluster, spec: v1::JobSpec, style: &[u8]) -> Result<v1::Job, tonic::Status> {
    let mut jobs = c.jobs();
    c.runtime.block_on(cli::client::submit(&mut jobs, spec, style, "style")).map_err(|e| match e {
        cli::client::ClientError::Rpc(s) => s,
        other => panic!("{other}"),
    })
}

fn small_spec() -> v1::JobSpec {
    let params = proto::params::RenderParams {
        width: 64,
        height: 48,
        frames: 4,
        warmup: 2,
        iters: 1.into(),
        ..Default::default()
    };
    v1::JobSpec {
        params: Some(proto::wire::params_to_wire(&params)),
        output: v1::OutputFormat::Mp4 as i32,
        segment_frames: 2,
        ..Default::default()
    }
}

#[test]
fn bad_requests_get_the_right_status_with_the_field_named() {
    let c = Cluster::start("30", &["--max-attempts", "2"]);
    let style = std::fs::read(example("wheatfield.jpg")).unwrap();

    // Invalid parameters and a non-image style: INVALID_ARGUMENT, naming the field.
    type Mutation = fn(&mut v1::JobSpec);
    let cases: [(Mutation, &str); 4] = [
        (|s| s.params.as_mut().unwrap().width = 8, "--size"),
        (|s| s.params.as_mut().unwrap().optimizer = "sgd".into(), "--optimizer"),
        (|s| s.output = 0, "--output"),
        (|s| s.params.as_mut().unwrap().width = 65, "--size"), // odd width for .mp4
    ];
    for (mutate, field) in cases {
        let mut spec = small_spec();
        mutate(&mut spec);
        let status = submit_raw(&c, spec, &style).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let status = submit_raw(&c, small_spec(), b"this is not an image").unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("style: "), "{}", status.message());

    // Unknown jobs: NOT_FOUND.
    let mut jobs = c.jobs();
    for id in ["job-999", "nonsense"] {
        let status = c.runtime.block_on(jobs.get_job(v1::GetJobRequest {
            job_id: id.into(),
            include_segments: false,
            ..Default::default()
        }));
        assert_eq!(status.unwrap_err().code(), Code::NotFound);
    }

    // A chunk whose checksum does not match: rejected, and the segment retried.
    let id = submit_raw(&c, small_spec(), &style).unwrap().id;
    let mut fake = FakeWorker::register(&c);
    let a = fake.acquire(&c);
    let status = fake.complete(&c, a.attempt_id, b"chunk", &coordinator::sha256_hex(b"other")).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("chunk_sha256: checksum mismatch"), "{}", status.message());
    let retry = fake.acquire(&c);
    assert_eq!((retry.job_id.as_str(), retry.segment_index), (id.as_str(), 0));
    assert_ne!(retry.attempt_id, a.attempt_id);
    let job = c.job(&id);
    assert_eq!(job.segments[0].attempts[0].state, v1::AttemptState::Failed as i32);
    assert!(job.segments[0].attempts[0].reason.contains("checksum mismatch"));
    // A worker that asks for work while it holds an attempt never got that reply (its long poll
    // was cut): it is handed the same assignment, not a new attempt.
    assert_eq!(fake.acquire(&c), retry);

    // The retry's chunk is bad too: out of retries, the job fails with the reason visible.
    let status = fake.complete(&c, retry.attempt_id, b"chunk", &coordinator::sha256_hex(b"other")).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let job = c.wait(&id, 10, "the job to fail", |j| j.state == v1::JobState::Failed as i32);
    assert!(job.error.contains("segment 0 failed 2 attempts"), "{}", job.error);
    // An attempt that is no longer current may not upload, even a correct chunk (an expired
    // lease is refused the same way: `lease::tests`, on an injected clock).
    let status = fake.complete(&c, retry.attempt_id, b"chunk", &coordinator::sha256_hex(b"chunk")).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let refused = status.message();
    assert!(refused.contains("it failed (") && refused.contains("checksum mismatch"), "{refused}");
    // Cancelling the failed job is refused.
    let status = c.runtime.block_on(jobs.cancel_job(v1::CancelJobRequest { job_id: id.clone() })).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = c.runtime.block_on(jobs.download_output(v1::DownloadOutputRequest { job_id: id })).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A worker leaving gives back an assignment it never saw (granted while it stopped): the
    // segment is ready again at once and the attempt is not charged.
    let id = submit_raw(&c, small_spec(), &style).unwrap().id;
    let mut leaving = FakeWorker::register(&c);
    let lost = leaving.acquire(&c);
    let r = v1::LeaveRequest { worker_id: leaving.id.clone() };
    let left = c.runtime.block_on(leaving.client.leave(r)).unwrap().into_inner();
    assert_eq!(left.released_attempt_ids, vec![lost.attempt_id]);
    let job = c.job(&id);
    assert_eq!(job.segments[0].state, v1::SegmentState::Ready as i32, "{job:#?}");
    assert_eq!(job.segments[0].attempts[0].state, v1::AttemptState::Cancelled as i32);
    assert_eq!(job.segments[0].attempts[0].reason, "worker shut down");
    // A job that has not ended cannot be deleted.
    let status = c.runtime.block_on(jobs.delete_job(v1::DeleteJobRequest { job_id: id.clone() })).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().ends_with("has not ended: it is running; cancel it first"), "{}", status.message());

    // Standard tools work: health and reflection.
    let url = c.url();
    c.runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = tonic_health::pb::HealthCheckRequest { service: "gramzoom.v1.JobService".into() };
        let status = health.check(r).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    });
}

#[test]
fn a_cancelled_job_stops_its_running_segment_within_seconds() {
    let mut c = Cluster::start("10", &[]);
    let w = c.worker("a", &[]);
    let long = ["--size", "64x48", "--frames", "300", "--warmup", "4", "--iters", "10"];
    let id = c.submit(&long);
    c.wait(&id, 120, "the segment under way", |j| mid_segment(j, 0).is_some());
    let cancelled_at = Instant::now();
    let url = c.url();
    let r = c.run(&["cancel", &id, "--coordinator", &url]);
    assert!(r.status.success(), "{}", stderr(&r));
    // The same worker is free for new work within seconds.
    let next = c.submit(&["--size", "64x48", "--frames", "1", "--warmup", "2", "--iters", "1", "--format", "png"]);
    c.wait(&next, 30, "the worker to take the next job", |j| j.segments[0].attempts.len() == 1);
    assert!(cancelled_at.elapsed() < Duration::from_secs(10), "took {:?}", cancelled_at.elapsed());
    let job = c.job(&id);
    assert_eq!(job.state, v1::JobState::Cancelled as i32);
    assert_eq!(job.segments[0].attempts[0].state, v1::AttemptState::Cancelled as i32);
    assert!(c.workers[w].log().contains("coordinator ended this attempt"), "{}", c.logs());
    c.wait_done(&next);
    // A finished job cannot be cancelled.
    let r = c.run(&["cancel", &next, "--coordinator", &url]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("has already ended: it succeeded"), "{}", stderr(&r));
    // Ended jobs can be deleted, output and stored files with them.
    let stored = |id: &str| c.path("data/artifacts/jobs").join(id.trim_start_matches("job-"));
    assert!(stored(&next).join("output.png").is_file());
    for job in [&next, &id] {
        let r = c.run(&["delete", job, "--coordinator", &url]);
        assert!(r.status.success(), "{}", stderr(&r));
        assert!(String::from_utf8_lossy(&r.stdout).starts_with(&format!("deleted {job} (")));
        assert!(!stored(job).exists(), "{job}'s files are still there");
        let r = c.run(&["status", job, "--coordinator", &url]);
        assert!(stderr(&r).contains("not found"), "{}", stderr(&r));
    }
}

#[test]
fn a_worker_stopped_with_sigterm_before_its_first_frame_releases_its_segment_at_once() {
    // A long lease: only the release can requeue the segment quickly. (Once frames are done, a
    // stopped worker hands them over instead: see handoff.rs.)
    let mut c = Cluster::start("60", &[]);
    let a = c.worker("a", &[]);
    let movie = ["--size", "64x48", "--frames", "8", "--warmup", "3000", "--iters", "10", "--segment-frames", "4"];
    let id = c.submit(&movie);
    c.wait(&id, 120, "worker a warming up", |j| j.warmup_done > 0);
    c.workers[a].signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = c.workers[a].child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "worker a did not stop on SIGTERM\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "worker a exited with {status}\n{}", c.logs());
    let job = c.job(&id);
    let first = &job.segments[0].attempts[0];
    assert_eq!(first.state, v1::AttemptState::Cancelled as i32, "{first:?}");
    assert_eq!(first.reason, "worker shut down");
    assert_eq!(job.segments[0].state, v1::SegmentState::Ready as i32);
    c.worker("b", &[]);
    // Worker b takes the released segment as soon as it asks, not after the 60 s lease: judged by
    // the coordinator's own timestamps, so a slow machine cannot fail it and a missing release
    // cannot pass it.
    // (It need not finish the long warm-up: that it started is the point.)
    let job = c.wait(&id, 120, "worker b to take segment 0", |j| j.segments[0].attempts.len() == 2);
    let attempts = &job.segments[0].attempts;
    assert_eq!(attempts[1].state, v1::AttemptState::Running as i32, "{job:#?}");
    let waited_ms = attempts[1].started_unix_ms - attempts[0].ended_unix_ms;
    assert!(waited_ms < 60_000, "segment 0 waited {waited_ms} ms for worker b\n{}", c.logs());
}

#[test]
fn a_coordinator_stops_promptly_on_sigterm_even_with_watchers() {
    let mut c = Cluster::start("10", &[]);
    let id = c.submit(&["--size", "64x48", "--frames", "4"]); // no worker: it stays queued
    let url = c.url();
    let mut watch = Proc::spawn(&["watch", &id, "--coordinator", &url], c.path("watch.log"), c.dir.path(), Some(ALICE));
    let coordinator = c.coordinator.as_mut().unwrap();
    let attached = Instant::now() + Duration::from_secs(60);
    while !coordinator.log().contains("watch started") {
        assert!(Instant::now() < attached, "the watcher never attached\n{}", watch.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    coordinator.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while coordinator.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the coordinator did not stop\n{}", coordinator.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = watch.child.wait().unwrap();
    assert!(!status.success());
    assert!(watch.log().contains("the coordinator is shutting down"), "{}", watch.log());
    // Nothing was lost: the job is still queued after a restart.
    c.start_coordinator("10", &[]);
    assert_eq!(c.job(&id).state, v1::JobState::Queued as i32);
}
