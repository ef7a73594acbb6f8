//! The dashboard, on the coordinator's HTTP listener (`serve --http`): jobs, a job with its live
//! preview and segment timeline, and the workers. Pages are rendered here (`pages`), kept live
//! over Server-Sent Events driven by the coordinator's change channels (`live`), and need no
//! JavaScript build: one small script swaps the fragments the events carry.
//!
//! Access is the gRPC API's: with `--auth` a user or admin token, sent as a bearer header or
//! given once to the login form, which opens a server-side session (`session`) whose random id
//! is kept in an HttpOnly cookie; without it everyone is an admin, and the
//! listener is on loopback (or `--insecure`). Every action goes through the same handler as its
//! gRPC call, with the viewer as the principal, so the page never has more rights than its user.
//! Forms carry a token derived from a per-process secret and the viewer's credentials, and
//! cross-site requests are refused, so another site cannot act through a signed-in browser.

mod html;
mod live;
mod motion;
mod pages;
mod session;
mod shared;
pub(crate) mod tls;

use crate::auth::{Principal, Role};
use crate::service::{as_principal, Api};
use crate::Coordinator;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use proto::v1::job_service_server::JobService;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The cookie that keeps a signed-in viewer's session id.
const COOKIE: &str = "gramzoom_session";

/// The dashboard's state: the coordinator, the secret its form tokens derive from, and its
/// sessions.
#[derive(Clone)]
pub(crate) struct Web {
    api: Api,
    secret: Arc<[u8; 32]>,
    sessions: Arc<session::Sessions>,
    /// Renders shared by the live streams that show the same list, and the same job.
    lists: Arc<shared::Shared<String>>,
    job_views: Arc<shared::Shared<proto::v1::Job>>,
}

impl Web {
    fn coordinator(&self) -> &Arc<Coordinator> {
        &self.api.0
    }
}

pub(crate) fn router(coordinator: Arc<Coordinator>) -> axum::Router {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).expect("the system random source failed");
    let web = Web {
        api: Api(coordinator),
        secret: Arc::new(secret),
        sessions: Arc::default(),
        lists: Arc::default(),
        job_views: Arc::default(),
    };
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .route("/login", get(pages::login_page).post(login))
        .route("/logout", post(logout))
        .route("/jobs", get(pages::jobs_page))
        .route("/jobs/events", get(live::jobs_events))
        .route("/jobs/{id}", get(pages::job_page))
        .route("/jobs/{id}/events", get(live::job_events))
        .route("/jobs/{id}/preview.jpg", get(preview))
        .route("/jobs/{id}/output", get(output))
        .route("/jobs/{id}/{action}", post(act))
        .route("/workers", get(pages::workers_page))
        .route("/workers/events", get(live::workers_events))
        .route("/static/app.css", get(|| async { asset("text/css", include_str!("app.css")) }))
        .route("/static/app.js", get(|| async { asset("text/javascript", include_str!("app.js")) }))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(web)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// No framing by other sites, no inline script, no sniffing: on every response.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// Who is looking, and the credential that says so (for form tokens).
#[derive(Clone)]
pub(crate) struct Viewer {
    principal: Principal,
    credential: String,
}

/// Why a request got no page.
pub(crate) enum Denied {
    /// No credential, or an unknown one: to the login form.
    SignIn,
    /// A token whose role may not use the dashboard (a worker's, a metrics scraper's).
    Role(Role),
    /// Without `--auth`, a request addressed to a host name (see [`addressed_by_ip`]).
    Host,
}

impl Web {
    /// The viewer of a request: a bearer token first, then the session cookie.
    fn viewer(&self, headers: &HeaderMap) -> Result<Viewer, Denied> {
        let Some(tokens) = &self.coordinator().config.auth else {
            if !addressed_by_ip(headers) {
                return Err(Denied::Host);
            }
            return Ok(Viewer { principal: Principal::open(), credential: String::new() });
        };
        let (principal, credential) = match crate::http::bearer(headers) {
            Some(token) => (tokens.authenticate(token).ok_or(Denied::SignIn)?.clone(), token.to_string()),
            None => {
                let id = cookie(headers, COOKIE).ok_or(Denied::SignIn)?;
                let principal = self.sessions.find(id, std::time::Instant::now()).ok_or(Denied::SignIn)?;
                (principal, id.to_string())
            }
        };
        match principal.role {
            Role::User | Role::Admin => Ok(Viewer { principal, credential }),
            role => Err(Denied::Role(role)),
        }
    }

    /// The form token of `viewer`: forms must send it back, which another site cannot.
    fn form_token(&self, viewer: &Viewer) -> String {
        let mut h = Sha256::new();
        h.update(*self.secret);
        h.update(viewer.principal.name.as_bytes());
        h.update([0]);
        h.update(viewer.credential.as_bytes());
        proto::params::hex(&h.finalize())[..32].to_string()
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::SignIn => Redirect::to("/login").into_response(),
            Denied::Host => {
                let body = html::message_page(
                    "Address this coordinator by its IP address",
                    "without --auth the dashboard answers only requests to an IP address or localhost, so that \
                     another site cannot reach it through a name of its own (DNS rebinding); serve it with --auth \
                     to use a host name",
                );
                (StatusCode::MISDIRECTED_REQUEST, body).into_response()
            }
            Denied::Role(role) => {
                let body = html::message_page(
                    "Not for this token",
                    &format!("A {role:?} token may not use the dashboard; sign in with a user or admin token.")
                        .to_lowercase(),
                );
                (StatusCode::FORBIDDEN, body).into_response()
            }
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request's `Host` is an IP address or `localhost`. An open dashboard on loopback
/// trusts whoever reaches it; a page of another site whose name was re-pointed at 127.0.0.1 (DNS
/// rebinding) would reach it as its own origin and could read the form tokens, but it has to
/// call the dashboard by that name.
pub(crate) fn addressed_by_ip(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Refuses requests that another site's page made: browsers say so in `Sec-Fetch-Site` and
/// `Origin`. Checked before every state-changing request, on top of the form token.
fn same_site(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(site, Some("cross-site" | "same-site")) {
        return false;
    }
    match (headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()), headers.get(header::HOST)) {
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => {
            let host = host.to_str().unwrap_or_default();
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        }
        _ => true,
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// The address a request came from, for the sign-in limit ("unknown" where the listener does
/// not say: in-process tests).
fn client(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

/// Whether the browser reached the dashboard over https (a TLS listener, or a TLS-terminating
/// ingress that says so): then the cookie must never travel over plain http.
fn over_https(headers: &HeaderMap, extensions: &axum::http::Extensions) -> bool {
    extensions.get::<tls::Secure>().is_some()
        || headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
}

async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site sign-in refused\n").into_response();
    }
    let Some(tokens) = &web.coordinator().config.auth else {
        return Redirect::to("/jobs").into_response();
    };
    let (who, now) = (client(&extensions), std::time::Instant::now());
    if !web.sessions.may_try(&who, now) {
        let why = format!("too many failed sign-ins from this address; wait {} s", session::SIGN_IN_WINDOW.as_secs());
        return (StatusCode::TOO_MANY_REQUESTS, pages::login_form(Some(&why))).into_response();
    }
    let token = form.token.trim();
    let principal = proto::auth::check_token(token).ok().and_then(|()| tokens.authenticate(token));
    match principal {
        Some(p) if matches!(p.role, Role::User | Role::Admin) => {
            // Only the session's random id goes back, as a cookie scripts cannot read, sent to
            // this site only.
            let id = web.sessions.open(p.clone(), now);
            let max_age = session::SESSION_TTL.as_secs();
            let mut cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
            if over_https(&headers, &extensions) {
                cookie.push_str("; Secure");
            }
            ([(header::SET_COOKIE, cookie)], Redirect::to("/jobs")).into_response()
        }
        Some(p) => {
            let why = format!("a {} token may not use the dashboard", format!("{:?}", p.role).to_lowercase());
            (StatusCode::FORBIDDEN, pages::login_form(Some(&why))).into_response()
        }
        None => {
            web.sessions.failed(&who, now);
            tracing::warn!(client = %who, "dashboard sign-in with an unknown token");
            (StatusCode::UNAUTHORIZED, pages::login_form(Some("unknown token"))).into_response()
        }
    }
}

async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    if !same_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused\n").into_response();
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        web.sessions.end(id);
    }
    let gone = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, gone)], Redirect::to("/login")).into_response()
}

/// A gRPC handler's refusal as an HTTP page.
fn refused(status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, html::message_page("That did not work", status.message())).into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct ActionForm {
    csrf: String,
}

/// Cancel, delete or retry a job, from its page's confirmed forms.
async fn act(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(d) => return d.into_response(),
    };
    if !same_site(&headers) || form.csrf != web.form_token(&viewer) {
        return (
            StatusCode::FORBIDDEN,
            html::message_page(
                "Refused",
                "this form is stale or came from another site; reload the page and try again",
            ),
        )
            .into_response();
    }
    let p = &viewer.principal;
    let api = &web.api;
    let job_id = id.clone();
    let done = match action.as_str() {
        "cancel" => api.cancel_job(as_principal(p, proto::v1::CancelJobRequest { job_id })).await.map(drop),
        "delete" => api.delete_job(as_principal(p, proto::v1::DeleteJobRequest { job_id })).await.map(drop),
        "retry" => api.retry_job(as_principal(p, proto::v1::RetryJobRequest { job_id })).await.map(drop),
        _ => return (StatusCode::NOT_FOUND, html::message_page("Not found", "no such action")).into_response(),
    };
    match done {
        Ok(()) if action == "delete" => Redirect::to("/jobs").into_response(),
        Ok(()) => Redirect::to(&format!("/jobs/{}", html::url_segment(&id))).into_response(),
        Err(status) => refused(&status),
    }
}

/// The job's latest preview, or its poster once it has finished.
async fn preview(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let seq = match web.api.owned_job(&viewer.principal, &id).await {
        Ok(seq) => seq,
        Err(e) => return refused(&e.into()),
    };
    let c = web.coordinator();
    let jpeg: Option<Vec<u8>> = match c.previews.get(seq) {
        Some(p) => Some(p.jpeg.to_vec()),
        None => {
            let path = c.stored_path(crate::store::keys::poster(seq), "the poster").await;
            match path {
                Ok(p) => tokio::fs::read(p).await.ok(),
                Err(_) => None,
            }
        }
    };
    match jpeg {
        Some(jpeg) => {
            ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-cache")], jpeg).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no preview yet\n").into_response(),
    }
}

/// The finished movie, streamed from the store through the DownloadOutput handler.
async fn output(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(d) => return d.into_response(),
    };
    let request =
        as_principal(&viewer.principal, proto::v1::GetJobRequest { job_id: id.clone(), ..Default::default() });
    let job = match web.api.get_job(request).await {
        Ok(j) => j.into_inner(),
        Err(s) => return refused(&s),
    };
    let stream = match web
        .api
        .download_output(as_principal(&viewer.principal, proto::v1::DownloadOutputRequest { job_id: id }))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return refused(&s),
    };
    let kind = proto::wire::output_from_wire(job.spec.as_ref().map_or(0, |s| s.output));
    let ext = kind.map(|k| k.extension()).unwrap_or("bin");
    let mime = match ext {
        "mp4" => "video/mp4",
        "gif" => "image/gif",
        "png" => "image/png",
        "jpg" => "image/jpeg",
        _ => "application/octet-stream",
    };
    let body = axum::body::Body::from_stream(tokio_stream::StreamExt::map(stream, |b| b.map(|b| b.data)));
    let disposition = format!("attachment; filename=\"gramzoom-{}.{ext}\"", html::url_segment(&job.id));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(job.output_size));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

#[cfg(test)]
mod tests;
