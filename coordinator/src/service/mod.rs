//! The gRPC face of the coordinator: `JobService` for users, `WorkerService` for render nodes,
//! grpc.health.v1 and server reflection. Handlers parse, call the core, and turn `Error` into a
//! `Status` through the one `From` impl in `error.rs`.
//!
//! - `jobs`: `JobService` (submit, get, list, watch, cancel, delete, download).
//! - `workers`: `WorkerService` (register, acquire, heartbeat, fetches, complete, fail, leave).
//! - `transfer`: large payloads in and out: stored files streamed as pieces, uploads received
//!   into scratch and checked.

mod jobs;
mod styles;
pub(crate) mod transfer;
pub(crate) use transfer::{unique_name, Incoming};
mod workers;

use crate::auth::{self, Gate, Principal, Role};
use crate::db::{AttemptId, JobId};
use crate::error::{Error, Result};
use crate::{db, lease, Coordinator};
use proto::v1;
use proto::v1::job_service_server::JobServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

/// Both services over one coordinator. The dashboard calls the same handlers, with its viewer
/// as the principal, so every action it offers is authorised by the code that authorises gRPC.
#[derive(Clone)]
pub(crate) struct Api(pub(crate) Arc<Coordinator>);

/// A request as `principal` made it, for calling a handler from inside the coordinator.
pub(crate) fn as_principal<T>(principal: &Principal, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(principal.clone());
    request
}

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
    let tokens = coordinator.config.auth.clone();
    let api = Api(coordinator);
    // Health and reflection stay open for probes and tools; both APIs sit behind a gate.
    let jobs = Gate::new(tokens.clone(), "job API", &[Role::User, Role::Admin]);
    let workers = Gate::new(tokens, "worker API", &[Role::Worker]);
    // HTTP/2 flow-control windows wide enough for 1 MiB pieces of 75 MB states in flight.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(proto::CONNECTION_WINDOW));
    if let Some(tls) = &api.0.config.tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config).map_err(|e| Error::Startup(format!("tls: {e}")))?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(JobServiceServer::with_interceptor(api.clone(), jobs))
        .add_service(WorkerServiceServer::with_interceptor(api, workers))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

impl Api {
    pub(crate) async fn job_view(&self, seq: JobId, include_segments: bool) -> Result<v1::Job> {
        self.0.job_view(seq, include_segments).await
    }

    /// What a worker is sent for grant `g` of a job submitted as `spec`.
    fn assignment(&self, g: lease::Grant, spec: v1::JobSpec) -> v1::Assignment {
        v1::Assignment {
            attempt_id: g.attempt.0,
            job_id: g.job.to_string(),
            segment_index: g.idx,
            segment_count: g.segment_count,
            start_frame: g.start_frame,
            end_frame: g.end_frame,
            params: spec.params,
            output: spec.output,
            style_sha256: g.style_sha256,
            style_sha256s: g.style_sha256s,
            start_state_attempt_id: g.start_attempt.0,
            start_state_sha256: g.start_state_sha256,
            lease_ms: self.0.policy.lease_ms as u32,
            next_end_frame: g.next_end_frame,
        }
    }
}

impl Api {
    /// The job `id` if `principal` may act on it. Another user's job is not found: its id says
    /// nothing about whether it exists.
    pub(crate) async fn owned_job(&self, principal: &Principal, id: &str) -> Result<JobId> {
        let seq = db::job_seq(id)?;
        let owner = self.0.db(move |c| db::owner(c, seq)).await?;
        if principal.owns(&owner) {
            Ok(seq)
        } else {
            Err(Error::JobNotFound(seq.to_string()))
        }
    }

    /// The registered worker whose session hashes to `digest`.
    async fn session_worker(&self, digest: String) -> Result<db::WorkerId, Status> {
        self.0.db(move |c| db::session_worker(c, &digest)).await?.ok_or_else(unknown_session)
    }

    /// Fails unless `worker_id` is the calling worker itself, which it returns.
    async fn is_caller<T>(&self, request: &Request<T>, worker_id: &str) -> Result<db::WorkerId, Status> {
        let me = self.session_worker(session_digest(request)?).await?;
        if me.to_string() != worker_id {
            return Err(Status::permission_denied(format!(
                "this session belongs to {me}, not to {}",
                crate::error::quoted_prefix(worker_id)
            )));
        }
        Ok(me)
    }

    /// Fails unless `attempt` was granted to the worker whose session hashes to `digest`. One
    /// database call: this runs on every heartbeat. (An unknown attempt passes here and is
    /// refused by the fencing check that follows.)
    async fn holds(&self, digest: String, attempt: AttemptId) -> Result<(), Status> {
        match self.0.db(move |c| refusal(c, &digest, attempt)).await? {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    /// Fails unless `attempt` was granted to the calling worker.
    async fn caller_holds<T>(&self, request: &Request<T>, attempt: AttemptId) -> Result<(), Status> {
        self.holds(session_digest(request)?, attempt).await
    }
}

/// Why the worker whose session hashes to `digest` may not act on `attempt`, if it may not: a
/// database step of its own, so a heartbeat can check and beat in one call.
fn refusal(c: &rusqlite::Connection, digest: &str, attempt: AttemptId) -> crate::error::Result<Option<Status>> {
    let Some(me) = db::session_worker(c, digest)? else {
        return Ok(Some(unknown_session()));
    };
    Ok(match db::attempt_worker(c, attempt)? {
        Some(holder) if holder != me => {
            Some(Status::permission_denied(format!("attempt {attempt} was granted to another worker, not {me}")))
        }
        _ => None,
    })
}

/// The SHA-256 of the session a worker's request carries (the database knows only digests).
fn session_digest<T>(request: &Request<T>) -> Result<String, Status> {
    let session = request
        .metadata()
        .get(proto::auth::SESSION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("missing worker session: register first"))?;
    Ok(proto::params::hex(&Sha256::digest(session.as_bytes())))
}

fn unknown_session() -> Status {
    Status::not_found("unknown worker session; register again")
}

/// The caller, as the gate identified it.
fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    auth::principal(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_ms;
    use proto::v1::worker_service_server::WorkerService;

    fn as_worker<T>(session: &str, message: T) -> Request<T> {
        let mut request = as_principal(&Principal::open(), message);
        request.metadata_mut().insert(proto::auth::SESSION, session.parse().unwrap());
        request
    }

    /// Heartbeats naming attempts that do not exist, or that have ended, are refused and leave
    /// nothing behind (the watchdog once kept an entry for every id it was sent).
    #[tokio::test]
    async fn heartbeats_for_attempts_that_are_not_current_leave_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let api = Api(Coordinator::open(crate::Config::new(dir.path().to_path_buf())).unwrap());
        let registered = api
            .register(as_principal(&Principal::open(), v1::RegisterRequest { name: "w".into(), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        for id in [7, 8, 9, u64::MAX] {
            let beat = v1::HeartbeatRequest { attempt_id: id, iterations: 5, ..Default::default() };
            let status = api.heartbeat(as_worker(&registered.session, beat)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        }
        assert_eq!(api.0.watchdog.watched(), 0);
    }

    /// A worker claiming more devices than a render can spread over is refused, naming the
    /// field; 16 is accepted.
    #[tokio::test]
    async fn a_worker_registers_at_most_sixteen_devices() {
        let dir = tempfile::tempdir().unwrap();
        let api = Api(Coordinator::open(crate::Config::new(dir.path().to_path_buf())).unwrap());
        for (devices, ok) in [(16, true), (17, false), (u32::MAX, false)] {
            let r = v1::RegisterRequest { name: "w".into(), devices, ..Default::default() };
            match api.register(as_principal(&Principal::open(), r)).await {
                Ok(_) => assert!(ok, "{devices} devices accepted"),
                Err(status) => {
                    assert!(!ok, "{devices}: {status:?}");
                    assert_eq!(status.code(), tonic::Code::InvalidArgument);
                    assert!(
                        status.message().contains("devices") && status.message().contains("at most 16"),
                        "{status:?}"
                    );
                }
            }
        }
    }

    /// One token cannot register without bound, a quarantine follows a worker that registers
    /// again under its name, and registrations never used are pruned.
    #[tokio::test]
    async fn registrations_are_bounded_per_token_and_a_quarantine_follows_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::Config::new(dir.path().to_path_buf());
        config.max_workers_per_token = 3;
        let api = Api(Coordinator::open(config).unwrap());
        let gpu = Principal { role: crate::auth::Role::Worker, name: "gpu".into() };
        let other = Principal { role: crate::auth::Role::Worker, name: "other".into() };
        let register = |who: &Principal, name: &str| {
            let request = as_principal(who, v1::RegisterRequest { name: name.into(), ..Default::default() });
            let api = api.clone();
            async move { api.register(request).await.map(|r| r.into_inner()) }
        };
        let first = register(&gpu, "node-1").await.unwrap();
        for n in 2..=3 {
            register(&gpu, &format!("node-{n}")).await.unwrap();
        }
        let refused = register(&gpu, "node-4").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("\"gpu\" has 3 workers registered"), "{}", refused.message());
        register(&other, "node-1").await.expect("another token has its own limit");

        // node-1 is quarantined, then registers again (after the others went quiet).
        let until = now_ms() + 600_000;
        let quarantined = |id: &str| {
            let seq: i64 = id.trim_start_matches("worker-").parse().unwrap();
            api.0.database.call(db::Lane::Normal, move |c| -> i64 {
                c.query_row("SELECT quarantined_until_ms FROM workers WHERE seq = ?1", [seq], |r| r.get(0)).unwrap()
            })
        };
        let seq: i64 = first.worker_id.trim_start_matches("worker-").parse().unwrap();
        api.0
            .database
            .call(db::Lane::Normal, move |c| {
                c.execute("UPDATE workers SET quarantined_until_ms = ?2 WHERE seq = ?1", [seq, until]).unwrap();
                c.execute("UPDATE workers SET last_seen_ms = 0 WHERE principal = 'gpu'", []).unwrap();
            })
            .await;
        let again = register(&gpu, "node-1").await.unwrap();
        assert_ne!(again.worker_id, first.worker_id);
        assert_eq!(quarantined(&again.worker_id).await, until, "escaped its quarantine");
        let fresh = register(&gpu, "node-9").await.unwrap();
        assert_eq!(quarantined(&fresh.worker_id).await, 0);

        // An hour later the registrations that never took work are gone, the quarantined one
        // stays until its quarantine ends.
        let later = now_ms() + db::PRUNE_WORKER_MS + 1;
        let (pruned, left) = api
            .0
            .database
            .call(db::Lane::Normal, move |c| {
                let pruned = db::prune_workers(c, later - db::PRUNE_WORKER_MS, now_ms()).unwrap();
                let left: i64 = c.query_row("SELECT COUNT(*) FROM workers", [], |r| r.get(0)).unwrap();
                (pruned, left)
            })
            .await;
        assert_eq!(pruned, 4, "node-2, node-3, other's node-1 and node-9; both node-1 rows are quarantined");
        assert_eq!(left, 2);
    }

    /// Watches end when their clients go, not at the job's next change, and one user cannot
    /// open more than its share (3,000 abandoned watches of a queued job once kept the
    /// coordinator busy re-reading it).
    #[tokio::test]
    async fn watches_end_with_their_clients_and_are_bounded_per_user() {
        use crate::streams::MAX_WATCHES_EACH;
        use proto::v1::job_service_server::JobService;
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let api = Api(Coordinator::open(crate::Config::new(dir.path().to_path_buf())).unwrap());
        let spec = v1::JobSpec { name: "queued".into(), ..Default::default() };
        api.0.database.call(db::Lane::Normal, move |c| db::submit(c, &spec, 4, 2, "style", "alice", 0).unwrap()).await;
        let alice = Principal { role: crate::auth::Role::User, name: "alice".into() };
        let watch = |who: &Principal| {
            let request = as_principal(who, v1::WatchJobRequest { job_id: "job-1".into() });
            let api = api.clone();
            async move { api.watch_job(request).await }
        };
        let mut streams = Vec::new();
        for _ in 0..MAX_WATCHES_EACH {
            let mut stream = watch(&alice).await.unwrap().into_inner();
            assert_eq!(stream.next().await.unwrap().unwrap().id, "job-1");
            streams.push(stream);
        }
        let refused = watch(&alice).await.err().expect("a watch past the per-user limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("limit per user"), "{refused:?}");
        assert_eq!(api.0.watches.open(), MAX_WATCHES_EACH);
        // The clients go; the job does not change. Their tasks end anyway.
        drop(streams);
        for _ in 0..100 {
            if api.0.watches.open() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(api.0.watches.open(), 0, "watches outlived their clients");
        assert!(watch(&alice).await.is_ok());
    }
}
