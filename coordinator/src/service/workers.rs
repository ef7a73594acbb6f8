//! `WorkerService`: what render nodes call. Every call after Acquire names its attempt, the
//! fencing token, and is checked against it in the transaction that acts on it.

use super::transfer::{stream_file, BoxStream, Incoming};
use super::{caller, Api};
use crate::completion::Received;
use crate::db::AttemptId;
use crate::error::{Error, Result};
use crate::store::keys;
use crate::{db, lease, now_ms};
use proto::v1::worker_service_server::WorkerService;
use proto::v1::{self, complete_segment_request};
use sha2::{Digest, Sha256};
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
        if r.devices as usize > proto::limits::MAX_WORKER_DEVICES {
            return Err(Error::invalid(
                "devices",
                format!("at most {} devices a worker, got {}", proto::limits::MAX_WORKER_DEVICES, r.devices),
            )
            .into());
        }
        let (name, device, p, weights) = (r.name.clone(), r.device.clone(), principal.clone(), r.weights.clone());
        let devices = r.devices;
        let limit = self.0.config.max_workers_per_token;
        let id = self
            .0
            .db(move |c| {
                let now = now_ms();
                db::admit_worker(c, &p, limit, now)?;
                let registration = db::Registration {
                    name: &name,
                    device: &device,
                    principal: &p,
                    session_sha256: &digest,
                    weights: &weights,
                    devices,
                };
                db::register_worker(c, &registration, now)
            })
            .await?;
        let weights: Vec<String> = r.weights.iter().map(|w| format!("{}={}", w.network, w.digest)).collect();
        tracing::info!(worker = %id, name = %r.name, device = %r.device, devices = r.devices.max(1), %principal, weights = %weights.join(","), "worker registered");
        Ok(Response::new(v1::RegisterResponse {
            worker_id: id.to_string(),
            lease_ms: self.0.config.lease.as_millis() as u32,
            heartbeat_ms: self.0.config.heartbeat.as_millis() as u32,
            session,
        }))
    }

    async fn acquire(&self, request: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let r = request.get_ref().clone();
        // Refused as `is_caller` says (it is asked only then: the lookup is part of each look).
        let refused =
            || async { self.is_caller(&request, &r.worker_id).await.err().unwrap_or_else(super::unknown_session) };
        let Some(worker) = db::WorkerId::parse(&r.worker_id) else { return Err(refused().await) };
        let digest = super::session_digest(&request)?;
        let deadline = Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_WAIT);
        let policy = self.0.policy;
        let mut closing = self.0.closing.subscribe();
        loop {
            // Listen before looking, so a segment readied in between still wakes us.
            let notified = self.0.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The caller's identity, the choice and the job's spec in one database call: under a
            // burst of workers asking at once, each call waits for the queue ahead of it.
            let digest = digest.clone();
            let looked = self
                .0
                .db(move |c| {
                    if db::session_worker(c, &digest)? != Some(worker) {
                        return Ok(Err(()));
                    }
                    let Some(grant) = lease::acquire(c, worker, policy, now_ms())? else { return Ok(Ok(None)) };
                    let spec = db::spec(c, grant.job)?;
                    Ok(Ok(Some((grant, spec))))
                })
                .await?;
            let Ok(looked) = looked else { return Err(refused().await) };
            if let Some((grant, spec)) = looked {
                let what = if grant.redelivered {
                    "segment assigned again: the worker never received it"
                } else {
                    "segment assigned"
                };
                tracing::info!(worker = %r.worker_id, job = %grant.job, segment = grant.idx, attempt = %grant.attempt, frames = %format!("{}..{}", grant.start_frame, grant.end_frame), "{what}");
                self.0.job_changed(grant.job);
                let assignment = self.assignment(grant, spec);
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
        let digest = super::session_digest(&request)?;
        let r = request.into_inner();
        let policy = self.0.policy;
        let (attempt, frames) = (AttemptId(r.attempt_id), r.frames_done);
        let preview = r.preview;
        // The caller's right to the attempt and the fencing in one call of the heartbeat lane.
        // Fenced first: only a current attempt is watched (heartbeats naming attempts that do
        // not exist, or ended, once grew the watchdog without bound).
        let result = self
            .0
            .db_heartbeat(move |c| match super::refusal(c, &digest, attempt)? {
                Some(refused) => Ok(Err(refused)),
                None => lease::heartbeat(c, attempt, frames, policy, now_ms()).map(Ok),
            })
            .await;
        let (cur, frames) = match result {
            Ok(Ok(v)) => v,
            Ok(Err(refused)) => return Err(refused),
            Err(e) => {
                self.0.watchdog.forget(attempt);
                self.0.segments_may_be_ready();
                return Err(e.into());
            }
        };
        if let Some(reason) = self.0.watchdog.observe(attempt, r.iterations, now_ms()) {
            let why = reason.clone();
            self.0.db_heartbeat(move |c| lease::stall(c, attempt, &why, policy, now_ms())).await?;
            self.0.watchdog.forget(attempt);
            self.0.segments_may_be_ready();
            return Err(Error::StaleAttempt { id: attempt, reason }.into());
        }
        {
            let mut live = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
            if live.len() >= crate::MAX_LIVE_JOBS && !live.contains_key(&cur.job) {
                if let Some(stalest) = live.iter().min_by_key(|(_, l)| l.pace.last_ms).map(|(&j, _)| j) {
                    live.remove(&stalest);
                }
            }
            let entry = live.entry(cur.job).or_default();
            if cur.idx == 0 && r.warmup_total > 0 {
                // Believed within the bounds a render has: no more done than planned, no more
                // planned than any job may ask for.
                let total = r.warmup_total.min(proto::params::MAX_WARMUP);
                (entry.warmup_done, entry.warmup_total) = (r.warmup_done.min(total), total);
            }
            entry.pace.observe(attempt, frames, now_ms());
        }
        if let Some(p) = preview {
            self.0.keep_preview(cur.job, p, false).await;
        }
        self.0.job_changed(cur.job);
        Ok(Response::new(v1::HeartbeatResponse { lease_ms: policy.lease_ms as u32 }))
    }

    type FetchStyleStream = BoxStream<v1::Blob>;

    async fn fetch_style(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStyleStream>, Status> {
        let attempt = AttemptId(request.get_ref().attempt_id);
        let index = request.get_ref().style_index as usize;
        self.caller_holds(&request, attempt).await?;
        let policy = self.0.policy;
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        let job = cur.job;
        let styles = self.0.db(move |c| db::job_styles(c, job)).await?;
        let sha = styles.get(index).cloned().ok_or_else(|| {
            Error::invalid("style_index", format!("job {job} has {} styles, there is no style {index}", styles.len()))
        })?;
        let key = keys::style(&sha);
        let path = self.0.stored_path(key, "the style").await?;
        Ok(Response::new(stream_file(path, sha)))
    }

    type FetchStateStream = BoxStream<v1::Blob>;

    async fn fetch_state(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStateStream>, Status> {
        let attempt = AttemptId(request.get_ref().attempt_id);
        self.caller_holds(&request, attempt).await?;
        let policy = self.0.policy;
        let cur = self.0.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
        if cur.start_attempt == AttemptId(0) {
            return Err(Error::invalid(
                "attempt_id",
                format!("attempt {attempt} starts from noise and has no start state"),
            )
            .into());
        }
        let start = cur.start_attempt;
        let sha: String = self
            .0
            .db(move |c| Ok(c.query_row("SELECT state_sha256 FROM attempts WHERE id = ?1", [start], |r| r.get(0))?))
            .await?;
        let key = keys::state(cur.job, cur.start_attempt);
        let path = self.0.stored_path(key, "the hand-off state").await?;
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
        let attempt = AttemptId(header.attempt_id);
        self.holds(digest, attempt).await?;
        // Fencing, early: a stale worker is turned away before it uploads anything big.
        let cur = self.0.current_attempt(attempt).await?;
        // The sizes a segment of this job can have, before a byte is taken.
        let spec = self.0.db(move |c| db::spec(c, cur.job)).await?;
        let params = crate::stored_params(&spec)?;
        let frames = cur.span.1 - cur.span.0;
        for (field, declared, most) in [
            ("chunk_size", header.chunk_size, proto::limits::max_chunk_bytes(params.width, params.height, frames)),
            ("state_size", header.state_size, proto::limits::max_state_bytes(params.width, params.height)),
        ] {
            if declared > most {
                let message = format!("{declared} bytes declared, at most {most} for this segment");
                return Err(Error::invalid(field, message).into());
            }
        }
        let scratch = self.0.store.scratch_dir().to_path_buf();
        let chunk_name = format!("attempt-{attempt}.chunk");
        let mut chunk = Incoming::create(&scratch, chunk_name, header.chunk_size).await?;
        let mut state = Incoming::create(&scratch, format!("attempt-{attempt}.state"), header.state_size).await?;
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(complete_segment_request::Part::Chunk(data)) => chunk.write(data).await?,
                Some(complete_segment_request::Part::State(data)) => state.write(data).await?,
                _ => return Err(Error::invalid("header", "only the first message may carry the header").into()),
            }
        }
        self.0.complete_segment(cur, Received { header, chunk, state, begun }).await?;
        Ok(Response::new(v1::CompleteSegmentResponse {}))
    }

    async fn fail_segment(
        &self,
        request: Request<v1::FailSegmentRequest>,
    ) -> Result<Response<v1::FailSegmentResponse>, Status> {
        self.caller_holds(&request, AttemptId(request.get_ref().attempt_id)).await?;
        let r = request.into_inner();
        self.0.fail_segment(AttemptId(r.attempt_id), &r.reason, r.released, r.bad_start_state).await?;
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
        Ok(Response::new(v1::LeaveResponse { released_attempt_ids: released.into_iter().map(|a| a.0).collect() }))
    }
}
