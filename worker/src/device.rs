//! `--device auto|cpu|cuda|cuda:N`.

use crate::error::{EngineError, ParamError};
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

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        assert_eq!(super::parse("cpu").unwrap(), tch::Device::Cpu);
        assert!(super::parse("gpu").unwrap_err().to_string().starts_with("--device: expected auto"));
        assert!(super::parse("cuda:x").unwrap_err().to_string().starts_with("--device: expected auto"));
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
    pub fn spawn() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("torch".into())
            .spawn(move || {
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
