//! A whole local render, through the same coordinator and worker code a cluster runs: an
//! in-process coordinator (data in a temporary directory, reached through in-memory pipes, so
//! no network is involved) and one in-process node. One machine and a cluster therefore share
//! one code path, down to the hand-off state format and the stitching of chunks.

use crate::client::{self, ClientError};
use engine::encode::{FramesDir, OutputKind, PartialFile};
use engine::{DeviceThread, Engine, ParamError};
use proto::v1;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use worker::{Node, NodeConfig, NodeError};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Coordinator(#[from] coordinator::Error),
    #[error("encoding {path}: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("creating a scratch directory under {}: {source}", std::env::temp_dir().display())]
    Scratch { source: std::io::Error },
}

pub struct Outputs {
    pub output: PathBuf,
    pub frames_dir: Option<PathBuf>,
    /// Render in segments of this many frames; every hand-off then goes through the
    /// coordinator's store in its wire format, as between two cluster workers.
    pub segment_frames: Option<u32>,
    /// With a soundtrack: the second of it the first frame plays with.
    pub audio_offset: f64,
}

#[derive(Debug)]
pub struct Summary {
    pub frames: u32,
    pub wall: Duration,
    pub output_bytes: u64,
}

/// Checks everything about the outputs that can be checked before any work: the extension, the
/// format's limits and that the destinations are writable.
pub fn prepare(engine: &Engine, outputs: &Outputs) -> Result<(OutputKind, PartialFile), ParamError> {
    let p = engine.params();
    let kind = OutputKind::from_path(&outputs.output)?;
    kind.check(p.width, p.height, p.fps)?;
    if outputs.segment_frames == Some(0) {
        return Err(ParamError::new("--segment-frames", "must be at least 1"));
    }
    let file = PartialFile::for_option("--output", &outputs.output)?;
    if let Some(dir) = &outputs.frames_dir {
        FramesDir::create(dir)?;
    }
    Ok((kind, file))
}

/// A scratch directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> std::io::Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("gramzoom-render-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Renders `engine`'s movie into `outputs`. `engine` must have been built on `torch`, which
/// then runs all of the render. `styles` are the encoded style images the engine was built from.
/// `cancel` turning true cancels the job; the output is then never written.
pub async fn render(
    torch: DeviceThread,
    engine: Engine,
    styles: Vec<crate::styles::Upload>,
    audio: Option<crate::styles::AudioFile>,
    outputs: &Outputs,
    mut cancel: watch::Receiver<bool>,
    mut on_update: impl FnMut(&v1::Job),
) -> Result<Summary, RenderError> {
    let started = Instant::now();
    let (kind, file) = prepare(&engine, outputs)?;
    let params = engine.params().clone();
    let device = engine.device();
    let scratch = ScratchDir::create().map_err(|source| RenderError::Scratch { source })?;

    let mut config = coordinator::Config::new(scratch.0.join("coordinator"));
    config.segment_frames = outputs.segment_frames.unwrap_or(params.frames).max(1);
    // The segments are the user's (`--segment-frames`) or one: never resized from a measured
    // pace, which would move chunk boundaries with the machine's load and with them the bytes
    // of the output (the frames stay the same).
    config.segment_secs = 0.0;
    // A local failure would fail again: no retries. Heartbeats often, for a smooth progress bar.
    config.max_attempts = 1;
    config.lease = Duration::from_secs(60);
    config.heartbeat = Duration::from_millis(250);
    // A throw-away data directory: no disk reserve to keep.
    config.reserve_bytes = 0;
    let coordinator = coordinator::InProcess::start(config).await?;
    let result = async {
        let mut jobs = client::over(coordinator.channel.clone(), Default::default());
        let spec = v1::JobSpec {
            params: Some(proto::wire::params_to_wire(&params)),
            output: proto::wire::output_to_wire(kind) as i32,
            segment_frames: outputs.segment_frames.unwrap_or(0),
            priority: 0,
            name: styles.iter().map(|s| s.file_name.as_str()).collect::<Vec<_>>().join(" + "),
            audio_offset: outputs.audio_offset,
        };
        let files: Vec<(&[u8], &str)> = styles.iter().map(|s| (s.bytes.as_slice(), s.file_name.as_str())).collect();
        let job = client::submit_styles(&mut jobs, spec, &files, audio.as_ref()).await?;
        let node_config = NodeConfig {
            coordinator: "in-process".into(),
            name: "local".into(),
            device,
            devices: vec![device],
            // The engine below is built already, with its blocks and devices.
            blocks: Default::default(),
            weights: None,
            frames_dir: outputs.frames_dir.clone(),
            max_segments: None,
            reuse_state: outputs.segment_frames.is_none(),
            render_ahead: false,
            // Nobody looks at a local render's dashboard: no previews, only the poster.
            preview_every: None,
            token: None,
            tls: Default::default(),
            metrics: std::sync::Arc::new(worker::metrics::WorkerMetrics::new(device, std::time::Duration::MAX)),
        };
        let (node_stop, node_stop_rx) = watch::channel(false);
        let mut node = Node::with_channel(node_config, coordinator.channel.clone(), torch, node_stop_rx).await?;
        node.preload(&job.id, engine);
        let worker = tokio::spawn(node.run());

        let mut watch_client = jobs.clone();
        let watching = client::watch(&mut watch_client, &job.id, &mut on_update);
        tokio::pin!(watching);
        let mut cancelled = false;
        let last = loop {
            tokio::select! {
                r = &mut watching => break r?,
                _ = cancel.wait_for(|c| *c), if !cancelled => {
                    cancelled = true;
                    tracing::info!(job = %job.id, "cancelling");
                    let _ = jobs.cancel_job(v1::CancelJobRequest { job_id: job.id.clone() }).await;
                }
            }
        };
        let _ = node_stop.send(true);
        let _ = worker.await;
        match client::state(&last) {
            v1::JobState::Succeeded => {
                let bytes = client::download(&mut jobs, &job.id, &file).await?;
                Ok(bytes)
            }
            v1::JobState::Cancelled => Err(RenderError::Cancelled),
            _ => Err(RenderError::Failed(last.error.clone())),
        }
    }
    .await;
    let stopped = coordinator.stop().await;
    let output_bytes = result?;
    stopped?;
    file.commit().map_err(|e| RenderError::Output { path: outputs.output.clone(), reason: e.to_string() })?;
    Ok(Summary { frames: params.frames, wall: started.elapsed(), output_bytes })
}
