//! `JobService`: what users call (the CLI, scripts, a dashboard).

use super::transfer::{stream_file, unique_name, BoxStream};
use super::{caller, Api};
use crate::error::{Error, Result};
use crate::store::keys;
use crate::{check_spec, db, now_ms, sha256_hex, MAX_SEGMENTS, MAX_STYLE_BYTES};
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
        // Off the runtime: a million frames of formulas take seconds to walk.
        let (params, spec) = tokio::task::spawn_blocking(move || check_spec(&spec).map(|p| (p, spec)))
            .await
            .map_err(|e| Status::internal(format!("checking the job: {e}")))??;
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
        let mut style = Vec::new();
        let mut declared: Option<(u64, String)> = None;
        // Held until the style is checked and stored: its bytes are in memory until then.
        let mut _room = None;
        while let Some(message) = stream.message().await? {
            let Some(submit_job_request::Part::Style(blob)) = message.part else {
                return Err(Error::invalid("header", "only the first message may carry the header").into());
            };
            if declared.is_none() {
                let size = blob.total_size;
                if size > MAX_STYLE_BYTES {
                    let message = format!("style image is larger than {} MiB", MAX_STYLE_BYTES >> 20);
                    return Err(Error::invalid("style", message).into());
                }
                _room = Some(self.0.uploads.reserve(size).await.map_err(Error::from)?);
                declared = Some((size, blob.sha256));
            }
            let size = declared.as_ref().map_or(0, |d| d.0);
            if (style.len() + blob.data.len()) as u64 > size {
                let message = format!("more bytes arrived than the {size} the first piece declared");
                return Err(Error::invalid("style", message).into());
            }
            style.extend_from_slice(&blob.data);
        }
        let sha = sha256_hex(&style);
        if let Some((size, declared_sha)) = declared {
            if size != style.len() as u64 || (!declared_sha.is_empty() && declared_sha != sha) {
                return Err(Error::invalid(
                    "style",
                    format!(
                        "checksum mismatch: declared {size} bytes, received {} bytes with sha256 {sha}",
                        style.len()
                    ),
                )
                .into());
            }
        }
        let name = header.style_name.clone();
        let store = self.0.store.clone();
        let key = keys::style(&sha);
        let style_sha = sha.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let unreadable = |e: image::ImageError| {
                Error::invalid(
                    "style",
                    format!("{name:?} is not a PNG or JPEG image: {}", e.to_string().to_lowercase()),
                )
            };
            // The header first: a small file may declare a huge image, and decoding allocates
            // what it declares.
            let reader = image::ImageReader::new(std::io::Cursor::new(&style))
                .with_guessed_format()
                .map_err(|e| Error::invalid("style", format!("{name:?}: {e}")))?;
            let (w, h) = reader.into_dimensions().map_err(unreadable)?;
            if u64::from(w) * u64::from(h) > proto::limits::MAX_STYLE_IMAGE_PIXELS {
                return Err(Error::invalid(
                    "style",
                    format!(
                        "{name:?} is {w}x{h}, more than the {} megapixels a style image may have",
                        proto::limits::MAX_STYLE_IMAGE_PIXELS / 1_000_000
                    ),
                ));
            }
            let img = image::load_from_memory(&style).map_err(unreadable)?;
            if img.width() < 32 || img.height() < 32 {
                return Err(Error::invalid(
                    "style",
                    format!("{name:?} is {}x{}; a style image needs at least 32x32 pixels", img.width(), img.height()),
                ));
            }
            if !store.exists(&key) {
                // A scratch name of its own: submits of the same new style run at once, and a
                // shared name let one rename the other's file away (ENOENT). The key is the
                // content's hash, so whichever lands first is the same bytes.
                let tmp = store.scratch_dir().join(unique_name(&format!("style-{style_sha}")));
                // Whatever happens (a full disk), nothing stays behind in scratch.
                let placed = std::fs::write(&tmp, &style).and_then(|()| {
                    if store.exists(&key) {
                        Ok(())
                    } else {
                        store.put_file(&key, &tmp)
                    }
                });
                let _ = std::fs::remove_file(&tmp);
                placed.map_err(Error::store(format!("storing the style {key}")))?;
            }
            Ok(())
        })
        .await
        .expect("style check panicked")?;
        let frames = params.frames;
        let spec2 = spec.clone();
        let owner2 = owner.clone();
        let seq = self.0.db(move |c| db::submit(c, &spec2, frames, segment_frames, &sha, &owner2, now_ms())).await?;
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
        let (style, shared) = self.0.db_freeing(move |c| db::delete(c, seq)).await?;
        self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&seq);
        self.0.previews.remove(seq);
        // The record is gone first: a crash now leaves unreferenced files, never a record whose
        // output is missing.
        let store = self.0.store.clone();
        let freed = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let prefix = keys::job(seq);
            let mut freed = store.delete_all(&prefix).map_err(Error::store(format!("deleting {prefix}")))?;
            if !shared {
                let key = keys::style(&style);
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
