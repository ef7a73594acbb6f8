//! Prometheus metrics, scraped from a running farm (coordinator and worker `--http`) and
//! checked against what happened.

use crate::farm::{http_get, Cluster, FakeWorker, ALICE, METRICS, ROOT};
use proto::v1;

/// `GET http://addr/path` with an optional bearer token: the status and the body as text.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let (status, body) = http_get(&format!("http://{addr}{path}"), token);
    (status, String::from_utf8(body).unwrap())
}

/// Asserts each `(series, value)` against an OpenMetrics text.
fn assert_samples(text: &str, samples: &[(&str, f64)]) {
    for (series, want) in samples {
        assert_eq!(sample(text, series), *want, "{series}");
    }
}

/// The value of the sample `series` (name with labels, as exposed) in an OpenMetrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_scraped_from_a_running_farm_match_what_happened() {
    let mut c = Cluster::start("30", &["--http", "127.0.0.1:0"]);
    let http = c.coordinator.as_ref().unwrap().http_addr();
    // The farm's numbers are for Prometheus' token and admins, not for anyone.
    for (token, status) in [(None, 401), (Some(ALICE), 401), (Some("x".repeat(30).as_str()), 401), (Some(ROOT), 200)] {
        assert_eq!(get(&http, "/metrics", token).0, status, "{token:?}");
    }
    let scrape = || {
        let (status, text) = get(&http, "/metrics", Some(METRICS));
        assert_eq!(status, 200, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        text
    };
    let id = c.submit(&["--size", "64x48", "--frames", "4", "--segment-frames", "2", "--iters", "2", "--warmup", "3"]);
    let before = scrape();
    assert_samples(
        &before,
        &[
            (r#"gramzoom_jobs{state="queued"}"#, 1.0),
            (r#"gramzoom_segments{state="ready"}"#, 1.0),
            (r#"gramzoom_segments{state="waiting"}"#, 1.0),
            (r#"gramzoom_workers{state="idle"}"#, 0.0),
            ("gramzoom_frames_rendered_total", 0.0),
        ],
    );

    // One failed attempt, then a real worker renders the movie.
    let mut flaky = FakeWorker::register(&c);
    let a = flaky.acquire(&c);
    let fail = v1::FailSegmentRequest { attempt_id: a.attempt_id, reason: "cuda error".into(), ..Default::default() };
    c.runtime.block_on(flaky.client.fail_segment(fail)).unwrap();
    let w = c.worker("a", &["--http", "127.0.0.1:0"]);
    let worker_http = c.workers[w].http_addr();
    c.wait_done(&id);

    let after = scrape();
    assert_samples(
        &after,
        &[
            (r#"gramzoom_jobs{state="succeeded"}"#, 1.0),
            (r#"gramzoom_jobs{state="queued"}"#, 0.0),
            (r#"gramzoom_segments{state="ready"}"#, 0.0),
            (r#"gramzoom_attempts_total{outcome="succeeded"}"#, 2.0),
            (r#"gramzoom_attempts_total{outcome="failed"}"#, 1.0),
            (r#"gramzoom_attempts_total{outcome="expired"}"#, 0.0),
            ("gramzoom_frames_rendered_total", 4.0),
            ("gramzoom_segment_seconds_count", 2.0),
            (r#"gramzoom_handoff_seconds_count{direction="upload"}"#, 2.0),
        ],
    );
    assert!(sample(&after, "gramzoom_segment_seconds_sum") > 0.0);

    let (status, text) = get(&worker_http, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert_samples(
        &text,
        &[
            ("gramzoom_frames_rendered_total", 4.0),
            (r#"gramzoom_worker_segments_total{outcome="completed"}"#, 2.0),
            // Every optimiser iteration: 3 of warm-up, 2 per frame.
            ("gramzoom_iteration_seconds_count", 11.0),
            // Segment 1 started from the state this worker held: no fetch; two uploads.
            (r#"gramzoom_handoff_seconds_count{direction="upload"}"#, 2.0),
        ],
    );
    assert!(!text.contains("gramzoom_gpu_memory_used_bytes{"), "no GPU here: {text}");
    assert_eq!(get(&worker_http, "/healthz", None), (200, "ok\n".to_string()));
}
