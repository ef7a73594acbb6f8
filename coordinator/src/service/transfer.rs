//! Large payloads, in 1 MiB pieces both ways: a stored file goes out as a `Blob` stream whose
//! first piece declares size and checksum; an upload comes into scratch, hashed as it arrives,
//! and is checked against what its sender declared before anything uses it.

use crate::error::{Error, Result};
use proto::v1;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

/// `prefix` made unique within this coordinator's life, for scratch files of requests that may
/// run at once (the same style submitted twice, an upload retried while the first still runs).
pub(super) fn unique_name(prefix: &str) -> String {
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
            let _ = tx.send(Err(Status::from(Error::Store(e)))).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// A file being received into the scratch directory, hashed as it arrives; removed on drop
/// unless it was handed to the store.
pub(super) struct Incoming {
    pub(super) path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl Incoming {
    pub(super) async fn create(dir: &Path, name: String) -> Result<Self> {
        let path = dir.join(unique_name(&name));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Self { path, file: Some(file), hasher: Sha256::new(), size: 0 })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.file.as_mut().expect("open until finished").write_all(data).await?;
        Ok(())
    }

    /// Flushes, then checks size and checksum against what the sender declared.
    pub(super) async fn finish(&mut self, field: &'static str, size: u64, sha256: &str) -> Result<()> {
        let mut file = self.file.take().expect("finished once");
        file.flush().await?;
        file.sync_all().await?;
        let actual = proto::params::hex(&std::mem::take(&mut self.hasher).finalize());
        if self.size != size || actual != sha256 {
            return Err(Error::invalid(
                field,
                format!(
                    "checksum mismatch: declared {size} bytes with sha256 {sha256}, received {} bytes with sha256 {actual}",
                    self.size
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
