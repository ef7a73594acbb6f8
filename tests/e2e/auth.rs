//! Who may call what: tokens and roles, worker sessions, an open coordinator kept on loopback,
//! TLS and mutual TLS.

use crate::farm::{Cluster, FakeWorker, Proc, ALICE, BOB, ROOT, WORKER};
use crate::helpers::{code, stderr, tempdir, tiny_spec};
use proto::v1;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

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
    let get = |job: &str| v1::GetJobRequest { job_id: job.into(), include_segments: false, ..Default::default() };

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

    // A user cannot put her job ahead of every other tenant's: priority is capped for users
    // (`serve --max-user-priority`, 10 by default); an admin may go higher.
    let style = std::fs::read(crate::helpers::example("wheatfield.jpg")).unwrap();
    let urgent = |priority| v1::JobSpec { priority, ..tiny_spec() };
    let mut alice = c.jobs_as(Some(ALICE));
    let refused = rt.block_on(cli::client::submit(&mut alice, urgent(i32::MAX), &style, "style")).unwrap_err();
    assert!(refused.to_string().contains("priority: at most 10 for a user, got 2147483647"), "{refused}");
    let allowed = rt.block_on(cli::client::submit(&mut alice, urgent(10), &style, "style")).expect("the cap itself");
    rt.block_on(alice.cancel_job(v1::CancelJobRequest { job_id: allowed.id })).unwrap();
    let high =
        rt.block_on(cli::client::submit(&mut root, urgent(1000), &style, "style")).expect("an admin goes higher");
    rt.block_on(root.cancel_job(v1::CancelJobRequest { job_id: high.id })).unwrap();

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
    let fail = v1::FailSegmentRequest { attempt_id: attempt, reason: "sabotage".into(), ..Default::default() };
    let denials = [
        rt.block_on(other.client.heartbeat(heartbeat.clone())).map(|_| ()),
        rt.block_on(other.client.fail_segment(fail)).map(|_| ()),
        rt.block_on(other.client.fetch_style(v1::FetchRequest { attempt_id: attempt, ..Default::default() }))
            .map(|_| ()),
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
        client.heartbeat(heartbeat.clone()).await
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
fn tls_keeps_clients_honest_and_mutual_tls_turns_away_clients_without_a_certificate() {
    let tls = crate::helpers::repo_root().join("tests/fixtures/tls");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));

    let c = Cluster::start("30", &["--tls-cert", &cert, "--tls-key", &key, "--http", "127.0.0.1:0"]);
    let https = c.url().replace("http://", "https://");
    // The dashboard is served with the same certificate: a sign-in sends a token, a session
    // cookie is as good as one, and neither may travel in the clear while gRPC is encrypted.
    let http = c.coordinator.as_ref().unwrap().http_addr();
    let roots = vec![ureq::tls::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()];
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let login = agent.get(&format!("https://{http}/login")).call().expect("the dashboard over https");
    assert_eq!(login.status().as_u16(), 200);
    let signed_in = agent
        .post(&format!("https://{http}/login"))
        .header("sec-fetch-site", "same-origin")
        .send_form([("token", ALICE)])
        .expect("a sign-in over https");
    let cookie = signed_in.headers().get("set-cookie").expect("a session cookie").to_str().unwrap().to_string();
    assert!(cookie.starts_with("gramzoom_session=") && cookie.ends_with("; Secure"), "{cookie}");
    assert!(agent.get(&format!("http://{http}/login")).call().is_err(), "the dashboard answered plain http");
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
