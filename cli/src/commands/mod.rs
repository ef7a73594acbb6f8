//! One module per `gramzoom` subcommand (or family of them): its flags and what it runs.

pub mod bench;
pub mod bench_cluster;
pub mod jobs;
pub mod render;
pub mod serve;
pub mod weights;
pub mod worker;

/// Where libtorch runs; shared by `render`, `worker` and `bench`.
#[derive(clap::Args)]
pub struct TorchFlags {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's own, from OMP_NUM_THREADS or one per
    /// physical core, capped at the CPUs this process may use, container limits included).
    #[arg(long, env = "GRAMZOOM_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

impl TorchFlags {
    pub fn device(&self) -> Result<tch::Device, engine::EngineError> {
        engine::device::parse(&self.device)
    }

    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }
}
