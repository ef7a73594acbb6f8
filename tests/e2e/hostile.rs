//! The coordinator tried as a careless operator and a hostile worker or client would: a second
//! coordinator on the same data directory, ids that are almost ids, inputs of megabytes where a
//! few bytes belong, a hung render, a full disk (uploads: `uploads.rs`).

use crate::farm::{mp4_chunk, state_bytes, Cluster, FakeWorker, Proc, ALICE, BOB, FAKE_WEIGHTS};
use crate::helpers::{code, stderr, tempdir, tiny_spec};
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
        let r = v1::GetJobRequest { job_id: id.into(), include_segments: false, ..Default::default() };
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
    let r = v1::RegisterRequest { name: "w".repeat(3 << 20), device: "cpu".into(), ..Default::default() };
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
    let fingerprint = c.fingerprint(&id, FAKE_WEIGHTS);
    w.complete_with(&c, first.attempt_id, &mp4_chunk(dir, 2), &state_bytes(&fingerprint, 2, (64, 48))).unwrap();
    let second = w.acquire(&c);
    assert_eq!(second.segment_index, 1);
    let fail =
        v1::FailSegmentRequest { attempt_id: second.attempt_id, reason: "cuda error".into(), ..Default::default() };
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
    w.complete_with(&c, again.attempt_id, &mp4_chunk(dir, 2), &state_bytes(&fingerprint, 4, (64, 48))).unwrap();
    let job = c.wait_done(&id);
    let history: Vec<i32> = job.segments[1].attempts.iter().map(|a| a.state).collect();
    assert_eq!(history, [v1::AttemptState::Failed as i32, v1::AttemptState::Succeeded as i32]);
    assert_eq!(job.segments[0].attempts.len(), 1);
    let movie = c.download(&id, "retried.mp4");
    assert_eq!(crate::helpers::decode_video(&movie).frames, 4);
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
    // With the reserve given up and no room to make it again (here: 1 MiB free, the reserve is
    // 4), there is room for a small job but a job taken now could not be cancelled on the next
    // full disk: none is taken until the reserve is back.
    disk.fill("filler2");
    let _ = std::fs::remove_file(c.data.join("reserve"));
    disk.fill("filler3");
    let filler = disk.0.join("filler3");
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(len.saturating_sub(1 << 20)).unwrap();
    let gravel = crate::helpers::example("gravel.png");
    let small = ["--size", "64x48", "--frames", "2", "--coordinator", &c.url()];
    let out = c.run(&[&["submit", gravel.to_str().unwrap()][..], &small].concat());
    assert!(!out.status.success(), "a job was taken without a disk reserve");
    assert!(stderr(&out).contains("reserve"), "{}", stderr(&out));
    for f in ["filler2", "filler3"] {
        std::fs::remove_file(disk.0.join(f)).unwrap();
    }
    // Once there is room again, the farm takes work.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let next = c.submit(&["--size", "64x48", "--frames", "2"]);
    assert_eq!(c.job(&next).state, v1::JobState::Queued as i32);
}
