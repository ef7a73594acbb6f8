//! `gramzoom bench --farm N`: one coordinator (`gramzoom serve`, a process of its own, so its
//! CPU and memory are its own) under N simulated workers over real gRPC: each registers, long
//! polls `Acquire`, heartbeats at the coordinator's rate while it "renders" for a while, and
//! completes its segment with a real chunk and a real hand-off state (64x48, two frames), which
//! the coordinator checks as it checks any upload. Thousands of jobs wait in the queue and
//! dashboard viewers keep live pages open. Reports latencies, throughput, leases lost and the
//! coordinator's CPU and peak memory.

use super::bench_cluster::{complete, hex, percentile, spec, Worker};
use crate::client;
use anyhow::{bail, Context, Result};
use engine::encode::{self, OutputKind, PartialFile};
use engine::segment::Frame;
use proto::auth::Credentials;
use proto::v1;
use proto::v1::worker_service_client::WorkerServiceClient;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// The farm's shape, from `bench`'s flags.
pub struct Farm {
    pub workers: u32,
    pub jobs: u32,
    pub seconds: u64,
    pub viewers: u32,
    /// Seconds a simulated worker spends "rendering" a segment before it completes it, on
    /// average.
    pub render_secs: f64,
    /// Each segment's time is `render_secs` times a factor drawn evenly from 1 +- this: real
    /// segments vary with their content and their worker, and equal times keep the whole farm
    /// finishing in the same second, segment after segment.
    pub render_spread: f64,
}

/// The render time of a worker's `n`th segment: a fixed function of both (splitmix64), so a run
/// can be repeated.
fn render_time(farm: &Farm, worker: u32, n: u64) -> Duration {
    let mut z = (u64::from(worker) << 32 ^ n).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let unit = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
    Duration::from_secs_f64(farm.render_secs * (1.0 + farm.render_spread * (2.0 * unit - 1.0)))
}

/// The weights digest the simulated workers declare (their states carry it in their
/// fingerprint, which the coordinator computes too).
const WEIGHTS: &str = "bench-farm-weights";
/// Every job: 64x48, four frames in two segments.
const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;
const FRAMES: u32 = 4;
const SEGMENT: u32 = 2;

#[derive(Default)]
struct Stats {
    acquire: Mutex<Vec<f64>>,
    heartbeat: Mutex<Vec<f64>>,
    complete: Mutex<Vec<f64>>,
    segments: AtomicU64,
    leases_lost: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    event_bytes: AtomicU64,
}

impl Stats {
    fn time(&self, which: &Mutex<Vec<f64>>, since: Instant) {
        which.lock().unwrap().push(since.elapsed().as_secs_f64() * 1000.0);
    }

    /// A failed call: a fencing refusal is a lost lease, anything else an error.
    fn failed(&self, what: &str, status: &tonic::Status) {
        if status.code() == Code::FailedPrecondition {
            self.leases_lost.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.first_error.lock().unwrap().get_or_insert_with(|| format!("{what}: {status}"));
    }
}

/// The coordinator process, killed when dropped.
struct Served {
    child: Child,
    url: String,
    http: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &std::path::Path, workers: u32) -> Result<Served> {
    let log = data.join("coordinator.log");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data"])
        .arg(data.join("data"))
        .args(["--max-workers-per-token", &(workers + 16).to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting gramzoom serve")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim).map(String::from);
        if let (Some(grpc), Some(http)) = (line("listening on "), line("http listening on ")) {
            return Ok(Served { child, url: format!("http://{grpc}"), http });
        }
        if let Some(status) = child.try_wait()? {
            bail!("the coordinator exited ({status}): {text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the coordinator did not start in 60 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds (user + system) and resident memory (now, peak; bytes) of process `pid`.
fn usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    // Linux counts CPU time in USER_HZ, 100 a second on every platform it runs on.
    Ok((ticks / 100.0, kib("VmRSS:") * 1024, kib("VmHWM:") * 1024))
}

/// One simulated worker: register, then acquire, heartbeat while "rendering", complete, until
/// `stop`.
async fn work(
    channel: tonic::transport::Channel,
    n: u32,
    farm: Arc<Farm>,
    states: Arc<[Vec<u8>; 2]>,
    chunk: Arc<Vec<u8>>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let credentials = Credentials::default();
    let mut w: Worker = WorkerServiceClient::with_interceptor(channel, credentials.clone());
    let weights = ["vgg16", "vgg19"].map(|n| v1::NetworkWeights { network: n.into(), digest: WEIGHTS.into() });
    let r =
        v1::RegisterRequest { name: format!("sim-{n}"), device: "none".into(), weights: weights.to_vec(), devices: 1 };
    let registered = match w.register(r).await {
        Ok(r) => r.into_inner(),
        Err(s) => return stats.failed("register", &s),
    };
    credentials.set_session(&registered.session);
    let beat = Duration::from_millis(u64::from(registered.heartbeat_ms.max(50)));
    let mut rendered = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ask = v1::AcquireRequest { worker_id: registered.worker_id.clone(), wait_ms: 5_000 };
        let assignment = match w.acquire(ask).await {
            Ok(r) => r.into_inner().assignment,
            Err(s) => {
                stats.failed("acquire", &s);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(a) = assignment else { continue };
        stats.time(&stats.acquire, t);
        let rendering = Instant::now();
        let takes = render_time(&farm, n, rendered);
        rendered += 1;
        let mut lost = false;
        while rendering.elapsed() < takes && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(beat.min(takes - rendering.elapsed())).await;
            let t = Instant::now();
            let hb = v1::HeartbeatRequest {
                attempt_id: a.attempt_id,
                frames_done: 1,
                iterations: rendering.elapsed().as_millis() as u64 + 1,
                ..Default::default()
            };
            match w.heartbeat(hb).await {
                Ok(_) => stats.time(&stats.heartbeat, t),
                Err(s) => {
                    stats.failed("heartbeat", &s);
                    lost = true;
                    break;
                }
            }
        }
        if lost || stop.load(Ordering::Relaxed) {
            continue;
        }
        let state = &states[(a.end_frame / SEGMENT - 1) as usize];
        let t = Instant::now();
        match complete(&mut w, a.attempt_id, &chunk, state).await {
            Ok(()) => {
                stats.time(&stats.complete, t);
                stats.segments.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => match e.downcast_ref::<tonic::Status>() {
                Some(s) => stats.failed("complete", s),
                None => stats.failed("complete", &tonic::Status::unknown(e.to_string())),
            },
        }
    }
}

/// A dashboard viewer: the live jobs list, read until `stop`.
fn view(http: String, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(None).http_status_as_error(false).build().into();
    let Ok(response) = agent.get(&format!("http://{http}/jobs/events")).call() else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut body = response.into_body().into_reader();
    let mut buf = [0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        match body.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => stats.event_bytes.fetch_add(n as u64, Ordering::Relaxed),
        };
    }
}

fn line(name: &str, ms: &Mutex<Vec<f64>>) {
    let v = ms.lock().unwrap().clone();
    if v.is_empty() {
        return println!("  {name:<9}  no calls");
    }
    let max = v.iter().cloned().fold(0.0, f64::max);
    let (p50, p99) = (percentile(v.clone(), 0.5), percentile(v.clone(), 0.99));
    println!("  {name:<9}  {:>7} calls  p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms", v.len());
}

pub fn run(farm: Farm) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let served = serve(dir.path(), farm.workers)?;
    let pid = served.child.id();
    let farm = Arc::new(farm);
    let runtime = tokio::runtime::Runtime::new()?;
    let style = engine::style::EMBEDDED.to_vec();
    let job_spec = spec(WIDTH, HEIGHT, FRAMES, SEGMENT);
    // What every segment uploads: a real two-frame chunk, and the end state of either segment
    // with the fingerprint the coordinator computes for these jobs and workers.
    let chunk = {
        let path = dir.path().join("chunk.mp4");
        let fps = proto::params::Fps { num: 30, den: 1 };
        let mut sink = encode::open(OutputKind::Mp4, PartialFile::create(&path)?, WIDTH, HEIGHT, fps)?;
        for index in 0..SEGMENT {
            sink.push(&Frame { index, width: WIDTH, height: HEIGHT, rgb: vec![120; (WIDTH * HEIGHT * 3) as usize] })?;
        }
        sink.finish()?;
        Arc::new(std::fs::read(&path)?)
    };
    let params = proto::wire::params_from_wire(job_spec.params.as_ref().context("a spec")?)?;
    let fingerprint = params.fingerprint(&hex(&style), WEIGHTS);
    let state = |next_frame: u32| {
        let image =
            tch::Tensor::rand([1, 3, i64::from(HEIGHT), i64::from(WIDTH)], (tch::Kind::Float, tch::Device::Cpu));
        let optim = engine::optim::OptimState::new(params.optimizer, &image);
        engine::State { next_frame, image, optim, fingerprint: fingerprint.clone(), made_by: String::new() }.to_bytes()
    };
    let states = Arc::new([state(SEGMENT), state(FRAMES)]);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));

    let queued = Instant::now();
    runtime.block_on(async {
        let jobs = Arc::new(tokio::sync::Semaphore::new(8));
        // One connection for all the submits (HTTP/2 carries them side by side).
        let submitter = client::connect(&served.url, None).await?;
        let mut tasks = Vec::new();
        for _ in 0..farm.jobs {
            let permit = jobs.clone().acquire_owned().await?;
            let (mut c, spec, style) = (submitter.clone(), job_spec.clone(), style.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                client::submit(&mut c, spec, &style, "bench.png").await.map(|_| ()).map_err(anyhow::Error::from)
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    println!("farm: {} jobs queued in {:.1} s", farm.jobs, queued.elapsed().as_secs_f64());

    let viewers: Vec<_> = (0..farm.viewers)
        .map(|_| {
            let (http, stats, stop) = (served.http.clone(), stats.clone(), stop.clone());
            std::thread::spawn(move || view(http, stats, stop))
        })
        .collect();
    let (cpu0, _, _) = usage(pid)?;
    let started = Instant::now();
    runtime.block_on(async {
        // Workers share a few HTTP/2 connections, as pods behind one node's NAT would not, but
        // this machine's descriptors and the simulator's CPU are what that saves.
        let mut channels = Vec::new();
        for _ in 0..farm.workers.div_ceil(64) {
            channels
                .push(tonic::transport::Endpoint::from_shared(served.url.clone())?.tcp_nodelay(true).connect().await?);
        }
        let mut tasks = Vec::new();
        for n in 0..farm.workers {
            let channel = channels[n as usize % channels.len()].clone();
            let (farm, states, chunk, stats, stop) =
                (farm.clone(), states.clone(), chunk.clone(), stats.clone(), stop.clone());
            tasks.push(tokio::spawn(work(channel, n, farm, states, chunk, stats, stop)));
            // Workers join over a few seconds, as a farm's pods start.
            if n % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(farm.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, rss, peak) = usage(pid)?;
    drop(served); // ends the viewers' streams too
    for v in viewers {
        let _ = v.join();
    }
    let segments = stats.segments.load(Ordering::Relaxed);
    println!(
        "farm: {} workers, {} viewers, {:.0} s, segments of {SEGMENT} frames at {WIDTH}x{HEIGHT} rendered {:.1} s +- {:.0}% each",
        farm.workers,
        farm.viewers,
        wall,
        farm.render_secs,
        farm.render_spread * 100.0
    );
    line("acquire", &stats.acquire);
    line("heartbeat", &stats.heartbeat);
    line("complete", &stats.complete);
    println!("  segments completed: {segments} ({:.1}/s)", segments as f64 / wall);
    println!("  leases lost: {}", stats.leases_lost.load(Ordering::Relaxed));
    println!("  other errors: {}", stats.errors.load(Ordering::Relaxed));
    if let Some(e) = stats.first_error.lock().unwrap().as_ref() {
        println!("  first error: {e}");
    }
    println!("  live pages: {} KiB of events", stats.event_bytes.load(Ordering::Relaxed) >> 10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  coordinator: {:.2} cores of {cores} ({:.0}%), rss {} MiB now, {} MiB at peak",
        (cpu1 - cpu0) / wall,
        100.0 * (cpu1 - cpu0) / wall / cores as f64,
        rss >> 20,
        peak >> 20
    );
    Ok(())
}
