//! Joining a job's encoded chunks into its output, without re-encoding: H.264 packets are copied
//! into one MP4 (timestamps offset by each chunk's first frame, moov at the front), GIF frames
//! are copied with their own palettes and delays, and a still is the last segment's chunk.

use crate::error::{Error, Result};
use ffmpeg_next as ffmpeg;
use proto::params::{Fps, OutputKind};
use std::path::{Path, PathBuf};

/// One chunk and the frames it must hold.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub path: PathBuf,
    pub start_frame: u32,
    pub end_frame: u32,
}

impl Chunk {
    /// How errors name the chunk: by the frames it holds, which a user can relate to the job.
    pub fn name(&self) -> String {
        format!("chunk of frames {}..{} ({})", self.start_frame, self.end_frame, self.path.display())
    }

    /// A chunk must hold exactly its segment's frames, or the output's length would be wrong.
    fn check_frames(&self, frames: u32) -> Result<()> {
        let want = self.end_frame - self.start_frame;
        if frames != want {
            return Err(Error::Stitch(format!("{} holds {frames} frames, expected {want}", self.name())));
        }
        Ok(())
    }

    /// `e` as this chunk's fault, unless it can pass (a full disk): the stitch then says which
    /// segment to render again.
    fn blame(&self, e: Error) -> Error {
        if e.is_transient() || matches!(e, Error::BadChunk { .. }) {
            return e;
        }
        let message = match &e {
            Error::Stitch(m) => m.clone(),
            e => format!("{}: {e}", self.name()),
        };
        Error::BadChunk { start_frame: self.start_frame, message }
    }

    /// An FFmpeg error while reading this chunk.
    fn ff(&self, what: &str) -> impl Fn(ffmpeg::Error) -> Error {
        ff(format!("{what} {}", self.name()))
    }
}

pub fn stitch(kind: OutputKind, chunks: &[Chunk], fps: Fps, out: &Path) -> Result<()> {
    // The chunks must cover the movie once, in order: the muxer would take overlapping
    // timestamps and write a movie that stutters, and a gap would shorten it silently.
    let mut next = 0;
    for chunk in chunks {
        if chunk.start_frame != next || chunk.end_frame <= chunk.start_frame {
            return Err(Error::Stitch(format!("{} does not continue the movie at frame {next}", chunk.name())));
        }
        next = chunk.end_frame;
    }
    match kind {
        OutputKind::Mp4 => mp4(chunks, fps, out),
        OutputKind::Gif => gif(chunks, out),
        OutputKind::Png | OutputKind::Jpeg => {
            let last = chunks.last().ok_or_else(|| Error::Stitch("no chunks".into()))?;
            std::fs::copy(&last.path, out).map_err(Error::io(format!("copying {} to the output", last.name())))?;
            Ok(())
        }
    }
}

/// An FFmpeg error in `context`. One that carries an errno is an I/O error, which the
/// coordinator retries when the errno says it can pass (a full disk) and fails the job otherwise
/// (a missing chunk, EINVAL from a muxer that refuses a packet); the rest mean the chunks are
/// unusable.
fn ff(context: impl Into<String>) -> impl Fn(ffmpeg::Error) -> Error {
    let context = context.into();
    move |e| match e {
        ffmpeg::Error::Other { errno } => {
            Error::Io { op: context.clone(), source: std::io::Error::from_raw_os_error(errno) }
        }
        e => Error::Stitch(format!("{context}: {e}")),
    }
}

fn mp4(chunks: &[Chunk], fps: Fps, out: &Path) -> Result<()> {
    ffmpeg::init().map_err(ff("initialising ffmpeg"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    let mut octx = ffmpeg::format::output_as(out, "mp4").map_err(ff("opening the output"))?;
    // One frame lasts den/num seconds; chunk k starts start_frame of those in.
    let frame_tb = ffmpeg::Rational(fps.den as i32, fps.num as i32);
    // Decode timestamps run ahead of presentation by the encoder's reordering delay, which is
    // not the same in every chunk: one too short for B-frames has none, a longer one two frames.
    // Appended as they are, a short chunk's last decode time would meet the next chunk's first
    // (the muxer refuses that). So every chunk's decode times are moved back to the largest
    // delay of all: still before their presentation times, and increasing across chunks.
    let delays =
        chunks.iter().map(|c| reorder_delay(c, frame_tb).map_err(|e| c.blame(e))).collect::<Result<Vec<i64>>>()?;
    let most = delays.iter().copied().max().unwrap_or(0);
    let mut out_tb = frame_tb;
    for (i, chunk) in chunks.iter().enumerate() {
        append_mp4(i, chunk, &mut octx, frame_tb, &mut out_tb, most - delays[i]).map_err(|e| chunk.blame(e))?;
    }
    octx.write_trailer().map_err(ff("writing the output's trailer"))?;
    Ok(())
}

/// Copies chunk `i`'s packets into `octx` (the first also sets up the output's stream), its
/// decode times moved back by `back` frames.
fn append_mp4(
    i: usize,
    chunk: &Chunk,
    octx: &mut ffmpeg::format::context::Output,
    frame_tb: ffmpeg::Rational,
    out_tb: &mut ffmpeg::Rational,
    back: i64,
) -> Result<()> {
    {
        let mut ictx = ffmpeg::format::input(&chunk.path).map_err(chunk.ff("opening"))?;
        let (index, in_tb) = {
            let stream = ictx
                .streams()
                .best(ffmpeg::media::Type::Video)
                .ok_or_else(|| Error::Stitch(format!("{} has no video stream", chunk.name())))?;
            if i == 0 {
                let mut ost = octx
                    .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
                    .map_err(ff("adding the output's stream"))?;
                ost.set_parameters(stream.parameters());
                ost.set_time_base(frame_tb);
                let mut mux = ffmpeg::Dictionary::new();
                mux.set("movflags", "+faststart");
                octx.write_header_with(mux).map_err(ff("writing the output's header"))?;
                *out_tb = octx.stream(0).expect("stream 0 was added").time_base();
            }
            (stream.index(), stream.time_base())
        };
        let out_tb = *out_tb;
        let offset = ffmpeg::Rescale::rescale(&(chunk.start_frame as i64), frame_tb, out_tb);
        let dts_back = ffmpeg::Rescale::rescale(&back, frame_tb, out_tb);
        let mut packets = 0u32;
        for (stream, mut packet) in ictx.packets() {
            if stream.index() != index {
                continue;
            }
            packet.rescale_ts(in_tb, out_tb);
            packet.set_pts(packet.pts().map(|t| t + offset));
            packet.set_dts(packet.dts().map(|t| t + offset - dts_back));
            packet.set_position(-1);
            packet.set_stream(0);
            packet.write_interleaved(octx).map_err(chunk.ff("writing a packet of"))?;
            packets += 1;
        }
        chunk.check_frames(packets)?;
    }
    Ok(())
}

/// How far a chunk's first decode time runs ahead of its first presentation time, in frames.
fn reorder_delay(chunk: &Chunk, frame_tb: ffmpeg::Rational) -> Result<i64> {
    let mut ictx = ffmpeg::format::input(&chunk.path).map_err(chunk.ff("opening"))?;
    let (index, in_tb) = {
        let stream = ictx
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| Error::Stitch(format!("{} has no video stream", chunk.name())))?;
        (stream.index(), stream.time_base())
    };
    let first = ictx.packets().find(|(s, _)| s.index() == index).map(|(_, p)| p);
    let delay = first.and_then(|p| Some(p.pts()? - p.dts()?)).unwrap_or(0).max(0);
    Ok(ffmpeg::Rescale::rescale(&delay, in_tb, frame_tb))
}

fn gif(chunks: &[Chunk], out: &Path) -> Result<()> {
    // Reading: an I/O error as it is (a missing chunk is not transient, a device error is); a
    // decoding error is a broken chunk.
    let gif_err = |chunk: &Chunk| {
        let name = chunk.name();
        move |e: gif::DecodingError| match e {
            gif::DecodingError::Io(source) => Error::Io { op: format!("reading {name}"), source },
            e => Error::Stitch(format!("{name}: {e}")),
        }
    };
    // Writing can fail for want of space: an I/O error, retried; the rest is a broken chunk.
    let enc_err = |e: gif::EncodingError| match e {
        gif::EncodingError::Io(source) => Error::Io { op: "writing the output".into(), source },
        e => Error::Stitch(format!("gif: {e}")),
    };
    let mut encoder: Option<gif::Encoder<std::io::BufWriter<std::fs::File>>> = None;
    for chunk in chunks {
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::Indexed);
        let file = std::fs::File::open(&chunk.path).map_err(Error::io(format!("opening {}", chunk.name())));
        let file = file.map_err(|e| chunk.blame(e))?;
        let mut decoder =
            options.read_info(std::io::BufReader::new(file)).map_err(gif_err(chunk)).map_err(|e| chunk.blame(e))?;
        if encoder.is_none() {
            let file = std::io::BufWriter::new(std::fs::File::create(out).map_err(Error::io("creating the output"))?);
            let mut e =
                gif::Encoder::new(file, decoder.width(), decoder.height(), decoder.global_palette().unwrap_or(&[]))
                    .map_err(enc_err)?;
            e.set_repeat(gif::Repeat::Infinite).map_err(enc_err)?;
            encoder = Some(e);
        }
        let enc = encoder.as_mut().expect("set above");
        let mut frames = 0u32;
        while let Some(frame) = decoder.read_next_frame().map_err(gif_err(chunk)).map_err(|e| chunk.blame(e))? {
            enc.write_frame(frame).map_err(enc_err)?;
            frames += 1;
        }
        chunk.check_frames(frames).map_err(|e| chunk.blame(e))?;
    }
    let enc = encoder.ok_or_else(|| Error::Stitch("no chunks".into()))?;
    let written = || Error::io("writing the output");
    let file = enc.into_inner().map_err(written())?;
    file.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).map_err(written())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPS: Fps = Fps { num: 30, den: 1 };

    fn gif_chunk(dir: &Path, frames: u32) -> Chunk {
        let path = dir.join("0.gif");
        let file = std::fs::File::create(&path).unwrap();
        let mut e = gif::Encoder::new(file, 8, 8, &[0, 0, 0, 255, 255, 255]).unwrap();
        for _ in 0..frames {
            e.write_frame(&gif::Frame { width: 8, height: 8, buffer: vec![1; 64].into(), ..Default::default() })
                .unwrap();
        }
        Chunk { path, start_frame: 0, end_frame: frames }
    }

    fn mp4_chunk(start_frame: u32) -> Chunk {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chunk_3_frames.mp4");
        Chunk { path, start_frame, end_frame: start_frame + 3 }
    }

    /// What the stitch loop does with each failure: retry only what can pass later (a full
    /// disk: a fully rendered job must not be lost to ENOSPC), fail the job naming the chunk
    /// otherwise (a missing chunk would never appear; a muxer that refuses packets, EINVAL,
    /// refuses them again), where a retry would keep the job "stitching" forever.
    #[test]
    fn only_failures_that_can_pass_later_are_transient_and_the_rest_name_the_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let gif = gif_chunk(dir.path(), 2);
        let out = |name: &str| dir.path().join(name);
        stitch(OutputKind::Gif, std::slice::from_ref(&gif), FPS, &out("out.gif")).expect("stitches gifs");
        stitch(OutputKind::Mp4, &[mp4_chunk(0), mp4_chunk(3)], FPS, &out("out.mp4")).expect("stitches mp4s");
        let missing = |start| Chunk { path: dir.path().join("gone.chunk"), start_frame: start, end_frame: start + 3 };
        let cases: Vec<(&str, Result<()>, bool, &str)> = vec![
            (
                "gif onto a full disk",
                stitch(OutputKind::Gif, std::slice::from_ref(&gif), FPS, Path::new("/dev/full")),
                true,
                "writing the output",
            ),
            ("ENOSPC from ffmpeg", Err(ff("writing a packet")(ffmpeg::Error::Other { errno: 28 })), true, "packet"),
            (
                "a missing mp4 chunk",
                stitch(OutputKind::Mp4, &[mp4_chunk(0), missing(3)], FPS, &out("m.mp4")),
                false,
                "chunk of frames 3..6",
            ),
            (
                "a missing gif chunk",
                stitch(OutputKind::Gif, &[missing(0)], FPS, &out("m.gif")),
                false,
                "chunk of frames 0..3",
            ),
            (
                "a missing still",
                stitch(OutputKind::Png, &[missing(0)], FPS, &out("m.png")),
                false,
                "chunk of frames 0..3",
            ),
            // Two chunks claiming the same frames: the muxer would take them.
            (
                "overlapping mp4 chunks",
                stitch(OutputKind::Mp4, &[mp4_chunk(0), mp4_chunk(0)], FPS, &out("o.mp4")),
                false,
                "chunk of frames 0..3 (",
            ),
            ("EINVAL from ffmpeg", Err(ff("writing a packet")(ffmpeg::Error::Other { errno: 22 })), false, "packet"),
            ("a broken chunk", Err(ff("opening a chunk")(ffmpeg::Error::InvalidData)), false, "opening a chunk"),
        ];
        for (what, result, transient, names) in cases {
            let e = result.expect_err(what);
            assert_eq!(e.is_transient(), transient, "{what}: {e:?}");
            assert!(e.to_string().contains(names), "{what}: {e}");
        }
        assert!(stitch(OutputKind::Gif, std::slice::from_ref(&gif), FPS, Path::new("/dev/full"))
            .unwrap_err()
            .is_disk_full());
        // A chunk's own fault names the segment to render again (by its first frame); a full
        // disk names none.
        let garbage = Chunk { path: out("garbage.mp4"), start_frame: 3, end_frame: 6 };
        std::fs::write(&garbage.path, b"not a movie").unwrap();
        for (what, result, start) in [
            ("a missing mp4 chunk", stitch(OutputKind::Mp4, &[mp4_chunk(0), missing(3)], FPS, &out("b.mp4")), 3),
            ("a garbage mp4 chunk", stitch(OutputKind::Mp4, &[mp4_chunk(0), garbage], FPS, &out("g.mp4")), 3),
            ("a missing gif chunk", stitch(OutputKind::Gif, &[missing(0)], FPS, &out("b.gif")), 0),
        ] {
            match result {
                Err(Error::BadChunk { start_frame, .. }) => assert_eq!(start_frame, start, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        let full = stitch(OutputKind::Gif, &[gif], FPS, Path::new("/dev/full")).unwrap_err();
        assert!(!matches!(full, Error::BadChunk { .. }), "{full:?}");
    }
}
