//! The coordinator tried as a careless operator and a hostile client would: a second
//! coordinator started on the same data directory, ids that are almost ids, inputs of
//! megabytes where a few bytes belong.

use crate::cluster::{Cluster, Proc};
use crate::helpers::{gramzoom, stderr};
use proto::v1;
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
    let mut second = Proc::spawn(&args, c.path("second.log"), c.dir.path());
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
    let get = |jobs: &mut v1::job_service_client::JobServiceClient<_>, id: &str| {
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
    let out = gramzoom(&["cancel", "job-+1", "--coordinator", &c.url()], c.dir.path());
    assert!(!out.status.success() && stderr(&out).contains("not found"), "{}", stderr(&out));
    assert_eq!(c.job(&id).state, v1::JobState::Queued as i32);
}
