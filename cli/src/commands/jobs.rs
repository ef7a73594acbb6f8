//! `gramzoom submit | status | watch | download | cancel | delete | retry | workers`: the job API
//! from the command line.

use super::render::{params, RenderFlags};
use crate::client;
use crate::progress::{Bar, Follow};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use engine::encode::{OutputKind, PartialFile};
use proto::v1;
use std::path::PathBuf;

#[derive(ClapArgs)]
pub struct Submit {
    /// Style image (PNG or JPEG); the built-in Van Gogh wheat field when omitted.
    pub style: Option<PathBuf>,
    #[command(flatten)]
    pub flags: RenderFlags,
    /// Output format: mp4, gif, png or jpg.
    #[arg(long, default_value = "mp4")]
    pub format: String,
    /// Higher runs first; equal priorities run in submission order.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    #[command(flatten)]
    pub at: At,
}

#[derive(ClapArgs)]
pub struct At {
    /// The coordinator, e.g. http://coordinator:50051.
    #[arg(long, env = "GRAMZOOM_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// A file whose first line is your token, for a coordinator with --auth (default: the
    /// GRAMZOOM_TOKEN environment variable).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: super::TlsFlags,
}

impl At {
    async fn connect(&self) -> Result<client::Client, client::ClientError> {
        let token = client::token(self.token_file.as_deref())?;
        client::connect_with(&self.coordinator, token.as_deref(), &self.tls.load()?).await
    }
}

#[derive(ClapArgs)]
pub struct Status {
    /// A job id; all jobs when omitted.
    pub job: Option<String>,
    /// Also list every segment and its attempts.
    #[arg(long)]
    pub segments: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(ClapArgs)]
pub struct Farm {
    #[command(flatten)]
    pub at: At,
}

#[derive(ClapArgs)]
pub struct Job {
    pub job: String,
    #[command(flatten)]
    pub at: At,
}

#[derive(ClapArgs)]
pub struct Download {
    pub job: String,
    /// Where to write the output; written under a temporary name and renamed when complete.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub at: At,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

pub fn submit(args: Submit) -> Result<()> {
    let p = params(&args.flags, false)?;
    let kind = OutputKind::from_path(std::path::Path::new(&format!("x.{}", args.format)))
        .map_err(|_| anyhow::anyhow!("--format: expected mp4, gif, png or jpg, got {:?}", args.format))?;
    // Decoded here too: a file that is no image fails before anything is sent.
    let (_, styles) = crate::styles::read(args.style.as_deref(), &args.flags)?;
    let audio = crate::styles::read_audio(&args.flags)?;
    let name = styles.iter().map(|s| s.file_name.as_str()).collect::<Vec<_>>().join(" + ");
    let spec = v1::JobSpec {
        params: Some(proto::wire::params_to_wire(&p)),
        output: proto::wire::output_to_wire(kind) as i32,
        segment_frames: args.flags.segment_frames.unwrap_or(0),
        priority: args.priority,
        name: name.clone(),
        audio_offset: args.flags.audio_offset,
    };
    let job = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        let files: Vec<(&[u8], &str)> = styles.iter().map(|s| (s.bytes.as_slice(), s.file_name.as_str())).collect();
        client::submit_styles(&mut c, spec, &files, audio.as_ref()).await
    })?;
    println!("{}", job.id);
    Ok(())
}

fn line(job: &v1::Job) -> String {
    let p = job.spec.as_ref().and_then(|s| s.params.as_ref());
    let size = p.map(|p| format!("{}x{}", p.width, p.height)).unwrap_or_default();
    let measured = if job.segment_frames_measured { ", sized from the first" } else { "" };
    let mut s = format!(
        "{}  {:<10} {}/{} frames  {}/{} segments of {} frames{measured}  {}",
        job.id,
        client::state_name(job),
        job.frames_done,
        job.frames_total,
        job.segments_done,
        job.segments_total,
        job.segment_frames,
        size
    );
    if job.fps > 0.0 {
        // The pace the coordinator measured from the running segment's heartbeats.
        let left = f64::from(job.frames_total.saturating_sub(job.frames_done)) / job.fps;
        s.push_str(&format!("  {:.2} fps, about {:.0} s left", job.fps, left));
    }
    if !job.error.is_empty() {
        s.push_str(&format!("  ({})", job.error));
    }
    s
}

pub fn status(args: Status) -> Result<()> {
    runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        match &args.job {
            None => {
                let jobs =
                    c.list_jobs(v1::ListJobsRequest {}).await.map_err(client::ClientError::from)?.into_inner().jobs;
                for job in &jobs {
                    println!("{}", line(job));
                }
            }
            Some(id) => {
                let job = c
                    .get_job(v1::GetJobRequest {
                        job_id: id.clone(),
                        include_segments: args.segments,
                        ..Default::default()
                    })
                    .await
                    .map_err(client::ClientError::from)?
                    .into_inner();
                println!("{}", line(&job));
                // A directed movie: where its camera is now, in words.
                let params = job.spec.as_ref().and_then(|s| s.params.as_ref());
                if let Some(p) =
                    params.and_then(|p| proto::wire::params_walked_at_submit(p).ok()).filter(|p| p.is_directed())
                {
                    println!("  motion {}", p.motion_words(job.frames_done)?);
                }
                for s in &job.segments {
                    let state = v1::SegmentState::try_from(s.state).map(|x| x.as_str_name()).unwrap_or("?");
                    println!(
                        "  segment {:>4} frames {}..{} {}",
                        s.index,
                        s.start_frame,
                        s.end_frame,
                        state.trim_start_matches("SEGMENT_STATE_").to_lowercase()
                    );
                    for a in &s.attempts {
                        let st = v1::AttemptState::try_from(a.state).map(|x| x.as_str_name()).unwrap_or("?");
                        println!(
                            "    attempt {:>5} {:<10} {} {}",
                            a.id,
                            a.worker_id,
                            st.trim_start_matches("ATTEMPT_STATE_").to_lowercase(),
                            a.reason
                        );
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// One line per worker: what it does now and how it fares.
pub fn workers(args: Farm) -> Result<()> {
    let workers = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        let r = c.list_workers(v1::ListWorkersRequest {}).await.map_err(client::ClientError::from)?;
        Ok::<_, anyhow::Error>(r.into_inner().workers)
    })?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    for w in &workers {
        let doing = match w.running_attempt_id {
            0 => "idle".to_string(),
            a => format!("rendering {} (attempt {a})", w.running_job_id),
        };
        let mut s = format!(
            "{:<10} {:<16} {:<24} {:<32} {} segments done, {} failed in a row, seen {} s ago",
            w.worker_id,
            w.name,
            w.device,
            doing,
            w.segments_done,
            w.failures_in_a_row,
            (now - w.last_seen_unix_ms).max(0) / 1000
        );
        if !w.weights.is_empty() {
            let short = |d: &str| d.chars().take(12).collect::<String>();
            let weights: Vec<String> =
                w.weights.iter().map(|x| format!("{}={}", x.network, short(&x.digest))).collect();
            s.push_str(&format!("  weights {}", weights.join(" ")));
        }
        if w.quarantined_until_unix_ms > now {
            s.push_str(&format!("  QUARANTINED for {} s more", (w.quarantined_until_unix_ms - now + 999) / 1000));
        }
        println!("{s}");
    }
    Ok(())
}

/// Follows a job until it ends; the exit status says how it ended.
pub fn watch(args: Job, bar: &Bar) -> Result<()> {
    let mut follow = Follow::new(bar, false);
    let job = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        client::watch(&mut c, &args.job, |j| follow.update(j)).await
    })?;
    bar.clear();
    eprintln!("{}", line(&job));
    match client::state(&job) {
        v1::JobState::Succeeded => Ok(()),
        v1::JobState::Cancelled => bail!("job {} was cancelled", job.id),
        _ => bail!("job {} failed: {}", job.id, job.error),
    }
}

pub fn download(args: Download) -> Result<()> {
    let file = PartialFile::for_option("--output", &args.output)?;
    let bytes = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        client::download(&mut c, &args.job, &file).await
    })?;
    file.commit()?;
    eprintln!("downloaded {} ({bytes} bytes) -> {}", args.job, args.output.display());
    Ok(())
}

pub fn cancel(args: Job) -> Result<()> {
    let job = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        c.cancel_job(v1::CancelJobRequest { job_id: args.job.clone() }).await.map_err(client::ClientError::from)
    })?;
    println!("{}", line(&job.into_inner()));
    Ok(())
}

pub fn retry(args: Job) -> Result<()> {
    let job = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        c.retry_job(v1::RetryJobRequest { job_id: args.job.clone() }).await.map_err(client::ClientError::from)
    })?;
    println!("{}", line(&job.into_inner()));
    Ok(())
}

pub fn delete(args: Job) -> Result<()> {
    let freed = runtime()?.block_on(async {
        let mut c = args.at.connect().await?;
        let r = c.delete_job(v1::DeleteJobRequest { job_id: args.job.clone() }).await;
        r.map(|r| r.into_inner().bytes_freed).map_err(client::ClientError::from)
    })?;
    println!("deleted {} ({freed} bytes freed)", args.job);
    Ok(())
}
