//! The coordinator tried as a careless operator and a hostile client would: a second
//! coordinator started on the same data directory, ids that are almost ids, inputs of
//! megabytes where a few bytes belong.

use crate::cluster::{Cluster, FakeWorker, Proc, ALICE, BOB, ROOT, WORKER};
use crate::helpers::{stderr, tempdir};
use proto::v1;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

#[test]
fn a_second_coordinator_on_the_same_data_exits_naming_the_first_and_leaves_its_files_alone() {
    let c = Cluster::start("30", &[]);
    let first_pid = c.coordinator.as_ref().unwrap().child.id();
    let id = c.submit(&["--size", "64x48", "--frames", "2"]); // the first one is serving
                                                              // What an upload in flight looks like: a file in scratch, which a starting coordinator wipes.
    let data = c.path("data");
    let in_flight = data.join("scratch").join("attempt-1.chunk");
    std::fs::write(&in_flight, b"half an upload").unwrap();

    let args = ["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()];
    let mut second = Proc::spawn(&args, c.path("second.log"), c.dir.path(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a second coordinator runs on the same data: {}", second.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = second.log();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "data directory {} is in use by another coordinator (pid {first_pid} on ",
            data.display()
        )),
        "{err}"
    );
    assert!(in_flight.exists(), "the refused coordinator wiped the first one's scratch");

    // The first one is untouched and still takes work.
    assert_eq!(c.job(&id).state, v1::JobState::Queued as i32);
    let again = c.submit(&["--size", "64x48", "--frames", "2"]);
    assert_eq!(c.job(&again).state, v1::JobState::Queued as i32);
}

#[test]
fn job_ids_are_taken_only_as_written_and_bad_ones_are_quoted_short() {
    let c = Cluster::start("30", &[]);
    let id = c.submit(&["--size", "64x48", "--frames", "2"]);
    assert_eq!(id, "job-1");
    let mut jobs = c.jobs();
    let get = |jobs: &mut cli::client::Client, id: &str| {
        let r = v1::GetJobRequest { job_id: id.into(), include_segments: false };
        c.runtime.block_on(jobs.get_job(r))
    };
    assert_eq!(get(&mut jobs, "job-1").unwrap().into_inner().id, "job-1");
    let long = format!("job-{}", "1".repeat(1 << 20));
    for bad in ["job-01", "job-+1", "job- 1", "job-1 ", "job-", long.as_str()] {
        let status = get(&mut jobs, bad).expect_err(bad);
        assert_eq!(status.code(), Code::NotFound, "{:.40}: {}", bad, status.message());
        assert!(status.message().len() < 120, "a {} byte id was quoted in full", bad.len());
    }
    // Nothing can be done to job-1 through another spelling of its id.
    let out = c.run(&["cancel", "job-+1", "--coordinator", &c.url()]);
    assert!(!out.status.success() && stderr(&out).contains("not found"), "{}", stderr(&out));
    assert_eq!(c.job(&id).state, v1::JobState::Queued as i32);
}

/// A 64x48, two-frame MP4 job.
fn tiny_spec() -> v1::JobSpec {
    let params = proto::params::RenderParams { width: 64, height: 48, frames: 2, ..Default::default() };
    v1::JobSpec {
        params: Some(proto::wire::params_to_wire(&params)),
        output: v1::OutputFormat::Mp4 as i32,
        ..Default::default()
    }
}

/// The code a call was refused with.
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.err().expect("the call was refused").code()
}

/// Runs `gramzoom args` and waits at most 20 s for it to exit (a coordinator that should have
/// refused to start would otherwise serve forever); returns its exit success and stderr.
fn exits_promptly(args: &[&str], cache: &Path) -> (bool, String) {
    let mut p = Proc::spawn(args, cache.join(format!("run-{}.log", args.len())), cache, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return (status.success(), p.log());
        }
        assert!(Instant::now() < deadline, "gramzoom {args:?} is still running: {}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn users_see_and_touch_only_their_own_jobs_and_roles_keep_to_their_api() {
    let c = Cluster::start("30", &[]);
    let id = c.submit(&["--size", "64x48", "--frames", "2"]); // alice's
    let rt = &c.runtime;
    let get = |job: &str| v1::GetJobRequest { job_id: job.into(), include_segments: false };

    // Strangers: no token, a wrong token.
    for token in [None, Some("not-a-token-0123456789xyz")] {
        let mut jobs = c.jobs_as(token);
        assert_eq!(code(rt.block_on(jobs.list_jobs(v1::ListJobsRequest {}))), Code::Unauthenticated, "{token:?}");
        assert_eq!(code(rt.block_on(jobs.get_job(get(&id)))), Code::Unauthenticated, "{token:?}");
    }

    // Bob, another user: alice's job does not exist for him, whatever he calls.
    let mut bob = c.jobs_as(Some(BOB));
    assert_eq!(code(rt.block_on(bob.get_job(get(&id)))), Code::NotFound);
    assert_eq!(code(rt.block_on(bob.cancel_job(v1::CancelJobRequest { job_id: id.clone() }))), Code::NotFound);
    assert_eq!(code(rt.block_on(bob.delete_job(v1::DeleteJobRequest { job_id: id.clone() }))), Code::NotFound);
    assert_eq!(code(rt.block_on(bob.watch_job(v1::WatchJobRequest { job_id: id.clone() }))), Code::NotFound);
    let download = v1::DownloadOutputRequest { job_id: id.clone() };
    assert_eq!(code(rt.block_on(bob.download_output(download))), Code::NotFound);
    assert!(rt.block_on(bob.list_jobs(v1::ListJobsRequest {})).unwrap().into_inner().jobs.is_empty());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gramzoom"))
        .args(["cancel", &id, "--coordinator", &c.url()])
        .env("GRAMZOOM_TOKEN", BOB)
        .output()
        .unwrap();
    assert!(!out.status.success() && stderr(&out).contains("not found"), "{}", stderr(&out));
    let job = c.job(&id);
    assert_eq!((job.state, job.owner.as_str()), (v1::JobState::Queued as i32, "alice"), "bob changed alice's job");

    // Alice lists her own; the admin sees every job and may act on it.
    let bobs = {
        let spec = tiny_spec();
        let style = std::fs::read(crate::helpers::example("wheatfield.jpg")).unwrap();
        rt.block_on(cli::client::submit(&mut bob, spec, &style, "style")).unwrap().id
    };
    let ids = |token| {
        let mut jobs = c.jobs_as(Some(token));
        let list = rt.block_on(jobs.list_jobs(v1::ListJobsRequest {})).unwrap().into_inner().jobs;
        list.into_iter().map(|j| j.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(ALICE), vec![id.clone()]);
    assert_eq!(ids(BOB), vec![bobs.clone()]);
    assert_eq!(ids(ROOT), vec![id.clone(), bobs.clone()]);
    let mut root = c.jobs_as(Some(ROOT));
    rt.block_on(root.cancel_job(v1::CancelJobRequest { job_id: bobs })).expect("an admin cancels any job");

    // A worker token cannot use the job API; a user token cannot act as a worker.
    let mut as_worker = c.jobs_as(Some(WORKER));
    let denied = rt.block_on(as_worker.list_jobs(v1::ListJobsRequest {})).unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "worker gpu may not call the job API");
    let denied = FakeWorker::register_as(&c, ALICE).err().expect("a user registered as a worker");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "user alice may not call the worker API");
}

#[test]
fn a_worker_cannot_act_on_another_workers_attempt() {
    let c = Cluster::start("30", &[]);
    let id = c.submit(&["--size", "64x48", "--frames", "2"]);
    let mut honest = FakeWorker::register(&c);
    let a = honest.acquire(&c);
    assert_eq!(a.job_id, id);
    // Same token (workers share one Secret), but its own session.
    let mut other = FakeWorker::register(&c);
    let rt = &c.runtime;
    let attempt = a.attempt_id;
    let heartbeat = v1::HeartbeatRequest { attempt_id: attempt, frames_done: 2, ..Default::default() };
    let fail = v1::FailSegmentRequest { attempt_id: attempt, reason: "sabotage".into(), released: false };
    let denials = [
        rt.block_on(other.client.heartbeat(heartbeat)).map(|_| ()),
        rt.block_on(other.client.fail_segment(fail)).map(|_| ()),
        rt.block_on(other.client.fetch_style(v1::FetchRequest { attempt_id: attempt })).map(|_| ()),
        other.complete(&c, attempt, b"garbage", &coordinator::sha256_hex(b"garbage")),
        rt.block_on(other.client.leave(v1::LeaveRequest { worker_id: honest.id.clone() })).map(|_| ()),
        rt.block_on(other.client.acquire(v1::AcquireRequest { worker_id: honest.id.clone(), wait_ms: 0 })).map(|_| ()),
    ];
    for (i, d) in denials.into_iter().enumerate() {
        assert_eq!(d.unwrap_err().code(), Code::PermissionDenied, "call {i}");
    }
    // A worker token without a session is nobody's worker.
    let no_session = rt.block_on(async {
        let credentials = proto::auth::Credentials::new(Some(WORKER)).unwrap();
        let channel = tonic::transport::Endpoint::from_shared(c.url()).unwrap().connect().await.unwrap();
        let mut client = v1::worker_service_client::WorkerServiceClient::with_interceptor(channel, credentials);
        client.heartbeat(heartbeat).await
    });
    assert_eq!(no_session.unwrap_err().code(), Code::Unauthenticated);

    // The honest worker still holds its attempt, untouched.
    rt.block_on(honest.client.heartbeat(heartbeat)).expect("the holder heartbeats");
    let job = c.job(&id);
    let attempts = &job.segments[0].attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, v1::AttemptState::Running as i32);
    assert_eq!(attempts[0].worker_id, honest.id);
}

#[test]
fn an_open_coordinator_stays_on_loopback_and_https_is_never_plaintext() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, err) = exits_promptly(&["serve", "--listen", "0.0.0.0:0", "--data", data], dir.path());
    assert!(!ok, "{err}");
    assert!(err.contains("--listen: 0.0.0.0:0 is reachable from other machines, and without --auth"), "{err}");

    let bad = dir.path().join("bad-tokens");
    std::fs::write(&bad, "user alice secret-but-short\n").unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--data", data, "--auth", bad.to_str().unwrap()];
    let (ok, err) = exits_promptly(&args, dir.path());
    assert!(!ok, "{err}");
    assert!(err.contains("line 1: the token of alice is shorter than 20 characters"), "{err}");
    assert!(!err.contains("secret-but-short"), "the error quotes a token: {err}");

    // A coordinator that is up; an https:// URL to it must not be used in plaintext.
    let c = Cluster::start("30", &[]);
    let https = c.url().replace("http://", "https://");
    let out = c.run(&["status", "--coordinator", &https]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("never falls back to plaintext"), "{}", stderr(&out));
}

#[test]
fn the_same_new_style_submitted_many_times_at_once_is_stored_once_for_all() {
    let c = Cluster::start("30", &[]);
    let style = std::fs::read(crate::helpers::example("immunohistochemistry.png")).unwrap();
    let spec = tiny_spec();
    let url = c.url();
    let results = c.runtime.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (url, spec, style) = (url.clone(), spec.clone(), style.clone());
            all.spawn(async move {
                let mut jobs = cli::client::connect(&url, Some(ALICE)).await.unwrap();
                cli::client::submit(&mut jobs, spec, &style, "style.png").await.map(|j| j.id)
            });
        }
        all.join_all().await
    });
    for r in &results {
        assert!(r.is_ok(), "{results:?}");
    }
    let styles = std::fs::read_dir(c.path("data/artifacts/styles")).unwrap().count();
    assert_eq!(styles, 1, "one stored style for all the jobs");
    let scratch: Vec<_> = std::fs::read_dir(c.path("data/scratch")).unwrap().collect();
    assert!(scratch.is_empty(), "left in scratch: {scratch:?}");
}

/// A PNG of a few dozen bytes that declares `w`x`h` pixels (and holds none).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    let idat = vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]; // an empty zlib stream
    for (kind, data) in [(&b"IHDR"[..], ihdr), (b"IDAT", idat), (b"IEND", vec![])] {
        png.extend((data.len() as u32).to_be_bytes());
        let body = [kind, &data].concat();
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    }
    png
}

#[test]
fn every_input_is_bounded_and_bad_values_are_quoted_short() {
    let c = Cluster::start("30", &[]);
    let style = std::fs::read(crate::helpers::example("wheatfield.jpg")).unwrap();
    let spec = |edit: &dyn Fn(&mut v1::JobSpec)| {
        let mut s = tiny_spec();
        edit(&mut s);
        s
    };
    let layer = |name: String| v1::LayerWeight { name, weight: 1.0 };
    let huge_png = png_header_only(20_000, 20_000);
    let long_name = "n".repeat(3 << 20);
    let cases: Vec<(&str, v1::JobSpec, &[u8], String, &str)> = vec![
        (
            "a small file declaring 400 megapixels",
            spec(&|_| {}),
            &huge_png,
            "s.png".into(),
            "style: \"s.png\" is 20000x20000, more than the 50 megapixels a style image may have",
        ),
        (
            "a 3 MiB job name",
            spec(&|s| s.name = long_name.clone()),
            &style,
            "s.jpg".into(),
            "name: is 3145728 bytes, at most 256 allowed: \"nnnn",
        ),
        (
            "a 1 MiB style name",
            spec(&|_| {}),
            &style,
            "s".repeat(1 << 20),
            "style_name: is 1048576 bytes, at most 256 allowed",
        ),
        (
            "a 100 KB layer name",
            spec(&|s| s.params.as_mut().unwrap().layers = vec![layer("x".repeat(100_000))]),
            &style,
            "s.jpg".into(),
            "--layers: vgg16 has no layer \"xxxx",
        ),
        (
            "40 layers",
            spec(&|s| s.params.as_mut().unwrap().layers = vec![layer("conv1_1".into()); 40]),
            &style,
            "s.jpg".into(),
            "--layers: at most 16 layers, got 40",
        ),
        (
            "fps 4294967295/4294967295",
            spec(&|s| {
                let p = s.params.as_mut().unwrap();
                (p.fps_num, p.fps_den) = (u32::MAX, u32::MAX);
            }),
            &style,
            "s.jpg".into(),
            "--fps: must be between 1 and 240 frames per second with a denominator of at most 1000",
        ),
    ];
    let mut jobs = c.jobs();
    for (what, spec, style, name, want) in cases {
        let err = c.runtime.block_on(cli::client::submit(&mut jobs, spec, style, &name)).map(|j| j.id).unwrap_err();
        let cli::client::ClientError::Rpc(status) = err else { panic!("{what}: {err}") };
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", status.message());
        assert!(status.message().starts_with(want), "{what}: {:.300}", status.message());
        assert!(status.message().len() < 400, "{what}: a {} byte message", status.message().len());
    }
    let listed = c.runtime.block_on(jobs.list_jobs(v1::ListJobsRequest {})).unwrap().into_inner().jobs;
    assert!(listed.is_empty(), "a bad job was stored: {listed:?}");

    // A worker's name is bounded too.
    let mut w = FakeWorker::register(&c);
    let r = v1::RegisterRequest { name: "w".repeat(3 << 20), device: "cpu".into() };
    let status = c.runtime.block_on(w.client.register(r)).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("name: is 3145728 bytes, at most 128 allowed"), "{:.200}", status.message());
}

#[test]
fn every_frame_rate_validation_accepts_encodes() {
    let dir = tempdir();
    let style = crate::helpers::example("wheatfield.jpg");
    for (fps, ext, want) in [
        ("1.001", "mp4", 1.001),
        ("239.999", "mp4", 239.999),
        ("240", "mp4", 240.0),
        ("1.001", "gif", 0.0),
        ("50", "gif", 0.0),
    ] {
        let out = dir.path().join(format!("fps-{fps}.{ext}"));
        let args = ["render", style.to_str().unwrap(), "-o", out.to_str().unwrap(), "--size", "32x32", "--frames", "3"];
        let args = [&args[..], &["--warmup", "1", "--iters", "1", "--fps", fps, "--quiet"]].concat();
        let r = crate::helpers::gramzoom(&args, dir.path());
        assert!(r.status.success(), "--fps {fps} .{ext}: {}", stderr(&r));
        if ext == "mp4" {
            let d = crate::helpers::decode_video(&out);
            assert_eq!(d.frames, 3, "--fps {fps}");
            assert!((d.fps - want).abs() < 1e-6, "--fps {fps}: the file says {}", d.fps);
        }
    }
}

/// An MP4 chunk of `frames` grey 64x48 frames, as a worker's encoder writes it.
fn mp4_chunk(dir: &Path, frames: u32) -> Vec<u8> {
    use engine::encode::{self, PartialFile};
    let path = dir.join(format!("chunk-{frames}.mp4"));
    let fps = proto::params::Fps { num: 30, den: 1 };
    let mut sink =
        encode::open(proto::params::OutputKind::Mp4, PartialFile::create(&path).unwrap(), 64, 48, fps).unwrap();
    for index in 0..frames {
        sink.push(&engine::Frame { index, width: 64, height: 48, rgb: vec![100; 64 * 48 * 3] }).unwrap();
    }
    sink.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// A hand-off state of a 64x48 Adam render that resumes at `next_frame`.
fn state_bytes(next_frame: u32, (w, h): (i64, i64)) -> Vec<u8> {
    let image = tch::Tensor::rand([1, 3, h, w], (tch::Kind::Float, tch::Device::Cpu));
    let optim = engine::optim::OptimState::new(proto::params::OptimizerKind::Adam, &image);
    engine::State { next_frame, image, optim, fingerprint: "test".into() }.to_bytes()
}

#[test]
fn uploads_are_checked_for_content_not_only_checksums() {
    let c = Cluster::start("30", &["--max-attempts", "9"]);
    let dir = c.dir.path();
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2"]);
    let mut w = FakeWorker::register(&c);
    let (two, one) = (mp4_chunk(dir, 2), mp4_chunk(dir, 1));
    let good_state = state_bytes(2, (64, 48));
    let cases: [(&str, &[u8], Vec<u8>, &str); 6] = [
        ("garbage chunk", b"not a video at all", good_state.clone(), "chunk: not an MP4 file"),
        ("a frame short", &one, good_state.clone(), "chunk: the video holds 1 frames, the segment has 2"),
        ("garbage state", &two, b"not a state".to_vec(), "state: not a hand-off state"),
        ("a state that resumes elsewhere", &two, state_bytes(3, (64, 48)), "state: the state resumes at frame Some(3)"),
        ("a state of another size", &two, state_bytes(2, (48, 64)), "state: tensor"),
        ("an empty state", &two, Vec::new(), "state: not a hand-off state"),
    ];
    for (i, (what, chunk, state, want)) in cases.into_iter().enumerate() {
        let a = w.acquire(&c);
        assert_eq!((a.job_id.as_str(), a.segment_index), (id.as_str(), 0), "{what}");
        let status = w.complete_with(&c, a.attempt_id, chunk, &state).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", status.message());
        assert!(status.message().starts_with(want), "{what}: {}", status.message());
        // Charged to the attempt that uploaded it; nothing was recorded.
        let job = c.job(&id);
        let attempt = &job.segments[0].attempts[i];
        assert_eq!(attempt.state, v1::AttemptState::Failed as i32, "{what}");
        assert!(attempt.reason.starts_with(want), "{what}: {}", attempt.reason);
        assert_eq!(job.segments_done, 0, "{what}");
    }
    // What the segment must hold is accepted, and readies the next segment.
    let a = w.acquire(&c);
    w.complete_with(&c, a.attempt_id, &two, &good_state).expect("a good upload");
    let next = w.acquire(&c);
    assert_eq!((next.segment_index, next.start_state_attempt_id), (1, a.attempt_id));
}

#[test]
fn a_render_that_stops_progressing_loses_its_segment_although_it_heartbeats() {
    // A 30 s lease: only the watchdog can take the segment back within the test.
    let c = Cluster::start("30", &["--stall-secs", "1"]);
    let id = c.submit(&["--size", "64x48", "--frames", "2"]);
    let mut hung = FakeWorker::register(&c);
    let a = hung.acquire(&c);
    let mut beat = |iterations: u64| {
        let r = v1::HeartbeatRequest { attempt_id: a.attempt_id, iterations, ..Default::default() };
        c.runtime.block_on(hung.client.heartbeat(r))
    };
    // Set-up (no iterations yet) and a steady render: never stalled, however long.
    for _ in 0..4 {
        beat(0).expect("set-up is not a stall");
        std::thread::sleep(Duration::from_millis(400));
    }
    for i in 1..=6 {
        beat(i).expect("a progressing render");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Then the device hangs: heartbeats go on, the count does not move.
    let stuck = Instant::now();
    let status = loop {
        match beat(6) {
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(s) => break s,
        }
        assert!(stuck.elapsed() < Duration::from_secs(15), "a hung render kept its segment");
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    assert!(status.message().contains("no progress for"), "{}", status.message());
    assert!(stuck.elapsed() >= Duration::from_millis(900), "stalled after only {:?}", stuck.elapsed());
    let job = c.job(&id);
    let attempt = &job.segments[0].attempts[0];
    assert_eq!(attempt.state, v1::AttemptState::Expired as i32);
    assert!(attempt.reason.starts_with("no progress for"), "{}", attempt.reason);
    let mut healthy = FakeWorker::register(&c);
    assert_eq!(healthy.acquire(&c).segment_index, 0, "the segment went back to the queue");
}

#[test]
fn a_failed_job_is_retried_from_its_last_done_segment_by_its_owner() {
    let c = Cluster::start("30", &["--max-attempts", "1"]);
    let dir = c.dir.path();
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2"]);
    let mut w = FakeWorker::register(&c);
    let first = w.acquire(&c);
    w.complete_with(&c, first.attempt_id, &mp4_chunk(dir, 2), &state_bytes(2, (64, 48))).unwrap();
    let second = w.acquire(&c);
    assert_eq!(second.segment_index, 1);
    let fail = v1::FailSegmentRequest { attempt_id: second.attempt_id, reason: "cuda error".into(), released: false };
    c.runtime.block_on(w.client.fail_segment(fail)).unwrap();
    let job = c.job(&id);
    assert_eq!(job.state, v1::JobState::Failed as i32, "{}", job.error);

    // Only its owner (or an admin) may retry it, and only while it is failed.
    let mut bob = c.jobs_as(Some(BOB));
    let retry =
        |jobs: &mut cli::client::Client| c.runtime.block_on(jobs.retry_job(v1::RetryJobRequest { job_id: id.clone() }));
    assert_eq!(code(retry(&mut bob)), Code::NotFound);
    let out = c.run(&["retry", &id, "--coordinator", &c.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = retry(&mut c.jobs()).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().ends_with("has not failed: it is running; only a failed job can be retried"),
        "{}",
        status.message()
    );

    // Segment 0 is not redone: segment 1 starts from its end state, with a fresh attempt.
    let again = w.acquire(&c);
    assert_eq!((again.segment_index, again.start_state_attempt_id), (1, first.attempt_id));
    w.complete_with(&c, again.attempt_id, &mp4_chunk(dir, 2), &state_bytes(4, (64, 48))).unwrap();
    let job = c.wait_done(&id);
    let history: Vec<i32> = job.segments[1].attempts.iter().map(|a| a.state).collect();
    assert_eq!(history, [v1::AttemptState::Failed as i32, v1::AttemptState::Succeeded as i32]);
    assert_eq!(job.segments[0].attempts.len(), 1);
    let movie = c.download(&id, "retried.mp4");
    assert_eq!(crate::helpers::decode_video(&movie).frames, 4);
}

#[test]
fn tls_keeps_clients_honest_and_mutual_tls_turns_away_clients_without_a_certificate() {
    let tls = crate::helpers::repo_root().join("tests/fixtures/tls");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));

    let c = Cluster::start("30", &["--tls-cert", &cert, "--tls-key", &key]);
    let https = c.url().replace("http://", "https://");
    let out = c.run(&["status", "--coordinator", &https, "--ca", &ca]);
    assert!(out.status.success(), "a verified TLS client: {}", stderr(&out));
    let out = c.run(&["status", "--coordinator", &https]);
    assert!(!out.status.success() && stderr(&out).contains("https:// needs --ca FILE"), "{}", stderr(&out));
    let out = c.run(&["status", "--coordinator", &c.url()]);
    assert!(!out.status.success(), "plaintext reached a TLS coordinator");
    let out = c.run(&["status", "--coordinator", &c.url(), "--ca", &ca]);
    assert!(!out.status.success() && stderr(&out).contains("plaintext; use https://"), "{}", stderr(&out));
    // A CA that did not sign the coordinator's certificate: refused.
    let out = c.run(&["status", "--coordinator", &https, "--ca", &file("client.pem")]);
    assert!(!out.status.success(), "an unverified coordinator was trusted");

    let m = Cluster::start("30", &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca]);
    let https = m.url().replace("http://", "https://");
    let out = m.run(&["status", "--coordinator", &https, "--ca", &ca]);
    assert!(!out.status.success(), "mTLS let in a client without a certificate");
    let with_cert = ["--tls-cert", &file("client.pem"), "--tls-key", &file("client.key")];
    let out = m.run(&[&["status", "--coordinator", &https, "--ca", &ca][..], &with_cert].concat());
    assert!(out.status.success(), "a client with a certificate: {}", stderr(&out));

    // A worker with its certificate renders a job submitted over mTLS.
    let style = crate::helpers::example("wheatfield.jpg");
    let submit = ["submit", style.to_str().unwrap(), "--coordinator", &https, "--ca", &ca, "--size", "64x48"];
    let out = m.run(&[&submit[..], &["--frames", "2", "--warmup", "2", "--iters", "1"], &with_cert].concat());
    assert!(out.status.success(), "submit over mTLS: {}", stderr(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let worker = ["worker", "--coordinator", &https, "--ca", &ca, "--device", "cpu", "--max-segments", "1"];
    let _w = Proc::spawn(&[&worker[..], &with_cert].concat(), m.path("tls-worker.log"), m.dir.path(), Some(WORKER));
    let status = [&["status", &id, "--coordinator", &https, "--ca", &ca][..], &with_cert].concat();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = m.run(&status);
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        if line.contains("succeeded") {
            assert!(line.contains("2/2 frames"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "the job did not finish over mTLS: {line}{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A small filesystem of its own, unmounted when dropped (the test runs as root, as CI does).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let size = format!("size={mib}m");
        let out =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(at).output().unwrap();
        assert!(
            out.status.success(),
            "mounting a small filesystem needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }

    /// Writes into `name` until the filesystem is full.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn on_a_full_disk_submits_are_refused_clearly_and_cancel_and_delete_still_free_space() {
    let dir = tempdir();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 24);
    let c = Cluster::start_on(Some(disk.0.join("data")), "30", &[]);
    let first = c.submit(&["--size", "64x48", "--frames", "2"]);
    disk.fill("filler");

    // A submit fails as RESOURCE_EXHAUSTED saying what to do, and leaves nothing in scratch.
    let out = c.run(&[
        "submit",
        crate::helpers::example("immunohistochemistry.png").to_str().unwrap(),
        "--coordinator",
        &c.url(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("disk is full"), "{}", stderr(&out));
    let scratch: Vec<_> = std::fs::read_dir(c.data.join("scratch")).unwrap().collect();
    assert!(scratch.is_empty(), "left in scratch: {scratch:?}");

    // Cancel and delete work although the disk is full: the reserve gives them room.
    for verb in ["cancel", "delete"] {
        let out = c.run(&[verb, &first, "--coordinator", &c.url()]);
        assert!(out.status.success(), "{verb} on a full disk: {}", stderr(&out));
    }
    let out = c.run(&["status", &first, "--coordinator", &c.url()]);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    // Once there is room again, the farm takes work.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let next = c.submit(&["--size", "64x48", "--frames", "2"]);
    assert_eq!(c.job(&next).state, v1::JobState::Queued as i32);
}
