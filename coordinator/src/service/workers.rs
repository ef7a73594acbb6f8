//! `WorkerService`: what render nodes call. Every call after Acquire names its attempt, the
//! fencing token, and is checked against it in the transaction that acts on it.

use super::transfer::{stream_file, BoxStream, Incoming};
use super::{caller, Api};
use crate::error::{Error, Result};
use crate::store::keys;
use crate::{db, inspect, lease, now_ms};
use proto::v1::worker_service_server::WorkerService;
use proto::v1::{self, complete_segment_request};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

/// Longest long poll a worker may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[tonic::async_trait]
impl WorkerService for Api {
    async fn register(&self, request: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let principal = caller(&request)?.name;
        let r = request.into_inner();
        proto::limits::check_len("name", &r.name, proto::limits::MAX_WORKER_NAME_LEN).map_err(Error::from)?;
        proto::limits::check_len("device", &r.device, proto::limits::MAX_WORKER_NAME_LEN).map_err(Error::from)?;
        if r.weights.len() > proto::limits::MAX_WORKER_WEIGHTS {
            return Err(Error::invalid(
                "weights",
                format!("{} entries, at most {} allowed", r.weights.len(), proto::limits::MAX_WORKER_WEIGHTS),
            )
            .into());
        }
        for w in &r.weights {
            proto::limits::check_len("weights.network", &w.network, proto::limits::MAX_WORKER_NAME_LEN)
                .map_err(Error::from)?;
            proto::limits::check_len("weights.digest", &w.digest, proto::limits::MAX_WORKER_NAME_LEN)
                .map_err(Error::from)?;
        }
        // The session is this registration's secret; only its digest is stored.
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| Status::internal(format!("no randomness for a session: {e}")))?;
        let session = proto::params::hex(&secret);
        let digest = proto::params::hex(&Sha256::digest(session.as_bytes()));
        let (name, device, p, weights) = (r.name.clone(), r.device.clone(), principal.clone(), r.weights.clone());
        let id = self.0.db(move |c| db::register_worker(c, &name, &device, &p, &digest, &weights, now_ms())).await?;
        let weights: Vec<String> = r.weights.iter().map(|w| format!("{}={}", w.network, w.digest)).collect();
        tracing::info!(worker = %id, name = %r.name, device = %r.device, %principal, weights = %weights.join(","), "worker registered");
        Ok(Response::new(v1::RegisterResponse {
            worker_id: id.to_string(),
            lease_ms: self.0.config.lease.as_millis() as u32,
            heartbeat_ms: self.0.config.heartbeat.as_millis() as u32,
            session,
        }))
    }

    async fn acquire(&self, request: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let r = request.get_ref().clone();
        let worker = self.is_caller(&request, &r.worker_id).await?;
        let deadline = Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_WAIT);
        let policy = self.0.policy;
        let mut closing = self.0.closing.subscribe();
        loop {
            // Listen before looking, so a segment readied in between still wakes us.
            let notified = self.0.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(grant) = self.0.db(move |c| lease::acquire(c, worker, policy, now_ms())).await? {
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
        self.caller_holds(&request, request.get_ref().attempt_id).await?;
        let r = request.into_inner();
        let policy = self.0.policy;
        let (attempt, frames) = (r.attempt_id, r.frames_done);
        let preview = r.preview;
        if let Some(reason) = self.0.watchdog.observe(attempt, r.iterations, now_ms()) {
            let why = reason.clone();
            self.0.db(move |c| lease::stall(c, attempt, &why, policy, now_ms())).await?;
            self.0.segments_may_be_ready();
            return Err(Error::StaleAttempt { id: attempt, reason }.into());
        }
        let result = self.0.db(move |c| lease::heartbeat(c, attempt, frames, policy, now_ms())).await;
        let cur = match result {
            Ok(cur) => cur,
            Err(e) => {
                self.0.segments_may_be_ready();
                return Err(e.into());
            }
        };
        {
            let mut live = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
            if live.len() >= crate::MAX_LIVE_JOBS && !live.contains_key(&cur.job) {
                if let Some(stalest) = live.iter().min_by_key(|(_, l)| l.pace.last_ms).map(|(&j, _)| j) {
                    live.remove(&stalest);
                }
            }
            let entry = live.entry(cur.job).or_default();
            if cur.idx == 0 && r.warmup_total > 0 {
                (entry.warmup_done, entry.warmup_total) = (r.warmup_done, r.warmup_total);
            }
            entry.pace.observe(attempt, frames, now_ms());
        }
        if let Some(p) = preview {
            self.keep_preview(cur.job, p, false).await;
        }
        self.0.job_changed(cur.job);
        Ok(Response::new(v1::HeartbeatResponse { lease_ms: policy.lease_ms as u32 }))
    }

    type FetchStyleStream = BoxStream<v1::Blob>;

    async fn fetch_style(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStyleStream>, Status> {
        let attempt = request.get_ref().attempt_id;
        self.caller_holds(&request, attempt).await?;
        let policy = self.0.policy;
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        let job = cur.job;
        let sha: String = self
            .0
            .db(move |c| Ok(c.query_row("SELECT style_sha256 FROM jobs WHERE seq = ?1", [job], |r| r.get(0))?))
            .await?;
        let key = keys::style(&sha);
        let path = self.0.store.local_path(&key).map_err(Error::store(format!("reading the style {key}")))?;
        Ok(Response::new(stream_file(path, sha)))
    }

    type FetchStateStream = BoxStream<v1::Blob>;

    async fn fetch_state(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStateStream>, Status> {
        let attempt = request.get_ref().attempt_id;
        self.caller_holds(&request, attempt).await?;
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
        let key = keys::state(cur.job, cur.start_attempt);
        let path = self.0.store.local_path(&key).map_err(Error::store(format!("reading the hand-off state {key}")))?;
        Ok(Response::new(stream_file(path, sha)))
    }

    async fn complete_segment(
        &self,
        request: Request<Streaming<v1::CompleteSegmentRequest>>,
    ) -> Result<Response<v1::CompleteSegmentResponse>, Status> {
        let begun = Instant::now();
        let digest = super::session_digest(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.part) {
            Some(complete_segment_request::Part::Header(h)) => h,
            _ => return Err(Error::invalid("header", "the first message must carry the completion header").into()),
        };
        let attempt = header.attempt_id;
        self.holds(digest, attempt).await?;
        let policy = self.0.policy;
        // Fencing, early: a stale worker is turned away before it uploads anything big.
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        let scratch = self.0.store.scratch_dir().to_path_buf();
        let mut chunk = Incoming::create(&scratch, format!("attempt-{attempt}.chunk")).await?;
        let mut state = Incoming::create(&scratch, format!("attempt-{attempt}.state")).await?;
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(complete_segment_request::Part::Chunk(data)) => chunk.write(data).await?,
                Some(complete_segment_request::Part::State(data)) => state.write(data).await?,
                _ => return Err(Error::invalid("header", "only the first message may carry the header").into()),
            }
        }
        let received = begun.elapsed();
        let verified = async {
            chunk.finish("chunk_sha256", header.chunk_size, &header.chunk_sha256).await?;
            state.finish("state_sha256", header.state_size, &header.state_sha256).await?;
            self.inspect(&cur, header.frames_done, chunk.path.clone(), state.path.clone()).await
        }
        .await;
        let fingerprint = match verified {
            Ok(f) => f,
            Err(e) => {
                // A corrupt upload fails this attempt; the segment is retried (elsewhere, maybe).
                let reason = e.to_string();
                tracing::warn!(attempt, job = %db::job_id(cur.job), segment = cur.idx, %reason, "upload rejected");
                let _ = self.0.db(move |c| lease::fail(c, attempt, &reason, false, policy, now_ms())).await;
                self.0.segments_may_be_ready();
                return Err(e.into());
            }
        };
        let checked = begun.elapsed();
        let (chunk_key, state_key) = (keys::chunk(cur.job, attempt), keys::state(cur.job, attempt));
        {
            let store = self.0.store.clone();
            let (ck, sk, cp, sp) = (chunk_key.clone(), state_key.clone(), chunk.path.clone(), state.path.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                store.put_file(&ck, &cp).map_err(Error::store(format!("storing {ck}")))?;
                store.put_file(&sk, &sp).map_err(Error::store(format!("storing {sk}")))?;
                Ok(())
            })
            .await
            .expect("store task panicked")?;
        }
        let stored = begun.elapsed();
        let (cs, ss, frames, frame_seconds) =
            (header.chunk_sha256.clone(), header.state_sha256.clone(), header.frames_done, header.frame_seconds);
        let done = self
            .0
            .db(move |c| {
                let up = lease::Upload {
                    chunk_sha256: &cs,
                    state_sha256: &ss,
                    fingerprint: &fingerprint,
                    frames: (frames > 0).then_some(frames),
                    frame_seconds,
                };
                lease::complete(c, attempt, &up, policy, now_ms())
            })
            .await;
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
        self.0.watchdog.forget(attempt);
        self.0.metrics.observe_upload(begun.elapsed().as_secs_f64());
        self.0.metrics.segment_seconds.observe((now_ms() - cur.started_ms).max(0) as f64 / 1000.0);
        // Where an upload's time goes: receiving (and hashing), the content checks, the store
        // (one fsync per file, then a rename), the database.
        let ms = |d: Duration| d.as_millis() as u64;
        tracing::info!(attempt, job = %db::job_id(cur.job), segment = cur.idx, worker = %cur.worker, chunk_bytes = header.chunk_size, state_bytes = header.state_size,
            receive_ms = ms(received), check_ms = ms(checked - received), store_ms = ms(stored - checked), record_ms = ms(begun.elapsed() - stored), "segment completed");
        self.0.segments_may_be_ready();
        if let Some(p) = header.poster {
            self.keep_preview(cur.job, p, last).await;
        }
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
        self.caller_holds(&request, request.get_ref().attempt_id).await?;
        let r = request.into_inner();
        let policy = self.0.policy;
        // A reason goes into the segment's history for good: kept to a sane length.
        let mut reason = proto::limits::cut(&r.reason, proto::limits::MAX_REASON_LEN);
        let (attempt, released) = (r.attempt_id, r.released);
        if r.bad_start_state && !released {
            let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
            if cur.start_attempt != 0 {
                match self.recheck_state(cur.job, cur.start_attempt).await? {
                    Some(why) => {
                        let loader = reason.clone();
                        let d = self
                            .0
                            .db(move |c| lease::blame::disown_start(c, attempt, &loader, &why, policy, now_ms()))
                            .await?;
                        // Its chunk is not used either: the segment is rendered again from scratch.
                        let _ = self.0.store.delete(&keys::state(d.job, d.attempt));
                        let _ = self.0.store.delete(&keys::chunk(d.job, d.attempt));
                        self.0.watchdog.forget(attempt);
                        self.0.segments_may_be_ready();
                        return Ok(Response::new(v1::FailSegmentResponse {}));
                    }
                    None => {
                        reason = proto::limits::cut(
                            &format!("could not load its start state, which checks out on the coordinator: {reason}"),
                            proto::limits::MAX_REASON_LEN,
                        )
                    }
                }
            }
        }
        let stored = reason.clone();
        self.0.db(move |c| lease::fail(c, attempt, &stored, released, policy, now_ms())).await?;
        self.0.watchdog.forget(attempt);
        tracing::warn!(attempt, reason = %proto::limits::quoted_prefix(&r.reason), released, "worker gave a segment back");
        self.0.segments_may_be_ready();
        Ok(Response::new(v1::FailSegmentResponse {}))
    }

    async fn leave(&self, request: Request<v1::LeaveRequest>) -> Result<Response<v1::LeaveResponse>, Status> {
        let worker = self.is_caller(&request, &request.get_ref().worker_id).await?;
        let policy = self.0.policy;
        let released = self.0.db(move |c| lease::leave(c, worker, policy, now_ms())).await?;
        tracing::info!(%worker, ?released, "worker left");
        if !released.is_empty() {
            self.0.segments_may_be_ready();
        }
        Ok(Response::new(v1::LeaveResponse { released_attempt_ids: released }))
    }
}

impl Api {
    /// Keeps a worker's preview of `job` once it checks out; `poster`: also stores it as the
    /// finished movie's poster. A bad preview is dropped with a warning: the heartbeat or upload
    /// that carried it still counts (a preview is never worth a segment).
    async fn keep_preview(&self, job: i64, preview: v1::Preview, poster: bool) {
        let store = self.0.store.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<_> {
            let size = crate::preview::check(&preview)?;
            if poster {
                let tmp = store.scratch_dir().join(super::transfer::unique_name(&format!("poster-{job}")));
                let key = keys::poster(job);
                let placed = std::fs::write(&tmp, &preview.jpeg).and_then(|()| store.put_file(&key, &tmp));
                let _ = std::fs::remove_file(&tmp);
                placed.map_err(Error::store(format!("storing the poster {key}")))?;
            }
            Ok((preview, size))
        })
        .await
        .expect("preview check panicked");
        match checked {
            Ok((p, size)) => {
                self.0.previews.put(job, p.jpeg, p.frame, size);
                self.0.job_changed(job);
            }
            Err(e) => tracing::warn!(job = %db::job_id(job), error = %e, "preview dropped"),
        }
    }

    /// What segment `idx` of `job` must hold, for `inspect`.
    async fn expected(&self, job: i64, idx: u32) -> Result<inspect::Expected> {
        let (spec, (start_frame, end_frame)) =
            self.0.db(move |c| Ok((db::spec(c, job)?, db::segment_span(c, job, idx)?))).await?;
        let params = crate::check_spec(&spec)?;
        Ok(inspect::Expected {
            kind: proto::wire::output_from_wire(spec.output)?,
            width: params.width,
            height: params.height,
            start_frame,
            end_frame,
        })
    }

    /// The content checks of `inspect`, against what the attempt's segment must hold (its first
    /// `frames` frames, for a preempted worker); the state must carry the fingerprint of the state
    /// it started from. Returns the state's fingerprint.
    async fn inspect(&self, cur: &lease::Current, frames: u32, chunk: PathBuf, state: PathBuf) -> Result<String> {
        let mut want = self.expected(cur.job, cur.idx).await?;
        if frames > 0 && frames < want.end_frame - want.start_frame {
            want.end_frame = want.start_frame + frames;
        }
        let start = cur.start_attempt;
        let start = self.0.db(move |c| db::stored_state(c, start)).await?;
        tokio::task::spawn_blocking(move || {
            inspect::chunk(&chunk, &want).map_err(|e| Error::invalid("chunk", e))?;
            let fingerprint = start.map(|s| s.fingerprint).filter(|f| !f.is_empty());
            inspect::state(&state, &want, fingerprint.as_deref()).map_err(|e| Error::invalid("state", e))
        })
        .await
        .expect("inspection panicked")
    }

    /// Checks the coordinator's own copy of the state `producer` stored, after a worker could
    /// not load it: still there, still the bytes that were accepted, still a state its segment
    /// should end with. Returns what is wrong with it, `None` when it checks out.
    async fn recheck_state(&self, job: i64, producer: u64) -> Result<Option<String>> {
        let Some(stored) = self.0.db(move |c| db::stored_state(c, producer)).await? else {
            return Ok(Some(format!("attempt {producer} is not on record")));
        };
        let want = self.expected(job, stored.idx).await?;
        let path = match self.0.store.local_path(&keys::state(job, producer)) {
            Ok(p) => p,
            Err(e) => return Ok(Some(e.to_string())),
        };
        let verdict = tokio::task::spawn_blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => return Some(format!("unreadable: {e}")),
            };
            let sha = proto::params::hex(&Sha256::digest(&bytes));
            if sha != stored.sha256 {
                return Some(format!("its sha256 is now {sha}, {} was stored", stored.sha256));
            }
            let fingerprint = Some(stored.fingerprint.as_str()).filter(|f| !f.is_empty());
            inspect::state(&path, &want, fingerprint).err()
        })
        .await
        .expect("state check panicked");
        Ok(verdict)
    }
}
