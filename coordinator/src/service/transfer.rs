//! Large payloads, in 1 MiB pieces both ways: a stored file goes out as a `Blob` stream whose
//! first piece declares size and checksum; an upload comes into scratch, hashed as it arrives,
//! and is checked against what its sender declared before anything uses it.

use crate::error::{Error, Result};
use proto::v1;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

/// `prefix` made unique within this coordinator's life, for scratch files of requests that may
/// run at once (the same style submitted twice, an upload retried while the first still runs).
pub(crate) fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{prefix}.{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams a stored file as `Blob` pieces, the first carrying its size and checksum.
pub(super) fn stream_file(path: PathBuf, sha256: String) -> BoxStream<v1::Blob> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let result: std::io::Result<()> = async {
            let mut file = tokio::fs::File::open(&path).await?;
            let total = file.metadata().await?.len();
            let mut first = true;
            loop {
                let mut buf = vec![0u8; proto::BLOB_PIECE];
                let n = file.read(&mut buf).await?;
                if n == 0 && !first {
                    break;
                }
                buf.truncate(n);
                let blob = if first {
                    v1::Blob { total_size: total, sha256: sha256.clone(), data: buf }
                } else {
                    v1::Blob { data: buf, ..Default::default() }
                };
                first = false;
                if tx.send(Ok(blob)).await.is_err() || n == 0 {
                    break;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let op = format!("sending {}", path.display());
            let _ = tx.send(Err(Status::from(Error::Store { op, source: e }))).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// A file being received into the scratch directory. Pieces go to a blocking thread that hashes
/// and writes them while the next ones arrive (hashing 75 MB inline, and a `tokio::fs` round
/// trip per piece, held a 1080p upload to about 90 MB/s on loopback). Removed on drop unless
/// it was handed to the store.
pub(crate) struct Incoming {
    pub(crate) path: PathBuf,
    /// The size its sender declared: bytes beyond it are refused as they arrive, so a sender
    /// cannot fill the disk with an upload that will fail its checks at the end.
    declared: u64,
    received: u64,
    pieces: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    writer: Option<tokio::task::JoinHandle<std::io::Result<(u64, String)>>>,
    /// What errors call the upload (`chunk of job 7`).
    what: String,
}

impl Incoming {
    pub(super) async fn create(dir: &Path, name: String, declared: u64) -> Result<Self> {
        let path = dir.join(unique_name(&name));
        let what = format!("receiving {name}");
        let file = std::fs::File::create(&path).map_err(Error::store(what.clone()))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
            let (mut hasher, mut size) = (Sha256::new(), 0u64);
            while let Some(piece) = rx.blocking_recv() {
                hasher.update(&piece);
                size += piece.len() as u64;
                file.write_all(&piece)?;
            }
            // Flushed, not synced: the store syncs the file once, when it keeps it.
            file.flush()?;
            Ok((size, proto::params::hex(&hasher.finalize())))
        });
        Ok(Self { path, declared, received: 0, pieces: Some(tx), writer: Some(writer), what })
    }

    pub(super) async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        self.received += data.len() as u64;
        if self.received > self.declared {
            let message = format!("more than the declared {} bytes arrived ({})", self.declared, self.what);
            return Err(Error::invalid("upload", message));
        }
        let sent = self.pieces.as_ref().expect("open until finished").send(data).await;
        if sent.is_err() {
            // The writer stopped on an error; `finish` reports it.
            self.pieces = None;
            return Err(self
                .written()
                .await
                .err()
                .unwrap_or_else(|| Error::store(self.what.clone())(std::io::Error::other("writer stopped"))));
        }
        Ok(())
    }

    async fn written(&mut self) -> Result<(u64, String)> {
        self.pieces = None;
        let writer = self.writer.take().expect("finished once");
        writer.await.expect("the upload writer panicked").map_err(Error::store(self.what.clone()))
    }

    /// Waits for the last piece to be written, then checks size and checksum against what the
    /// sender declared.
    pub(crate) async fn finish(&mut self, field: &'static str, size: u64, sha256: &str) -> Result<()> {
        let (received, actual) = self.written().await?;
        if received != size || actual != sha256 {
            return Err(Error::invalid(
                field,
                format!(
                    "checksum mismatch: declared {size} bytes with sha256 {sha256}, received {received} bytes with sha256 {actual}"
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
