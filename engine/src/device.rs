//! `--device auto|cpu|cuda|cuda:N`.

use crate::error::{EngineError, ParamError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tch::Device;

pub fn parse(spec: &str) -> Result<Device, EngineError> {
    let unavailable = |reason: String| EngineError::Device { device: spec.to_string(), reason };
    let cuda_count = || if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match spec {
        "auto" => Ok(if cuda_count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match spec.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => n.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| {
                    ParamError::new("--device", format!("expected auto, cpu, cuda or cuda:N, got {spec:?}"))
                })?,
                None => {
                    return Err(ParamError::new(
                        "--device",
                        format!("expected auto, cpu, cuda or cuda:N, got {spec:?}"),
                    )
                    .into())
                }
            };
            match cuda_count() {
                0 => Err(unavailable(
                    "no CUDA device is visible (no driver, or gramzoom was built without the cuda feature)".into(),
                )),
                n if index >= n => {
                    Err(unavailable(format!("only {n} CUDA device(s) visible, cuda:0 to cuda:{}", n - 1)))
                }
                _ => Ok(Device::Cuda(index)),
            }
        }
    }
}

/// The most devices one render spreads over.
pub const MAX_DEVICES: usize = proto::limits::MAX_WORKER_DEVICES;

/// `--device` as a list, `cuda:0,cuda:1` (or `cpu,cpu` for tests): the devices one render
/// spreads its blocks over, the first holding the image. One device is `parse`'s. A list holds
/// devices of one kind (a CPU would hold back every GPU beside it), each CUDA device once.
pub fn parse_list(spec: &str) -> Result<Vec<Device>, EngineError> {
    let items: Vec<&str> = spec.split(',').map(str::trim).collect();
    if items.len() == 1 {
        return Ok(vec![parse(spec)?]);
    }
    let bad = |reason: String| -> EngineError { ParamError::new("--device", reason).into() };
    if items.len() > MAX_DEVICES {
        return Err(bad(format!("at most {MAX_DEVICES} devices in a list, got {}", items.len())));
    }
    let mut devices: Vec<Device> = Vec::with_capacity(items.len());
    for item in items {
        if item == "auto" || item.is_empty() {
            return Err(bad(format!("a list names each device, cpu or cuda:N, got {:?}", item)));
        }
        let device = parse(item)?;
        if let Some(first) = devices.first() {
            if first.is_cuda() != device.is_cuda() {
                return Err(bad(format!(
                    "a render spreads over devices of one kind, all cpu or all cuda:N, got {spec:?}"
                )));
            }
        }
        if device.is_cuda() && devices.contains(&device) {
            return Err(bad(format!("{item} is named twice in {spec:?}")));
        }
        devices.push(device);
    }
    Ok(devices)
}

/// Where the CPU thread count of libtorch's kernels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSource {
    /// `--threads` or `GRAMZOOM_THREADS`.
    Flag,
    /// `OMP_NUM_THREADS`, which libtorch itself reads: the user's explicit choice.
    OmpEnv,
    /// libtorch's own default, one thread per physical core, which fits the CPUs available.
    Libtorch,
    /// Fewer CPUs than physical cores are available: the process's affinity mask or its
    /// cgroup's CPU quota.
    Available,
}

/// How many threads libtorch's CPU kernels should use: the flag; else what `OMP_NUM_THREADS`
/// made libtorch choose; else libtorch's default (physical cores, SMT siblings left out)
/// capped at the CPUs this process may use.
///
/// Without the cap libtorch counts the machine's cores and ignores a container's CPU limit
/// (Kubernetes `limits.cpu` is a cgroup quota): a worker limited to 4 CPUs on a 64-core node
/// would run 64 spinning OpenMP threads and spend most of its quota throttled. Rust's
/// `available_parallelism` honours both the quota and the affinity mask, but counts logical
/// CPUs, hence the minimum of the two.
pub fn choose_threads(
    flag: Option<usize>,
    omp_env: Option<&str>,
    libtorch_default: usize,
    available: usize,
) -> (usize, ThreadSource) {
    let omp_set = omp_env.and_then(|v| v.split(',').next()?.trim().parse::<usize>().ok()).is_some_and(|n| n > 0);
    match flag {
        Some(n) => (n.max(1), ThreadSource::Flag),
        None if omp_set => (libtorch_default.max(1), ThreadSource::OmpEnv),
        None if available < libtorch_default => (available.max(1), ThreadSource::Available),
        None => (libtorch_default.max(1), ThreadSource::Libtorch),
    }
}

/// Sets libtorch's CPU thread count for the calling thread's parallel work (OpenMP keeps the
/// count per thread that starts parallel regions, so call it on the thread that runs tensors)
/// and returns it.
pub fn set_threads(flag: Option<usize>) -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let omp = std::env::var("OMP_NUM_THREADS").ok();
    let libtorch_default = usize::try_from(tch::get_num_threads()).unwrap_or(1);
    let (n, source) = choose_threads(flag, omp.as_deref(), libtorch_default, available);
    tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
    tracing::debug!(threads = n, ?source, available, libtorch_default, "libtorch cpu threads");
    ALONE.store(n, Ordering::Relaxed);
    ADAPT.store(matches!(source, ThreadSource::Libtorch | ThreadSource::Available), Ordering::Relaxed);
    n
}

/// Whether this CPU computes bf16 itself: AVX512-BF16 (which every CPU with AMX has too) or
/// Arm's BF16. Without it libtorch converts every bf16 operation on the CPU, and a bf16 render
/// costs about 9x fp32 (AMD EPYC, AVX2 only: 1,739 against 197 ms an iteration at 64x48), so
/// a render asked for bf16 on such a CPU says so (see [`bf16_cpu_warning`]).
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The warning a bf16 render on `device` deserves, if any: on a CPU without native bf16 it is
/// many times slower than fp32 (the CPU default) and gains nothing.
pub fn bf16_cpu_warning(device: Device, native: bool) -> Option<&'static str> {
    (device == Device::Cpu && !native).then_some(
        "--precision bf16 on a CPU without native bf16 (AVX512-BF16 or Arm BF16): each operation is \
         converted, about 9x slower than fp32, the CPU default; bf16 is for GPUs",
    )
}

static ALONE: AtomicUsize = AtomicUsize::new(0);
static ADAPT: AtomicBool = AtomicBool::new(false);

/// The threads a CPU render of this process uses when it has the machine to itself, and whether
/// it may use fewer while other renders run (see `share`): only when nobody chose the count.
/// Before [`set_threads`] has run: libtorch's count, fixed.
pub fn thread_policy() -> (usize, bool) {
    match ALONE.load(Ordering::Relaxed) {
        0 => (usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1), false),
        n => (n, ADAPT.load(Ordering::Relaxed)),
    }
}

/// The one thread that runs a process's libtorch work, fed by closures.
///
/// libtorch's CPU kernels parallelise with OpenMP, which keeps one thread team per thread that
/// starts parallel work. Two such threads in one process mean more OpenMP threads than cores,
/// and libgomp then stops spin-waiting at its barriers: a local render whose engine was built on
/// one thread and run on another measured 30 s instead of 25 s (128x128, 24 frames, 2 cores).
/// Keeping every tensor operation on this thread also keeps it off the async runtime.
#[derive(Clone)]
pub struct DeviceThread {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl DeviceThread {
    /// Starts the thread; its first act is [`set_threads`] with `threads` (`--threads`).
    pub fn spawn(threads: Option<usize>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("torch".into())
            .spawn(move || {
                set_threads(threads);
                for job in rx {
                    job();
                }
            })
            .expect("spawning the torch thread");
        Self { tx }
    }

    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(std::thread::Result<T>) + Send + 'static,
    ) {
        let job = move || done(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        self.tx.send(Box::new(job)).expect("the torch thread lives as long as its handles");
    }

    /// Runs `f` on the thread and waits for it without blocking the async runtime.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        match rx.await.expect("the torch thread answers every job") {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Queues `f` on the thread now and returns its result to wait for later: the caller can do
    /// other work (an upload) while the thread runs it.
    pub fn start<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        Pending(rx)
    }

    /// Runs `f` on the thread and waits for it, from synchronous code.
    pub fn run_blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        match rx.recv().expect("the torch thread answers every job") {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// A job queued by [`DeviceThread::start`].
pub struct Pending<T>(tokio::sync::oneshot::Receiver<std::thread::Result<T>>);

impl<T> Pending<T> {
    pub async fn wait(self) -> T {
        match self.0.await.expect("the torch thread answers every job") {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_questioned_only_on_a_cpu_that_converts_it() {
        assert!(bf16_cpu_warning(Device::Cpu, false).is_some_and(|w| w.contains("9x slower than fp32")));
        assert_eq!(bf16_cpu_warning(Device::Cpu, true), None);
        assert_eq!(bf16_cpu_warning(Device::Cuda(0), false), None);
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse("cpu").unwrap(), tch::Device::Cpu);
        assert!(parse("gpu").unwrap_err().to_string().starts_with("--device: expected auto"));
        assert!(parse("cuda:x").unwrap_err().to_string().starts_with("--device: expected auto"));
    }

    /// Lists: CPU repeats are allowed (tests spread over threads), every bad list names the
    /// flag and what is wrong, before any work. Without CUDA, a CUDA device is "not visible".
    #[test]
    fn device_lists_parse_and_bad_ones_say_why() {
        assert_eq!(parse_list("cpu").unwrap(), [Device::Cpu]);
        assert_eq!(parse_list("cpu, cpu").unwrap(), [Device::Cpu, Device::Cpu]);
        let cuda = tch::Cuda::device_count();
        let many = vec!["cpu"; MAX_DEVICES + 1].join(",");
        let cases = [
            ("cpu,auto", "a list names each device"),
            ("cpu,,cpu", "a list names each device"),
            (many.as_str(), "at most 16 devices"),
            ("cpu,gpu", "expected auto, cpu, cuda or cuda:N"),
        ];
        for (spec, want) in cases {
            let e = parse_list(spec).unwrap_err().to_string();
            assert!(e.contains("--device") && e.contains(want), "{spec}: {e}");
        }
        let mixed = parse_list("cpu,cuda:0").unwrap_err().to_string();
        let twice = parse_list("cuda:0,cuda:0").unwrap_err().to_string();
        let beyond = parse_list(&format!("cuda:0,cuda:{cuda}")).unwrap_err().to_string();
        if cuda == 0 {
            for e in [&mixed, &twice, &beyond] {
                assert!(e.contains("no CUDA device is visible"), "{e}");
            }
        } else {
            assert!(mixed.contains("devices of one kind"), "{mixed}");
            assert!(twice.contains("cuda:0 is named twice"), "{twice}");
            assert!(beyond.contains(&format!("only {cuda} CUDA device(s) visible")), "{beyond}");
        }
    }

    #[test]
    fn thread_count_precedence() {
        use ThreadSource::*;
        // (flag, OMP_NUM_THREADS, libtorch's default, available CPUs) -> chosen
        let cases = [
            ((Some(3), Some("8"), 8, 16), (3, Flag)),
            ((Some(32), None, 8, 4), (32, Flag)),
            ((None, Some("8"), 8, 4), (8, OmpEnv)),
            ((None, Some("6,2"), 6, 16), (6, OmpEnv)),
            ((None, Some("many"), 8, 16), (8, Libtorch)),
            ((None, Some("0"), 64, 4), (4, Available)),
            ((None, None, 64, 4), (4, Available)), // a 4-CPU pod on a 64-core node
            ((None, None, 8, 16), (8, Libtorch)),  // 8 cores with SMT siblings
            ((None, None, 2, 2), (2, Libtorch)),
            ((None, None, 4, 0), (1, Available)),
        ];
        for ((flag, omp, default, available), want) in cases {
            assert_eq!(choose_threads(flag, omp, default, available), want, "{flag:?} {omp:?} {default} {available}");
        }
    }

    #[test]
    fn the_device_thread_runs_with_the_chosen_thread_count() {
        let torch = DeviceThread::spawn(Some(1));
        assert_eq!(torch.run_blocking(tch::get_num_threads), 1);
    }
}
