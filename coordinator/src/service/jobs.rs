//! `JobService`: what users call (the CLI, scripts, a dashboard).

use super::styles;
use super::transfer::{stream_file, BoxStream};
use super::{caller, Api};
use crate::error::{Error, Result};
use crate::store::keys;
use crate::{check_spec, db, now_ms, MAX_SEGMENTS};
use proto::v1::job_service_server::JobService;
use proto::v1::{self, submit_job_request};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How often a watch re-reads its job when nothing signalled a change (every change of the job
/// and every lease expiry signal; this only bounds what a missed signal could cost).
const WATCH_REFRESH: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl JobService for Api {
    async fn submit_job(&self, request: Request<Streaming<v1::SubmitJobRequest>>) -> Result<Response<v1::Job>, Status> {
        let principal = caller(&request)?;
        let owner = principal.name.clone();
        if !self.0.reserve_ready().await {
            return Err(Status::resource_exhausted(
                "the coordinator's disk filled up and its reserve (what lets cancel and delete work on a full disk) cannot be made again; delete ended jobs to free space, then submit",
            ));
        }
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.part) {
            Some(submit_job_request::Part::Header(h)) => h,
            _ => return Err(Error::invalid("header", "the first message must carry the job header").into()),
        };
        let spec = header.spec.ok_or_else(|| Error::invalid("spec", "missing"))?;
        let most = self.0.config.max_user_priority;
        if principal.role != crate::auth::Role::Admin && spec.priority > most {
            return Err(Error::invalid(
                "priority",
                format!("at most {most} for a user, got {}; an admin may submit higher", spec.priority),
            )
            .into());
        }
        proto::limits::check_len("style_name", &header.style_name, proto::limits::MAX_NAME_LEN).map_err(Error::from)?;
        if header.style_names.len() > proto::schedule::MAX_STYLES {
            let message = format!("at most {} names, got {}", proto::schedule::MAX_STYLES, header.style_names.len());
            return Err(Error::invalid("style_names", message).into());
        }
        for name in &header.style_names {
            proto::limits::check_len("style_names", name, proto::limits::MAX_NAME_LEN).map_err(Error::from)?;
        }
        proto::limits::check_len("audio_name", &header.audio_name, proto::limits::MAX_NAME_LEN).map_err(Error::from)?;
        // Off the runtime: a million frames of formulas take seconds to walk.
        let (params, spec) = self.0.check_submitted(move || check_spec(&spec).map(|p| (p, spec))).await??;
        let segment_frames = match spec.segment_frames {
            0 => self.0.config.segment_frames,
            n => n,
        };
        if params.frames.div_ceil(segment_frames) > MAX_SEGMENTS {
            return Err(Error::Param(proto::params::ParamError::new(
                "--segment-frames",
                format!(
                    "{} frames in segments of {segment_frames} would be more than {MAX_SEGMENTS} segments",
                    params.frames
                ),
            ))
            .into());
        }
        let mut names = vec![header.style_name.clone()];
        names.extend(header.style_names.iter().skip(1).cloned());
        names.resize(params.style_count(), String::new());
        for (i, name) in names.iter_mut().enumerate() {
            if name.is_empty() {
                *name = match &params.blend {
                    Some(blend) => blend.names()[i].clone(),
                    None => "style".into(),
                };
            }
        }
        let audio_name = Some(header.audio_name.as_str()).filter(|n| !n.is_empty());
        if audio_name.is_some() {
            check_soundtrack(&spec).map_err(Status::from)?;
        }
        let stored = styles::receive(self, &mut stream, &names, audio_name).await?;
        let sha = stored.styles.join(",");
        let audio = stored.audio.clone().unwrap_or_default();
        let frames = params.frames;
        let spec2 = spec.clone();
        let owner2 = owner.clone();
        let submitted = self
            .0
            .db(move |c| {
                let inputs = db::Inputs { styles: &sha, audio: &audio };
                db::submit(c, &spec2, frames, segment_frames, inputs, &owner2, now_ms())
            })
            .await;
        let seq = match submitted {
            Ok(seq) => seq,
            Err(e) => {
                styles::forget(self, stored).await;
                return Err(e.into());
            }
        };
        tracing::info!(job = %seq, %owner, frames, segment_frames, priority = spec.priority, name = %spec.name, "job submitted");
        self.0.ready.notify_waiters();
        Ok(Response::new(self.job_view(seq, false).await?))
    }

    async fn get_job(&self, request: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        let principal = caller(&request)?;
        let r = request.into_inner();
        let seq = self.owned_job(&principal, &r.job_id).await?;
        let page = r.include_segments.then(|| db::SegmentPage::asked(r.segments_from, r.segments_limit));
        Ok(Response::new(self.0.job_view_page(seq, page).await?))
    }

    async fn list_jobs(&self, request: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsResponse>, Status> {
        let principal = caller(&request)?;
        let jobs = self.0.jobs_for(&principal, Default::default()).await?;
        Ok(Response::new(v1::ListJobsResponse { jobs }))
    }

    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        // Any user may look at the farm: names, devices and health, no one's jobs' contents.
        caller(&request)?;
        Ok(Response::new(v1::ListWorkersResponse { workers: self.0.workers().await? }))
    }

    type WatchJobStream = BoxStream<v1::Job>;

    async fn watch_job(&self, request: Request<v1::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let principal = caller(&request)?;
        let seq = self.owned_job(&principal, &request.into_inner().job_id).await?;
        // Held by the stream's task, so the slot is taken until the client goes.
        let permit = self.0.watches.try_open(&principal.name).map_err(Error::from)?;
        // Subscribe before the first look, so a change in between still wakes us.
        let mut mine = self.0.watchers.subscribe(seq);
        let mut changes = self.0.changes.subscribe();
        let first = self.job_view(seq, false).await?;
        tracing::debug!(job = %seq, "watch started");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        let mut closing = self.0.closing.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                // A state the coordinator does not know ends the watch too: it cannot change.
                if db::JobState::from_wire(last.state).is_none_or(db::JobState::is_final) {
                    return;
                }
                // Woken by a change, or now and then for what changes without a signal; and
                // ended as soon as the client goes, not at the job's next change.
                tokio::select! {
                    _ = tokio::time::timeout(WATCH_REFRESH, changes.changed()) => {}
                    _ = mine.changed() => {}
                    _ = tx.closed() => {
                        tracing::debug!(job = %seq, "watcher gone");
                        return;
                    }
                    _ = async { closing.wait_for(|c| *c).await.is_ok() } => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down"))).await;
                        return;
                    }
                }
                match api.job_view(seq, false).await {
                    Ok(job) if job != last => {
                        last = job;
                        if tx.send(Ok(last.clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(&self, request: Request<v1::CancelJobRequest>) -> Result<Response<v1::Job>, Status> {
        let principal = caller(&request)?;
        let seq = self.owned_job(&principal, &request.into_inner().job_id).await?;
        let stored = self
            .0
            .db_freeing(move |c| {
                db::cancel(c, seq, now_ms())?;
                db::stored_attempts(c, seq)
            })
            .await?;
        // Its chunks and states can never be used now: free the space (1080p states are 75 MB).
        let store = self.0.store.clone();
        tokio::task::spawn_blocking(move || {
            for attempt in stored {
                let _ = store.delete(&keys::chunk(seq, attempt));
                let _ = store.delete(&keys::state(seq, attempt));
            }
        });
        tracing::info!(job = %seq, "job cancelled");
        self.0.job_changed(seq);
        Ok(Response::new(self.job_view(seq, false).await?))
    }

    async fn delete_job(
        &self,
        request: Request<v1::DeleteJobRequest>,
    ) -> Result<Response<v1::DeleteJobResponse>, Status> {
        let principal = caller(&request)?;
        let seq = self.owned_job(&principal, &request.into_inner().job_id).await?;
        let styles = self.0.db_freeing(move |c| db::delete(c, seq)).await?;
        self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&seq);
        self.0.previews.remove(seq);
        // The record is gone first: a crash now leaves unreferenced files, never a record whose
        // output is missing.
        let store = self.0.store.clone();
        let freed = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let prefix = keys::job(seq);
            let mut freed = store.delete_all(&prefix).map_err(Error::store(format!("deleting {prefix}")))?;
            let unused_styles = styles.styles.iter().filter(|(_, shared)| !shared).map(|(s, _)| keys::style(s));
            let unused_audio = styles.audio.iter().filter(|(_, shared)| !shared).map(|(s, _)| keys::audio(s));
            for key in unused_styles.chain(unused_audio) {
                freed += store.local_path(&key).and_then(std::fs::metadata).map_or(0, |m| m.len());
                store.delete(&key).map_err(Error::store(format!("deleting {key}")))?;
            }
            Ok(freed)
        })
        .await
        .expect("artifact deletion panicked")?;
        tracing::info!(job = %seq, bytes_freed = freed, "job deleted");
        self.0.restore_reserve();
        self.0.job_changed(seq);
        Ok(Response::new(v1::DeleteJobResponse { bytes_freed: freed }))
    }

    type DownloadOutputStream = BoxStream<v1::Blob>;

    async fn download_output(
        &self,
        request: Request<v1::DownloadOutputRequest>,
    ) -> Result<Response<Self::DownloadOutputStream>, Status> {
        let principal = caller(&request)?;
        let seq = self.owned_job(&principal, &request.into_inner().job_id).await?;
        let job = self.job_view(seq, false).await?;
        let state = db::JobState::from_wire(job.state);
        if state != Some(db::JobState::Succeeded) {
            let detail = if job.error.is_empty() { String::new() } else { format!(": {}", job.error) };
            let state = state.map_or("is in no known state", db::JobState::described);
            return Err(Error::NoOutput { id: job.id, state })
                .map_err(|e| Status::failed_precondition(format!("{e}{detail}")));
        }
        let kind =
            proto::wire::output_from_wire(job.spec.as_ref().map(|s| s.output).unwrap_or(0)).map_err(Error::from)?;
        let key = keys::output(seq, kind.extension());
        let path = self.0.stored_path(key, "the output").await?;
        Ok(Response::new(stream_file(path, job.output_sha256)))
    }

    async fn retry_job(&self, request: Request<v1::RetryJobRequest>) -> Result<Response<v1::Job>, Status> {
        let principal = caller(&request)?;
        let seq = self.owned_job(&principal, &request.into_inner().job_id).await?;
        // A job stuck stitching (a stitch that keeps failing for a reason that can pass, such as
        // a full disk) is an operator's to push: its stitch is tried again now.
        let state = self.0.db(move |c| db::job_state(&c.transaction()?, seq)).await?;
        if state == db::JobState::Stitching && principal.role == crate::auth::Role::Admin {
            tracing::info!(job = %seq, by = %principal.name, "stitch retried");
            self.0.clone().stitch_now(seq);
            return Ok(Response::new(self.job_view(seq, false).await?));
        }
        let stitch = self.0.db(move |c| db::retry(c, seq, now_ms())).await?;
        tracing::info!(job = %seq, by = %principal.name, stitch, "job retried");
        if stitch {
            self.0.clone().stitch_now(seq);
        }
        self.0.segments_may_be_ready();
        self.0.job_changed(seq);
        Ok(Response::new(self.job_view(seq, false).await?))
    }
}

/// A soundtrack goes into an MP4, at an offset that is a number of bounded size.
fn check_soundtrack(spec: &v1::JobSpec) -> Result<()> {
    let output = proto::wire::output_from_wire(spec.output)?;
    if output != proto::params::OutputKind::Mp4 {
        let message = format!("a soundtrack needs an mp4 output, the job's is {}", output.extension());
        return Err(Error::invalid("audio", message));
    }
    let most = proto::limits::MAX_AUDIO_OFFSET;
    if !(spec.audio_offset.is_finite() && spec.audio_offset.abs() <= most) {
        let message = format!("must be a number of seconds from -{most} to {most}, got {}", spec.audio_offset);
        return Err(Error::Param(proto::params::ParamError::new("--audio-offset", message)));
    }
    Ok(())
}
