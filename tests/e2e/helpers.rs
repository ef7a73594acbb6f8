//! Shared helpers: running the binary, temporary directories, decoding outputs back.

use ffmpeg_next as ffmpeg;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("worker/ has a parent").to_path_buf()
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// `args` with each `--style NAME=FILE` pointing at the example style FILE.
pub fn with_examples(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in args {
        let named = out.last().is_some_and(|l| l == "--style");
        out.push(match a.split_once('=') {
            Some((name, file)) if named => format!("{name}={}", example(file).display()),
            _ => a.to_string(),
        });
    }
    out
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// The `gramzoom` binary with a private weights cache (so a developer's downloaded weights never
/// change what a test sees) and one libtorch thread. Tests run in parallel and a cluster test
/// starts several processes; with libtorch's default of one thread per core every process's
/// OpenMP team spins on cores the others need, and on a loaded 2-core CI machine a 64x48
/// segment took 41 s instead of 4 s. One thread each makes the suite's speed degrade gently
/// with load; results do not depend on it (every comparison is between runs of this suite).
/// Offline: the tests never fetch weights from the internet (the fetch is tested against a
/// local server with `GRAMZOOM_OFFLINE` removed).
pub fn command(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gramzoom"));
    command
        .env("GRAMZOOM_CACHE", cache)
        .env("GRAMZOOM_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn");
    command
}

/// Runs `gramzoom` with `args` (see [`command`]) and waits for its output.
pub fn gramzoom(args: &[&str], cache: &Path) -> Output {
    command(cache).args(args).output().expect("gramzoom runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Small, fast render flags shared by the tests (64x48, short warm-up, 2 iterations a frame).
pub const SMALL: &[&str] = &["--size", "64x48", "--warmup", "12", "--iters", "2", "--quiet"];

/// The network's two shallowest style layers: for renders that test how work moves between
/// processes or what lands in an output file, not what the pictures look like. A third of the
/// default's cost per iteration, with every hand-off, state, frame and output as real as the
/// default's (`cluster::MOVIE` and the segment tests keep every layer).
pub const SHALLOW: &[&str] = &["--layers", "conv1_1,conv2_1"];

/// Frame count, duration in seconds, frame rate and size of a video file, by decoding it.
pub struct Decoded {
    pub frames: usize,
    pub duration: f64,
    pub fps: f64,
    pub size: (u32, u32),
}

pub fn decode_video(path: &Path) -> Decoded {
    ffmpeg::init().expect("ffmpeg init");
    let mut input = ffmpeg::format::input(path).expect("open video");
    let stream = input.streams().best(ffmpeg::media::Type::Video).expect("video stream");
    let index = stream.index();
    let rate = stream.avg_frame_rate();
    let duration = stream.duration() as f64 * f64::from(stream.time_base());
    let mut decoder =
        ffmpeg::codec::context::Context::from_parameters(stream.parameters()).unwrap().decoder().video().unwrap();
    let mut frames = 0;
    let mut frame = ffmpeg::frame::Video::empty();
    for (s, packet) in input.packets() {
        if s.index() == index {
            decoder.send_packet(&packet).unwrap();
            while decoder.receive_frame(&mut frame).is_ok() {
                frames += 1;
            }
        }
    }
    decoder.send_eof().unwrap();
    while decoder.receive_frame(&mut frame).is_ok() {
        frames += 1;
    }
    Decoded { frames, duration, fps: f64::from(rate), size: (decoder.width(), decoder.height()) }
}

/// Every PNG frame of a --frames-dir, in order, as raw RGB.
pub fn frames_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| image::open(p).unwrap().to_rgb8().into_raw()).collect()
}

/// A 64x48, two-frame MP4 job.
pub fn tiny_spec() -> proto::v1::JobSpec {
    let params = proto::params::RenderParams { width: 64, height: 48, frames: 2, ..Default::default() };
    proto::v1::JobSpec {
        params: Some(proto::wire::params_to_wire(&params)),
        output: proto::v1::OutputFormat::Mp4 as i32,
        ..Default::default()
    }
}

/// The code a call was refused with.
pub fn code<T>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.err().expect("the call was refused").code()
}

/// Runs `f` on every item on all the CPUs at once, one libtorch thread per item, and returns
/// the results in order: renders compared bit for bit with each other, on a core each, without
/// OpenMP teams spinning against each other (see `engine::share`). Renders whose pictures are
/// measured still take a [`measured_render`] turn in `f`, which bounds them across tests. A
/// panic in any item fails the caller.
pub fn in_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<R>>>());
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get()).min(n);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                tch::set_num_threads(1);
                loop {
                    // Taken from the front: the queue is in the caller's order.
                    let next = {
                        let mut q = queue.lock().unwrap();
                        if q.is_empty() {
                            None
                        } else {
                            Some(q.remove(0))
                        }
                    };
                    let Some((i, item)) = next else { break };
                    let r = f(item);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.expect("every item ran")).collect()
}

/// Every frame of a movie rendered in this process on the CPU, with the built-in network, from
/// the example style `style`.
pub fn render_movie(params: &engine::RenderParams, style: &str) -> Vec<engine::Frame> {
    render_movie_of(params, &[style])
}

/// A turn for a render whose pictures are measured (the quality, direction and blend checks):
/// such renders run at one libtorch thread each, as many at once as the machine has CPUs, until
/// the guard drops.
///
/// One thread: a CPU render's last bits follow its thread count, so its measured values (and
/// the bounds they were measured against) must not depend on the machine's cores, nor on what
/// another test left as libtorch's count (libtorch keeps the last `set_num_threads` process-wide
/// and a thread's first libtorch call takes it: each turn sets it on its own thread). And a
/// render of two or more threads shares its cores with the other tests' processes: its OpenMP
/// team busy-waits at every barrier for a team mate the scheduler gave to another process (the
/// spinning `engine::share` describes): a 2-thread cross-fade or direction render used two to
/// three times the CPU of the same render at one thread. At one thread nothing spins, and two
/// renders use two cores fully.
pub fn measured_render() -> MeasuredTurn {
    let mut free = free_turns();
    loop {
        let n = free.get_or_insert_with(|| std::thread::available_parallelism().map_or(1, |c| c.get()));
        if *n > 0 {
            *n -= 1;
            break;
        }
        free = TURN_RETURNED.wait(free).unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    drop(free);
    tch::set_num_threads(1);
    MeasuredTurn(())
}

/// Measured renders that may start now (`None` until the first asks: then the CPU count).
static FREE_TURNS: std::sync::Mutex<Option<usize>> = std::sync::Mutex::new(None);
static TURN_RETURNED: std::sync::Condvar = std::sync::Condvar::new();

fn free_turns() -> std::sync::MutexGuard<'static, Option<usize>> {
    FREE_TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A measured render's turn, given back when dropped (by a panicking render too).
pub struct MeasuredTurn(());

impl Drop for MeasuredTurn {
    fn drop(&mut self) {
        *free_turns().as_mut().expect("counted when taken") += 1;
        TURN_RETURNED.notify_one();
    }
}

/// The same for a movie of several styles (`params.blend` names them in this order), in a
/// measured render's turn.
pub fn render_movie_of(params: &engine::RenderParams, styles: &[&str]) -> Vec<engine::Frame> {
    let _turn = measured_render();
    let device = tch::Device::Cpu;
    let styles: Vec<_> = styles.iter().map(|s| engine::style::Style::open(&example(s)).unwrap()).collect();
    let net = engine::vgg::Vgg::random(params.network, device);
    let engine = engine::Engine::new(params.clone(), styles, net, device).unwrap();
    let mut state = engine.initial_state(&mut |_| {}).unwrap();
    let mut frames = Vec::new();
    let mut keep = |f| {
        frames.push(f);
        Ok(())
    };
    engine.render(&mut state, params.frames, &mut keep, &mut |_| {}).unwrap();
    frames
}
