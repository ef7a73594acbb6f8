//! The dashboard in a real browser (headless Chromium): a farm with auth, a worker sending
//! previews, and a user who signs in, watches her movie render without reloading, looks at its
//! live preview, and cancels another job from its page. Screenshots of every page land in
//! `target/screenshots/` (see `browser::screenshots_dir`), and axe-core checks each page.

use crate::browser::{axe_script, screenshots_dir, Browser};
use crate::farm::{http_get, Cluster, FakeWorker, ALICE};
use proto::v1;
use serde_json::{json, Value};

/// A movie slow enough on two CPU cores to watch for a while: 60 frames of 128x96.
/// A directed movie: its page charts the zoom and a cross-fade, with a marker that follows it.
const WATCHED: &[&str] = &[
    "--size",
    "128x96",
    "--frames",
    "60",
    "--segment-frames",
    "20",
    "--iters",
    "3",
    "--warmup",
    "4",
    "--zoom",
    "0:(1.5), 2s:(3)",
    "--style",
    "wheat=wheatfield.jpg",
    "--style",
    "grey=gravel.png",
    "--blend",
    "0:(wheat), 20:(wheat), 50:(grey)",
];

/// The `value` of the progress bar in `row`'s row of the jobs table (-1 while there is none).
fn jobs_progress(id: &str) -> String {
    format!("const p = document.querySelector('#row-{id} progress'); return p ? Number(p.value) : -1;")
}

fn assert_accessible(browser: &Browser, axe: &str, page: &str) {
    let violations = browser.accessibility_violations(axe);
    assert!(violations.is_empty(), "{page} has accessibility violations:\n{}", violations.join("\n"));
}

#[test]
fn a_user_watches_her_farm_live_in_a_real_browser() {
    let mut c = Cluster::start("30", &["--http", "127.0.0.1:0"]);
    let http = format!("http://{}", c.coordinator.as_ref().unwrap().http_addr());
    let shots = screenshots_dir();
    let axe = axe_script();
    let watched = c.submit(WATCHED);
    // Queued behind the first on the farm's one worker: cancelled from its page below.
    let other = c.submit(&["--size", "64x48", "--frames", "8"]);
    c.worker("gpu-7", &["--preview-secs", "0.3"]);

    let browser = Browser::start(1280, 860);
    // Signed out, every page leads to the login form; a wrong token is told so.
    browser.open(&format!("{http}/jobs"));
    browser.wait_for(10, "the login form", "return location.pathname;", |v| v == "/login");
    assert_accessible(&browser, &axe, "the login page");
    browser.type_into("#token", "not-a-token-of-this-farm");
    browser.click("button[type=submit]");
    browser.wait_for(10, "a refusal", "return document.querySelector('.error')?.textContent ?? '';", |v| {
        v == "unknown token"
    });
    browser.type_into("#token", ALICE);
    browser.click("button[type=submit]");
    browser.wait_for(10, "the jobs page", "return location.pathname;", |v| v == "/jobs");

    // The jobs page: both jobs appear, and the first one's progress moves without a reload.
    browser.eval("window.notReloaded = true;", json!([]));
    for id in [&watched, &other] {
        browser.wait_for(20, "the job's row", &format!("return !!document.getElementById('row-{id}');"), |v| v == true);
    }
    let first = browser.wait_for(120, "frames done", &jobs_progress(&watched), |v| v.as_f64() >= Some(1.0));
    browser.wait_for(120, "progress to advance", &jobs_progress(&watched), |v| v.as_f64() > first.as_f64());
    assert_eq!(browser.eval("return window.notReloaded === true;", json!([])), true, "the page reloaded");
    browser.screenshot(&shots.join("jobs.png"));
    assert_accessible(&browser, &axe, "the jobs page");

    // The job page: its preview is a real frame, and a newer one replaces it while it renders.
    browser.open(&format!("{http}/jobs/{watched}"));
    browser.eval("window.notReloaded = true;", json!([]));
    let preview = "const i = document.getElementById('job-preview');\
                   return i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : '';";
    let shown = browser.wait_for(60, "a preview", preview, |v| v.as_str().is_some_and(|s| !s.is_empty()));
    let newer = browser.wait_for(60, "a newer preview", preview, |v| {
        v.as_str().is_some_and(|s| !s.is_empty() && Some(s) != shown.as_str())
    });
    let size = browser
        .eval("const i = document.getElementById('job-preview'); return [i.naturalWidth, i.naturalHeight];", json!([]));
    assert_eq!(size, json!([128, 96]), "a preview of a movie narrower than 320 px keeps its size");
    assert_eq!(browser.eval("return window.notReloaded === true;", json!([])), true);
    let caption = browser.eval("return document.getElementById('job-caption').textContent;", json!([]));
    assert!(caption.as_str().unwrap().starts_with("Frame "), "{caption} ({newer})");
    let segments = browser.eval("return document.querySelectorAll('#job-segments > tr').length;", json!([]));
    assert_eq!(segments, 3, "one row per segment");
    // The motion chart: zoom, turn and a line per style; its marker and words follow the render.
    let lines = browser.eval("return document.querySelectorAll('#job-motion polyline').length;", json!([]));
    assert_eq!(lines, 4, "zoom, turn and two styles");
    let marker = "return document.querySelector('#job-motion line.now')?.getAttribute('x1') ?? '';";
    let at = browser.eval(marker, json!([]));
    browser.wait_for(120, "the marker to move", marker, |v| v != &at);
    let words = browser.eval("return document.getElementById('motion-words').textContent;", json!([]));
    assert!(words.as_str().is_some_and(|w| w.contains(" iterations a frame, styles ")), "{words}");
    assert_eq!(browser.eval("return window.notReloaded === true;", json!([])), true);
    browser.screenshot(&shots.join("job.png"));
    assert_accessible(&browser, &axe, "the job page");

    // The other job, cancelled from its page: asked first, then its state changes in place.
    browser.open(&format!("{http}/jobs/{other}"));
    browser.click("#job-actions form[action$='/cancel'] button");
    let question = browser.accept_dialog();
    assert!(question.starts_with(&format!("Cancel {other}?")), "{question}");
    browser.wait_for(
        20,
        "the cancelled state",
        "return document.querySelector('#job-summary .badge').textContent;",
        |v| v == "cancelled",
    );
    assert_eq!(c.job(&other).state, v1::JobState::Cancelled as i32);
    browser.wait_for(20, "a delete button", "return !!document.querySelector(\"form[action$='/delete']\");", |v| {
        v == true
    });
    browser.screenshot(&shots.join("cancelled.png"));

    // The workers page: the worker and what it renders.
    browser.open(&format!("{http}/workers"));
    let row = browser.wait_for(20, "the worker", "return document.getElementById('workers-body').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains("gpu-7") && t.contains(&watched))
    });
    assert!(row.as_str().unwrap().to_lowercase().contains("cpu"), "{row}");
    browser.screenshot(&shots.join("workers.png"));
    assert_accessible(&browser, &axe, "the workers page");

    // On a phone: nothing wider than the screen but the tables, which scroll inside themselves.
    browser.resize(390, 844);
    browser.open(&format!("{http}/jobs/{watched}"));
    let overflow: Value = browser.eval(
        "const w = document.documentElement.clientWidth;\
         return [...document.querySelectorAll('header, main > *, .job > *')]\
           .filter(e => e.getBoundingClientRect().right > w + 1).map(e => e.tagName + '.' + e.className);",
        json!([]),
    );
    assert_eq!(overflow, json!([]), "wider than a phone");
    browser.screenshot(&shots.join("job-phone.png"));
    browser.resize(1280, 860);

    // The finished movie: a poster, and the output to download.
    c.wait_done(&watched);
    browser.open(&format!("{http}/jobs/{watched}"));
    browser
        .wait_for(20, "the download link", "return !!document.querySelector('a[href$=\"/output\"]');", |v| v == true);
    let done = c.job(&watched);
    let fetched = browser.eval_async(&format!(
        "const done = arguments[arguments.length - 1];\
         fetch('/jobs/{watched}/output').then(r => r.arrayBuffer()).then(b => done(b.byteLength)).catch(e => done(String(e)));"
    ));
    assert_eq!(fetched.as_u64(), Some(done.output_size), "the download is the stitched output");
    // The poster is the movie's last frame, kept with the output (a restart keeps it).
    let poster = std::fs::read(c.data.join(format!("artifacts/jobs/{}/poster.jpg", &watched[4..]))).unwrap();
    let poster = image::load_from_memory(&poster).expect("the poster is a JPEG");
    assert_eq!((poster.width(), poster.height()), (128, 96));
    let caption = browser.eval("return document.getElementById('job-caption').textContent;", json!([]));
    assert_eq!(caption, json!("Frame 59"), "the last frame shows once the movie is done");
    browser.screenshot(&shots.join("done.png"));
}

#[test]
fn a_workers_preview_is_checked_before_anyone_sees_it_and_costs_no_heartbeat() {
    let c = Cluster::start("30", &["--http", "127.0.0.1:0"]);
    let http = format!("http://{}", c.coordinator.as_ref().unwrap().http_addr());
    let id = c.submit(&["--size", "64x48", "--frames", "4"]);
    let mut w = FakeWorker::register(&c);
    let a = w.acquire(&c);
    let preview_path = format!("/jobs/{id}/preview.jpg");
    let heartbeat = |w: &mut FakeWorker, jpeg: Vec<u8>| {
        let preview = Some(v1::Preview { jpeg, frame: 1 });
        let r = v1::HeartbeatRequest {
            attempt_id: a.attempt_id,
            frames_done: 1,
            iterations: 5,
            preview,
            ..Default::default()
        };
        c.runtime.block_on(w.client.heartbeat(r)).map(|_| ())
    };
    let jpeg = |w: u32, h: u32| {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
            .encode_image(&image::RgbImage::from_pixel(w, h, image::Rgb([200, 40, 40])))
            .unwrap();
        out
    };
    let html = b"<html><script>alert(1)</script></html>".to_vec();
    for (bad, what) in
        [(html, "a page posing as a preview"), (jpeg(2000, 10), "too wide"), (vec![0xff; 70_000], "too big")]
    {
        heartbeat(&mut w, bad).unwrap_or_else(|s| panic!("{what}: the heartbeat itself was refused: {s}"));
        assert_eq!(http_get(&format!("{http}{preview_path}"), Some(ALICE)).0, 404, "{what} was kept");
    }
    heartbeat(&mut w, jpeg(64, 48)).unwrap();
    let (status, body) = http_get(&format!("{http}{preview_path}"), Some(ALICE));
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 64);
    assert!(c.logs().contains("preview dropped"), "refusals are logged: {}", c.logs());
}
