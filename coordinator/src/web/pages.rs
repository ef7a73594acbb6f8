//! The pages, and the fragments of them that live updates replace. A fragment is rendered from
//! data alone (`*_html` functions), so the first page load and every later event show the same
//! markup, and only the parts that change are sent again.

use super::html::{self, badge, progress, Esc, Nav, Who};
use super::{motion, refused, Viewer, Web};
use crate::{db, now_ms};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use proto::v1::{self, job_service_server::JobService};
use std::fmt::Write;

/// Jobs listed at most on the jobs page (newest first).
pub const MAX_LISTED_JOBS: u32 = 200;

pub fn state_name(state: i32) -> &'static str {
    db::wire_name(state, db::JobState::from_wire, db::JobState::as_str)
}

fn segment_state(state: i32) -> &'static str {
    db::wire_name(state, db::SegmentState::from_wire, db::SegmentState::as_str)
}

fn attempt_state(state: i32) -> &'static str {
    db::wire_name(state, db::AttemptState::from_wire, db::AttemptState::as_str)
}

impl Web {
    fn who<'a>(&self, viewer: &'a Viewer, token: &'a str) -> Who<'a> {
        Who { name: &viewer.principal.name, signed_in: self.coordinator().config.auth.is_some(), form_token: token }
    }

    /// The newest jobs `viewer` may see, matching `state` (one of `db::STATE_FILTERS`).
    pub(crate) async fn jobs(&self, viewer: &Viewer, state: Option<String>) -> crate::Result<Vec<v1::Job>> {
        let query = crate::listing::JobQuery::Newest { state, limit: MAX_LISTED_JOBS };
        self.coordinator().jobs_for(&viewer.principal, query).await
    }
}

pub(crate) async fn login_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    if web.coordinator().config.auth.is_none() || web.viewer(&headers).is_ok() {
        return Redirect::to("/jobs").into_response();
    }
    login_form(None).into_response()
}

pub(crate) fn login_form(error: Option<&str>) -> Html<String> {
    let mut body = String::from("<section class=\"login\"><h1>Sign in</h1>");
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", Esc(e));
    }
    body.push_str(
        "<form method=\"post\" action=\"/login\"><label for=\"token\">Token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">The token from the coordinator's <code>--auth</code> file that you use with \
         <code>gramzoom --token-file</code>.</p></section>",
    );
    Html(html::page("Sign in", Nav::None, None, None, &body))
}

#[derive(serde::Deserialize)]
pub(crate) struct Filter {
    state: Option<String>,
}

impl Filter {
    /// The state filter if it is one the page offers; anything else lists every job.
    pub fn state(&self) -> Option<String> {
        self.state.as_deref().filter(|s| db::STATE_FILTERS.contains(s)).map(str::to_string)
    }
}

pub(crate) async fn jobs_page(State(web): State<Web>, headers: HeaderMap, Query(filter): Query<Filter>) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(d) => return d.into_response(),
    };
    let state = filter.state();
    let jobs = match web.jobs(&viewer, state.clone()).await {
        Ok(j) => j,
        Err(e) => return refused(&e.into()),
    };
    let rows = jobs_html(&jobs, now_ms());
    let mut body = String::from("<h1>Jobs</h1><nav class=\"filters\" aria-label=\"filter by state\">");
    for f in std::iter::once("all").chain(db::STATE_FILTERS) {
        let chosen = state.as_deref().unwrap_or("all") == f;
        let href = if f == "all" { "/jobs".to_string() } else { format!("/jobs?state={f}") };
        let current = if chosen { " aria-current=\"page\"" } else { "" };
        let _ = write!(body, "<a href=\"{href}\"{current}>{f}</a>");
    }
    let _ = write!(
        body,
        "</nav><div class=\"scroll\"><table class=\"jobs\"><caption class=\"sr\">Jobs, newest first</caption><thead><tr>\
         <th scope=\"col\">Job</th><th scope=\"col\">State</th><th scope=\"col\">Frames</th>\
         <th scope=\"col\" class=\"r\">fps</th><th scope=\"col\" class=\"r\">ETA</th><th scope=\"col\" class=\"r\">Priority</th>\
         <th scope=\"col\">Size</th><th scope=\"col\">Age</th></tr></thead><tbody{}>{rows}</tbody></table></div>",
        html::live("jobs-body", &rows)
    );
    let events = match &state {
        Some(s) => format!("/jobs/events?state={s}"),
        None => "/jobs/events".into(),
    };
    let token = web.form_token(&viewer);
    Html(html::page("Jobs", Nav::Jobs, Some(&web.who(&viewer, &token)), Some(&events), &body)).into_response()
}

/// Seconds left, from the pace heartbeats measured; `None` when there is none to go by.
fn eta_secs(job: &v1::Job) -> Option<f64> {
    (job.fps > 0.0).then(|| f64::from(job.frames_total.saturating_sub(job.frames_done)) / job.fps)
}

fn fps_text(job: &v1::Job) -> String {
    if job.fps > 0.0 {
        format!("{:.2}", job.fps)
    } else {
        "–".into()
    }
}

fn eta_text(job: &v1::Job, state: &str) -> String {
    match state {
        "running" => eta_secs(job).map_or_else(|| "–".into(), |s| html::duration((s * 1000.0) as i64)),
        "stitching" => "stitching".into(),
        _ => "–".into(),
    }
}

/// The rows of the jobs table.
pub(crate) fn jobs_html(jobs: &[v1::Job], now: i64) -> String {
    if jobs.is_empty() {
        return "<tr><td colspan=\"8\" class=\"empty\">No jobs here yet. Submit one with <code>gramzoom submit</code>.</td></tr>"
            .into();
    }
    let mut out = String::new();
    for job in jobs {
        let state = state_name(job.state);
        let (name, params) = job.spec.as_ref().map_or(("", None), |s| (s.name.as_str(), s.params.as_ref()));
        let size = params.map_or_else(String::new, |p| format!("{}×{}", p.width, p.height));
        let _ = write!(
            out,
            "<tr id=\"row-{id}\"><td><a href=\"/jobs/{id}\">{id}</a><span class=\"sub\">{name}</span></td><td>{badge}</td>\
             <td>{progress}</td><td class=\"r num\">{fps}</td><td class=\"r num\">{eta}</td><td class=\"r num\">{priority}</td>\
             <td class=\"num\">{size}</td><td class=\"num\">{age}</td></tr>",
            id = Esc(&job.id),
            name = Esc(name),
            badge = badge(state),
            progress = progress(job.frames_done, job.frames_total, "frames done"),
            fps = fps_text(job),
            eta = eta_text(job, state),
            priority = job.spec.as_ref().map_or(0, |s| s.priority),
            age = html::ago(now, job.created_unix_ms),
        );
    }
    out
}

pub(crate) async fn job_page(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(d) => return d.into_response(),
    };
    let request = super::as_principal(
        &viewer.principal,
        v1::GetJobRequest { job_id: id, include_segments: true, ..Default::default() },
    );
    let job = match web.api.get_job(request).await {
        Ok(j) => j.into_inner(),
        Err(s) => return refused(&s),
    };
    let seq = db::job_seq(&job.id).unwrap_or(db::JobId(0));
    let preview = web.coordinator().previews.get(seq).map(|p| (p.version, p.frame));
    let has_poster = web.coordinator().has_poster(seq).await;
    let token = web.form_token(&viewer);
    let now = now_ms();
    let spec = job.spec.clone().unwrap_or_default();
    let p = spec.params.clone().unwrap_or_default();
    let title = if spec.name.is_empty() { job.id.clone() } else { spec.name.clone() };
    let summary = summary_html(&job, now);
    let src = preview_src(&job.id, preview.map(|p| p.0), has_poster);
    let caption = caption_html(preview.map(|p| p.1), has_poster);
    let mut body = String::new();
    let _ = write!(
        body,
        "<p class=\"crumbs\"><a href=\"/jobs\">Jobs</a> / {id}</p><h1>{title}</h1>\
         <div class=\"job\"><section aria-labelledby=\"h-progress\"><h2 id=\"h-progress\">Progress</h2>\
         <div{summary_at} aria-live=\"polite\">{summary}</div>{actions}</section>\
         <figure class=\"preview\"><img{preview_at} width=\"{w}\" height=\"{h}\" alt=\"the latest rendered frame\"{src}>\
         <figcaption{caption_at}>{caption}</figcaption></figure></div>",
        summary_at = html::live("job-summary", &summary),
        preview_at = html::live("job-preview", src.as_deref().unwrap_or_default()),
        caption_at = html::live("job-caption", &caption),
        id = Esc(&job.id),
        title = Esc(&title),
        actions = actions_html(&job, &token),
        w = p.width.max(1),
        h = p.height.max(1),
        src = match &src {
            Some(s) => format!(" src=\"{}\"", Esc(s)),
            None => String::new(),
        },
    );
    let segments = segments_html(&job, now);
    let _ = write!(
        body,
        "<section aria-labelledby=\"h-segments\"><h2 id=\"h-segments\">Segments</h2><div class=\"scroll\"><table class=\"segments\">\
         <thead><tr><th scope=\"col\">#</th><th scope=\"col\">Frames</th><th scope=\"col\">State</th><th scope=\"col\">Attempts</th></tr></thead>\
         <tbody{}>{segments}</tbody></table></div></section>",
        html::live("job-segments", &segments)
    );
    // Live: the marker and the words follow the render.
    let motion = super::motion::of_job(&job);
    let _ = write!(body, "<div{}>{motion}</div>", html::live("job-motion", &motion));
    body.push_str("<section aria-labelledby=\"h-params\"><h2 id=\"h-params\">Parameters</h2><dl class=\"params\">");
    let layers = if p.layers.is_empty() {
        "every conv layer".to_string()
    } else {
        p.layers.iter().map(|l| format!("{}:{}", l.name, l.weight)).collect::<Vec<_>>().join(", ")
    };
    let output = proto::wire::output_from_wire(spec.output).map(|k| k.extension()).unwrap_or("?");
    let fps = f64::from(p.fps_num) / f64::from(p.fps_den.max(1));
    for (k, v) in [
        ("Size", format!("{}×{}", p.width, p.height)),
        ("Frames", format!("{} at {fps} fps", p.frames)),
        ("Zoom", motion::shown(&p.zoom_schedule, format!("{}× per second", p.zoom), "magnification per second")),
        ("Centre", motion::shown(&p.centre, "the middle".into(), "X,Y as fractions of the frame")),
        ("Rotation", motion::shown(&p.angle, "none".into(), "degrees per second")),
        (
            "Iterations",
            format!(
                "{}, {} warm-up",
                motion::shown(&p.iters_schedule, format!("{} per frame", p.iters), "per frame"),
                p.warmup
            ),
        ),
        ("Tempo", motion::tempo(&p)),
        (
            "Styles",
            match (p.styles.len(), p.blend.as_str()) {
                (0, _) => "one".into(),
                (_, "") => format!("{}, weighing the same", p.styles.join(", ")),
                (_, blend) => format!("{}, blended {blend}", p.styles.join(", ")),
            },
        ),
        (
            "Optimiser",
            match p.learning_rate {
                Some(lr) => format!("{} (learning rate {lr})", p.optimizer),
                None => p.optimizer.clone(),
            },
        ),
        ("Network", p.network.clone()),
        ("Layers", layers),
        ("Style scale", proto::params::StyleScale::from_wire(p.style_scale).to_string()),
        ("Seed", p.seed.to_string()),
        ("Output", output.to_string()),
        ("Priority", spec.priority.to_string()),
        ("Owner", if job.owner.is_empty() { "–".into() } else { job.owner.clone() }),
    ] {
        let _ = write!(body, "<dt>{k}</dt><dd>{}</dd>", Esc(&v));
    }
    body.push_str("</dl></section>");
    let events = format!("/jobs/{}/events", html::url_segment(&job.id));
    Html(html::page(&title, Nav::Jobs, Some(&web.who(&viewer, &token)), Some(&events), &body)).into_response()
}

/// Where the preview image is: versioned, so a browser fetches each new one once.
pub(crate) fn preview_src(id: &str, version: Option<u64>, has_poster: bool) -> Option<String> {
    let path = format!("/jobs/{}/preview.jpg", html::url_segment(id));
    match (version, has_poster) {
        (Some(v), _) => Some(format!("{path}?v={v}")),
        (None, true) => Some(format!("{path}?v=poster")),
        (None, false) => None,
    }
}

pub(crate) fn caption_html(frame: Option<u32>, has_poster: bool) -> String {
    match (frame, has_poster) {
        (Some(f), _) => format!("Frame {f}"),
        (None, true) => "The last frame".into(),
        (None, false) => "Waiting for the first frame".into(),
    }
}

/// The summary beside the preview: progress, pace, what is left, the output.
pub(crate) fn summary_html(job: &v1::Job, now: i64) -> String {
    let state = state_name(job.state);
    let mut out = String::new();
    let _ = write!(
        out,
        "<p class=\"state\">{} <span class=\"id\">{}</span></p>{}<dl class=\"facts\">",
        badge(state),
        Esc(&job.id),
        progress(job.frames_done, job.frames_total, "frames done")
    );
    let mut fact = |k: &str, v: String| {
        let _ = write!(out, "<dt>{k}</dt><dd class=\"num\">{}</dd>", Esc(&v));
    };
    if job.warmup_total > 0 && job.warmup_done < job.warmup_total && job.frames_done == 0 {
        fact("Warm-up", format!("{} / {} iterations", job.warmup_done, job.warmup_total));
    }
    fact("Segments", format!("{} / {} done", job.segments_done, job.segments_total));
    let length = if job.segment_frames_measured { " (sized from the measured pace)" } else { "" };
    fact("Segment length", format!("{} frames{length}", job.segment_frames));
    fact("fps", fps_text(job));
    fact("ETA", eta_text(job, state));
    fact("Submitted", html::ago(now, job.created_unix_ms));
    if job.finished_unix_ms > 0 {
        fact("Took", html::duration(job.finished_unix_ms - job.created_unix_ms));
    }
    out.push_str("</dl>");
    if !job.error.is_empty() {
        let _ = write!(out, "<p class=\"error\">{}</p>", Esc(&job.error));
    }
    if state == "succeeded" {
        let _ = write!(
            out,
            "<p><a class=\"button\" href=\"/jobs/{}/output\" download>Download the output</a> <span class=\"num\">{}</span></p>",
            html::url_segment(&job.id),
            html::bytes(job.output_size)
        );
    }
    out
}

/// Cancel, delete and retry, as the job's state allows; each asks first (app.js).
fn actions_html(job: &v1::Job, token: &str) -> String {
    let inner = actions_inner(job, token);
    format!("<div class=\"actions\"{}>{inner}</div>", html::live("job-actions", &inner))
}

/// The forms inside the actions' box (what live updates replace).
pub(crate) fn actions_inner(job: &v1::Job, token: &str) -> String {
    let state = db::JobState::from_wire(job.state);
    let ended = state.is_some_and(db::JobState::is_final);
    let mut out = String::new();
    let id = html::url_segment(&job.id);
    let mut form = |action: &str, label: &str, confirm: String, danger: bool| {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/jobs/{id}/{action}\" data-confirm=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\"{}>{label}</button></form>",
            Esc(&confirm),
            Esc(token),
            if danger { " class=\"danger\"" } else { "" }
        );
    };
    if !ended {
        form("cancel", "Cancel", format!("Cancel {}? Its unfinished frames are thrown away.", job.id), true);
    }
    if state == Some(db::JobState::Failed) {
        form("retry", "Retry", format!("Retry {} from its last finished segment?", job.id), false);
    }
    if ended {
        form("delete", "Delete", format!("Delete {} and its output for good?", job.id), true);
    }
    out
}

/// The segment timeline: one row per segment, each attempt with its worker, times and outcome.
pub(crate) fn segments_html(job: &v1::Job, now: i64) -> String {
    let mut out = String::new();
    for s in &job.segments {
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}–{}</td><td>{}</td><td><ol class=\"attempts\">",
            s.index,
            s.start_frame,
            s.end_frame,
            badge(segment_state(s.state))
        );
        for a in &s.attempts {
            let end = if a.ended_unix_ms > 0 { a.ended_unix_ms } else { now };
            let _ = write!(
                out,
                "<li>{} <span class=\"num\">attempt {} · {} · started {} · {}</span>",
                badge(attempt_state(a.state)),
                a.id,
                Esc(&a.worker_id),
                html::ago(now, a.started_unix_ms),
                html::duration(end - a.started_unix_ms),
            );
            if !a.reason.is_empty() {
                let _ = write!(out, "<span class=\"reason\">{}</span>", Esc(&a.reason));
            }
            out.push_str("</li>");
        }
        out.push_str("</ol></td></tr>");
    }
    if job.segments.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"empty\">No segments.</td></tr>");
    }
    out
}

pub(crate) async fn workers_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(d) => return d.into_response(),
    };
    let rows = match web.workers_html().await {
        Ok(r) => r,
        Err(e) => return refused(&e.into()),
    };
    let body = format!(
        "<h1>Workers</h1><div class=\"scroll\"><table class=\"workers\"><caption class=\"sr\">Workers seen lately, newest first</caption>\
         <thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">Device</th><th scope=\"col\">Doing</th>\
         <th scope=\"col\" class=\"r\">fps</th><th scope=\"col\">Last heartbeat</th><th scope=\"col\" class=\"r\">Segments</th>\
         <th scope=\"col\" class=\"r\">Failures</th><th scope=\"col\">Weights</th></tr></thead><tbody{live}>{rows}</tbody></table></div>",
        live = html::live("workers-body", &rows)
    );
    let token = web.form_token(&viewer);
    Html(html::page("Workers", Nav::Workers, Some(&web.who(&viewer, &token)), Some("/workers/events"), &body))
        .into_response()
}

impl Web {
    /// The rows of the workers table, as of now.
    pub(crate) async fn workers_html(&self) -> crate::Result<String> {
        let workers = self.coordinator().workers().await?;
        let now = now_ms();
        let mut out = String::new();
        for w in &workers {
            let fps = db::job_seq(&w.running_job_id)
                .ok()
                .and_then(|seq| {
                    self.coordinator().live.lock().unwrap_or_else(|e| e.into_inner()).get(&seq).map(|l| l.pace.fps)
                })
                .filter(|f| *f > 0.0 && w.running_attempt_id != 0);
            let doing = if w.quarantined_until_unix_ms > now {
                format!(
                    "<span class=\"badge s-failed\">quarantined</span> <span class=\"num\">{} more</span>",
                    html::duration(w.quarantined_until_unix_ms - now)
                )
            } else if w.running_attempt_id != 0 {
                format!(
                    "<a href=\"/jobs/{}\">{}</a> <span class=\"num\">attempt {}</span>",
                    html::url_segment(&w.running_job_id),
                    Esc(&w.running_job_id),
                    w.running_attempt_id
                )
            } else {
                "<span class=\"muted\">idle</span>".into()
            };
            let weights = w
                .weights
                .iter()
                .map(|n| {
                    format!(
                        "<span title=\"{1}\">{0} {2}</span>",
                        Esc(&n.network),
                        Esc(&n.digest),
                        Esc(n.digest.get(..12).unwrap_or(&n.digest))
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>");
            let _ = write!(
                out,
                "<tr><td>{name}<span class=\"sub\">{id}</span></td><td>{device}</td><td>{doing}</td><td class=\"r num\">{fps}</td>\
                 <td class=\"num\">{seen}</td><td class=\"r num\">{done}</td><td class=\"r num\">{failures}</td><td class=\"mono\">{weights}</td></tr>",
                name = Esc(&w.name),
                id = Esc(&w.worker_id),
                device = Esc(&w.device),
                fps = fps.map_or_else(|| "–".into(), |f| format!("{f:.2}")),
                seen = html::ago(now, w.last_seen_unix_ms),
                done = w.segments_done,
                failures = w.failures_in_a_row,
                weights = if weights.is_empty() { "<span class=\"muted\">random features</span>".into() } else { weights },
            );
        }
        if workers.is_empty() {
            out.push_str("<tr><td colspan=\"8\" class=\"empty\">No workers seen in the last day. Start one with <code>gramzoom worker</code>.</td></tr>");
        }
        Ok(out)
    }
}
