//! Dispatch, expiry, fencing and retries, on an in-memory database.

use super::*;
use proto::v1;

const UP: Upload = Upload {
    chunk_sha256: "c",
    state_sha256: "s",
    fingerprint: "f",
    chunk_format: "mp4",
    frames: None,
    frame_seconds: 0.0,
};
const POLICY: Policy = Policy {
    lease_ms: 1000,
    max_attempts: 2,
    affinity_grace_ms: 500,
    quarantine_after: 0,
    quarantine_ms: 0,
    segment_secs: 0.0,
};

fn setup(jobs: &[(i32, u32)]) -> (Connection, Vec<JobId>) {
    let mut conn = db::open(std::path::Path::new(":memory:")).unwrap();
    let seqs = jobs
        .iter()
        .map(|&(priority, frames)| {
            let spec = v1::JobSpec { priority, ..Default::default() };
            db::submit(&mut conn, &spec, frames, 2, "style", "", 0).unwrap()
        })
        .collect();
    for name in ["a", "b", "c", "d"] {
        register(&conn, name, 1, 0);
    }
    (conn, seqs)
}

/// Registers worker `name` with `devices` devices at `now`.
fn register(conn: &Connection, name: &str, devices: u32, now: i64) -> WorkerId {
    let w = db::Registration { name, device: "cpu", principal: "", session_sha256: name, weights: &[], devices };
    db::register_worker(conn, &w, now).unwrap()
}

fn take(conn: &mut Connection, worker: WorkerId, now: i64) -> Option<(JobId, u32, AttemptId)> {
    acquire(conn, worker, POLICY, now).unwrap().map(|g| (g.job, g.idx, g.attempt))
}

fn stale(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::StaleAttempt { reason, .. }) => reason,
        other => panic!("expected a stale attempt, got {other:?}"),
    }
}

#[test]
fn dispatch_is_priority_then_affinity_then_fifo() {
    let (mut c, jobs) = setup(&[(0, 4), (0, 4), (5, 4)]);
    let (j1, j2, j3) = (jobs[0], jobs[1], jobs[2]);
    assert_eq!(take(&mut c, WorkerId(1), 10).map(|t| (t.0, t.1)), Some((j3, 0)), "priority first");
    let (_, _, a) = take(&mut c, WorkerId(2), 10).unwrap();
    complete(&mut c, a, &UP, POLICY, 20).unwrap(); // job 1's segment 1 is now ready, for worker-2
    assert_eq!(take(&mut c, WorkerId(3), 30).map(|t| (t.0, t.1)), Some((j2, 0)), "reserved segment skipped");
    assert_eq!(take(&mut c, WorkerId(2), 40).map(|t| (t.0, t.1)), Some((j1, 1)), "producer takes its segment");
    // A waiting segment is never handed out; nothing else is ready now.
    assert_eq!(take(&mut c, WorkerId(4), 50), None);
    assert!(matches!(acquire(&mut c, WorkerId(9), POLICY, 50), Err(Error::WorkerNotFound(_))));
}

#[test]
fn a_reservation_does_not_hold_for_a_busy_producer() {
    let (mut c, jobs) = setup(&[(0, 4)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 0).unwrap();
    let urgent = v1::JobSpec { priority: 5, ..Default::default() };
    let y = db::submit(&mut c, &urgent, 4, 2, "style", "", 1).unwrap();
    complete(&mut c, a, &UP, POLICY, 10).unwrap(); // segment 1 reserved for worker-1...
    assert_eq!(take(&mut c, WorkerId(1), 11).map(|t| (t.0, t.1)), Some((y, 0))); // ...which is now busy
    let got = take(&mut c, WorkerId(2), 12).map(|t| (t.0, t.1));
    assert_eq!(got, Some((jobs[0], 1)), "an idle worker must not wait for a busy one");
}

#[test]
fn a_reservation_lapses_after_the_grace() {
    let (mut c, jobs) = setup(&[(0, 4)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 0).unwrap();
    complete(&mut c, a, &UP, POLICY, 100).unwrap();
    assert_eq!(take(&mut c, WorkerId(2), 100 + POLICY.affinity_grace_ms - 1), None);
    let got = take(&mut c, WorkerId(2), 100 + POLICY.affinity_grace_ms).map(|t| (t.0, t.1));
    assert_eq!(got, Some((jobs[0], 1)));
}

#[test]
fn expired_leases_requeue_until_the_job_runs_out_of_attempts() {
    let (mut c, jobs) = setup(&[(0, 2)]);
    let (_, _, a1) = take(&mut c, WorkerId(1), 0).unwrap();
    heartbeat(&mut c, a1, 1, POLICY, 900).unwrap(); // lease now runs to 1900
    assert_eq!(expire(&mut c, POLICY, 1899).unwrap(), 0);
    assert_eq!(expire(&mut c, POLICY, 1901).unwrap(), 1);
    // The superseded attempt is fenced off from everything.
    assert!(stale(heartbeat(&mut c, a1, 2, POLICY, 1902)).contains("lease expired"));
    assert!(stale(complete(&mut c, a1, &UP, POLICY, 1902)).contains("lease expired"));
    let (_, _, a2) = take(&mut c, WorkerId(2), 2000).unwrap();
    fail(&mut c, a2, "cuda out of memory", false, POLICY, 2100).unwrap();
    let job = db::job(&c, jobs[0], true).unwrap();
    assert_eq!(job.state, v1::JobState::Failed as i32);
    assert_eq!(job.error, "segment 0 failed 2 attempts; last: cuda out of memory");
    let states: Vec<i32> = job.segments[0].attempts.iter().map(|a| a.state).collect();
    assert_eq!(states, [v1::AttemptState::Expired as i32, v1::AttemptState::Failed as i32]);
    assert_eq!(take(&mut c, WorkerId(1), 2200), None);
}

#[test]
fn a_grant_that_never_arrived_is_handed_to_the_same_worker_again() {
    let (mut c, _) = setup(&[(0, 4)]);
    let first = acquire(&mut c, WorkerId(1), POLICY, 0).unwrap().unwrap();
    assert!(!first.redelivered);
    // Near the end of the lease worker-1 asks again: its long poll was cut, it never got it.
    let again = acquire(&mut c, WorkerId(1), POLICY, POLICY.lease_ms - 1).unwrap().unwrap();
    assert!(again.redelivered);
    let what = |g: &Grant| (g.attempt, g.job, g.idx, g.start_frame, g.end_frame, g.segment_count);
    assert_eq!(what(&again), what(&first));
    // With a fresh lease, and nobody else gets the segment meanwhile.
    let later = POLICY.lease_ms + 10;
    check(&mut c, first.attempt, POLICY, later).unwrap();
    assert!(take(&mut c, WorkerId(2), later).is_none());
    // Once it ends, the worker gets new work as usual.
    complete(&mut c, first.attempt, &UP, POLICY, later).unwrap();
    let next = acquire(&mut c, WorkerId(1), POLICY, later + 1).unwrap().unwrap();
    assert_eq!((next.idx, next.redelivered), (1, false));
    assert_ne!(next.attempt, first.attempt);
}

#[test]
fn a_leaving_worker_releases_a_grant_it_never_saw() {
    let (mut c, _) = setup(&[(0, 4)]);
    let strict = Policy { max_attempts: 1, ..POLICY };
    let lost = acquire(&mut c, WorkerId(1), strict, 0).unwrap().unwrap().attempt;
    assert_eq!(leave(&mut c, WorkerId(1), strict, 10).unwrap(), vec![lost]);
    assert!(stale(check(&mut c, lost, strict, 11)).contains("worker shut down"));
    // Requeued at once and not charged: a job allowed one attempt still runs.
    assert_eq!(take(&mut c, WorkerId(2), 12).map(|t| t.1), Some(0));
    assert_eq!(leave(&mut c, WorkerId(1), strict, 13).unwrap(), Vec::<AttemptId>::new());
    assert!(matches!(leave(&mut c, WorkerId(9), strict, 14), Err(Error::WorkerNotFound(_))));
}

#[test]
fn a_released_attempt_costs_no_retry() {
    let (mut c, _) = setup(&[(0, 2)]);
    let strict = Policy { max_attempts: 1, ..POLICY };
    let a1 = acquire(&mut c, WorkerId(1), strict, 0).unwrap().unwrap().attempt;
    fail(&mut c, a1, "worker shut down", true, strict, 10).unwrap();
    let again = acquire(&mut c, WorkerId(2), strict, 20).unwrap().unwrap();
    assert_eq!(again.idx, 0);
}

#[test]
fn cancelling_fences_running_attempts_and_cannot_repeat() {
    let (mut c, jobs) = setup(&[(0, 4)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 0).unwrap();
    db::cancel(&mut c, jobs[0], 10).unwrap();
    assert!(stale(heartbeat(&mut c, a, 1, POLICY, 20)).contains("job cancelled"));
    assert!(matches!(db::cancel(&mut c, jobs[0], 30), Err(Error::JobEnded { .. })));
    assert_eq!(take(&mut c, WorkerId(2), 40), None);
}

#[test]
fn the_last_segment_hands_the_job_to_stitching_and_a_restart_renews_leases() {
    let (mut c, jobs) = setup(&[(0, 3)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 0).unwrap();
    assert_eq!(complete(&mut c, a, &UP, POLICY, 10).unwrap().1, Completed::More);
    let g = acquire(&mut c, WorkerId(1), POLICY, 20).unwrap().unwrap();
    assert_eq!((g.start_frame, g.end_frame, g.start_attempt, g.start_state_sha256.as_str()), (2, 3, a, "s"));
    assert_eq!(resume(&c, POLICY, 5000).unwrap(), 1);
    heartbeat(&mut c, g.attempt, 1, POLICY, 5500).unwrap(); // would have expired at 1020
    assert_eq!(complete(&mut c, g.attempt, &UP, POLICY, 5600).unwrap().1, Completed::Last);
    assert_eq!(db::jobs_in_state(&c, db::JobState::Stitching).unwrap(), vec![jobs[0]]);
    assert_eq!(db::done_chunks(&c, jobs[0]).unwrap(), vec![(a, 0, 2), (g.attempt, 2, 3)]);
}

#[test]
fn a_failed_segment_goes_to_another_available_worker_first() {
    // The producer of segment 0 fails segment 1: its reservation ends with the failure, and
    // an idle worker asking first gets the segment.
    let (mut c, jobs) = setup(&[(0, 4)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 0).unwrap();
    complete(&mut c, a, &UP, POLICY, 10).unwrap(); // segment 1 reserved for worker-1
    let (_, idx, b) = take(&mut c, WorkerId(1), 20).unwrap();
    assert_eq!(idx, 1);
    fail(&mut c, b, "cuda error", false, POLICY, 30).unwrap();
    assert_eq!(take(&mut c, WorkerId(2), 31).map(|t| (t.0, t.1)), Some((jobs[0], 1)), "reservation outlived a failure");

    // Without affinity: while others are idle, the worker that failed a segment gets nothing.
    let (mut c, jobs) = setup(&[(0, 2)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 100).unwrap();
    fail(&mut c, a, "out of memory", false, POLICY, 110).unwrap();
    assert_eq!(take(&mut c, WorkerId(1), 111), None, "the failing worker got its segment back");
    assert_eq!(take(&mut c, WorkerId(2), 112).map(|t| (t.0, t.1)), Some((jobs[0], 0)));

    // Alone (no other worker asked for work lately), it gets its retry.
    let (mut c, jobs) = setup(&[(0, 2)]);
    let late = AVAILABLE_MS + 1000;
    let (_, _, a) = take(&mut c, WorkerId(1), late).unwrap();
    fail(&mut c, a, "out of memory", false, POLICY, late + 10).unwrap();
    assert_eq!(take(&mut c, WorkerId(1), late + 11).map(|t| (t.0, t.1)), Some((jobs[0], 0)));
}

#[test]
fn a_worker_failing_again_and_again_is_quarantined_across_jobs_then_let_back() {
    let (mut c, jobs) = setup(&[(0, 2), (0, 2), (0, 2), (0, 2)]);
    let q = Policy { max_attempts: 5, quarantine_after: 3, quarantine_ms: 10_000, ..POLICY };
    let mut failed_jobs = Vec::new();
    for (i, t) in [10, 20, 1_100].into_iter().enumerate() {
        let g = acquire(&mut c, WorkerId(1), q, t).unwrap().expect("work while not quarantined");
        failed_jobs.push(g.job);
        if i == 1 {
            expire(&mut c, q, t + q.lease_ms + 1).unwrap(); // a lost lease counts as a failure too
        } else {
            fail(&mut c, g.attempt, "cuda error", false, q, t + 5).unwrap();
        }
        let reason: String =
            c.query_row("SELECT reason FROM attempts WHERE id = ?1", [g.attempt], |r| r.get(0)).unwrap();
        assert_eq!(reason.contains("quarantined"), i == 2, "attempt {i}: {reason}");
    }
    assert_eq!(failed_jobs, jobs[..3], "each failure was on another job");
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(1), 10).unwrap(), 3);
    // Work is ready (job 4), but not for worker-1 until the quarantine ends; others get it.
    assert_eq!(take(&mut c, WorkerId(1), 2_000), None);
    let until: i64 = c.query_row("SELECT quarantined_until_ms FROM workers WHERE seq = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(until, 1_105 + q.quarantine_ms, "quarantined from the third failure on");
    let other = acquire(&mut c, WorkerId(2), q, 2_000).unwrap().unwrap();
    complete(&mut c, other.attempt, &UP, q, 2_010).unwrap();
    let back = acquire(&mut c, WorkerId(1), q, until + 1).unwrap().expect("let back after the quarantine");
    complete(&mut c, back.attempt, &UP, q, until + 2).unwrap();
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(1), 10).unwrap(), 0, "a success ends the run");
    // Released attempts are nobody's fault.
    let g = acquire(&mut c, WorkerId(3), q, until + 3).unwrap().unwrap();
    fail(&mut c, g.attempt, "worker shut down", true, q, until + 4).unwrap();
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(3), 10).unwrap(), 0);
}

#[test]
fn a_failure_that_follows_its_job_across_workers_fails_the_job_and_charges_no_worker() {
    let (mut c, jobs) = setup(&[(5, 2), (0, 2), (0, 2)]);
    let (a, b, other) = (jobs[0], jobs[1], jobs[2]);
    let q = Policy { max_attempts: 5, quarantine_after: 2, quarantine_ms: 60_000, ..POLICY };
    let job_of = |c: &Connection, attempt: AttemptId| -> JobId {
        c.query_row("SELECT job FROM attempts WHERE id = ?1", [attempt], |r| r.get(0)).unwrap()
    };
    // worker-1 fails job a (its own trouble), then job b's first segment: two in a row.
    let g = acquire(&mut c, WorkerId(1), q, 10).unwrap().unwrap();
    assert_eq!(job_of(&c, g.attempt), a);
    fail(&mut c, g.attempt, "cuda error 700", false, q, 11).unwrap();
    let _busy = acquire(&mut c, WorkerId(3), q, 12).unwrap().unwrap(); // takes a's retry
    let g = acquire(&mut c, WorkerId(1), q, 20).unwrap().unwrap();
    assert_eq!(job_of(&c, g.attempt), b);
    fail(&mut c, g.attempt, "optimisation diverged at frame 3: loss is NaN", false, q, 21).unwrap();
    assert!(blame::quarantined(&c.transaction().unwrap(), WorkerId(1), 22).unwrap());
    // Another reason on another worker is that worker's own failure: b is retried.
    let g = acquire(&mut c, WorkerId(2), q, 30).unwrap().unwrap();
    assert_eq!(job_of(&c, g.attempt), b);
    fail(&mut c, g.attempt, "out of memory", false, q, 31).unwrap();
    assert_eq!(db::job_state(&c.transaction().unwrap(), b).unwrap(), db::JobState::Running);
    // The same failure on a second worker: the job's fault.
    let g = acquire(&mut c, WorkerId(4), q, 40).unwrap().unwrap();
    assert_eq!(job_of(&c, g.attempt), b);
    fail(&mut c, g.attempt, "optimisation diverged at frame 17: loss is NaN", false, q, 41).unwrap();
    let (state, error): (db::JobState, String) =
        c.query_row("SELECT state, error FROM jobs WHERE seq = ?1", [b], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(state, db::JobState::Failed);
    assert!(
        error.contains("failed the same way on worker-1 and on worker-4") && error.contains("no worker is charged"),
        "{error}"
    );
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(4), 10).unwrap(), 0);
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(1), 10).unwrap(), 1, "only its own failure counts");
    assert!(
        !blame::quarantined(&c.transaction().unwrap(), WorkerId(1), 50).unwrap(),
        "the quarantine it tipped is lifted"
    );
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(2), 10).unwrap(), 1, "its other failure still counts");
    // The farm goes on: the next job is offered to the worker that was wrongly quarantined.
    let g = acquire(&mut c, WorkerId(1), q, 60).unwrap().unwrap();
    assert_eq!(job_of(&c, g.attempt), other);
}

#[test]
fn a_bad_start_state_reruns_its_producer_and_costs_the_loader_nothing() {
    let (mut c, jobs) = setup(&[(0, 4)]);
    let job = jobs[0];
    let attempt_state = |c: &Connection, id: AttemptId| -> String {
        c.query_row("SELECT state FROM attempts WHERE id = ?1", [id], |r| r.get(0)).unwrap()
    };
    let mut producer = take(&mut c, WorkerId(1), 10).unwrap().2;
    complete(&mut c, producer, &UP, POLICY, 20).unwrap();
    for round in 0..2 {
        let t = 1_000 * (round + 1); // past the producer's affinity grace
        let loader = acquire(&mut c, WorkerId(2), POLICY, t).unwrap().unwrap();
        assert_eq!((loader.idx, loader.start_attempt), (1, producer));
        // First the loader and the coordinator disagree (nobody can tell who lies: nobody is
        // charged), then the coordinator's copy is bad too (the producer is charged).
        let recheck = match round {
            0 => blame::Recheck::Passes,
            _ => blame::Recheck::Bad("sha256 changed".into()),
        };
        let producer_worker: WorkerId =
            c.query_row("SELECT worker FROM attempts WHERE id = ?1", [producer], |r| r.get(0)).unwrap();
        let d = blame::disown_start(&mut c, loader.attempt, "not a safetensors file", &recheck, POLICY, t + 1).unwrap();
        assert_eq!((d.job, d.idx, d.attempt), (job, 0, producer));
        assert_eq!(attempt_state(&c, loader.attempt), "cancelled");
        assert_eq!(attempt_state(&c, producer), "failed");
        let charged = blame::failures_in_a_row(&c, producer_worker, 10).unwrap();
        assert_eq!(
            (charged, blame::failures_in_a_row(&c, WorkerId(2), 10).unwrap()),
            (round as u32, 0),
            "round {round}"
        );
        if round == 1 {
            // A producer that keeps making bad states runs out of retries: no endless loop.
            let (state, error): (String, String) = c
                .query_row("SELECT state, error FROM jobs WHERE seq = ?1", [job], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!(state, "failed");
            assert!(error.contains("its end state is unusable: sha256 changed"), "{error}");
            return;
        }
        // Segment 0 is rendered again (by anyone), and segment 1 then starts from the new state.
        let rerun = acquire(&mut c, WorkerId(3), POLICY, t + 2).unwrap().unwrap();
        assert_eq!((rerun.idx, rerun.start_attempt), (0, AttemptId(0)));
        complete(&mut c, rerun.attempt, &UP, POLICY, t + 3).unwrap();
        producer = rerun.attempt;
        // The loader's cancelled attempt cost segment 1 nothing: it still has both its tries.
        let n: u32 = c
            .query_row(
                "SELECT COUNT(*) FROM attempts WHERE job = ?1 AND idx = 1 AND state != 'cancelled'",
                [job],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
    }
}

#[test]
fn a_preempted_attempt_keeps_what_it_finished_and_the_rest_becomes_the_next_segment() {
    let (mut c, _) = setup(&[]);
    let job = db::submit(&mut c, &v1::JobSpec::default(), 30, 10, "style", "", 0).unwrap(); // [0, 10) [10, 20) [20, 30)
    let first = take(&mut c, WorkerId(1), 0).unwrap().2;
    complete(&mut c, first, &UP, POLICY, 10).unwrap();
    let g = acquire(&mut c, WorkerId(1), POLICY, 20).unwrap().unwrap();
    assert_eq!((g.idx, g.start_frame, g.end_frame), (1, 10, 20));
    // Nothing finished is nothing to hand over.
    let none = Upload { frames: Some(0), ..UP };
    assert!(matches!(complete(&mut c, g.attempt, &none, POLICY, 25), Err(Error::Invalid { field: "frames_done", .. })));
    // Too little to split off: released, nobody charged, the segment rendered again whole (a
    // worker handing over one frame at a time once cut a job into thousands of segments).
    let short = Upload { frames: Some(reshape::MIN_SPLIT_FRAMES - 1), ..UP };
    let (_, done) = complete(&mut c, g.attempt, &short, POLICY, 26).unwrap();
    assert!(matches!(&done, Completed::Released(r) if r.contains("needs at least 4 frames")), "{done:?}");
    let spans = |c: &Connection| -> Vec<(u32, u32, String)> {
        c.prepare("SELECT start_frame, end_frame, state FROM segments WHERE job = ?1 ORDER BY idx")
            .unwrap()
            .query_map([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let want = |w: &[(u32, u32, &str)]| w.iter().map(|&(a, b, s)| (a, b, s.to_string())).collect::<Vec<_>>();
    assert_eq!(spans(&c), want(&[(0, 10, "done"), (10, 20, "ready"), (20, 30, "waiting")]));
    assert_eq!(blame::failures_in_a_row(&c, WorkerId(1), 10).unwrap(), 0);

    let g = acquire(&mut c, WorkerId(2), POLICY, 30).unwrap().unwrap();
    assert_eq!((g.idx, g.start_frame), (1, 10));
    let four = Upload { frames: Some(4), ..UP };
    assert_eq!(complete(&mut c, g.attempt, &four, POLICY, 31).unwrap().1, Completed::More);
    assert_eq!(spans(&c), want(&[(0, 10, "done"), (10, 14, "done"), (14, 20, "ready"), (20, 30, "waiting")]));
    // The rest starts from the preempted attempt's state, for anyone (its worker is leaving).
    let next = acquire(&mut c, WorkerId(3), POLICY, 32).unwrap().unwrap();
    assert_eq!((next.idx, next.start_frame, next.end_frame, next.start_attempt), (2, 14, 20, g.attempt));
    assert_eq!(next.segment_count, 4);
    let (frames, reason): (u32, String) = c
        .query_row("SELECT frames_done, reason FROM attempts WHERE id = ?1", [g.attempt], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((frames, reason.as_str()), (4, "preempted after 4 of 10 frames: frames 14..20 are segment 2 now"));
    // The first attempt's history moved with nothing: it is still segment 0's.
    assert_eq!(db::done_chunks(&c, job).unwrap(), vec![(first, 0, 10), (g.attempt, 10, 14)]);

    // A job split as often as allowed is split no more.
    c.execute("UPDATE jobs SET splits = ?2 WHERE seq = ?1", params![job, reshape::MAX_SPLITS_PER_JOB]).unwrap();
    let (_, done) = complete(&mut c, next.attempt, &four, POLICY, 33).unwrap();
    assert!(matches!(&done, Completed::Released(r) if r.contains("split 64 times")), "{done:?}");
    assert_eq!(spans(&c).len(), 4);
}

#[test]
fn a_job_that_leaves_its_segment_length_open_is_cut_by_the_first_segments_pace() {
    let mut c = db::open(std::path::Path::new(":memory:")).unwrap();
    register(&c, "a", 1, 0);
    let sized = Policy { segment_secs: 60.0, lease_ms: 10_000, ..POLICY };
    let open = v1::JobSpec::default(); // segment_frames 0: the coordinator's choice
    let fixed = v1::JobSpec { segment_frames: 10, ..Default::default() };
    let auto = db::submit(&mut c, &open, 1000, 10, "style", "", 0).unwrap();
    let manual = db::submit(&mut c, &fixed, 1000, 10, "style", "", 0).unwrap();
    for (job, want) in [(auto, (1 + 990usize.div_ceil(300), 300, true)), (manual, (100, 10, false))] {
        let g = acquire(&mut c, WorkerId(1), sized, 0).unwrap().unwrap();
        assert_eq!(g.job, job);
        // 10 frames in 2 s of rendering (the worker's own figure, within the attempt's 5 s).
        let up = Upload { frame_seconds: 2.0, ..UP };
        complete(&mut c, g.attempt, &up, sized, 5_000).unwrap();
        let view = db::job(&c, job, true).unwrap();
        let got = (view.segments.len(), view.segment_frames, view.segment_frames_measured);
        assert_eq!(got, want, "job {job}");
        let spans: Vec<(u32, u32)> = view.segments.iter().map(|s| (s.start_frame, s.end_frame)).collect();
        assert_eq!(spans.first(), Some(&(0, 10)));
        assert!(spans.windows(2).all(|w| w[0].1 == w[1].0) && spans.last().unwrap().1 == 1000, "{spans:?}");
        let next = acquire(&mut c, WorkerId(1), sized, 5_001).unwrap().unwrap();
        assert_eq!((next.job, next.idx, next.start_frame), (job, 1, 10));
        fail(&mut c, next.attempt, "done with this job", true, sized, 5_002).unwrap();
        db::cancel(&mut c, job, 5_003).unwrap();
    }
}

/// A worker's frame count is believed up to its segment's length: a forged count cannot make
/// a job look done (segments of 2 frames here, a job of 6).
#[test]
fn heartbeat_progress_is_clamped_to_the_segment() {
    let (mut c, jobs) = setup(&[(0, 6)]);
    let (_, _, a) = take(&mut c, WorkerId(1), 0).unwrap();
    let (_, kept) = heartbeat(&mut c, a, u32::MAX, POLICY, 10).unwrap();
    assert_eq!(kept, 2);
    let job = db::job(&c, jobs[0], true).unwrap();
    assert_eq!((job.frames_done, job.frames_total), (2, 6), "{job:?}");
    assert_eq!(job.segments[0].attempts[0].frames_done, 2);
    assert_eq!(heartbeat(&mut c, a, 1, POLICY, 20).unwrap().1, 1, "an honest count is kept as it is");
}

#[test]
fn a_chunk_that_cannot_be_joined_has_its_segment_rendered_again_within_its_retries() {
    let (mut c, jobs) = setup(&[(0, 4)]); // [0, 2) [2, 4)
    let job = jobs[0];
    let first = take(&mut c, WorkerId(1), 0).unwrap().2;
    complete(&mut c, first, &UP, POLICY, 10).unwrap();
    let second = take(&mut c, WorkerId(1), 20).unwrap().2;
    assert_eq!(complete(&mut c, second, &UP, POLICY, 30).unwrap().1, Completed::Last);
    let state = |c: &mut Connection| db::job_state(&c.transaction().unwrap(), job).unwrap();
    assert_eq!(state(&mut c), db::JobState::Stitching);

    // The stitch finds the chunk of frames 2..4 broken: segment 1 is rendered again from
    // segment 0's state, and the job stitches again after.
    assert_eq!(blame::disown_chunk(&mut c, job, 2, "EINVAL", POLICY, 40).unwrap(), Some(1));
    assert_eq!(state(&mut c), db::JobState::Running);
    let again = acquire(&mut c, WorkerId(2), POLICY, 50).unwrap().unwrap();
    assert_eq!((again.idx, again.start_attempt), (1, first));
    assert_eq!(complete(&mut c, again.attempt, &UP, POLICY, 60).unwrap().1, Completed::Last);
    assert_eq!(state(&mut c), db::JobState::Stitching);
    assert_eq!(db::done_chunks(&c, job).unwrap(), vec![(first, 0, 2), (again.attempt, 2, 4)]);

    // A segment whose chunks keep breaking runs out of retries: the job fails, naming it.
    assert_eq!(blame::disown_chunk(&mut c, job, 2, "EINVAL", POLICY, 70).unwrap(), Some(1));
    assert_eq!(state(&mut c), db::JobState::Failed);
    let error: String = c.query_row("SELECT error FROM jobs WHERE seq = ?1", [job], |r| r.get(0)).unwrap();
    assert!(error.contains("its chunk could not be joined to the movie: EINVAL"), "{error}");
    assert_eq!(blame::disown_chunk(&mut c, job, 9, "EINVAL", POLICY, 80).unwrap(), None, "no such chunk");
}

/// A frame of QHD or more waits for a free worker that spreads frames over more devices while
/// one is available; with that worker busy, a one-device worker takes it. Smaller frames go to
/// whoever asks.
#[test]
fn large_frames_go_first_to_workers_with_more_devices() {
    let mut c = db::open(std::path::Path::new(":memory:")).unwrap();
    let spec = |width, height| v1::JobSpec {
        params: Some(v1::RenderParams { width, height, ..Default::default() }),
        ..Default::default()
    };
    let large = db::submit(&mut c, &spec(3840, 2160), 4, 2, "style", "", 0).unwrap();
    let small = db::submit(&mut c, &spec(1920, 1080), 4, 2, "style", "", 0).unwrap();
    let one = register(&c, "one", 1, 0);
    let four = register(&c, "four", 4, 0);
    let other = register(&c, "other", 0, 0);
    assert_eq!(take(&mut c, one, 10).map(|t| t.0), Some(small), "the large frame waits for the four-device worker");
    assert_eq!(take(&mut c, four, 10).map(|t| t.0), Some(large));
    let later = db::submit(&mut c, &spec(2560, 1440), 4, 2, "style", "", 10).unwrap();
    assert_eq!(take(&mut c, other, 20).map(|t| t.0), Some(later), "the four-device worker is busy");
}
