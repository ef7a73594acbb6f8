//! Output encoders. Every output is written to a temporary file beside its destination and
//! renamed into place only when complete, so a failed or interrupted render never leaves a
//! half-written file under the name the user asked for.

use crate::error::ParamError;
use crate::params::Fps;
use crate::segment::Frame;
use ffmpeg_next as ffmpeg;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("ffmpeg: {0}")]
    Ffmpeg(String),
    #[error("gif: {0}")]
    Gif(String),
    #[error("image: {0}")]
    Image(String),
    /// A destination that cannot name a file: empty, or ending in `..`.
    #[error("{} is not a file path", .0.display())]
    NotAFile(PathBuf),
    #[error("{} is a directory", .0.display())]
    IsADirectory(PathBuf),
    #[error("cannot write to {}: {reason}", dir.display())]
    Unwritable { dir: PathBuf, reason: String },
}

fn ff(context: &'static str) -> impl Fn(ffmpeg::Error) -> EncodeError {
    move |e| EncodeError::Ffmpeg(format!("{context}: {e}"))
}

pub use proto::params::OutputKind;

/// A file being written under a temporary name; `commit` renames it into place, dropping it
/// without `commit` deletes it.
pub struct PartialFile {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Creates the temporary file right away, so an unwritable destination fails before any
    /// rendering starts.
    pub fn create(dest: &Path) -> Result<Self, EncodeError> {
        let name = dest.file_name().ok_or_else(|| EncodeError::NotAFile(dest.to_path_buf()))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dest.is_dir() {
            return Err(EncodeError::IsADirectory(dest.to_path_buf()));
        }
        let tmp = dir.join(format!(".{}.{}.partial", name.to_string_lossy(), std::process::id()));
        File::create(&tmp).map_err(|e| EncodeError::Unwritable { dir, reason: e.to_string().to_lowercase() })?;
        Ok(Self { tmp, dest: dest.to_path_buf(), committed: false })
    }

    /// `create` for a destination the user named with `option` (`--output`): its errors name it.
    pub fn for_option(option: &'static str, dest: &Path) -> Result<Self, ParamError> {
        Self::create(dest).map_err(|e| ParamError::new(option, e.to_string()))
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> Result<(), EncodeError> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|source| EncodeError::Io { path: self.dest.clone(), source })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Where frames go, in order.
pub trait FrameSink {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError>;
    /// Like `push`, for a frame the caller no longer needs (a sink on another thread takes it
    /// without a copy).
    fn push_owned(&mut self, frame: Frame) -> Result<(), EncodeError> {
        self.push(&frame)
    }
    /// Completes the output; only then does it appear under its final name.
    fn finish(self: Box<Self>) -> Result<(), EncodeError>;
}

/// Opens the sink for `kind` writing to `file`.
pub fn open(
    kind: OutputKind,
    file: PartialFile,
    width: u32,
    height: u32,
    fps: Fps,
) -> Result<Box<dyn FrameSink>, EncodeError> {
    Ok(match kind {
        OutputKind::Mp4 => Box::new(Mp4::new(file, width, height, fps)?),
        OutputKind::Gif => Box::new(Gif::new(file, width, height, fps)?),
        OutputKind::Png | OutputKind::Jpeg => Box::new(Still { file, kind, last: None }),
    })
}

/// H.264 in MP4, yuv420p, moov atom at the front.
pub struct Mp4 {
    file: Option<PartialFile>,
    octx: ffmpeg::format::context::Output,
    encoder: ffmpeg::encoder::Video,
    scaler: ffmpeg::software::scaling::Context,
    codec_tb: ffmpeg::Rational,
    stream_tb: ffmpeg::Rational,
    width: u32,
    height: u32,
    next_pts: i64,
}

/// x264 threads per encoder (see `Mp4::new`).
pub const ENCODER_THREADS: usize = 4;

/// The instruction sets x264 may use, where its own choice would not do: on a CPU with AVX-512,
/// AVX2 and below. With its AVX-512 functions, x264 encoded the same frames to different bytes
/// now and then on a loaded machine (one macroblock of a frame, 4 to 9% of runs of the test
/// below with other work in the process; at any thread count, one included, and with identical
/// input planes), and never in 108 runs without them; AVX2 is also faster there (1080p: 3.1 s
/// against 3.9 s for 120 frames), and the bytes are then those of an AVX2 machine's, so workers
/// with and without AVX-512 encode a chunk alike.
fn x264_instructions() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return Some("AVX2");
    }
    None
}

impl Mp4 {
    pub fn new(file: PartialFile, width: u32, height: u32, fps: Fps) -> Result<Self, EncodeError> {
        use ffmpeg::format::Pixel;
        ffmpeg::init().map_err(ff("init"))?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        let mut octx = ffmpeg::format::output_as(file.path(), "mp4").map_err(ff("open output"))?;
        let codec = ffmpeg::encoder::find_by_name("libx264")
            .ok_or_else(|| EncodeError::Ffmpeg("libx264 encoder not available".into()))?;
        let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let codec_tb = ffmpeg::Rational(fps.den as i32, fps.num as i32);
        let mut enc =
            ffmpeg::codec::context::Context::new_with_codec(codec).encoder().video().map_err(ff("video encoder"))?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(codec_tb);
        enc.set_frame_rate(Some(ffmpeg::Rational(fps.num as i32, fps.den as i32)));
        enc.set_colorspace(ffmpeg::color::Space::SMPTE170M);
        enc.set_color_range(ffmpeg::color::Range::MPEG);
        if global_header {
            enc.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ffmpeg::Dictionary::new();
        opts.set("crf", "18");
        opts.set("preset", "medium");
        // A fixed thread count, not x264's default of one and a half per CPU: x264's output
        // depends on its thread count, so with the default the same frames encoded differently on
        // machines with other numbers of CPUs (or CPU masks), and a movie stitched from several
        // workers' chunks was not the one a single render makes. Four frame threads keep up with
        // 1080p frames from a GPU. With the count fixed, the same frames give the same bytes
        // however loaded the machine is (tested below).
        opts.set("threads", &ENCODER_THREADS.to_string());
        if let Some(asm) = x264_instructions() {
            opts.set("x264-params", &format!("asm={asm}"));
        }
        let encoder = enc.open_with(opts).map_err(ff("open libx264"))?;
        {
            let mut ost = octx.add_stream(codec).map_err(ff("add stream"))?;
            ost.set_parameters(&encoder);
            ost.set_time_base(codec_tb);
        }
        let mut mux = ffmpeg::Dictionary::new();
        mux.set("movflags", "+faststart");
        octx.write_header_with(mux).map_err(ff("write header"))?;
        let stream_tb = octx.stream(0).expect("stream 0 was added").time_base();
        let scaler = ffmpeg::software::scaling::Context::get(
            Pixel::RGB24,
            width,
            height,
            Pixel::YUV420P,
            width,
            height,
            ffmpeg::software::scaling::Flags::BICUBIC,
        )
        .map_err(ff("scaler"))?;
        Ok(Self { file: Some(file), octx, encoder, scaler, codec_tb, stream_tb, width, height, next_pts: 0 })
    }

    fn drain(&mut self) -> Result<(), EncodeError> {
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            // FFmpeg 5.1's libx264 wrapper leaves durations at 0, and the MP4 muxer then gives
            // the last frame no time: players and decoders drop it. One frame = 1 codec tick.
            packet.set_duration(1);
            packet.rescale_ts(self.codec_tb, self.stream_tb);
            packet.write_interleaved(&mut self.octx).map_err(ff("write packet"))?;
        }
        Ok(())
    }
}

impl FrameSink for Mp4 {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        use ffmpeg::format::Pixel;
        let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, self.width, self.height);
        let stride = rgb.stride(0);
        let row = self.width as usize * 3;
        let data = rgb.data_mut(0);
        for (y, src) in frame.rgb.chunks_exact(row).enumerate() {
            data[y * stride..y * stride + row].copy_from_slice(src);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        self.scaler.run(&rgb, &mut yuv).map_err(ff("convert to yuv420p"))?;
        yuv.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder.send_frame(&yuv).map_err(ff("encode"))?;
        self.drain()
    }

    fn finish(mut self: Box<Self>) -> Result<(), EncodeError> {
        self.encoder.send_eof().map_err(ff("flush"))?;
        self.drain()?;
        self.octx.write_trailer().map_err(ff("write trailer"))?;
        self.file.take().expect("finish runs once").commit()
    }
}

/// Looping GIF with a palette per frame (NeuQuant), so colours stay faithful to the texture.
pub struct Gif {
    file: Option<PartialFile>,
    encoder: gif::Encoder<BufWriter<File>>,
    fps: Fps,
}

impl Gif {
    pub fn new(file: PartialFile, width: u32, height: u32, fps: Fps) -> Result<Self, EncodeError> {
        let io = |source| EncodeError::Io { path: file.path().to_path_buf(), source };
        let out = BufWriter::new(File::create(file.path()).map_err(io)?);
        let (w, h) = (u16::try_from(width), u16::try_from(height));
        let (Ok(w), Ok(h)) = (w, h) else {
            return Err(EncodeError::Gif(format!(
                "gif frames are at most 65535 pixels wide and high, got {width}x{height}"
            )));
        };
        let mut encoder = gif::Encoder::new(out, w, h, &[]).map_err(|e| EncodeError::Gif(e.to_string()))?;
        encoder.set_repeat(gif::Repeat::Infinite).map_err(|e| EncodeError::Gif(e.to_string()))?;
        Ok(Self { file: Some(file), encoder, fps })
    }

    /// Delay of frame n in centiseconds, rounded so that the running total is exact:
    /// 30 fps gives 3, 3, 4, 3, 3, 4, ...
    fn delay_cs(&self, n: u64) -> u16 {
        let end = |k: u64| (k as u128 * 100 * self.fps.den as u128 + self.fps.num as u128 / 2) / self.fps.num as u128;
        (end(n + 1) - end(n)) as u16
    }
}

impl FrameSink for Gif {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        let mut f = gif::Frame::from_rgb_speed(frame.width as u16, frame.height as u16, &frame.rgb, 10);
        // Delays follow the frame's index in the whole movie, so a chunk of a segmented movie
        // carries exactly the delays the same frames have in a movie encoded in one piece.
        f.delay = self.delay_cs(frame.index as u64);
        self.encoder.write_frame(&f).map_err(|e| EncodeError::Gif(e.to_string()))
    }

    fn finish(mut self: Box<Self>) -> Result<(), EncodeError> {
        let file = self.file.take().expect("finish runs once");
        let out =
            self.encoder.into_inner().map_err(|source| EncodeError::Io { path: file.path().to_path_buf(), source })?;
        out.into_inner()
            .map_err(|e| EncodeError::Io { path: file.path().to_path_buf(), source: e.into_error() })?
            .sync_all()
            .ok();
        file.commit()
    }
}

/// A still: the last frame, as PNG or JPEG.
pub struct Still {
    file: PartialFile,
    kind: OutputKind,
    last: Option<Frame>,
}

impl FrameSink for Still {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        self.last = Some(frame.clone());
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), EncodeError> {
        let frame = self.last.ok_or_else(|| EncodeError::Image("no frame was rendered".into()))?;
        let format = if self.kind == OutputKind::Png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        frame.to_image().save_with_format(self.file.path(), format).map_err(|e| EncodeError::Image(e.to_string()))?;
        self.file.commit()
    }
}

/// Every frame as a lossless PNG, `frame_000000.png` and so on, each written atomically.
pub struct FramesDir {
    dir: PathBuf,
}

impl FramesDir {
    pub fn create(dir: &Path) -> Result<Self, ParamError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ParamError::new(
                "--frames-dir",
                format!("cannot create {}: {}", dir.display(), e.to_string().to_lowercase()),
            )
        })?;
        // Fail now, not after the first hour of rendering, when the directory is read-only.
        drop(PartialFile::for_option("--frames-dir", &dir.join("probe.png"))?);
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn frame_path(dir: &Path, index: u32) -> PathBuf {
        dir.join(format!("frame_{index:06}.png"))
    }
}

impl FrameSink for FramesDir {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        let file = PartialFile::create(&Self::frame_path(&self.dir, frame.index))?;
        frame
            .to_image()
            .save_with_format(file.path(), image::ImageFormat::Png)
            .map_err(|e| EncodeError::Image(e.to_string()))?;
        file.commit()
    }

    fn finish(self: Box<Self>) -> Result<(), EncodeError> {
        Ok(())
    }
}

mod threaded;
pub use threaded::Threaded;

/// Several sinks fed the same frames.
pub struct Tee(pub Vec<Box<dyn FrameSink>>);

impl FrameSink for Tee {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        self.0.iter_mut().try_for_each(|s| s.push(frame))
    }

    fn finish(self: Box<Self>) -> Result<(), EncodeError> {
        self.0.into_iter().try_for_each(|s| s.finish())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Frames with texture and motion: a pattern that drifts and zooms, as a zoom movie does.
    pub(crate) fn frames(width: u32, height: u32, count: u32) -> Vec<Frame> {
        (0..count)
            .map(|t| {
                let mut rgb = Vec::with_capacity((width * height * 3) as usize);
                let s = 1.0 + f64::from(t) * 0.03;
                for y in 0..height {
                    for x in 0..width {
                        let u = (f64::from(x) - f64::from(width) / 2.0) / s;
                        let v = (f64::from(y) - f64::from(height) / 2.0) / s;
                        let h =
                            ((u * 0.37).sin() * 97.0 + (v * 0.23).cos() * 61.0 + (u * v * 0.011).sin() * 43.0) as i64;
                        let n = (h.wrapping_mul(2_654_435_761) >> 7) as u8;
                        rgb.extend_from_slice(&[n, n.wrapping_add((u * 3.0) as u8), n ^ (v as u8)]);
                    }
                }
                Frame { index: t, width, height, rgb }
            })
            .collect()
    }

    /// Encodes `frames` as an MP4 chunk, waiting `pause(i)` ms before frame i, as a render
    /// between frames would.
    pub(crate) fn encode(dir: &Path, name: &str, frames: &[Frame], pause: impl Fn(usize) -> u64) -> Vec<u8> {
        let dest = dir.join(name);
        let (w, h) = (frames[0].width, frames[0].height);
        let mut sink =
            open(OutputKind::Mp4, PartialFile::create(&dest).unwrap(), w, h, Fps { num: 30, den: 1 }).unwrap();
        for (i, f) in frames.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(pause(i)));
            sink.push(f).unwrap();
        }
        sink.finish().unwrap();
        std::fs::read(&dest).unwrap()
    }

    /// The same frames make the same chunk whoever encodes them: the coordinator stitches chunks
    /// from several workers, and a movie must not depend on which ones, nor on how busy they were.
    #[test]
    fn the_same_frames_encode_to_the_same_bytes_however_loaded_the_machine_is() {
        let dir = tempfile::tempdir().unwrap();
        // A short chunk (a preempted split) and one long enough for B-frames and the lookahead.
        for frames in [frames(64, 48, 6), frames(96, 64, 30)] {
            let quiet = encode(dir.path(), "quiet.mp4", &frames, |_| 0);
            let stop = Arc::new(AtomicBool::new(false));
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let hogs: Vec<_> = (0..cores * 3)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut x = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                        }
                    })
                })
                .collect();
            // Busy cores, and frames arriving at other paces, as renders of other speeds deliver them.
            let loaded: Vec<Vec<u8>> = (0..8)
                .map(|i| encode(dir.path(), &format!("loaded-{i}.mp4"), &frames, |f| ((f * 7 + i * 13) % 5) as u64 * 3))
                .collect();
            stop.store(true, Ordering::Relaxed);
            for h in hogs {
                h.join().unwrap();
            }
            let differing: Vec<usize> = (0..loaded.len()).filter(|&i| loaded[i] != quiet).collect();
            assert!(differing.is_empty(), "{} frames: encodes {differing:?} under load differ", frames.len());
            // A machine with fewer CPUs (or a pod's CPU mask): x264 sizes its default thread
            // count from the encoding thread's mask, so this is the case that tells a fixed
            // count from the default (where there is more than one CPU to take away).
            let one_cpu = std::thread::scope(|s| {
                s.spawn(|| {
                    only_the_first_cpu();
                    encode(dir.path(), "one-cpu.mp4", &frames, |_| 0)
                })
                .join()
                .unwrap()
            });
            assert!(one_cpu == quiet, "{} frames: the encode on one CPU differs", frames.len());
        }
    }

    /// Limits the calling thread (and the threads it starts) to the first CPU it may run on.
    /// Test-only `unsafe` (std has no CPU masks); the engine's own is in `tf32`.
    #[allow(unsafe_code)]
    fn only_the_first_cpu() {
        // SAFETY: cpu_set_t is plain data; the calls get its exact size and only this thread's
        // (pid 0) mask is read and written.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
            let first = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set)).unwrap();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(first, &mut set);
            assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
        }
    }
}
