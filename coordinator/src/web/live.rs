//! Live pages over Server-Sent Events. Each stream re-renders its page's fragments when the
//! coordinator's change channels say something changed (a job's own channel for a job page, the
//! any-job channel for the lists), never on a timer alone, and sends only the fragments that
//! differ from what it sent before. A slow timer still refreshes the "5 s ago" kind of text.
//!
//! An event's data is the target element's id, the digest of the new content (`html::version`),
//! and the new HTML (for an `<img>`, its new address), a newline apart; `app.js` puts it in
//! place unless the element already holds content of that digest.

use super::pages::{self, caption_html, preview_src, segments_html, summary_html, Filter};
use super::{Viewer, Web};
use crate::now_ms;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
/// Changes of one job closer together than this are sent as one update.
const COALESCE: Duration = Duration::from_millis(300);
/// The same for the lists, which every heartbeat of every worker wakes and which read up to
/// `MAX_LISTED_JOBS` jobs each time.
const COALESCE_LISTS: Duration = Duration::from_secs(1);
/// Ages ("12 s ago") are refreshed this often even when nothing changes.
const REFRESH: Duration = Duration::from_secs(10);

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// The fragments a stream sent last, so only changed ones go out again.
#[derive(Default)]
struct Sent(HashMap<&'static str, String>);

impl Sent {
    /// Sends the fragments that changed; false once the viewer has gone.
    async fn send(&mut self, tx: &Tx, parts: Vec<(&'static str, String)>) -> bool {
        for (target, html) in parts {
            if self.0.get(target) == Some(&html) {
                continue;
            }
            let event = Event::default().data(format!("{target}\n{}\n{html}", super::html::version(&html)));
            if tx.send(Ok(event)).await.is_err() {
                return false;
            }
            self.0.insert(target, html);
        }
        true
    }
}

/// Opens a stream for `viewer` fed by `feed`, or refuses when too many are open
/// ([`crate::streams::MAX_LIVE_PAGES`] in all, fewer per user). The permit lives in the stream's
/// task, so the slot is taken for as long as the page stays open.
fn open<F, Fut>(web: &Web, viewer: &Viewer, feed: F) -> Response
where
    F: FnOnce(Tx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permit = match web.coordinator().live_pages.try_open(&viewer.principal.name) {
        Ok(permit) => permit,
        Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, format!("no live page: {why}\n")).into_response(),
    };
    let (tx, rx) = mpsc::channel(16);
    let mut closing = web.coordinator().closing.subscribe();
    let closed = tx.clone();
    let task = feed(tx);
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            _ = task => {}
            _ = closed.closed() => {}
            _ = async { closing.wait_for(|c| *c).await.is_ok() } => {}
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response()
}

/// Waits for the next change `wake` reports, at most [`REFRESH`], then a moment for the rest of
/// a burst. Returns when the change came: a shared render that began after it shows it.
async fn next_change(wake: impl std::future::Future<Output = ()>, coalesce: Duration) -> Instant {
    let _ = tokio::time::timeout(REFRESH, wake).await;
    let changed = Instant::now();
    tokio::time::sleep(coalesce).await;
    changed
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A list (the jobs, the workers) kept live in the element `target`: rendered anew by `render`
/// when any job changes or the coordinator's state does, one render shared by every stream of
/// the same `key` (see `shared`); a failed render ends the stream.
fn live_list<F>(web: &Web, viewer: &Viewer, key: String, target: &'static str, render: F) -> Response
where
    F: Fn(Web) -> BoxFuture<Option<String>> + Send + Sync + 'static,
{
    let mut any = web.coordinator().watchers.subscribe_any();
    let mut changes = web.coordinator().changes.subscribe();
    let web2 = web.clone();
    open(web, viewer, move |tx| async move {
        let mut sent = Sent::default();
        // A page just opened takes a render of the last moment.
        let mut changed = Instant::now().checked_sub(COALESCE_LISTS).unwrap_or_else(Instant::now);
        loop {
            let rendered = web2.lists.get(&key, changed, || async { render(web2.clone()).await.ok_or(()) }).await;
            let Ok(html) = rendered else { return };
            if !sent.send(&tx, vec![(target, html)]).await {
                return;
            }
            let wake = async {
                tokio::select! {
                    _ = any.changed() => {}
                    _ = changes.changed() => {}
                }
            };
            changed = next_change(wake, COALESCE_LISTS).await;
        }
    })
}

pub(crate) async fn jobs_events(State(web): State<Web>, headers: HeaderMap, Query(filter): Query<Filter>) -> Response {
    let viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let state = filter.state();
    let key = format!("jobs/{:?}/{state:?}", viewer.principal.job_owner_filter());
    live_list(&web, &viewer.clone(), key, "jobs-body", move |web| {
        let (viewer, state) = (viewer.clone(), state.clone());
        Box::pin(async move { web.jobs(&viewer, state).await.ok().map(|jobs| pages::jobs_html(&jobs, now_ms())) })
    })
}

pub(crate) async fn job_events(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let viewer: Viewer = match web.viewer(&headers) {
        Ok(v) => v,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let seq = match web.api.owned_job(&viewer.principal, &id).await {
        Ok(seq) => seq,
        Err(e) => return super::refused(&e.into()),
    };
    // Subscribed before the first look, so a change in between still wakes the stream.
    let mut mine = web.coordinator().watchers.subscribe(seq);
    let token = web.form_token(&viewer);
    let web2 = web.clone();
    open(&web, &viewer, move |tx| async move {
        let mut sent = Sent::default();
        let key = format!("job/{seq}");
        let mut changed = Instant::now().checked_sub(COALESCE).unwrap_or_else(Instant::now);
        loop {
            let job = web2.job_views.get(&key, changed, || web2.api.job_view(seq, true)).await;
            let job = match job {
                Ok(job) => job,
                Err(_) => {
                    let gone = "<p class=\"error\">This job was deleted.</p>".to_string();
                    sent.send(&tx, vec![("job-summary", gone), ("job-actions", String::new())]).await;
                    return;
                }
            };
            let c = web2.coordinator();
            let preview = c.previews.get(seq).map(|p| (p.version, p.frame));
            let has_poster = preview.is_none() && c.has_poster(seq).await;
            let now = now_ms();
            let parts = vec![
                ("job-summary", summary_html(&job, now)),
                ("job-actions", pages::actions_inner(&job, &token)),
                ("job-segments", segments_html(&job, now)),
                ("job-preview", preview_src(&job.id, preview.map(|p| p.0), has_poster).unwrap_or_default()),
                ("job-caption", caption_html(preview.map(|p| p.1), has_poster)),
                ("job-motion", super::motion::of_job(&job)),
            ];
            if !sent.send(&tx, parts).await {
                return;
            }
            changed = next_change(mine.changed(), COALESCE).await;
        }
    })
}

pub(crate) async fn workers_events(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Ok(viewer) = web.viewer(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    live_list(&web, &viewer, "workers".into(), "workers-body", |web| {
        Box::pin(async move { web.workers_html().await.ok() })
    })
}
