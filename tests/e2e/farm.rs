//! The harness of the cluster tests: `gramzoom serve` (with `--auth`) and `gramzoom worker`
//! processes on loopback ports, the job API as a user, and a worker driven by hand for
//! protocol-level checks.

use crate::helpers::{command, example, stderr, tempdir};
use proto::auth::Credentials;
use proto::v1;
use proto::v1::worker_service_client::WorkerServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;

/// The principals of every cluster test's `--auth` file: the suite runs with auth on.
pub(crate) const ALICE: &str = "alice-token-0123456789abcdef";
pub(crate) const BOB: &str = "bob-token-0123456789abcdef";
pub(crate) const ROOT: &str = "root-token-0123456789abcdef";
pub(crate) const WORKER: &str = "worker-token-0123456789abcdef";
pub(crate) const METRICS: &str = "metrics-token-0123456789abcdef";

/// A child process killed when dropped; its stderr goes to a log file shown on failure.
pub(crate) struct Proc {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `gramzoom args`, with `token` as GRAMZOOM_TOKEN when given.
    pub(crate) fn spawn(args: &[&str], log: PathBuf, cache: &Path, token: Option<&str>) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let mut command = command(cache);
        if let Some(t) = token {
            command.env("GRAMZOOM_TOKEN", t);
        }
        let child = command
            .args(args)
            .env("RUST_LOG", "info,coordinator::service=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("gramzoom starts");
        Self { child, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The rest of the first whole line of its log that starts with `prefix`. A line still being
    /// written (no newline yet) does not count: read half-way, `listening on 127.0.0.1:` once
    /// parsed as an empty port.
    fn log_line(&self, prefix: &str) -> Option<String> {
        let text = self.log();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim().to_string())
    }

    /// The address its `--http` listener bound, from its `http listening on` line.
    pub(crate) fn http_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = self.log_line("http listening on ") {
                return addr;
            }
            assert!(Instant::now() < deadline, "no http listener: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) coordinator: Option<Proc>,
    port: u16,
    pub(crate) workers: Vec<Proc>,
    pub(crate) runtime: tokio::runtime::Runtime,
    starts: u32,
}

impl Cluster {
    pub(crate) fn start(lease_secs: &str, extra: &[&str]) -> Self {
        Self::start_on(None, lease_secs, extra)
    }

    /// Starts a coordinator whose `--data` is `data` (default: a fresh directory).
    pub(crate) fn start_on(data: Option<PathBuf>, lease_secs: &str, extra: &[&str]) -> Self {
        let dir = tempdir();
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tokens = format!(
            "user alice {ALICE}\nuser bob {BOB}\nadmin root {ROOT}\nworker gpu {WORKER}\nmetrics prom {METRICS}\n"
        );
        std::fs::write(dir.path().join("tokens"), tokens).unwrap();
        let mut c = Self { dir, data, coordinator: None, port: 0, workers: Vec::new(), runtime, starts: 0 };
        c.start_coordinator(lease_secs, extra);
        c
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts, on the same port and data directory) the coordinator.
    pub(crate) fn start_coordinator(&mut self, lease_secs: &str, extra: &[&str]) {
        let listen = format!("127.0.0.1:{}", self.port);
        let data = self.data.clone();
        // Numbered by start, so a restarted coordinator's log never overwrites the one before.
        self.starts += 1;
        let log = self.path(&format!("coordinator-{}.log", self.starts));
        let tokens = self.path("tokens");
        let mut args = vec!["serve", "--listen", &listen, "--data", data.to_str().unwrap(), "--lease-secs", lease_secs];
        args.extend(["--auth", tokens.to_str().unwrap(), "--disk-reserve-mib", "4"]);
        args.extend(extra);
        let proc = Proc::spawn(&args, log.clone(), self.dir.path(), None);
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(addr) = proc.log_line("listening on ") {
                break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
            assert!(Instant::now() < deadline, "coordinator did not start: {}", proc.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        self.port = port;
        self.coordinator = Some(proc);
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn worker(&mut self, name: &str, extra: &[&str]) -> usize {
        let url = self.url();
        let frames = self.path("frames");
        let mut args = vec!["worker", "--coordinator", &url, "--name", name, "--device", "cpu"];
        args.extend(["--frames-dir", frames.to_str().unwrap()]);
        args.extend(extra);
        let log = self.path(&format!("{name}.log"));
        self.workers.push(Proc::spawn(&args, log, self.dir.path(), Some(WORKER)));
        self.workers.len() - 1
    }

    pub(crate) fn submit(&self, flags: &[&str]) -> String {
        let style = example("wheatfield.jpg");
        let url = self.url();
        let flags = crate::helpers::with_examples(flags);
        // The one style, unless the movie names its own.
        let mut args = vec!["submit", style.to_str().unwrap(), "--coordinator", &url];
        if flags.iter().any(|f| f == "--style") {
            args.remove(1);
        }
        args.extend(flags.iter().map(String::as_str));
        let out = self.run(&args);
        assert!(out.status.success(), "submit: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Runs a `gramzoom` command as alice.
    pub(crate) fn run(&self, args: &[&str]) -> std::process::Output {
        command(self.dir.path()).env("GRAMZOOM_TOKEN", ALICE).args(args).output().expect("gramzoom runs")
    }

    /// The job API as alice.
    pub(crate) fn jobs(&self) -> cli::client::Client {
        self.jobs_as(Some(ALICE))
    }

    pub(crate) fn jobs_as(&self, token: Option<&str>) -> cli::client::Client {
        self.runtime.block_on(cli::client::connect(&self.url(), token)).unwrap()
    }

    /// The render fingerprint a state of job `id` (submitted by [`Self::submit`]) carries when
    /// rendered with weights of digest `weights`: the coordinator computes it too, and refuses
    /// states that carry another.
    pub(crate) fn fingerprint(&self, id: &str, weights: &str) -> String {
        use sha2::Digest;
        let spec = self.job(id).spec.expect("a job has its spec");
        let params = proto::wire::params_from_wire(&spec.params.expect("a spec has params")).unwrap();
        let style = std::fs::read(example("wheatfield.jpg")).unwrap();
        params.fingerprint(&proto::params::hex(&sha2::Sha256::digest(&style)), weights)
    }

    pub(crate) fn job(&self, id: &str) -> v1::Job {
        let mut c = self.jobs();
        let r = v1::GetJobRequest { job_id: id.into(), include_segments: true, ..Default::default() };
        self.runtime.block_on(c.get_job(r)).unwrap().into_inner()
    }

    pub(crate) fn logs(&self) -> String {
        let mut all = self.coordinator.as_ref().map(|c| c.log()).unwrap_or_default();
        for w in &self.workers {
            all.push_str(&format!("\n--- {}\n{}", w.log.display(), w.log()));
        }
        all
    }

    /// Polls until `done(job)`; panics with every log after `secs`.
    pub(crate) fn wait(&self, id: &str, secs: u64, what: &str, done: impl Fn(&v1::Job) -> bool) -> v1::Job {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let job = self.job(id);
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {job:#?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn wait_done(&self, id: &str) -> v1::Job {
        use v1::JobState::{Cancelled, Failed, Succeeded};
        let ended = |j: &v1::Job| [Succeeded, Failed, Cancelled].iter().any(|&s| j.state == s as i32);
        let job = self.wait(id, 240, "the job to end", ended);
        assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:#?}\n{}", self.logs());
        job
    }

    pub(crate) fn download(&self, id: &str, name: &str) -> PathBuf {
        let out = self.path(name);
        let url = self.url();
        let r = self.run(&["download", id, "-o", out.to_str().unwrap(), "--coordinator", &url]);
        assert!(r.status.success(), "download: {}", stderr(&r));
        out
    }
}

/// A worker driven by hand, for protocol-level checks.
pub(crate) struct FakeWorker {
    pub(crate) client: WorkerServiceClient<InterceptedService<tonic::transport::Channel, Credentials>>,
    pub(crate) id: String,
}

impl FakeWorker {
    /// Registers with the worker token; later calls carry the session it got.
    pub(crate) fn register(c: &Cluster) -> Self {
        Self::register_as(c, WORKER).unwrap()
    }

    /// Registers saying it renders every network with weights of digest [`FAKE_WEIGHTS`].
    pub(crate) fn register_as(c: &Cluster, token: &str) -> Result<Self, tonic::Status> {
        Self::register_with(c, token, &[("vgg16", FAKE_WEIGHTS), ("vgg19", FAKE_WEIGHTS)])
    }

    /// Registers saying it renders `vgg16` with weights of digest `vgg16` and so on.
    pub(crate) fn register_with(c: &Cluster, token: &str, weights: &[(&str, &str)]) -> Result<Self, tonic::Status> {
        let weights = weights.iter().map(|(n, d)| v1::NetworkWeights { network: n.to_string(), digest: d.to_string() });
        let weights: Vec<_> = weights.collect();
        let url = c.url();
        c.runtime.block_on(async {
            let credentials = Credentials::new(Some(token)).unwrap();
            let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
            let mut client = WorkerServiceClient::with_interceptor(channel, credentials.clone());
            // Each its own name, as a farm's nodes have: a quarantine follows a token and a name.
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let name = format!("fake-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let r = v1::RegisterRequest { name, device: "none".into(), weights, devices: 1 };
            let r = client.register(r).await?.into_inner();
            credentials.set_session(&r.session);
            Ok(Self { client, id: r.worker_id })
        })
    }

    pub(crate) fn acquire(&mut self, c: &Cluster) -> v1::Assignment {
        let r = v1::AcquireRequest { worker_id: self.id.clone(), wait_ms: 5000 };
        c.runtime.block_on(self.client.acquire(r)).unwrap().into_inner().assignment.expect("an assignment")
    }

    pub(crate) fn complete(
        &mut self,
        c: &Cluster,
        attempt: u64,
        chunk: &[u8],
        declared_sha: &str,
    ) -> Result<(), tonic::Status> {
        use v1::complete_segment_request::Part;
        let header = v1::CompleteHeader {
            attempt_id: attempt,
            chunk_size: chunk.len() as u64,
            chunk_sha256: declared_sha.into(),
            state_size: 0,
            state_sha256: coordinator::sha256_hex(&[]),
            ..Default::default()
        };
        let messages = vec![
            v1::CompleteSegmentRequest { part: Some(Part::Header(header)) },
            v1::CompleteSegmentRequest { part: Some(Part::Chunk(chunk.to_vec())) },
        ];
        c.runtime.block_on(self.client.complete_segment(tokio_stream::iter(messages))).map(|_| ())
    }

    /// Uploads `chunk` and `state` under `header` as given (sizes and checksums unchecked).
    pub(crate) fn complete_declaring(
        &mut self,
        c: &Cluster,
        header: v1::CompleteHeader,
        chunk: &[u8],
        state: &[u8],
    ) -> Result<(), tonic::Status> {
        let messages = worker::upload::piece_stream(header, chunk.to_vec().into(), state.to_vec().into());
        c.runtime.block_on(self.client.complete_segment(messages)).map(|_| ())
    }

    /// Uploads `chunk` and `state` with matching checksums.
    pub(crate) fn complete_with(
        &mut self,
        c: &Cluster,
        attempt: u64,
        chunk: &[u8],
        state: &[u8],
    ) -> Result<(), tonic::Status> {
        let header = v1::CompleteHeader {
            attempt_id: attempt,
            chunk_size: chunk.len() as u64,
            chunk_sha256: coordinator::sha256_hex(chunk),
            state_size: state.len() as u64,
            state_sha256: coordinator::sha256_hex(state),
            ..Default::default()
        };
        let messages = worker::upload::piece_stream(header, chunk.to_vec().into(), state.to_vec().into());
        c.runtime.block_on(self.client.complete_segment(messages)).map(|_| ())
    }
}

/// An MP4 chunk of `frames` grey 64x48 frames, as a worker's encoder writes it.
pub(crate) fn mp4_chunk(dir: &Path, frames: u32) -> Vec<u8> {
    use engine::encode::{self, PartialFile};
    let path = dir.join(format!("chunk-{frames}.mp4"));
    let fps = proto::params::Fps { num: 30, den: 1 };
    let mut sink =
        encode::open(proto::params::OutputKind::Mp4, PartialFile::create(&path).unwrap(), 64, 48, fps).unwrap();
    for index in 0..frames {
        sink.push(&engine::Frame { index, width: 64, height: 48, rgb: vec![100; 64 * 48 * 3] }).unwrap();
    }
    sink.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// The weights digest [`FakeWorker::register`] declares for every network.
pub(crate) const FAKE_WEIGHTS: &str = "fake-weights";

/// A well-formed Adam state of `(w, h)` pixels resuming at `next_frame`, carrying `fingerprint`
/// (see [`Cluster::fingerprint`]).
pub(crate) fn state_bytes(fingerprint: &str, next_frame: u32, (w, h): (i64, i64)) -> Vec<u8> {
    let image = tch::Tensor::rand([1, 3, h, w], (tch::Kind::Float, tch::Device::Cpu));
    let optim = engine::optim::OptimState::new(proto::params::OptimizerKind::Adam, &image);
    engine::State { next_frame, image, optim, fingerprint: fingerprint.into(), made_by: String::new() }.to_bytes()
}

/// `GET url` with an optional bearer token: the status and the body, whatever the status.
pub(crate) fn http_get(url: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(url);
    if let Some(t) = token {
        request = request.header("authorization", &format!("Bearer {t}"));
    }
    let mut response = request.call().expect("the http listener answers");
    (response.status().as_u16(), response.body_mut().read_to_vec().unwrap())
}
