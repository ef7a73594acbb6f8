//! One module per `gramzoom` subcommand (or family of them): its flags and what it runs.

pub mod bench;
pub mod bench_cluster;
pub mod bench_concurrent;
pub mod bench_farm;
pub mod compare;
pub mod jobs;
pub mod plan;
pub mod render;
pub mod serve;
pub mod weights;
pub mod worker;

/// How a client reaches an `https://` coordinator; shared by the job commands and `worker`.
#[derive(clap::Args, Default)]
pub struct TlsFlags {
    /// The CA certificate (PEM) that signed an https:// coordinator's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for a coordinator that requires client certificates.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsFlags {
    pub fn load(&self) -> Result<proto::auth::ClientTls, crate::client::ClientError> {
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        crate::client::client_tls(self.ca.as_deref(), identity)
    }
}

/// Where libtorch runs; shared by `render`, `worker` and `bench`.
#[derive(clap::Args)]
pub struct TorchFlags {
    /// auto, cpu, cuda or cuda:N; or a list, cuda:0,cuda:1,..., to spread each frame's blocks
    /// over several GPUs (render, bench and worker).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's own, from OMP_NUM_THREADS or one per
    /// physical core, capped at the CPUs this process may use, container limits included, and
    /// split with the other CPU renders running on the machine; a count given here is kept).
    #[arg(long, env = "GRAMZOOM_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// How a frame's style loss is computed: auto (the whole frame at once when it fits the
    /// device's memory, blocks sized to fit otherwise), off (the whole frame, refused up front
    /// when it does not fit) or WIDTHxHEIGHT blocks. Blocks give the same result up to float
    /// rounding; they cost margins around each block and a second forward pass.
    #[arg(long, env = "GRAMZOOM_BLOCKS", default_value = "auto", value_name = "auto|off|WxH")]
    pub blocks: engine::block::BlockChoice,
    /// Never fetch pretrained weights: without --weights or a cached file, use the built-in
    /// network (also GRAMZOOM_OFFLINE=1). By default the first use fetches torchvision's file.
    #[arg(long, env = "GRAMZOOM_OFFLINE", value_parser = clap::builder::FalseyValueParser::new())]
    pub offline: bool,
}

impl TorchFlags {
    /// The render's device, the first of a list.
    pub fn device(&self) -> Result<tch::Device, engine::EngineError> {
        Ok(self.devices()?[0])
    }

    /// Every device of `--device`, the render's own first.
    pub fn devices(&self) -> Result<Vec<tch::Device>, engine::EngineError> {
        engine::device::parse_list(&self.device)
    }

    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }
}
