//! The gRPC face of the coordinator: `JobService` for users, `WorkerService` for render nodes,
//! grpc.health.v1 and server reflection. Handlers parse, call the core, and turn `Error` into a
//! `Status` through the one `From` impl in `error.rs`.

use crate::error::{Error, Result};
use crate::store::keys;
use crate::{check_spec, db, lease, now_ms, sha256_hex, Coordinator, Live, MAX_SEGMENTS, MAX_STYLE_BYTES};
use proto::v1::job_service_server::{JobService, JobServiceServer};
use proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use proto::v1::{self, complete_segment_request, submit_job_request};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Longest long poll a worker may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Api(Arc<Coordinator>);

pub(crate) async fn serve<S, IO>(
    coordinator: Arc<Coordinator>,
    incoming: S,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()>
where
    S: Stream<Item = std::io::Result<IO>> + Send,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<Api>>().await;
    health.set_serving::<WorkerServiceServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let api = Api(coordinator);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(JobServiceServer::new(api.clone()))
        .add_service(WorkerServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

impl Api {
    async fn job_view(&self, seq: i64, include_segments: bool) -> Result<v1::Job> {
        let mut job = self.0.db(move |c| db::job(c, seq, include_segments)).await?;
        if let Some(live) = self.0.live.lock().unwrap_or_else(|e| e.into_inner()).get(&seq) {
            job.warmup_done = live.warmup_done;
            job.warmup_total = live.warmup_total;
        }
        Ok(job)
    }

    async fn assignment(&self, g: lease::Grant) -> Result<v1::Assignment> {
        let job = g.job;
        let spec = self.0.db(move |c| db::spec(c, job)).await?;
        Ok(v1::Assignment {
            attempt_id: g.attempt,
            job_id: db::job_id(g.job),
            segment_index: g.idx,
            segment_count: g.segment_count,
            start_frame: g.start_frame,
            end_frame: g.end_frame,
            params: spec.params,
            output: spec.output,
            style_sha256: g.style_sha256,
            start_state_attempt_id: g.start_attempt,
            start_state_sha256: g.start_state_sha256,
            lease_ms: self.0.policy.lease_ms as u32,
        })
    }
}

/// Streams a stored file as `Blob` pieces, the first carrying its size and checksum.
fn stream_file(path: PathBuf, sha256: String) -> BoxStream<v1::Blob> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let result: std::io::Result<()> = async {
            let mut file = tokio::fs::File::open(&path).await?;
            let total = file.metadata().await?.len();
            let mut first = true;
            loop {
                let mut buf = vec![0u8; proto::BLOB_PIECE];
                let n = file.read(&mut buf).await?;
                if n == 0 && !first {
                    break;
                }
                buf.truncate(n);
                let blob = if first {
                    v1::Blob { total_size: total, sha256: sha256.clone(), data: buf }
                } else {
                    v1::Blob { data: buf, ..Default::default() }
                };
                first = false;
                if tx.send(Ok(blob)).await.is_err() || n == 0 {
                    break;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(Status::from(Error::Store(e)))).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// A file being received into the scratch directory, hashed as it arrives; removed on drop
/// unless it was handed to the store.
struct Incoming {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl Incoming {
    async fn create(dir: &Path, name: String) -> Result<Self> {
        let path = dir.join(name);
        let file = tokio::fs::File::create(&path).await?;
        Ok(Self { path, file: Some(file), hasher: Sha256::new(), size: 0 })
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.file.as_mut().expect("open until finished").write_all(data).await?;
        Ok(())
    }

    /// Flushes, then checks size and checksum against what the sender declared.
    async fn finish(&mut self, field: &'static str, size: u64, sha256: &str) -> Result<()> {
        let mut file = self.file.take().expect("finished once");
        file.flush().await?;
        file.sync_all().await?;
        let actual = proto::params::hex(&std::mem::take(&mut self.hasher).finalize());
        if self.size != size || actual != sha256 {
            return Err(Error::invalid(
                field,
                format!(
                    "checksum mismatch: declared {size} bytes with sha256 {sha256}, received {} bytes with sha256 {actual}",
                    self.size
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tonic::async_trait]
impl JobService for Api {
    async fn submit_job(&self, request: Request<Streaming<v1::SubmitJobRequest>>) -> Result<Response<v1::Job>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.part) {
            Some(submit_job_request::Part::Header(h)) => h,
            _ => return Err(Error::invalid("header", "the first message must carry the job header").into()),
        };
        let spec = header.spec.ok_or_else(|| Error::invalid("spec", "missing"))?;
        let params = check_spec(&spec)?;
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
        while let Some(message) = stream.message().await? {
            let Some(submit_job_request::Part::Style(blob)) = message.part else {
                return Err(Error::invalid("header", "only the first message may carry the header").into());
            };
            if declared.is_none() {
                declared = Some((blob.total_size, blob.sha256));
            }
            if (style.len() + blob.data.len()) as u64 > MAX_STYLE_BYTES {
                return Err(Error::invalid(
                    "style",
                    format!("style image is larger than {} MiB", MAX_STYLE_BYTES >> 20),
                )
                .into());
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
            let img = image::load_from_memory(&style).map_err(|e| {
                Error::invalid(
                    "style",
                    format!("{name:?} is not a PNG or JPEG image: {}", e.to_string().to_lowercase()),
                )
            })?;
            if img.width() < 32 || img.height() < 32 {
                return Err(Error::invalid(
                    "style",
                    format!("{name:?} is {}x{}; a style image needs at least 32x32 pixels", img.width(), img.height()),
                ));
            }
            if !store.exists(&key) {
                let tmp = store.scratch_dir().join(format!("style-{style_sha}"));
                std::fs::write(&tmp, &style)?;
                store.put_file(&key, &tmp)?;
            }
            Ok(())
        })
        .await
        .expect("style check panicked")?;
        let frames = params.frames;
        let spec2 = spec.clone();
        let seq = self.0.db(move |c| db::submit(c, &spec2, frames, segment_frames, &sha, now_ms())).await?;
        tracing::info!(job = %db::job_id(seq), frames, segment_frames, priority = spec.priority, name = %spec.name, "job submitted");
        self.0.ready.notify_waiters();
        Ok(Response::new(self.job_view(seq, false).await?))
    }

    async fn get_job(&self, request: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        let r = request.into_inner();
        let seq = db::job_seq(&r.job_id)?;
        Ok(Response::new(self.job_view(seq, r.include_segments).await?))
    }

    async fn list_jobs(&self, _: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsResponse>, Status> {
        let jobs = self.0.db(|c| db::list(c)).await?;
        Ok(Response::new(v1::ListJobsResponse { jobs }))
    }

    type WatchJobStream = BoxStream<v1::Job>;

    async fn watch_job(&self, request: Request<v1::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let seq = db::job_seq(&request.into_inner().job_id)?;
        // Subscribe before the first look, so a change in between still wakes us.
        let mut mine = self.0.watchers.subscribe(seq);
        let mut changes = self.0.changes.subscribe();
        let first = self.job_view(seq, false).await?;
        tracing::debug!(job = %db::job_id(seq), "watch started");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        let mut closing = self.0.closing.subscribe();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                if db::JobState::parse(&state_name(last.state)).is_final() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()) => {}
                    _ = mine.changed() => {}
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
        let seq = db::job_seq(&request.into_inner().job_id)?;
        let stored = self
            .0
            .db(move |c| {
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
        tracing::info!(job = %db::job_id(seq), "job cancelled");
        self.0.job_changed(seq);
        Ok(Response::new(self.job_view(seq, false).await?))
    }

    async fn delete_job(
        &self,
        request: Request<v1::DeleteJobRequest>,
    ) -> Result<Response<v1::DeleteJobResponse>, Status> {
        let seq = db::job_seq(&request.into_inner().job_id)?;
        let (style, shared) = self.0.db(move |c| db::delete(c, seq)).await?;
        self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&seq);
        // The record is gone first: a crash now leaves unreferenced files, never a record whose
        // output is missing.
        let store = self.0.store.clone();
        let freed = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let mut freed = store.delete_all(&keys::job(seq))?;
            if !shared {
                let key = keys::style(&style);
                freed += store.local_path(&key).and_then(std::fs::metadata).map_or(0, |m| m.len());
                store.delete(&key)?;
            }
            Ok(freed)
        })
        .await
        .expect("artifact deletion panicked")?;
        tracing::info!(job = %db::job_id(seq), bytes_freed = freed, "job deleted");
        self.0.job_changed(seq);
        Ok(Response::new(v1::DeleteJobResponse { bytes_freed: freed }))
    }

    type DownloadOutputStream = BoxStream<v1::Blob>;

    async fn download_output(
        &self,
        request: Request<v1::DownloadOutputRequest>,
    ) -> Result<Response<Self::DownloadOutputStream>, Status> {
        let seq = db::job_seq(&request.into_inner().job_id)?;
        let job = self.job_view(seq, false).await?;
        let state = db::JobState::parse(&state_name(job.state));
        if state != db::JobState::Succeeded {
            let detail = if job.error.is_empty() { String::new() } else { format!(": {}", job.error) };
            return Err(Error::NoOutput { id: job.id, state: state.described() })
                .map_err(|e| Status::failed_precondition(format!("{e}{detail}")));
        }
        let kind =
            proto::wire::output_from_wire(job.spec.as_ref().map(|s| s.output).unwrap_or(0)).map_err(Error::from)?;
        let path = self.0.store.local_path(&keys::output(seq, kind.extension())).map_err(Error::from)?;
        Ok(Response::new(stream_file(path, job.output_sha256)))
    }
}

fn state_name(state: i32) -> String {
    v1::JobState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl WorkerService for Api {
    async fn register(&self, request: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = request.into_inner();
        let (name, device) = (r.name.clone(), r.device.clone());
        let id = self.0.db(move |c| db::register_worker(c, &name, &device, now_ms())).await?;
        tracing::info!(worker = %id, name = %r.name, device = %r.device, "worker registered");
        Ok(Response::new(v1::RegisterResponse {
            worker_id: id,
            lease_ms: self.0.config.lease.as_millis() as u32,
            heartbeat_ms: self.0.config.heartbeat.as_millis() as u32,
        }))
    }

    async fn acquire(&self, request: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let r = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_WAIT);
        let policy = self.0.policy;
        let mut closing = self.0.closing.subscribe();
        loop {
            // Listen before looking, so a segment readied in between still wakes us.
            let notified = self.0.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let worker = r.worker_id.clone();
            if let Some(grant) = self.0.db(move |c| lease::acquire(c, &worker, policy, now_ms())).await? {
                let what = if grant.redelivered {
                    "segment assigned again: the worker never received it"
                } else {
                    "segment assigned"
                };
                tracing::info!(worker = %r.worker_id, job = %db::job_id(grant.job), segment = grant.idx, attempt = grant.attempt, frames = %format!("{}..{}", grant.start_frame, grant.end_frame), "{what}");
                self.0.job_changed(grant.job);
                let assignment = self.assignment(grant).await?;
                return Ok(Response::new(v1::AcquireResponse { assignment: Some(assignment) }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Response::new(v1::AcquireResponse { assignment: None }));
            }
            // Re-look now and then too: an affinity reservation runs out without any event.
            let tick = (deadline - now).min(Duration::from_millis(250));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(tick) => {}
                _ = async { closing.wait_for(|c| *c).await.is_ok() } => return Ok(Response::new(v1::AcquireResponse { assignment: None })),
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let policy = self.0.policy;
        let (attempt, frames) = (r.attempt_id, r.frames_done);
        let result = self.0.db(move |c| lease::heartbeat(c, attempt, frames, policy, now_ms())).await;
        let cur = match result {
            Ok(cur) => cur,
            Err(e) => {
                self.0.segments_may_be_ready();
                return Err(e.into());
            }
        };
        if cur.idx == 0 && r.warmup_total > 0 {
            self.0
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cur.job, Live { warmup_done: r.warmup_done, warmup_total: r.warmup_total });
        }
        self.0.job_changed(cur.job);
        Ok(Response::new(v1::HeartbeatResponse { lease_ms: policy.lease_ms as u32 }))
    }

    type FetchStyleStream = BoxStream<v1::Blob>;

    async fn fetch_style(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStyleStream>, Status> {
        let attempt = request.into_inner().attempt_id;
        let policy = self.0.policy;
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        let job = cur.job;
        let sha: String = self
            .0
            .db(move |c| Ok(c.query_row("SELECT style_sha256 FROM jobs WHERE seq = ?1", [job], |r| r.get(0))?))
            .await?;
        let path = self.0.store.local_path(&keys::style(&sha)).map_err(Error::from)?;
        Ok(Response::new(stream_file(path, sha)))
    }

    type FetchStateStream = BoxStream<v1::Blob>;

    async fn fetch_state(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStateStream>, Status> {
        let attempt = request.into_inner().attempt_id;
        let policy = self.0.policy;
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        if cur.start_attempt == 0 {
            return Err(Error::invalid(
                "attempt_id",
                format!("attempt {attempt} starts from noise and has no start state"),
            )
            .into());
        }
        let start = cur.start_attempt as i64;
        let sha: String = self
            .0
            .db(move |c| Ok(c.query_row("SELECT state_sha256 FROM attempts WHERE id = ?1", [start], |r| r.get(0))?))
            .await?;
        let path = self.0.store.local_path(&keys::state(cur.job, cur.start_attempt)).map_err(Error::from)?;
        Ok(Response::new(stream_file(path, sha)))
    }

    async fn complete_segment(
        &self,
        request: Request<Streaming<v1::CompleteSegmentRequest>>,
    ) -> Result<Response<v1::CompleteSegmentResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.part) {
            Some(complete_segment_request::Part::Header(h)) => h,
            _ => return Err(Error::invalid("header", "the first message must carry the completion header").into()),
        };
        let attempt = header.attempt_id;
        let policy = self.0.policy;
        // Fencing, early: a stale worker is turned away before it uploads anything big.
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        let scratch = self.0.store.scratch_dir().to_path_buf();
        let mut chunk = Incoming::create(&scratch, format!("attempt-{attempt}.chunk")).await?;
        let mut state = Incoming::create(&scratch, format!("attempt-{attempt}.state")).await?;
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(complete_segment_request::Part::Chunk(data)) => chunk.write(&data).await?,
                Some(complete_segment_request::Part::State(data)) => state.write(&data).await?,
                _ => return Err(Error::invalid("header", "only the first message may carry the header").into()),
            }
        }
        let verified = async {
            chunk.finish("chunk_sha256", header.chunk_size, &header.chunk_sha256).await?;
            state.finish("state_sha256", header.state_size, &header.state_sha256).await
        }
        .await;
        if let Err(e) = verified {
            // A corrupt upload fails this attempt; the segment is retried (elsewhere, maybe).
            let reason = e.to_string();
            tracing::warn!(attempt, job = %db::job_id(cur.job), segment = cur.idx, %reason, "upload rejected");
            let _ = self.0.db(move |c| lease::fail(c, attempt, &reason, false, policy, now_ms())).await;
            self.0.segments_may_be_ready();
            return Err(e.into());
        }
        let (chunk_key, state_key) = (keys::chunk(cur.job, attempt), keys::state(cur.job, attempt));
        {
            let store = self.0.store.clone();
            let (ck, sk, cp, sp) = (chunk_key.clone(), state_key.clone(), chunk.path.clone(), state.path.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                store.put_file(&ck, &cp)?;
                store.put_file(&sk, &sp)?;
                Ok(())
            })
            .await
            .expect("store task panicked")?;
        }
        let (cs, ss) = (header.chunk_sha256.clone(), header.state_sha256.clone());
        let done = self.0.db(move |c| lease::complete(c, attempt, &cs, &ss, policy, now_ms())).await;
        let (cur, last) = match done {
            Ok(v) => v,
            Err(e) => {
                // Superseded while uploading: its files must not linger under live keys.
                let _ = self.0.store.delete(&chunk_key);
                let _ = self.0.store.delete(&state_key);
                self.0.segments_may_be_ready();
                return Err(e.into());
            }
        };
        tracing::info!(attempt, job = %db::job_id(cur.job), segment = cur.idx, worker = %cur.worker, chunk_bytes = header.chunk_size, state_bytes = header.state_size, "segment completed");
        self.0.segments_may_be_ready();
        if last {
            self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&cur.job);
            tokio::spawn(self.0.clone().stitch(cur.job));
        }
        Ok(Response::new(v1::CompleteSegmentResponse {}))
    }

    async fn fail_segment(
        &self,
        request: Request<v1::FailSegmentRequest>,
    ) -> Result<Response<v1::FailSegmentResponse>, Status> {
        let r = request.into_inner();
        let policy = self.0.policy;
        let (attempt, reason, released) = (r.attempt_id, r.reason.clone(), r.released);
        self.0.db(move |c| lease::fail(c, attempt, &reason, released, policy, now_ms())).await?;
        tracing::warn!(attempt, reason = %r.reason, released, "worker gave a segment back");
        self.0.segments_may_be_ready();
        Ok(Response::new(v1::FailSegmentResponse {}))
    }

    async fn leave(&self, request: Request<v1::LeaveRequest>) -> Result<Response<v1::LeaveResponse>, Status> {
        let worker = request.into_inner().worker_id;
        let policy = self.0.policy;
        let w = worker.clone();
        let released = self.0.db(move |c| lease::leave(c, &w, policy, now_ms())).await?;
        tracing::info!(%worker, ?released, "worker left");
        if !released.is_empty() {
            self.0.segments_may_be_ready();
        }
        Ok(Response::new(v1::LeaveResponse { released_attempt_ids: released }))
    }
}
