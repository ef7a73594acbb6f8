//! Whose fault a failure is: a worker that fails everything is quarantined instead of spending
//! every job's retries, and a start state that went bad in the store is rendered again instead
//! of being blamed on the workers that cannot load it.

use crate::farm::{mp4_chunk, state_bytes, Cluster, FakeWorker, WORKER};
use crate::helpers::{code, decode_video, stderr};
use proto::v1;
use tonic::Code;

fn fail(c: &Cluster, w: &mut FakeWorker, attempt: u64, reason: &str, bad_start_state: bool) {
    let r = v1::FailSegmentRequest { attempt_id: attempt, reason: reason.into(), bad_start_state, released: false };
    c.runtime.block_on(w.client.fail_segment(r)).expect("failsegment");
}

#[test]
fn a_worker_that_fails_everything_is_quarantined_and_shown_so() {
    let c = Cluster::start("30", &["--quarantine-after", "2", "--quarantine-secs", "60", "--max-attempts", "9"]);
    let jobs: Vec<String> = (0..3).map(|_| c.submit(&["--size", "64x48", "--frames", "2"])).collect();
    let mut bad = FakeWorker::register(&c);
    for round in 0..2 {
        let a = bad.acquire(&c);
        fail(&c, &mut bad, a.attempt_id, "cuda error: an illegal memory access", false);
        let job = c.job(&a.job_id);
        let reason = &job.segments[0].attempts.last().unwrap().reason;
        assert_eq!(reason.contains("quarantined for 60 s after 2 failures in a row"), round == 1, "{reason}");
    }
    // Work is waiting, but not for the quarantined worker.
    let ask = v1::AcquireRequest { worker_id: bad.id.clone(), wait_ms: 600 };
    let r = c.runtime.block_on(bad.client.acquire(ask)).unwrap().into_inner();
    assert!(r.assignment.is_none(), "a quarantined worker got work: {r:?}");
    let mut good = FakeWorker::register(&c);
    assert!(jobs.contains(&good.acquire(&c).job_id));

    // Operators see it: `gramzoom workers`, as any user.
    let out = c.run(&["workers", "--coordinator", &c.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing.lines().find(|l| l.starts_with(&format!("{} ", bad.id))).expect(&listing);
    assert!(line.contains("2 failed in a row") && line.contains("QUARANTINED for"), "{line}");
    let line = listing.lines().find(|l| l.starts_with(&format!("{} ", good.id))).expect(&listing);
    assert!(line.contains("rendering job-") && !line.contains("QUARANTINED"), "{line}");
    // Workers are not users: the listing is on the job API.
    let mut as_worker = c.jobs_as(Some(WORKER));
    assert_eq!(code(c.runtime.block_on(as_worker.list_workers(v1::ListWorkersRequest {}))), Code::PermissionDenied);
}

#[test]
fn a_start_state_gone_bad_in_the_store_is_rendered_again_and_the_loader_is_not_blamed() {
    let mut c = Cluster::start("30", &[]);
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2", "--iters", "2", "--warmup", "4"]);
    c.worker("a", &["--max-segments", "1"]);
    let job = c.wait(&id, 240, "segment 0", |j| j.segments_done == 1);
    let producer = job.segments[0].attempts[0].id;

    // A worker claims the state is bad while the coordinator's copy passes the loader's own
    // checks: one of the two workers lies, nobody can tell which, so neither is charged and
    // segment 0 is rendered again by another worker (the producer is the suspect). It says it
    // has the real worker's weights, or it would not be offered segment 1 at all.
    let workers = c.runtime.block_on(c.jobs().list_workers(v1::ListWorkersRequest {})).unwrap().into_inner();
    let weights: Vec<(String, String)> =
        workers.workers[0].weights.iter().map(|w| (w.network.clone(), w.digest.clone())).collect();
    let weights: Vec<(&str, &str)> = weights.iter().map(|(n, d)| (n.as_str(), d.as_str())).collect();
    let mut liar = FakeWorker::register_with(&c, WORKER, &weights).unwrap();
    let a = liar.acquire(&c);
    assert_eq!((a.segment_index, a.start_state_attempt_id), (1, producer));
    fail(&c, &mut liar, a.attempt_id, "not a safetensors file", true);
    let job = c.job(&id);
    let claimed = &job.segments[1].attempts[0];
    assert_eq!(claimed.state, v1::AttemptState::Cancelled as i32, "{job:#?}");
    assert!(
        claimed.reason.contains("the coordinator's check passes the stored state, so its producer is suspect"),
        "{}",
        claimed.reason
    );
    let suspect = &job.segments[0].attempts[0];
    assert_eq!(suspect.state, v1::AttemptState::Failed as i32);
    assert!(
        suspect.reason.contains("could not load it, though it passes the coordinator's check"),
        "{}",
        suspect.reason
    );
    let workers = c.runtime.block_on(c.jobs().list_workers(v1::ListWorkersRequest {})).unwrap().into_inner();
    assert!(workers.workers.iter().all(|w| w.failures_in_a_row == 0), "somebody was charged: {workers:#?}");

    // Segment 0 is rendered again; then its stored state rots (same size, other bytes): the next
    // worker cannot load it, the coordinator finds its copy bad too, and segment 0 is rendered
    // once more, charged to nobody but that state's producer.
    c.worker("b", &["--max-segments", "1"]);
    let job = c.wait(&id, 240, "segment 0 again", |j| j.segments_done == 1);
    let producer = job.segments[0].attempts[1].id;
    let path =
        c.data.join("artifacts/jobs").join(id.trim_start_matches("job-")).join(format!("attempt-{producer}.state"));
    let mut bytes = std::fs::read(&path).expect("the stored state");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    c.worker("c", &[]);
    let job = c.wait_done(&id);
    let states = |s: &v1::Segment| s.attempts.iter().map(|a| a.state).collect::<Vec<_>>();
    use v1::AttemptState::{Cancelled, Failed, Succeeded};
    assert_eq!(states(&job.segments[0]), [Failed as i32, Failed as i32, Succeeded as i32], "{job:#?}");
    let rotted = &job.segments[0].attempts[1].reason;
    assert!(rotted.starts_with("its end state is unusable: its sha256 is now"), "{rotted}");
    assert_eq!(states(&job.segments[1]), [Cancelled as i32, Cancelled as i32, Succeeded as i32], "{job:#?}");
    let loader = &job.segments[1].attempts[1].reason;
    assert!(loader.starts_with("could not load its start state: the start state arrived corrupt"), "{loader}");
    assert!(loader.ends_with("segment 0 is rendered again"), "{loader}");
    assert!(!path.exists(), "the bad state is removed from the store");
    let movie = c.download(&id, "rerendered.mp4");
    assert_eq!(decode_video(&movie).frames, 4);
}

#[test]
fn a_worker_with_other_weights_never_gets_the_rest_of_a_job_and_is_never_charged() {
    let c = Cluster::start("30", &[]);
    let dir = c.dir.path();
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2"]);
    let weights = |digest| [("vgg16", digest), ("vgg19", "other")];
    let mut first = FakeWorker::register_with(&c, WORKER, &weights("aaaa")).unwrap();
    let a = first.acquire(&c);
    let fingerprint = c.fingerprint(&id, "aaaa");
    first.complete_with(&c, a.attempt_id, &mp4_chunk(dir, 2), &state_bytes(&fingerprint, 2, (64, 48))).unwrap();
    // Segment 1 must resume on the weights segment 0 was rendered with.
    let mut stranger = FakeWorker::register_with(&c, WORKER, &weights("bbbb")).unwrap();
    let ask = v1::AcquireRequest { worker_id: stranger.id.clone(), wait_ms: 3_000 };
    let r = c.runtime.block_on(stranger.client.acquire(ask)).unwrap().into_inner();
    assert!(r.assignment.is_none(), "a worker with other weights got {r:?}");
    let mut twin = FakeWorker::register_with(&c, WORKER, &weights("aaaa")).unwrap();
    let b = twin.acquire(&c);
    assert_eq!((b.job_id.as_str(), b.segment_index), (id.as_str(), 1));
    let job = c.job(&id);
    assert!(job.segments[1].attempts.iter().all(|a| a.worker_id != stranger.id), "{job:#?}");
    // The farm listing shows what each worker has.
    let out = c.run(&["workers", "--coordinator", &c.url()]);
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing.lines().find(|l| l.starts_with(&format!("{} ", stranger.id))).expect(&listing);
    assert!(line.contains("vgg16=bbbb"), "{line}");
}
