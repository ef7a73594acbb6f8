//! The user's side of the job API: submit a job with its style image, follow it, download its
//! output. `gramzoom submit/status/watch/download/cancel` and the local `gramzoom render` use it.

use engine::encode::PartialFile;
use proto::auth::{ClientTls, Credentials};
use proto::v1::job_service_client::JobServiceClient;
use proto::v1::{self, submit_job_request};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("coordinator at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The coordinator's own message; it names the field and the rule.
    #[error("{}", .0.message())]
    Rpc(tonic::Status),
    #[error("{path}: {reason}")]
    Output { path: String, reason: String },
    #[error("{0}")]
    Credentials(String),
}

// Not `#[from]`: that would make the status an error source, and the CLI's error chain would
// print its code and message a second time.
impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

/// The job API with this user's credentials on every call.
pub type Client = JobServiceClient<InterceptedService<Channel, Credentials>>;

/// The caller's token: the first line of `file` when given, else `GRAMZOOM_TOKEN`, else none
/// (a coordinator without --auth). Deliberately not a clap `env` flag: clap would show the
/// variable's value in `--help`.
pub fn token(file: Option<&Path>) -> Result<Option<String>, ClientError> {
    let token = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ClientError::Credentials(format!("--token-file {}: {e}", path.display())))?;
            text.lines().next().unwrap_or("").trim().to_string()
        }
        None => match std::env::var("GRAMZOOM_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => return Ok(None),
        },
    };
    let source = file.map_or("GRAMZOOM_TOKEN".to_string(), |p| format!("--token-file {}", p.display()));
    proto::auth::check_token(&token).map_err(|e| ClientError::Credentials(format!("{source}: {e}")))?;
    Ok(Some(token))
}

/// Reads the TLS files a client was given (`--ca`, `--tls-cert`, `--tls-key`).
pub fn client_tls(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<ClientTls, ClientError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| ClientError::Credentials(format!("{flag} {}: {e}", path.display())))
    };
    Ok(ClientTls {
        ca: ca.map(|p| read("--ca", p)).transpose()?,
        identity: match identity {
            Some((cert, key)) => Some((read("--tls-cert", cert)?, read("--tls-key", key)?)),
            None => None,
        },
    })
}

/// A client over an existing channel (an in-process coordinator's).
pub fn over(channel: Channel, credentials: Credentials) -> Client {
    JobServiceClient::with_interceptor(channel, credentials)
}

/// Connects to a plaintext (`http://`) coordinator; see [`connect_with`].
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
    connect_with(url, token, &ClientTls::default()).await
}

/// Connects with `token` on every call; an `https://` URL uses TLS with `tls`.
pub async fn connect_with(url: &str, token: Option<&str>, tls: &ClientTls) -> Result<Client, ClientError> {
    let address = |e: proto::auth::AuthError| ClientError::Credentials(e.to_string());
    let credentials = Credentials::new(token).map_err(address)?;
    let endpoint =
        proto::auth::endpoint(url, tls).map_err(address)?.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable { url: url.into(), reason: format!("{e}: {}", source_chain(&e)) })?;
    Ok(over(channel, credentials))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Submits a job of one style; the image travels in 1 MiB pieces with its checksum.
pub async fn submit(
    client: &mut Client,
    spec: v1::JobSpec,
    style: &[u8],
    style_name: &str,
) -> Result<v1::Job, ClientError> {
    submit_styles(client, spec, &[(style, style_name)], None).await
}

/// Submits a job with its style images (bytes, file name) in the order of its style names,
/// one after the other, each in 1 MiB pieces with its checksum, then its soundtrack if any,
/// streamed from its file as it is sent.
pub async fn submit_styles(
    client: &mut Client,
    spec: v1::JobSpec,
    styles: &[(&[u8], &str)],
    audio: Option<&crate::styles::AudioFile>,
) -> Result<v1::Job, ClientError> {
    use submit_job_request::Part;
    let header = v1::SubmitHeader {
        spec: Some(spec),
        style_name: styles.first().map_or_else(String::new, |s| s.1.into()),
        style_names: if styles.len() > 1 { styles.iter().map(|s| s.1.to_string()).collect() } else { Vec::new() },
        audio_name: audio.map_or_else(String::new, |a| a.file_name.clone()),
    };
    let mut messages = vec![v1::SubmitJobRequest { part: Some(Part::Header(header)) }];
    let blobs = |bytes: &[u8]| -> Vec<v1::Blob> {
        let sha = proto::params::hex(&Sha256::digest(bytes));
        let mut out: Vec<v1::Blob> = bytes
            .chunks(proto::BLOB_PIECE)
            .map(|piece| v1::Blob { data: piece.to_vec(), ..Default::default() })
            .collect();
        match out.first_mut() {
            Some(first) => (first.total_size, first.sha256) = (bytes.len() as u64, sha),
            None => out.push(v1::Blob { total_size: 0, sha256: sha, data: Vec::new() }),
        }
        out
    };
    for (style, _) in styles {
        messages.extend(blobs(style).into_iter().map(|b| v1::SubmitJobRequest { part: Some(Part::Style(b)) }));
    }
    let Some(audio) = audio else {
        return Ok(client.submit_job(tokio_stream::iter(messages)).await?.into_inner());
    };
    // The soundtrack's pieces are read on a blocking thread as the stream takes them, a few
    // ahead; a file that changed since it was hashed fails the coordinator's checksum.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = {
        let audio = audio.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Read;
            let mut file = std::fs::File::open(&audio.path)?;
            let mut first = Some((audio.size, audio.sha256));
            loop {
                let mut data = vec![0u8; proto::BLOB_PIECE];
                let n = file.read(&mut data)?;
                data.truncate(n);
                if n == 0 && first.is_none() {
                    return Ok(());
                }
                let (total_size, sha256) = first.take().unwrap_or_default();
                let blob = v1::Blob { total_size, sha256, data };
                if tx.blocking_send(v1::SubmitJobRequest { part: Some(Part::Audio(blob)) }).is_err() || n == 0 {
                    return Ok(());
                }
            }
        })
    };
    use tokio_stream::StreamExt;
    let parts = tokio_stream::iter(messages).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    let submitted = client.submit_job(parts).await;
    if let Ok(Err(e)) = reader.await {
        return Err(ClientError::Output {
            path: audio.path.display().to_string(),
            reason: format!("reading the soundtrack: {}", e.to_string().to_lowercase()),
        });
    }
    Ok(submitted?.into_inner())
}

pub fn state(job: &v1::Job) -> v1::JobState {
    v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified)
}

pub fn is_final(job: &v1::Job) -> bool {
    matches!(state(job), v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled)
}

pub fn state_name(job: &v1::Job) -> String {
    state(job).as_str_name().trim_start_matches("JOB_STATE_").to_lowercase()
}

/// Follows a job until it ends, calling `on_update` with every change; returns the final job.
pub async fn watch(
    client: &mut Client,
    job_id: &str,
    mut on_update: impl FnMut(&v1::Job),
) -> Result<v1::Job, ClientError> {
    let mut stream = client.watch_job(v1::WatchJobRequest { job_id: job_id.into() }).await?.into_inner();
    let mut last = None;
    while let Some(job) = stream.message().await? {
        on_update(&job);
        let done = is_final(&job);
        last = Some(job);
        if done {
            break;
        }
    }
    match last {
        Some(job) if is_final(&job) => Ok(job),
        _ => Err(tonic::Status::unavailable("the watch stream ended before the job did").into()),
    }
}

/// Downloads a finished job's output into `file` (a temporary file that the caller commits),
/// checking its size and checksum. Returns the size.
pub async fn download(client: &mut Client, job_id: &str, file: &PartialFile) -> Result<u64, ClientError> {
    let out_err = |reason: String| ClientError::Output { path: file.path().display().to_string(), reason };
    let mut stream = client.download_output(v1::DownloadOutputRequest { job_id: job_id.into() }).await?.into_inner();
    let mut out = std::io::BufWriter::new(std::fs::File::create(file.path()).map_err(|e| out_err(e.to_string()))?);
    let mut hasher = Sha256::new();
    let (mut size, mut declared) = (0u64, None);
    while let Some(blob) = stream.message().await? {
        if declared.is_none() {
            declared = Some((blob.total_size, blob.sha256.clone()));
        }
        hasher.update(&blob.data);
        size += blob.data.len() as u64;
        out.write_all(&blob.data).map_err(|e| out_err(e.to_string()))?;
    }
    out.into_inner().map_err(|e| out_err(e.to_string()))?.sync_all().map_err(|e| out_err(e.to_string()))?;
    let (want_size, want_sha) = declared.unwrap_or_default();
    let sha = proto::params::hex(&hasher.finalize());
    if size != want_size || sha != want_sha {
        return Err(out_err(format!(
            "download corrupt: got {size} bytes with sha256 {sha}, expected {want_size} bytes with sha256 {want_sha}"
        )));
    }
    Ok(size)
}
