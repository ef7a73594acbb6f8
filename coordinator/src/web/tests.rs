//! The dashboard's access rules, through the router as a browser reaches it.

use super::*;
use crate::auth::Tokens;
use crate::{db, Config};
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789abc";
const OPS: &str = "ops-token-0123456789abc";
const GPU: &str = "gpu-token-0123456789abc";

struct Farm {
    _dir: tempfile::TempDir,
    coordinator: Arc<Coordinator>,
    app: axum::Router,
}

impl Farm {
    /// A coordinator with four principals, alice's job-1 and bob's job-2.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().to_path_buf());
        let auth = format!("user alice {ALICE}\nuser bob {BOB}\nadmin ops {OPS}\nworker gpu {GPU}\n");
        config.auth = Some(Arc::new(Tokens::parse(&auth).unwrap()));
        let coordinator = Coordinator::open(config).unwrap();
        coordinator.database.call_blocking(|c| {
            for owner in ["alice", "bob"] {
                let spec = proto::v1::JobSpec { name: format!("{owner}'s <movie>"), ..Default::default() };
                db::submit(c, &spec, 4, 2, "style", owner, 0).unwrap();
            }
        });
        let app = router(coordinator.clone());
        Self { _dir: dir, coordinator, app }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut r = Request::get(path);
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let (status, _, body) = self.call(r.body(Body::empty()).unwrap()).await;
        (status, body)
    }

    async fn post(&self, path: &str, token: &str, form: &str, site: &str) -> StatusCode {
        let r = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(Body::from(form.to_string()))
            .unwrap();
        self.call(r).await.0
    }

    /// The form token on `token`'s page of `job`.
    async fn csrf(&self, job: &str, token: &str) -> String {
        let (status, page) = self.get(&format!("/jobs/{job}"), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let at = page.find("name=\"csrf\" value=\"").expect("a form on the page") + 19;
        page[at..at + 32].to_string()
    }

    async fn state(&self, seq: db::JobId) -> db::JobState {
        self.coordinator
            .database
            .call(db::Lane::Normal, move |c| {
                let tx = c.transaction().unwrap();
                db::job_state(&tx, seq).unwrap()
            })
            .await
    }
}

#[tokio::test]
async fn a_user_sees_and_acts_on_her_own_jobs_only() {
    let farm = Farm::new();
    let (status, page) = farm.get("/jobs", Some(ALICE)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("job-1") && !page.contains("job-2"), "{page}");
    assert!(page.contains("alice&#39;s &lt;movie&gt;"), "names are escaped: {page}");
    let (_, page) = farm.get("/jobs", Some(OPS)).await;
    assert!(page.contains("job-1") && page.contains("job-2"), "an admin sees every job");

    // Bob's job, as alice: not found, whichever way she asks; nothing about it leaks.
    for path in ["/jobs/job-2", "/jobs/job-2/events", "/jobs/job-2/preview.jpg", "/jobs/job-2/output"] {
        let (status, body) = farm.get(path, Some(ALICE)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.contains("bob&#39;s"), "{path} shows bob's job: {body}");
    }
    let mine = farm.csrf("job-1", ALICE).await;
    for action in ["cancel", "delete", "retry"] {
        let status = farm.post(&format!("/jobs/job-2/{action}"), ALICE, &format!("csrf={mine}"), "same-origin").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "alice could {action} bob's job");
    }
    assert_eq!(farm.state(db::JobId(2)).await, db::JobState::Queued);

    // Her own job: only with her form token, and only from the dashboard itself.
    let bobs = farm.csrf("job-2", BOB).await;
    assert_ne!(bobs, mine, "form tokens are per viewer");
    for (form, site) in [
        (String::new(), "same-origin"),
        ("csrf=0123456789abcdef0123456789abcdef".into(), "same-origin"),
        (format!("csrf={bobs}"), "same-origin"),
        (format!("csrf={mine}"), "cross-site"),
    ] {
        let status = farm.post("/jobs/job-1/cancel", ALICE, &form, site).await;
        assert!(status.is_client_error(), "{form:?} from {site}: {status}");
        assert_eq!(farm.state(db::JobId(1)).await, db::JobState::Queued, "{form:?} from {site} cancelled the job");
    }
    let status = farm.post("/jobs/job-1/cancel", ALICE, &format!("csrf={mine}"), "same-origin").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(farm.state(db::JobId(1)).await, db::JobState::Cancelled);
    // An admin may act on anyone's job.
    let ops = farm.csrf("job-2", OPS).await;
    assert_eq!(
        farm.post("/jobs/job-2/cancel", OPS, &format!("csrf={ops}"), "same-origin").await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(farm.state(db::JobId(2)).await, db::JobState::Cancelled);
}

#[tokio::test]
async fn only_user_and_admin_tokens_sign_in_and_the_cookie_is_kept_from_scripts() {
    let farm = Farm::new();
    let (status, _) = farm.get("/jobs", None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "no token: to the login form");
    let (status, _) = farm.get("/jobs", Some("not-a-token-of-this-farm")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    for token in [GPU] {
        let (status, body) = farm.get("/jobs", Some(token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let login = |token: &str, site: &str| {
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    let (status, _, body) = farm.call(login("wrong-token-0123456789", "same-origin")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("unknown token"), "{body}");
    assert_eq!(farm.call(login(GPU, "same-origin")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(farm.call(login(ALICE, "cross-site")).await.0, StatusCode::FORBIDDEN);
    let (status, headers, _) = farm.call(login(ALICE, "same-origin")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains(ALICE), "the cookie holds the token in the clear: {cookie}");
    assert!(!cookie.contains("Secure"), "a Secure cookie over plain http is never sent back: {cookie}");
    let mut behind_tls = login(ALICE, "same-origin");
    behind_tls.headers_mut().insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let (_, headers, _) = farm.call(behind_tls).await;
    assert!(headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().ends_with("; Secure"));
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = Request::get("/jobs").header(header::COOKIE, pair.clone()).body(Body::empty()).unwrap();
    let (status, _, page) = farm.call(r).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("job-1") && !page.contains("job-2"), "{page}");
    let r = Request::get("/jobs").header(header::COOKIE, "gramzoom_session=zz;").body(Body::empty()).unwrap();
    assert_eq!(farm.call(r).await.0, StatusCode::SEE_OTHER, "a garbled cookie signs in nobody");
    // The cookie holds a random session id, not the token, and signing out ends the session
    // on the server: a copy of the cookie kept elsewhere is worth nothing after.
    let id = pair.strip_prefix("gramzoom_session=").expect(&pair);
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{pair}");
    let out = Request::post("/logout").header(header::COOKIE, pair.clone()).header("sec-fetch-site", "same-origin");
    assert_eq!(farm.call(out.body(Body::empty()).unwrap()).await.0, StatusCode::SEE_OTHER);
    let r = Request::get("/jobs").header(header::COOKIE, pair).body(Body::empty()).unwrap();
    assert_eq!(farm.call(r).await.0, StatusCode::SEE_OTHER, "a session outlived its sign-out");
}

#[tokio::test]
async fn guessing_tokens_at_the_sign_in_form_is_held_back() {
    let farm = Farm::new();
    let login = |token: &str| {
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    for i in 0..super::session::MAX_FAILED_SIGN_INS {
        let (status, _, _) = farm.call(login(&format!("guess-{i:016}-0123456789"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Once held back, even the right token waits: the answer must not tell a guess from a hit.
    let (status, _, body) = farm.call(login("guess-9999999999999999-0123456789")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("too many failed sign-ins"), "{body}");
    assert_eq!(farm.call(login(ALICE)).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_preview_is_served_once_a_worker_sent_one_and_the_page_carries_no_inline_script() {
    let farm = Farm::new();
    assert_eq!(farm.get("/jobs/job-1/preview.jpg", Some(ALICE)).await.0, StatusCode::NOT_FOUND);
    let img = image::RgbImage::from_fn(32, 18, |x, _| image::Rgb([x as u8 * 8, 0, 0]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&img).unwrap();
    farm.coordinator.previews.put(db::JobId(1), jpeg.clone(), 5, (32, 18));
    let r = Request::get("/jobs/job-1/preview.jpg").header(header::AUTHORIZATION, format!("Bearer {ALICE}"));
    let (status, headers, _) = farm.call(r.body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), "image/jpeg");
    let (_, page) = farm.get("/jobs/job-1", Some(ALICE)).await;
    assert!(page.contains("src=\"/jobs/job-1/preview.jpg?v=") && page.contains("Frame 5"), "{page}");
    assert!(!page.contains("<script>") && !page.contains(" style=\""), "inline script or style: {page}");
    let (_, headers, _) = farm.call(Request::get("/jobs").body(Body::empty()).unwrap()).await;
    let csp = headers.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
}

#[tokio::test]
async fn an_open_dashboard_and_its_metrics_answer_only_to_ip_addresses_against_dns_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::open(Config::new(dir.path().to_path_buf())).unwrap();
    let app = router(coordinator.clone()).merge(crate::http::router(coordinator));
    for (path, host, want) in [
        ("/metrics", Some("evil.example"), StatusCode::MISDIRECTED_REQUEST),
        ("/metrics", Some("127.0.0.1:9090"), StatusCode::OK),
    ] {
        let r = Request::get(path).header(header::HOST, host.unwrap());
        let status = app.clone().oneshot(r.body(Body::empty()).unwrap()).await.unwrap().status();
        assert_eq!(status, want, "{path} {host:?}");
    }
    for (host, want) in [
        (Some("127.0.0.1:9090"), StatusCode::OK),
        (Some("localhost:9090"), StatusCode::OK),
        (Some("[::1]:9090"), StatusCode::OK),
        (Some("10.1.2.3"), StatusCode::OK),
        (Some("evil.example:9090"), StatusCode::MISDIRECTED_REQUEST),
        (Some("127.0.0.1.evil.example"), StatusCode::MISDIRECTED_REQUEST),
        (None, StatusCode::MISDIRECTED_REQUEST),
    ] {
        let mut r = Request::get("/jobs");
        if let Some(h) = host {
            r = r.header(header::HOST, h);
        }
        let status = app.clone().oneshot(r.body(Body::empty()).unwrap()).await.unwrap().status();
        assert_eq!(status, want, "{host:?}");
    }
}

#[tokio::test]
async fn live_pages_hold_their_slot_while_open_and_one_user_cannot_take_them_all() {
    use crate::streams::MAX_LIVE_PAGES_EACH;
    let farm = Farm::new();
    let open = |token: &'static str| {
        let app = farm.app.clone();
        async move {
            let r = Request::get("/jobs/events").header(header::AUTHORIZATION, format!("Bearer {token}"));
            app.oneshot(r.body(Body::empty()).unwrap()).await.unwrap()
        }
    };
    let mut alices = Vec::new();
    for _ in 0..MAX_LIVE_PAGES_EACH {
        let page = open(ALICE).await;
        assert_eq!(page.status(), StatusCode::OK);
        alices.push(page);
    }
    // The handlers have returned; the streams are still open and still counted.
    assert_eq!(farm.coordinator.live_pages.open(), MAX_LIVE_PAGES_EACH);
    let refused = open(ALICE).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(refused.into_body(), 1 << 16).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("the limit per user"), "{body:?}");
    assert_eq!(open(BOB).await.status(), StatusCode::OK, "another user still gets a live page");
    // Closed pages give their slots back.
    drop(alices);
    for _ in 0..100 {
        if farm.coordinator.live_pages.open() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(farm.coordinator.live_pages.open(), 0);
    assert_eq!(open(ALICE).await.status(), StatusCode::OK);
}
