//! The latest preview of each job, for the dashboard: only in memory (never in the database),
//! only the newest per job, and at most [`MAX_PREVIEWED_JOBS`] jobs, so a farm of any size holds
//! at most `MAX_PREVIEWED_JOBS` x 64 KiB of previews. A job past the bound loses its preview,
//! oldest first; a job's next heartbeat brings one again.
//!
//! A preview comes from a worker: it is decoded before it is kept, so the dashboard never hands
//! a browser bytes that are not a small JPEG.

use crate::db::JobId;
use crate::error::{Error, Result};
use proto::limits::{MAX_PREVIEW_BYTES, MAX_PREVIEW_SIDE};
use proto::v1;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Jobs whose latest preview is kept.
pub const MAX_PREVIEWED_JOBS: usize = 256;

/// One kept preview.
#[derive(Debug, Clone)]
pub struct Preview {
    pub jpeg: Arc<[u8]>,
    /// The movie's frame it shows.
    pub frame: u32,
    pub width: u32,
    pub height: u32,
    /// Bumped on every new preview of any job: an ETag, and what live pages compare.
    pub version: u64,
}

#[derive(Default)]
pub struct Previews {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<JobId, Preview>,
    version: u64,
}

impl Previews {
    /// Keeps `preview` as `job`'s latest, forgetting the stalest job's when over the bound.
    pub fn put(&self, job: JobId, jpeg: Vec<u8>, frame: u32, (width, height): (u32, u32)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.version += 1;
        let version = inner.version;
        inner.jobs.insert(job, Preview { jpeg: jpeg.into(), frame, width, height, version });
        while inner.jobs.len() > MAX_PREVIEWED_JOBS {
            let Some(stalest) = inner.jobs.iter().min_by_key(|(_, p)| p.version).map(|(&j, _)| j) else { break };
            inner.jobs.remove(&stalest);
        }
    }

    pub fn get(&self, job: JobId) -> Option<Preview> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).jobs.get(&job).cloned()
    }

    pub fn remove(&self, job: JobId) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).jobs.remove(&job);
    }

    /// Bytes of JPEG held, for the bound's test and the metrics.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).jobs.values().map(|p| p.jpeg.len()).sum()
    }
}

/// Checks a worker's preview: a JPEG of at most [`MAX_PREVIEW_BYTES`] and
/// [`MAX_PREVIEW_SIDE`] pixels a side that decodes whole. Returns its size. Blocking (decodes).
pub fn check(preview: &v1::Preview) -> Result<(u32, u32)> {
    let bad = |m: String| Error::invalid("preview", m);
    if preview.jpeg.len() > MAX_PREVIEW_BYTES {
        return Err(bad(format!("is {} bytes, at most {MAX_PREVIEW_BYTES} allowed", preview.jpeg.len())));
    }
    let reader = image::ImageReader::with_format(std::io::Cursor::new(&preview.jpeg), image::ImageFormat::Jpeg);
    let (w, h) = reader.into_dimensions().map_err(|e| bad(format!("is not a JPEG: {e}")))?;
    if w > MAX_PREVIEW_SIDE || h > MAX_PREVIEW_SIDE || w == 0 || h == 0 {
        return Err(bad(format!("is {w}x{h}; at most {MAX_PREVIEW_SIDE} pixels a side allowed")));
    }
    image::load_from_memory_with_format(&preview.jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| bad(format!("does not decode: {e}")))?;
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&img).unwrap();
        out
    }

    #[test]
    fn previews_stay_bounded_whatever_the_number_of_jobs_and_the_newest_win() {
        let previews = Previews::default();
        let big = vec![0u8; MAX_PREVIEW_BYTES];
        for job in 0..(MAX_PREVIEWED_JOBS as i64 * 4) {
            previews.put(JobId(job), big.clone(), 1, (320, 180));
            previews.put(JobId(job), big.clone(), 2, (320, 180)); // a newer one replaces, never adds
        }
        assert!(previews.bytes() <= MAX_PREVIEWED_JOBS * MAX_PREVIEW_BYTES, "{} bytes", previews.bytes());
        let last = MAX_PREVIEWED_JOBS as i64 * 4 - 1;
        assert_eq!(previews.get(JobId(last)).map(|p| p.frame), Some(2), "the latest job's newest preview is kept");
        assert!(previews.get(JobId(0)).is_none(), "the stalest job's preview was dropped");
        // A job that keeps sending stays, however many others arrive after it.
        previews.put(JobId(0), jpeg(8, 8), 9, (8, 8));
        for job in 10_000..10_000 + MAX_PREVIEWED_JOBS as i64 - 1 {
            previews.put(JobId(job), jpeg(8, 8), 1, (8, 8));
        }
        assert_eq!(previews.get(JobId(0)).map(|p| p.frame), Some(9));
        previews.remove(JobId(0));
        assert!(previews.get(JobId(0)).is_none());
    }

    #[test]
    fn only_small_whole_jpegs_are_accepted() {
        assert_eq!(check(&v1::Preview { jpeg: jpeg(320, 180), frame: 3 }).unwrap(), (320, 180));
        // Cut inside its header: a JPEG cut in its picture data still decodes (grey at the end),
        // which is harmless.
        let mut cut = jpeg(320, 180);
        cut.truncate(100);
        let png = {
            let mut out = std::io::Cursor::new(Vec::new());
            image::RgbImage::new(8, 8).write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        for (bytes, want) in [
            (jpeg(641, 100), "preview: is 641x100; at most 640 pixels a side allowed"),
            (vec![0xff; MAX_PREVIEW_BYTES + 1], "preview: is 65537 bytes, at most 65536 allowed"),
            (png, "preview: is not a JPEG"),
            (cut, "preview: "),
            (Vec::new(), "preview: is not a JPEG"),
        ] {
            let err = check(&v1::Preview { jpeg: bytes, frame: 0 }).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }
}
