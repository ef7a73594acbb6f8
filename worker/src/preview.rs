//! Previews for the dashboard. Now and then (`--preview-secs`) the render thread shrinks the
//! frame it just rendered to about [`PREVIEW_WIDTH`] pixels wide and encodes it as JPEG; the
//! next heartbeat takes it along. A segment's last frame is always kept: it goes with the upload
//! and becomes the poster of the movie when it is the movie's last.
//!
//! Shrinking and encoding a 1080p frame costs a few milliseconds on the render thread, once
//! every few seconds, against frames that take tens of milliseconds at least.

use engine::Frame;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageBuffer, Rgb};
use proto::limits::MAX_PREVIEW_BYTES;
use proto::v1;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Width of a preview; a smaller movie's frames are kept at their own size.
pub const PREVIEW_WIDTH: u32 = 320;

/// The previews of one attempt's render: written by the render thread, taken by the heartbeats
/// and the upload.
#[derive(Default)]
pub(crate) struct Previews {
    /// How often a preview is made; `None`: never (the segment's last frame still is).
    every: Option<Duration>,
    last_made: Mutex<Option<Instant>>,
    latest: Mutex<Option<v1::Preview>>,
    poster: Mutex<Option<v1::Preview>>,
}

impl Previews {
    pub fn new(every: Option<Duration>) -> Self {
        Self { every, ..Self::default() }
    }

    /// Called with every rendered frame, on the render thread.
    pub fn offer(&self, frame: &Frame, last_of_segment: bool) {
        let now = Instant::now();
        let due =
            self.every.is_some_and(|every| lock(&self.last_made).is_none_or(|last| now.duration_since(last) >= every));
        if !(due || last_of_segment) {
            return;
        }
        *lock(&self.last_made) = Some(now);
        let Some(preview) = encode(frame) else { return };
        if last_of_segment {
            *lock(&self.poster) = Some(preview.clone());
        }
        if self.every.is_some() {
            *lock(&self.latest) = Some(preview);
        }
    }

    /// The preview made since the last heartbeat took one, if any.
    pub fn take_latest(&self) -> Option<v1::Preview> {
        lock(&self.latest).take()
    }

    /// The segment's last frame, once rendered.
    pub fn take_poster(&self) -> Option<v1::Preview> {
        lock(&self.poster).take()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `frame` shrunk to [`PREVIEW_WIDTH`] pixels wide (never enlarged) as a JPEG of at most
/// [`MAX_PREVIEW_BYTES`]; `None` only if even the lowest quality tried does not fit.
pub fn encode(frame: &Frame) -> Option<v1::Preview> {
    let image = ImageBuffer::<Rgb<u8>, &[u8]>::from_raw(frame.width, frame.height, &frame.rgb)?;
    let width = frame.width.min(PREVIEW_WIDTH);
    let height = ((u64::from(frame.height) * u64::from(width)) / u64::from(frame.width.max(1))).max(1) as u32;
    let small = image::imageops::thumbnail(&image, width, height);
    for quality in [82, 60, 35] {
        let mut jpeg = Vec::new();
        if JpegEncoder::new_with_quality(&mut jpeg, quality).encode_image(&small).is_err() {
            return None;
        }
        if jpeg.len() <= MAX_PREVIEW_BYTES {
            return Some(v1::Preview { jpeg, frame: frame.index });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(width: u32, height: u32, index: u32) -> Frame {
        let mut x = 0x9e37_79b9u32.wrapping_add(index);
        let rgb = (0..width * height * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        Frame { index, width, height, rgb }
    }

    #[test]
    fn a_preview_is_a_small_jpeg_of_the_frame_within_the_byte_limit() {
        // Noise is the worst case for JPEG: it must still fit, at a lower quality.
        for (w, h, want) in [(1920, 1080, (320, 180)), (3840, 2160, (320, 180)), (200, 100, (200, 100))] {
            let p = encode(&noise(w, h, 7)).expect("a preview");
            assert!(p.jpeg.len() <= MAX_PREVIEW_BYTES, "{w}x{h}: {} bytes", p.jpeg.len());
            let decoded = image::load_from_memory(&p.jpeg).expect("a JPEG");
            assert_eq!((decoded.width(), decoded.height()), want);
            assert_eq!(p.frame, 7);
        }
    }

    #[test]
    fn previews_come_at_most_every_interval_and_the_last_frame_always_becomes_the_poster() {
        let previews = Previews::new(Some(Duration::from_secs(3600)));
        previews.offer(&noise(64, 48, 0), false);
        assert_eq!(previews.take_latest().map(|p| p.frame), Some(0), "the first frame is due at once");
        previews.offer(&noise(64, 48, 1), false);
        assert!(previews.take_latest().is_none(), "made again within the interval");
        previews.offer(&noise(64, 48, 2), true);
        assert_eq!(previews.take_poster().map(|p| p.frame), Some(2));
        assert_eq!(previews.take_latest().map(|p| p.frame), Some(2));
        let off = Previews::new(None);
        off.offer(&noise(64, 48, 0), false);
        off.offer(&noise(64, 48, 1), true);
        assert!(off.take_latest().is_none());
        assert_eq!(off.take_poster().map(|p| p.frame), Some(1), "a poster even with previews off");
    }
}
