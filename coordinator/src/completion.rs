//! A segment's end, as the coordinator decides it: a completed upload checked, stored and
//! recorded (and the job stitched when it was the last segment), or a failure recorded and
//! blamed. The gRPC handlers (`service::workers`) only authorise the caller and move the bytes;
//! everything that touches the store, the leases, the watchdog, the metrics and the previews
//! happens here, in one place whichever front end asks.

use crate::db::{AttemptId, JobId};
use crate::error::{Error, Result};
use crate::service::Incoming;
use crate::store::keys;
use crate::{db, inspect, lease, now_ms, stitch, Coordinator};
use proto::v1;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upload that has arrived: the worker's header, and the chunk and state in scratch files
/// (not yet checked against what the header declares).
pub(crate) struct Received {
    pub header: v1::CompleteHeader,
    pub chunk: Incoming,
    pub state: Incoming,
    /// When the upload began, for the log of where its time went.
    pub begun: Instant,
}

impl Coordinator {
    /// The attempt's segment if the attempt is still current (the fencing check).
    pub(crate) async fn current_attempt(&self, attempt: AttemptId) -> Result<lease::Current> {
        let policy = self.policy;
        self.db(move |c| lease::check(c, attempt, policy, now_ms())).await
    }

    /// Completes `cur`'s segment with an upload: sizes, checksums and contents checked (a bad
    /// upload fails the attempt), files stored, the completion recorded in the attempt's own
    /// transaction (a superseded attempt's files are removed again), then previews, metrics and,
    /// after the last segment, the stitch.
    pub(crate) async fn complete_segment(self: &Arc<Self>, cur: lease::Current, received: Received) -> Result<()> {
        let Received { header, mut chunk, mut state, begun } = received;
        let attempt = AttemptId(header.attempt_id);
        let policy = self.policy;
        let received = begun.elapsed();
        let verified = async {
            chunk.finish("chunk_sha256", header.chunk_size, &header.chunk_sha256).await?;
            state.finish("state_sha256", header.state_size, &header.state_sha256).await?;
            self.inspect(&cur, header.frames_done, chunk.path.clone(), state.path.clone()).await
        }
        .await;
        let (fingerprint, chunk_format) = match verified {
            Ok(f) => f,
            Err(e) => {
                // A corrupt upload fails this attempt; the segment is retried (elsewhere, maybe).
                let reason = e.to_string();
                tracing::warn!(%attempt, job = %cur.job, segment = cur.idx, %reason, "upload rejected");
                let _ = self.db(move |c| lease::fail(c, attempt, &reason, false, policy, now_ms())).await;
                self.segments_may_be_ready();
                return Err(e);
            }
        };
        let checked = begun.elapsed();
        let (chunk_key, state_key) = (keys::chunk(cur.job, attempt), keys::state(cur.job, attempt));
        {
            let store = self.store.clone();
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
            .db(move |c| {
                let up = lease::Upload {
                    chunk_sha256: &cs,
                    state_sha256: &ss,
                    fingerprint: &fingerprint,
                    chunk_format: &chunk_format,
                    frames: (frames > 0).then_some(frames),
                    frame_seconds,
                };
                lease::complete(c, attempt, &up, policy, now_ms())
            })
            .await;
        let (cur, last) = match done {
            Ok((cur, lease::Completed::Released(reason))) => {
                // A hand-over too short to split off: nothing of it is kept.
                tracing::info!(%attempt, job = %cur.job, segment = cur.idx, %reason, "partial upload not kept");
                self.forget_files(vec![chunk_key.clone(), state_key.clone()]).await;
                self.watchdog.forget(attempt);
                self.segments_may_be_ready();
                self.job_changed(cur.job);
                return Ok(());
            }
            Ok((cur, done)) => (cur, done == lease::Completed::Last),
            Err(e) => {
                // Superseded while uploading: its files must not linger under live keys.
                self.forget_files(vec![chunk_key.clone(), state_key.clone()]).await;
                self.segments_may_be_ready();
                return Err(e);
            }
        };
        self.watchdog.forget(attempt);
        self.metrics.observe_upload(begun.elapsed().as_secs_f64());
        self.metrics.segment_seconds.observe((now_ms() - cur.started_ms).max(0) as f64 / 1000.0);
        // Where an upload's time goes: receiving (and hashing), the content checks, the store
        // (one fsync per file, then a rename), the database.
        let ms = |d: Duration| d.as_millis() as u64;
        tracing::info!(%attempt, job = %cur.job, segment = cur.idx, worker = %cur.worker, chunk_bytes = header.chunk_size, state_bytes = header.state_size,
            receive_ms = ms(received), check_ms = ms(checked - received), store_ms = ms(stored - checked), record_ms = ms(begun.elapsed() - stored), "segment completed");
        self.segments_may_be_ready();
        if let Some(p) = header.poster {
            self.keep_preview(cur.job, p, last).await;
        }
        if last {
            self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&cur.job);
            self.clone().stitch_now(cur.job);
        }
        Ok(())
    }

    /// Records that `attempt` ended without an upload: released (a worker shutting down, no
    /// retry spent), failed, or failed for want of a loadable start state, in which case the
    /// coordinator checks its own copy, renders the state's segment again elsewhere and does not
    /// charge the loader (see [`lease::blame::disown_start`]).
    pub(crate) async fn fail_segment(
        &self,
        attempt: AttemptId,
        given: &str,
        released: bool,
        bad_start_state: bool,
    ) -> Result<()> {
        let policy = self.policy;
        // A reason goes into the segment's history for good: kept to a sane length.
        let reason = proto::limits::cut(given, proto::limits::MAX_REASON_LEN);
        if bad_start_state && !released {
            let cur = self.db(move |c| lease::check(c, attempt, policy, now_ms())).await?;
            if cur.start_attempt != AttemptId(0) {
                let recheck = match self.recheck_state(cur.job, cur.start_attempt).await? {
                    Some(why) => lease::blame::Recheck::Bad(why),
                    None => lease::blame::Recheck::Passes,
                };
                let loader = reason.clone();
                let d = self
                    .db(move |c| lease::blame::disown_start(c, attempt, &loader, &recheck, policy, now_ms()))
                    .await?;
                // Its chunk is not used either: the segment is rendered again from scratch.
                self.forget_files(vec![keys::state(d.job, d.attempt), keys::chunk(d.job, d.attempt)]).await;
                self.watchdog.forget(attempt);
                self.segments_may_be_ready();
                return Ok(());
            }
        }
        let stored = reason.clone();
        self.db(move |c| lease::fail(c, attempt, &stored, released, policy, now_ms())).await?;
        self.watchdog.forget(attempt);
        tracing::warn!(%attempt, reason = %proto::limits::quoted_prefix(given), released, "worker gave a segment back");
        self.segments_may_be_ready();
        Ok(())
    }

    /// Keeps a worker's preview of `job` once it checks out; `poster`: also stores it as the
    /// finished movie's poster. A bad preview is dropped with a warning: the heartbeat or upload
    /// that carried it still counts (a preview is never worth a segment).
    pub(crate) async fn keep_preview(&self, job: JobId, preview: v1::Preview, poster: bool) {
        let store = self.store.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<_> {
            let size = crate::preview::check(&preview)?;
            if poster {
                let tmp = store.scratch_dir().join(crate::service::unique_name(&format!("poster-{job}")));
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
                self.previews.put(job, p.jpeg, p.frame, size);
                self.job_changed(job);
            }
            Err(e) => tracing::warn!(job = %job, error = %e, "preview dropped"),
        }
    }

    /// What segment `idx` of `job` must hold, for `inspect`, when rendered by `worker` (or, on
    /// a re-check, with the weights the job was rendered with).
    async fn expected(&self, job: JobId, idx: u32, worker: Option<db::WorkerId>) -> Result<inspect::Expected> {
        // One trip to the database: this runs on every upload.
        let (output, (start_frame, end_frame), params, (style, weights)) = self
            .db(move |c| {
                let spec = db::spec(c, job)?;
                let params = crate::stored_params(&spec)?;
                let inputs = db::fingerprint_inputs(c, job, worker, params.network.name())?;
                Ok((spec.output, db::segment_span(c, job, idx)?, params, inputs))
            })
            .await?;
        Ok(inspect::Expected {
            kind: proto::wire::output_from_wire(output)?,
            width: params.width,
            height: params.height,
            start_frame,
            end_frame,
            optimizer: params.optimizer.name(),
            fingerprint: weights.map(|w| params.fingerprint(&style, &w)),
        })
    }

    /// The content checks of `inspect`, against what the attempt's segment must hold (its first
    /// `frames` frames, for a preempted worker): the chunk in the format of the job's first
    /// chunk, the state with the job's fingerprint and that of the state it started from.
    /// Returns the state's fingerprint and the chunk's format.
    async fn inspect(
        &self,
        cur: &lease::Current,
        frames: u32,
        chunk: PathBuf,
        state: PathBuf,
    ) -> Result<(String, String)> {
        let mut want = self.expected(cur.job, cur.idx, Some(cur.worker)).await?;
        if want.fingerprint.is_none() {
            let message = format!(
                "{} registered no weights for this job's network, so its state cannot be checked; a worker registers the weights it renders with",
                cur.worker
            );
            return Err(Error::invalid("state", message));
        }
        if frames > 0 && frames < want.end_frame - want.start_frame {
            want.end_frame = want.start_frame + frames;
        }
        let (start, job) = (cur.start_attempt, cur.job);
        let (start, first_format) =
            self.db(move |c| Ok((db::stored_state(c, start)?, db::chunk_format(c, job)?))).await?;
        tokio::task::spawn_blocking(move || {
            let format = inspect::chunk(&chunk, &want).map_err(|e| Error::invalid("chunk", e))?;
            if !first_format.is_empty() && format != first_format {
                let message = format!(
                    "its format ({format}) is not the job's first chunk's ({first_format}), so the two cannot be joined"
                );
                return Err(Error::invalid("chunk", message));
            }
            let fingerprint = start.map(|s| s.fingerprint).filter(|f| !f.is_empty());
            let fingerprint =
                inspect::state(&state, &want, fingerprint.as_deref()).map_err(|e| Error::invalid("state", e))?;
            Ok((fingerprint, format))
        })
        .await
        .expect("inspection panicked")
    }

    /// Checks the coordinator's own copy of the state `producer` stored, after a worker could
    /// not load it: still there, still the bytes that were accepted, still a state its segment
    /// should end with. Returns what is wrong with it, `None` when it checks out.
    async fn recheck_state(&self, job: JobId, producer: AttemptId) -> Result<Option<String>> {
        let Some(stored) = self.db(move |c| db::stored_state(c, producer)).await? else {
            return Ok(Some(format!("attempt {producer} is not on record")));
        };
        let want = self.expected(job, stored.idx, None).await?;
        let key = keys::state(job, producer);
        let path = match self.store_io(move |store| store.local_path(&key)).await {
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

    /// Joins the chunks of a job whose last segment is stored, then drops what is no longer
    /// needed (chunks, intermediate states; the last state stays so the movie can be extended).
    /// Retries with backoff while the failure can pass (`Error::is_transient`: a full disk, where
    /// freeing space is enough), and fails the job, naming the chunk, when it cannot (a chunk
    /// missing or unusable, a muxer that refuses its packets).
    ///
    /// One loop per job: a second call while it runs wakes it instead (an admin's retry skips
    /// the backoff), so two stitches of one job never write the same output at once.
    pub(crate) fn stitch_now(self: Arc<Self>, job: JobId) {
        let wake = {
            let mut stitching = self.stitching.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(wake) = stitching.get(&job) {
                wake.notify_one();
                return;
            }
            let wake = Arc::new(tokio::sync::Notify::new());
            stitching.insert(job, wake.clone());
            wake
        };
        tokio::spawn(async move {
            self.clone().stitch(job, &wake).await;
            self.stitching.lock().unwrap_or_else(|e| e.into_inner()).remove(&job);
        });
    }

    async fn stitch(self: Arc<Self>, job: JobId, wake: &tokio::sync::Notify) {
        let mut backoff = Duration::from_secs(5);
        loop {
            match self.clone().stitch_once(job).await {
                Err(e) if e.is_transient() && !*self.closing.borrow() => {
                    tracing::warn!(job = %job, error = %e, retry_in_s = backoff.as_secs(), "stitching failed for a transient reason; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = wake.notified() => tracing::info!(job = %job, "stitch woken early"),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                    let state = self.db(move |c| {
                        let tx = c.transaction()?;
                        db::job_state(&tx, job)
                    });
                    if !matches!(state.await, Ok(db::JobState::Stitching)) {
                        return; // cancelled or deleted meanwhile
                    }
                }
                Err(e) if e.is_transient() => return, // shutting down: a restart stitches again
                Err(Error::BadChunk { start_frame, message }) => {
                    // That chunk's segment is rendered again (within its retries), then the
                    // stitch runs anew.
                    let policy = self.policy;
                    let why = message.clone();
                    let again =
                        self.db(move |c| lease::blame::disown_chunk(c, job, start_frame, &why, policy, now_ms())).await;
                    match again {
                        Ok(Some(_)) => {
                            self.segments_may_be_ready();
                            self.job_changed(job);
                        }
                        Ok(None) | Err(_) => self.fail_stitch(job, format!("stitching: {message}")).await,
                    }
                    return;
                }
                Err(e) => {
                    self.fail_stitch(job, e.to_string()).await;
                    return;
                }
                Ok(()) => return,
            }
        }
    }

    /// Fails `job`, whose stitch cannot succeed, saying why.
    async fn fail_stitch(&self, job: JobId, reason: String) {
        tracing::error!(job = %job, error = %reason, "stitching failed");
        let now = now_ms();
        let _ = self
            .db(move |c| {
                let tx = c.transaction()?;
                db::fail_job(&tx, job, &reason, now)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.job_changed(job);
    }

    /// One try at stitching `job`; records the output when it succeeds.
    async fn stitch_once(self: Arc<Self>, job: JobId) -> Result<()> {
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let (spec, chunks, audio) =
            self.db(move |c| Ok((db::spec(c, job)?, db::done_chunks(c, job)?, db::job_audio(c, job)?))).await?;
        let result = tokio::task::spawn_blocking(move || -> Result<(u64, String, Vec<String>)> {
            let kind = proto::wire::output_from_wire(spec.output)?;
            let params = proto::wire::params_walked_at_submit(spec.params.as_ref().unwrap_or(&Default::default()))?;
            let mut parts = Vec::new();
            let mut garbage = Vec::new();
            for (i, &(attempt, start, end)) in chunks.iter().enumerate() {
                let key = keys::chunk(job, attempt);
                let path = store
                    .local_path(&key)
                    .map_err(Error::store(format!("the chunk of frames {start}..{end} ({key})")))?;
                parts.push(stitch::Chunk { path, start_frame: start, end_frame: end });
                garbage.push(keys::chunk(job, attempt));
                if i + 1 < chunks.len() {
                    garbage.push(keys::state(job, attempt));
                }
            }
            let tmp = store.scratch_dir().join(format!("output-{job}.{}", kind.extension()));
            let result = stitch::stitch(kind, &parts, params.fps, &tmp)
                .and_then(|()| {
                    if audio.is_empty() {
                        return Ok(());
                    }
                    // The soundtrack, muxed into the stitched movie as AAC of its exact length.
                    let key = keys::audio(&audio);
                    let track = store.local_path(&key).map_err(Error::store(format!("the soundtrack ({key})")))?;
                    let with = store.scratch_dir().join(format!("output-{job}-audio.{}", kind.extension()));
                    let seconds = f64::from(params.frames) / params.fps.as_f64();
                    let muxed =
                        crate::soundtrack::mux(&tmp, &track, spec.audio_offset, seconds, &with).and_then(|()| {
                            std::fs::rename(&with, &tmp).map_err(Error::io("placing the output with its soundtrack"))
                        });
                    let _ = std::fs::remove_file(&with);
                    muxed
                })
                .and_then(|()| {
                    let read = || Error::io("reading the stitched output");
                    let mut hasher = Sha256::new();
                    let mut file = std::fs::File::open(&tmp).map_err(read())?;
                    let mut buf = vec![0u8; 1 << 20];
                    let mut size = 0u64;
                    loop {
                        let n = file.read(&mut buf).map_err(read())?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        size += n as u64;
                    }
                    let key = keys::output(job, kind.extension());
                    store.put_file(&key, &tmp).map_err(Error::store(format!("storing the output as {key}")))?;
                    Ok((size, proto::params::hex(&hasher.finalize()), garbage))
                });
            let _ = std::fs::remove_file(&tmp);
            result
        })
        .await
        .expect("stitch task panicked");
        let now = now_ms();
        match result {
            Ok((size, sha, garbage)) => {
                let done = self.db(move |c| db::finish_stitch(c, job, size, &sha, now)).await;
                match done {
                    Ok(true) => {
                        tracing::info!(job = %job, bytes = size, elapsed_ms = started.elapsed().as_millis() as u64, "output stitched");
                        let store = self.store.clone();
                        tokio::task::spawn_blocking(move || {
                            for key in garbage {
                                let _ = store.delete(&key);
                            }
                        });
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(job = %job, error = %e, "recording the output failed"),
                }
            }
            Err(e) => return Err(e),
        }
        self.job_changed(job);
        Ok(())
    }
}
