//! Content checks of a completed segment's upload. A checksum proves the bytes arrived as sent,
//! not that they are what the job needs: a garbage "MP4" with a matching checksum used to be
//! accepted and then failed the job at stitching, and a garbage state failed the next, honest
//! worker three times. So before a completion is recorded, the chunk must demux as the job's
//! format with the job's size and exactly the segment's frames (an MP4 starting on a key
//! frame), and the state must parse as a hand-off state of the job's size that ends where the
//! segment ends. A failure is charged to the attempt that uploaded it.

use ffmpeg_next as ffmpeg;
use proto::params::OutputKind;
use std::path::Path;

/// What a segment's upload must hold.
#[derive(Debug, Clone)]
pub struct Expected {
    pub kind: OutputKind,
    pub width: u32,
    pub height: u32,
    pub start_frame: u32,
    pub end_frame: u32,
    /// The optimiser the job renders with (`OptimizerKind::name`).
    pub optimizer: &'static str,
    /// The render fingerprint every state of the job carries, computed by the coordinator
    /// from the job's parameters, its style and the weights the producing worker registered
    /// (`None` when that worker registered no weights for the job's network: then only the
    /// agreement with the start state's fingerprint is checked).
    pub fingerprint: Option<String>,
}

/// Checks an encoded chunk; the error says what is wrong with it. Returns its format: what
/// every chunk of a job must share with the first to be joined without re-encoding (the
/// container, the codec and its parameters); the caller compares it with the job's first.
pub fn chunk(path: &Path, want: &Expected) -> Result<String, String> {
    let frames = want.end_frame - want.start_frame;
    match want.kind {
        OutputKind::Mp4 => mp4(path, want, frames),
        OutputKind::Gif => gif(path, want, frames).map(|()| format!("gif {}x{}", want.width, want.height)),
        OutputKind::Png | OutputKind::Jpeg => still(path, want).map(|()| String::new()),
    }
}

fn size_check(what: &str, (w, h): (u32, u32), want: &Expected) -> Result<(), String> {
    if (w, h) != (want.width, want.height) {
        return Err(format!("{what} is {w}x{h}, the job renders {}x{}", want.width, want.height));
    }
    Ok(())
}

fn mp4(path: &Path, want: &Expected, frames: u32) -> Result<String, String> {
    ffmpeg::init().map_err(|e| format!("ffmpeg: {e}"))?;
    let mut input = ffmpeg::format::input(path).map_err(|e| format!("not an MP4 file: {e}"))?;
    // FFmpeg probes the content, whatever the name: a raw H.264 stream (Annex B) demuxes too,
    // but its packets cannot be copied into the MP4 the chunks are joined into.
    let container = input.format().name().to_string();
    if !container.split(',').any(|n| n == "mp4") {
        return Err(format!("not an MP4 file: FFmpeg reads it as {}", proto::limits::quoted_prefix(&container)));
    }
    let (index, codec, size, format) = {
        let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or("an MP4 without a video stream")?;
        let params = stream.parameters();
        let decoder = ffmpeg::codec::context::Context::from_parameters(params.clone())
            .and_then(|c| c.decoder().video())
            .map_err(|e| format!("unreadable video stream: {e}"))?;
        let format = format!(
            "mp4 {:?} profile {:?} {:?} {}x{} b-frames {} references {}",
            params.id(),
            decoder.profile(),
            decoder.format(),
            decoder.width(),
            decoder.height(),
            decoder.has_b_frames(),
            decoder.references()
        );
        (stream.index(), params.id(), (decoder.width(), decoder.height()), format)
    };
    if codec != ffmpeg::codec::Id::H264 {
        return Err(format!("the video stream is {codec:?}, expected H264"));
    }
    size_check("the video", size, want)?;
    let mut packets = 0u32;
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        if packets == 0 && !packet.is_key() {
            return Err("the video does not start with a key frame, so it cannot be joined".into());
        }
        packets += 1;
    }
    if packets != frames {
        return Err(format!("the video holds {packets} frames, the segment has {frames}"));
    }
    Ok(format)
}

fn gif(path: &Path, want: &Expected, frames: u32) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = options.read_info(std::io::BufReader::new(file)).map_err(|e| format!("not a GIF: {e}"))?;
    size_check("the GIF", (u32::from(decoder.width()), u32::from(decoder.height())), want)?;
    let mut count = 0u32;
    while decoder.read_next_frame().map_err(|e| format!("a broken GIF frame: {e}"))?.is_some() {
        count += 1;
        if count > frames {
            break;
        }
    }
    if count != frames {
        return Err(format!("the GIF holds {count} frames, the segment has {frames}"));
    }
    Ok(())
}

fn still(path: &Path, want: &Expected) -> Result<(), String> {
    let format = match want.kind {
        OutputKind::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    let mut reader = image::ImageReader::open(path).map_err(|e| e.to_string())?;
    reader.set_format(format);
    let image = reader.decode().map_err(|e| format!("not a {format:?} image: {e}"))?;
    size_check("the image", (image.width(), image.height()), want)
}

/// Checks a hand-off state as the next worker's loader will: its format and contents
/// (`proto::handoff::parse`: checksum, the optimiser's tensors and scalars, finite values, no
/// unknown tensors), the job's optimiser and shape, that it ends where the segment ends, and
/// that it carries the job's render fingerprint (computed here, so segment 0's state is checked
/// too) and that of the state it started from. Returns the fingerprint, which the coordinator
/// keeps with the attempt.
pub fn state(path: &Path, want: &Expected, start_fingerprint: Option<&str>) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let parsed = proto::handoff::parse(&bytes).map_err(|e| format!("not a hand-off state: {e}"))?;
    let header = &parsed.header;
    let found = header.fingerprint.as_str();
    if found.is_empty() {
        return Err("the state has no render fingerprint".into());
    }
    for f in [want.fingerprint.as_deref(), start_fingerprint].into_iter().flatten() {
        if f != found {
            return Err(format!(
                "the state was made by another render (fingerprint {}), this job's is {}",
                proto::limits::quoted_prefix(found),
                proto::limits::quoted_prefix(f)
            ));
        }
    }
    if parsed.optimizer() != want.optimizer {
        return Err(format!(
            "the state is for the {} optimiser, the job renders with {}",
            proto::limits::quoted_prefix(parsed.optimizer()),
            want.optimizer
        ));
    }
    if header.next_frame != want.end_frame {
        return Err(format!(
            "the state resumes at frame {}, the segment ends at {}",
            header.next_frame, want.end_frame
        ));
    }
    let shape = [1, 3, want.height as usize, want.width as usize];
    for (name, dims, _) in &parsed.tensors {
        if dims.as_slice() != shape {
            return Err(format!("tensor {:?} is {dims:?}, expected {shape:?}", proto::limits::quoted_prefix(name)));
        }
    }
    Ok(found.to_string())
}
