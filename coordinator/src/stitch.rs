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
    /// A chunk must hold exactly its segment's frames, or the output's length would be wrong.
    fn check_frames(&self, frames: u32) -> Result<()> {
        let want = self.end_frame - self.start_frame;
        if frames != want {
            return Err(Error::Stitch(format!(
                "chunk {} for frames {}..{} holds {frames} frames, expected {want}",
                self.path.display(),
                self.start_frame,
                self.end_frame
            )));
        }
        Ok(())
    }
}

pub fn stitch(kind: OutputKind, chunks: &[Chunk], fps: Fps, out: &Path) -> Result<()> {
    match kind {
        OutputKind::Mp4 => mp4(chunks, fps, out),
        OutputKind::Gif => gif(chunks, out),
        OutputKind::Png | OutputKind::Jpeg => {
            let last = chunks.last().ok_or_else(|| Error::Stitch("no chunks".into()))?;
            std::fs::copy(&last.path, out)?;
            Ok(())
        }
    }
}

/// An FFmpeg error in `context`. One that carries an errno (a full disk, an I/O error) is an
/// I/O error, which the coordinator retries; the rest mean the chunks are unusable.
fn ff(context: &'static str) -> impl Fn(ffmpeg::Error) -> Error {
    move |e| match e {
        ffmpeg::Error::Other { errno } => {
            let io = std::io::Error::from_raw_os_error(errno);
            Error::Store(std::io::Error::new(io.kind(), format!("{context}: {io}")))
        }
        e => Error::Stitch(format!("{context}: {e}")),
    }
}

fn mp4(chunks: &[Chunk], fps: Fps, out: &Path) -> Result<()> {
    ffmpeg::init().map_err(ff("init"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    let mut octx = ffmpeg::format::output_as(out, "mp4").map_err(ff("open output"))?;
    // One frame lasts den/num seconds; chunk k starts start_frame of those in.
    let frame_tb = ffmpeg::Rational(fps.den as i32, fps.num as i32);
    // Decode timestamps run ahead of presentation by the encoder's reordering delay, which is
    // not the same in every chunk: one too short for B-frames has none, a longer one two frames.
    // Appended as they are, a short chunk's last decode time would meet the next chunk's first
    // (the muxer refuses that). So every chunk's decode times are moved back to the largest
    // delay of all: still before their presentation times, and increasing across chunks.
    let delays = chunks.iter().map(|c| reorder_delay(&c.path, frame_tb)).collect::<Result<Vec<i64>>>()?;
    let most = delays.iter().copied().max().unwrap_or(0);
    let mut out_tb = frame_tb;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ictx = ffmpeg::format::input(&chunk.path).map_err(ff("open chunk"))?;
        let (index, in_tb) = {
            let stream = ictx
                .streams()
                .best(ffmpeg::media::Type::Video)
                .ok_or_else(|| Error::Stitch(format!("chunk {} has no video stream", chunk.path.display())))?;
            if i == 0 {
                let mut ost =
                    octx.add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None)).map_err(ff("add stream"))?;
                ost.set_parameters(stream.parameters());
                ost.set_time_base(frame_tb);
                let mut mux = ffmpeg::Dictionary::new();
                mux.set("movflags", "+faststart");
                octx.write_header_with(mux).map_err(ff("write header"))?;
                out_tb = octx.stream(0).expect("stream 0 was added").time_base();
            }
            (stream.index(), stream.time_base())
        };
        let offset = ffmpeg::Rescale::rescale(&(chunk.start_frame as i64), frame_tb, out_tb);
        let dts_back = ffmpeg::Rescale::rescale(&(most - delays[i]), frame_tb, out_tb);
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
            packet.write_interleaved(&mut octx).map_err(ff("write packet"))?;
            packets += 1;
        }
        chunk.check_frames(packets)?;
    }
    octx.write_trailer().map_err(ff("write trailer"))?;
    Ok(())
}

/// How far a chunk's first decode time runs ahead of its first presentation time, in frames.
fn reorder_delay(path: &Path, frame_tb: ffmpeg::Rational) -> Result<i64> {
    let mut ictx = ffmpeg::format::input(path).map_err(ff("open chunk"))?;
    let (index, in_tb) = {
        let stream = ictx
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| Error::Stitch(format!("chunk {} has no video stream", path.display())))?;
        (stream.index(), stream.time_base())
    };
    let first = ictx.packets().find(|(s, _)| s.index() == index).map(|(_, p)| p);
    let delay = first.and_then(|p| Some(p.pts()? - p.dts()?)).unwrap_or(0).max(0);
    Ok(ffmpeg::Rescale::rescale(&delay, in_tb, frame_tb))
}

fn gif(chunks: &[Chunk], out: &Path) -> Result<()> {
    let gif_err = |e: gif::DecodingError| Error::Stitch(format!("gif chunk: {e}"));
    // Writing can fail for want of space: an I/O error, retried; the rest is a broken chunk.
    let enc_err = |e: gif::EncodingError| match e {
        gif::EncodingError::Io(io) => Error::Store(io),
        e => Error::Stitch(format!("gif: {e}")),
    };
    let mut encoder: Option<gif::Encoder<std::io::BufWriter<std::fs::File>>> = None;
    for chunk in chunks {
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::Indexed);
        let mut decoder =
            options.read_info(std::io::BufReader::new(std::fs::File::open(&chunk.path)?)).map_err(gif_err)?;
        if encoder.is_none() {
            let file = std::io::BufWriter::new(std::fs::File::create(out)?);
            let mut e =
                gif::Encoder::new(file, decoder.width(), decoder.height(), decoder.global_palette().unwrap_or(&[]))
                    .map_err(enc_err)?;
            e.set_repeat(gif::Repeat::Infinite).map_err(enc_err)?;
            encoder = Some(e);
        }
        let enc = encoder.as_mut().expect("set above");
        let mut frames = 0u32;
        while let Some(frame) = decoder.read_next_frame().map_err(gif_err)? {
            enc.write_frame(frame).map_err(enc_err)?;
            frames += 1;
        }
        chunk.check_frames(frames)?;
    }
    let enc = encoder.ok_or_else(|| Error::Stitch("no chunks".into()))?;
    let file = enc.into_inner()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk while stitching is an I/O error (retried until space is freed), not a broken
    /// chunk (which fails the job): a fully rendered job must not be lost to ENOSPC.
    #[test]
    fn a_full_disk_is_a_transient_failure_not_a_broken_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = dir.path().join("0.gif");
        {
            let file = std::fs::File::create(&chunk).unwrap();
            let mut e = gif::Encoder::new(file, 8, 8, &[0, 0, 0, 255, 255, 255]).unwrap();
            for _ in 0..2 {
                e.write_frame(&gif::Frame { width: 8, height: 8, buffer: vec![1; 64].into(), ..Default::default() })
                    .unwrap();
            }
        }
        let chunks = [Chunk { path: chunk, start_frame: 0, end_frame: 2 }];
        let fps = Fps { num: 30, den: 1 };
        stitch(OutputKind::Gif, &chunks, fps, &dir.path().join("out.gif")).expect("stitches where there is room");
        match stitch(OutputKind::Gif, &chunks, fps, Path::new("/dev/full")) {
            Err(Error::Store(e)) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}"),
            other => panic!("a full disk came back as {other:?}"),
        }
        // FFmpeg reports errno values: those are I/O errors too (ENOSPC is 28 on Linux).
        match ff("write packet")(ffmpeg::Error::Other { errno: 28 }) {
            Error::Store(e) => assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ff("open chunk")(ffmpeg::Error::InvalidData), Error::Stitch(_)));
    }
}
