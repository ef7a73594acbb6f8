//! `gramzoom bench --cluster`: the coordinator's own costs, measured against an in-process
//! coordinator on a loopback port: the size and transfer time of a 1920x1080 hand-off state,
//! the time from a segment becoming ready to a waiting worker receiving it, heartbeats while
//! many users watch other jobs, and the time to stitch 100 encoded chunks into one MP4.

use crate::client;
use anyhow::{Context, Result};
use engine::encode::{self, OutputKind, PartialFile};
use engine::handoff::State;
use engine::optim::OptimState;
use engine::params::{Fps, OptimizerKind, RenderParams};
use engine::segment::Frame;
use proto::auth::Credentials;
use proto::v1;
use proto::v1::worker_service_client::WorkerServiceClient;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub(crate) fn hex(bytes: &[u8]) -> String {
    proto::params::hex(&Sha256::digest(bytes))
}

pub(crate) fn spec(width: u32, height: u32, frames: u32, segment_frames: u32) -> v1::JobSpec {
    let p = RenderParams { width, height, frames, ..Default::default() };
    v1::JobSpec {
        params: Some(proto::wire::params_to_wire(&p)),
        output: v1::OutputFormat::Mp4 as i32,
        segment_frames,
        ..Default::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(crate) type Worker = WorkerServiceClient<InterceptedService<Channel, Credentials>>;

/// The weights digest the hand-driven worker declares.
const BENCH_WEIGHTS: &str = "bench-weights";

/// Registers a hand-driven worker: its later calls carry the session the coordinator issued.
async fn register(url: &str) -> Result<(Worker, String)> {
    let credentials = Credentials::default();
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
    let mut w = WorkerServiceClient::with_interceptor(channel, credentials.clone());
    // It declares weights: the coordinator computes the fingerprint a state must carry from them.
    let weights = ["vgg16", "vgg19"].map(|n| v1::NetworkWeights { network: n.into(), digest: BENCH_WEIGHTS.into() });
    let r = v1::RegisterRequest { name: "bench".into(), device: "none".into(), weights: weights.to_vec(), devices: 1 };
    let r = w.register(r).await?.into_inner();
    credentials.set_session(&r.session);
    Ok((w, r.worker_id))
}

async fn acquire(w: &mut Worker, id: &str) -> Result<v1::Assignment> {
    let r = v1::AcquireRequest { worker_id: id.into(), wait_ms: 10_000 };
    w.acquire(r).await?.into_inner().assignment.context("no assignment")
}

pub(crate) async fn complete(w: &mut Worker, attempt: u64, chunk: &[u8], state: &[u8]) -> Result<()> {
    let header = v1::CompleteHeader {
        attempt_id: attempt,
        chunk_size: chunk.len() as u64,
        chunk_sha256: hex(chunk),
        state_size: state.len() as u64,
        state_sha256: hex(state),
        ..Default::default()
    };
    let msgs = worker::upload::piece_stream(header, chunk.to_vec().into(), state.to_vec().into());
    w.complete_segment(msgs).await?;
    Ok(())
}

pub fn run() -> Result<()> {
    let data = tempfile_dir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut config = coordinator::Config::new(data.join("coordinator"));
        config.affinity_grace = Duration::from_secs(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(coordinator::run(listener, config, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let mut jobs = client::connect(&url, None).await?;
        let (mut w, me) = register(&url).await?;
        let style = std::fs::read("examples/immunohistochemistry.png").unwrap_or_else(|_| engine::style::EMBEDDED.to_vec());

        // 1. A 1920x1080 Adam hand-off state: upload (worker -> coordinator, hashed, stored,
        //    fsynced) and fetch (coordinator -> another worker, then decoded into tensors).
        let (w1080, h1080) = (1920i64, 1080i64);
        let image = tch::Tensor::rand([1, 3, h1080, w1080], (tch::Kind::Float, tch::Device::Cpu));
        let optim = OptimState::new(OptimizerKind::Adam, &image);
        // The end state of the first frame, with that frame's chunk: the coordinator checks
        // that an upload holds what its segment must.
        let params = proto::wire::params_from_wire(spec(1920, 1080, 2, 1).params.as_ref().context("a spec")?)?;
        let fingerprint = params.fingerprint(&hex(&style), BENCH_WEIGHTS);
        let state = State { next_frame: 1, image, optim, fingerprint, made_by: String::new() };
        let t = Instant::now();
        let bytes = state.to_bytes();
        let serialise = t.elapsed().as_secs_f64();
        let chunk = {
            let path = data.join("frame-0.mp4");
            let fps = Fps { num: 30, den: 1 };
            let mut sink = encode::open(OutputKind::Mp4, PartialFile::create(&path)?, 1920, 1080, fps)?;
            sink.push(&Frame { index: 0, width: 1920, height: 1080, rgb: vec![128; 1920 * 1080 * 3] })?;
            sink.finish()?;
            std::fs::read(&path)?
        };
        let (mut up, mut down, mut decode) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let job = client::submit(&mut jobs, spec(1920, 1080, 2, 1), &style, "bench").await?;
            let a = acquire(&mut w, &me).await?;
            anyhow::ensure!(a.job_id == job.id, "unexpected assignment");
            let t = Instant::now();
            complete(&mut w, a.attempt_id, &chunk, &bytes).await?;
            up.push(t.elapsed().as_secs_f64());
            let next = acquire(&mut w, &me).await?;
            let t = Instant::now();
            let mut stream = w.fetch_state(v1::FetchRequest { attempt_id: next.attempt_id, ..Default::default() }).await?.into_inner();
            let mut got = Vec::with_capacity(bytes.len());
            while let Some(b) = stream.message().await? {
                got.extend_from_slice(&b.data);
            }
            down.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(got == bytes, "state corrupted in transit");
            let t = Instant::now();
            let back = State::from_bytes(&got, std::path::Path::new("<bench>"), tch::Device::Cpu)?;
            decode.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(back.next_frame == 1);
            jobs.cancel_job(v1::CancelJobRequest { job_id: job.id }).await?;
        }
        let mb = bytes.len() as f64 / 1e6;
        println!("hand-off state 1920x1080 (adam): {:.1} MB; serialise {:.3} s", mb, serialise);
        println!(
            "  upload (complete_segment) median {:.3} s ({:.0} MB/s); fetch (fetch_state) median {:.3} s ({:.0} MB/s); decode {:.3} s",
            median(up.clone()),
            mb / median(up),
            median(down.clone()),
            mb / median(down),
            median(decode)
        );

        // 2. Dispatch: a worker waits in acquire; a job is submitted; how long until the
        //    worker holds the assignment (upper bound: includes the submit call itself).
        let tiny = {
            let img = image::RgbImage::from_pixel(32, 32, image::Rgb([200, 120, 40]));
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)?;
            out.into_inner()
        };
        let mut latencies = Vec::new();
        let mut submit_only = Vec::new();
        for _ in 0..50 {
            let mut w2 = w.clone();
            let me2 = me.clone();
            let waiter = tokio::spawn(async move {
                let a = acquire(&mut w2, &me2).await;
                (Instant::now(), a)
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t0 = Instant::now();
            let job = client::submit(&mut jobs, spec(64, 64, 1, 1), &tiny, "tiny").await?;
            let submitted = t0.elapsed().as_secs_f64();
            let (t1, a) = waiter.await?;
            anyhow::ensure!(a?.job_id == job.id, "unexpected assignment");
            latencies.push((t1 - t0).as_secs_f64() * 1000.0);
            submit_only.push(submitted * 1000.0);
            jobs.cancel_job(v1::CancelJobRequest { job_id: job.id }).await?;
        }
        println!(
            "dispatch (submit start -> waiting worker holds the segment), 50 jobs: median {:.2} ms, p95 {:.2} ms (the submit call alone: median {:.2} ms)",
            median(latencies.clone()),
            percentile(latencies, 0.95),
            median(submit_only)
        );
        // 4. Watchers: users watch 200 queued jobs while one worker heartbeats another job at
        //    50 Hz (what a farm of 100 workers sends at the default 2 s interval). How long a
        //    heartbeat takes, and the CPU the process spends meanwhile.
        let busy = client::submit(&mut jobs, spec(64, 64, 1000, 1000), &tiny, "busy").await?;
        let a = acquire(&mut w, &me).await?;
        anyhow::ensure!(a.job_id == busy.id, "unexpected assignment");
        let mut watchers = Vec::new();
        for _ in 0..200 {
            let job = client::submit(&mut jobs, spec(64, 64, 1, 1), &tiny, "watched").await?;
            let mut stream = jobs.watch_job(v1::WatchJobRequest { job_id: job.id }).await?.into_inner();
            watchers.push(tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let mut beats = Vec::new();
        for i in 0..250u32 {
            let t = Instant::now();
            let r = v1::HeartbeatRequest { attempt_id: a.attempt_id, frames_done: i, ..Default::default() };
            w.heartbeat(r).await?;
            beats.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        println!(
            "heartbeats at 50 Hz with 200 watchers of other jobs: median {:.2} ms, p95 {:.2} ms; process CPU {:.0}% of one core",
            median(beats.clone()),
            percentile(beats, 0.95),
            100.0 * cpu / wall
        );
        for watcher in watchers {
            watcher.abort();
        }
        let _ = stop.send(true);
        let _ = server.await;
        Ok::<_, anyhow::Error>(())
    })?;

    // 3. Stitching 100 chunks of 12 frames (640x360 H.264, encoded here first).
    let (cw, ch, per) = (640u32, 360u32, 12u32);
    let fps = Fps { num: 30, den: 1 };
    let dir = data.join("chunks");
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let mut chunks = Vec::new();
    for k in 0..100u32 {
        let path = dir.join(format!("{k:03}.mp4"));
        let mut sink = encode::open(OutputKind::Mp4, PartialFile::create(&path)?, cw, ch, fps)?;
        for i in 0..per {
            let index = k * per + i;
            let rgb: Vec<u8> = (0..cw * ch * 3).map(|p| ((p / 3 % cw + index * 4) ^ (p / 3 / cw)) as u8).collect();
            sink.push(&Frame { index, width: cw, height: ch, rgb })?;
        }
        sink.finish()?;
        chunks.push(coordinator::stitch::Chunk { path, start_frame: k * per, end_frame: (k + 1) * per });
    }
    let encode_s = t.elapsed().as_secs_f64();
    let out = data.join("stitched.mp4");
    let mut times = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        coordinator::stitch::stitch(OutputKind::Mp4, &chunks, fps, &out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let size: u64 = chunks.iter().map(|c| std::fs::metadata(&c.path).map(|m| m.len()).unwrap_or(0)).sum();
    println!(
        "stitch 100 chunks x {per} frames ({cw}x{ch}, {:.1} MB in all; encoding them took {:.1} s): median {:.3} s over 3 runs",
        size as f64 / 1e6,
        encode_s,
        median(times)
    );
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// User plus system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let field = |n: usize| rest.split_whitespace().nth(n).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0 // utime, stime in clock ticks (USER_HZ, 100 on Linux)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("gramzoom-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
