//! Soundtracks: an audio file is checked at submit (FFmpeg opens it, finds an audio stream it
//! has a decoder for, and decodes audio from it), and muxed into the stitched MP4 started at the
//! job's offset and lasting the movie's length: copied as it is when it is AAC or MP3 and covers
//! the movie (`copy`), otherwise transcoded to AAC (48 kHz stereo), cut or padded with silence
//! to the sample.

mod copy;

use crate::error::{Error, Result};
use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, format, frame, media, ChannelLayout};
use std::path::Path;

/// The soundtrack's sample rate in the output.
const RATE: u32 = 48_000;
/// AAC at 192 kbit/s for stereo: transparent for most music.
const BIT_RATE: usize = 192_000;

/// What a checked soundtrack is.
#[derive(Debug, Clone)]
pub struct Probe {
    pub codec: String,
    /// As its container says; 0 when it does not.
    pub seconds: f64,
}

/// Checks that `path` holds audio FFmpeg decodes; `name` is how the user knows the file.
pub fn probe(path: &Path, name: &str) -> Result<Probe> {
    let bad = |reason: String| Error::invalid("audio", format!("{name:?} {reason}"));
    let mut input = format::input(path)
        .map_err(|e| bad(format!("is not a file FFmpeg reads: {}", e.to_string().to_lowercase())))?;
    let (index, parameters) = {
        let stream = input.streams().best(media::Type::Audio).ok_or_else(|| bad("has no audio stream".into()))?;
        (stream.index(), stream.parameters())
    };
    let mut decoder = codec::Context::from_parameters(parameters)
        .and_then(|c| c.decoder().audio())
        .map_err(|e| bad(format!("has audio FFmpeg cannot decode: {}", e.to_string().to_lowercase())))?;
    let codec = decoder.id().name().to_string();
    let seconds =
        if input.duration() > 0 { input.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE) } else { 0.0 };
    // Its content, not only its header: the first audio it holds must decode.
    let mut audio = frame::Audio::empty();
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_ok() && decoder.receive_frame(&mut audio).is_ok() {
            return Ok(Probe { codec, seconds });
        }
    }
    let _ = decoder.send_eof();
    if decoder.receive_frame(&mut audio).is_ok() {
        return Ok(Probe { codec, seconds });
    }
    Err(bad(format!("holds no {codec} audio that decodes")))
}

/// Writes `video` (an MP4 with one video stream) with the soundtrack `audio` to `out`: the
/// movie's first frame plays with second `offset` of the audio (negative: silence first), and
/// the audio lasts `seconds`, the movie's length.
pub fn mux(video: &Path, audio: &Path, offset: f64, seconds: f64, out: &Path) -> Result<()> {
    match copy::mux(video, audio, offset, seconds, out) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "the soundtrack could not be copied as it is; transcoding it"),
    }
    let (mut vin, vindex, vtb, mut octx) = with_video(video, out)?;
    // The encoder's stream: AAC, planar floats, as FFmpeg's own AAC encoder takes them.
    let aac =
        ffmpeg::encoder::find(codec::Id::AAC).ok_or_else(|| Error::Stitch("this FFmpeg has no AAC encoder".into()))?;
    let global = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let mut aost = octx.add_stream(aac).map_err(ff("adding the audio stream"))?;
    let mut encoder = codec::Context::new_with_codec(aac).encoder().audio().map_err(ff("making the AAC encoder"))?;
    encoder.set_rate(RATE as i32);
    encoder.set_channel_layout(ChannelLayout::STEREO);
    encoder.set_format(format::Sample::F32(format::sample::Type::Planar));
    encoder.set_bit_rate(BIT_RATE);
    encoder.set_time_base((1, RATE as i32));
    if global {
        encoder.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let encoder = encoder.open_as(aac).map_err(ff("opening the AAC encoder"))?;
    aost.set_parameters(&encoder);
    aost.set_time_base((1, RATE as i32));
    let mut options = ffmpeg::Dictionary::new();
    options.set("movflags", "+faststart");
    octx.write_header_with(options).map_err(ff("writing the output's header"))?;
    let (vtb_out, atb_out) = (octx.stream(0).expect("video").time_base(), octx.stream(1).expect("audio").time_base());

    // The audio as it is encoded, each packet after the video's up to its time: nothing but a
    // frame's packets is held, however long the movie.
    let total = (seconds * f64::from(RATE)).round() as usize;
    let mut track = Track::new(total, offset, encoder.frame_size().max(1) as usize);
    let mut aac = Aac { encoder, packets: Vec::new(), tb: atb_out, next: 0 };
    let mut video = vin.packets().filter(|(s, _)| s.index() == vindex).map(|(_, p)| p).peekable();
    let seconds_of = |p: &ffmpeg::Packet, tb: ffmpeg::Rational| p.dts().unwrap_or(0) as f64 * f64::from(tb);
    // Writes the video's packets up to `until` seconds (all with None), then `audio`'s.
    let mut write = |octx: &mut format::context::Output, audio: &mut Vec<ffmpeg::Packet>, until: Option<f64>| {
        while let Some(packet) = video.next_if(|p| until.is_none_or(|t| seconds_of(p, vtb) <= t)) {
            write_video(packet, vtb, vtb_out, octx)?;
        }
        for packet in audio.drain(..) {
            packet.write_interleaved(octx).map_err(ff("writing audio"))?;
        }
        Ok::<(), Error>(())
    };
    let mut emit = |planes: Planes, octx: &mut format::context::Output| -> Result<()> {
        aac.encode(planes)?;
        let until = aac.packets.last().map(|p| seconds_of(p, atb_out));
        if until.is_some() {
            write(octx, &mut aac.packets, until)?;
        }
        Ok(())
    };
    decode(audio, &mut track, &mut |planes| emit(planes, &mut octx))?;
    while let Some(planes) = track.finish() {
        emit(planes, &mut octx)?;
    }
    let mut rest = aac.finish()?;
    write(&mut octx, &mut rest, None)?;
    octx.write_trailer().map_err(ff("writing the output's trailer"))?;
    Ok(())
}

/// Writes the part of `audio` a movie of `seconds` plays from second `offset` as a mono 16-bit
/// WAV at 48 kHz: what a beat tracker listens to. Neither the silence before a negative offset
/// nor any after the file's end is written (a long movie to a short song stays a short file);
/// returns the second of the movie the WAV starts at. Streams: nothing but a frame of samples
/// is held, however long the file.
pub fn write_wav(audio: &Path, offset: f64, seconds: f64, out: &Path) -> Result<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let io = |e: std::io::Error| Error::Stitch(format!("writing {}: {}", out.display(), e.to_string().to_lowercase()));
    let mut wav = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    wav.write_all(&[0; 44]).map_err(io)?;
    let lead = (-offset).max(0.0);
    let total = ((seconds - lead).max(0.0) * f64::from(RATE)).round() as usize;
    let mut track = Track::new(total, offset.max(0.0), 4096);
    let mut samples = 0u64;
    let mut write = |(left, right): Planes, wav: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
        for (l, r) in left.iter().zip(&right) {
            let v = ((l + r) * 0.5).clamp(-1.0, 1.0);
            wav.write_all(&((v * 32767.0).round() as i16).to_le_bytes()).map_err(io)?;
        }
        samples += left.len() as u64;
        Ok(())
    };
    if total > 0 {
        decode(audio, &mut track, &mut |planes| write(planes, &mut wav))?;
        let rest = (std::mem::take(&mut track.left), std::mem::take(&mut track.right));
        write(rest, &mut wav)?;
    }
    let data = u32::try_from(samples * 2).map_err(|_| Error::Stitch("the soundtrack is too long for a WAV".into()))?;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&(36 + data).to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes()); // PCM
    header.extend_from_slice(&1u16.to_le_bytes()); // mono
    header.extend_from_slice(&RATE.to_le_bytes());
    header.extend_from_slice(&(RATE * 2).to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&16u16.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data.to_le_bytes());
    let mut file = wav.into_inner().map_err(|e| io(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    Ok(lead)
}

/// The stitched `video`, opened, and the output `out` with its video stream (stream 0) added:
/// the input, its video stream's index and time base, and the output.
fn with_video(
    video: &Path,
    out: &Path,
) -> Result<(format::context::Input, usize, ffmpeg::Rational, format::context::Output)> {
    let vin = format::input(video).map_err(ff("opening the stitched video"))?;
    let (vindex, vtb, vparams) = {
        let s = vin
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| Error::Stitch("the stitched video has no video".into()))?;
        (s.index(), s.time_base(), s.parameters())
    };
    let mut octx = format::output(out).map_err(ff("creating the output"))?;
    let mut vost = octx.add_stream(ffmpeg::encoder::find(codec::Id::None)).map_err(ff("adding the video stream"))?;
    vost.set_parameters(vparams);
    vost.set_time_base(vtb);
    Ok((vin, vindex, vtb, octx))
}

/// Writes a packet of the stitched video (time base `from`) as the output's stream 0 (`to`).
fn write_video(
    mut packet: ffmpeg::Packet,
    from: ffmpeg::Rational,
    to: ffmpeg::Rational,
    octx: &mut format::context::Output,
) -> Result<()> {
    packet.rescale_ts(from, to);
    packet.set_stream(0);
    packet.set_position(-1);
    packet.write_interleaved(octx).map_err(ff("writing video"))
}

/// The soundtrack's samples on their way to the encoder: the offset skipped or padded, cut at
/// the movie's end, handed on a frame of the encoder's size at a time.
struct Track {
    /// Samples the movie needs, and those handed on so far.
    total: usize,
    sent: usize,
    /// Samples of the file still to skip (a positive offset).
    skip: usize,
    frame: usize,
    left: Vec<f32>,
    right: Vec<f32>,
}

type Planes = (Vec<f32>, Vec<f32>);

impl Track {
    fn new(total: usize, offset: f64, frame: usize) -> Self {
        let shift = (offset.abs() * f64::from(RATE)).round() as usize;
        let (skip, lead) = if offset >= 0.0 { (shift, 0) } else { (0, shift.min(total)) };
        Self { total, sent: 0, skip, frame, left: vec![0.0; lead], right: vec![0.0; lead] }
    }

    /// Takes the file's next samples; whole frames are ready by `ready`.
    fn push(&mut self, left: &[f32], right: &[f32]) {
        let skipped = self.skip.min(left.len());
        self.skip -= skipped;
        let room = self.total.saturating_sub(self.sent + self.left.len());
        let take = (left.len() - skipped).min(room);
        self.left.extend_from_slice(&left[skipped..skipped + take]);
        self.right.extend_from_slice(&right[skipped..skipped + take]);
    }

    fn full(&self) -> bool {
        self.sent + self.left.len() >= self.total
    }

    /// The next whole frame, if one is held.
    fn ready(&mut self) -> Option<Planes> {
        if self.left.len() < self.frame || self.sent >= self.total {
            return None;
        }
        self.sent += self.frame;
        Some((self.left.drain(..self.frame).collect(), self.right.drain(..self.frame).collect()))
    }

    /// After the file: silence to the movie's end, a frame at a time, the last one short.
    fn finish(&mut self) -> Option<Planes> {
        if let Some(p) = self.ready() {
            return Some(p);
        }
        let missing = self.total.saturating_sub(self.sent + self.left.len());
        let pad = missing.min(self.frame - self.left.len().min(self.frame));
        self.left.resize(self.left.len() + pad, 0.0);
        self.right.resize(self.right.len() + pad, 0.0);
        if self.left.is_empty() {
            return None;
        }
        let n = self.left.len().min(self.frame);
        self.sent += n;
        Some((self.left.drain(..n).collect(), self.right.drain(..n).collect()))
    }
}

/// Decodes `path`'s best audio stream, resampled to 48 kHz stereo, into `track`, handing on
/// each whole frame, until the movie has all it needs or the file ends.
fn decode(path: &Path, track: &mut Track, emit: &mut dyn FnMut(Planes) -> Result<()>) -> Result<()> {
    let mut input = format::input(path).map_err(ff("opening the soundtrack"))?;
    let (index, parameters) = {
        let s = input
            .streams()
            .best(media::Type::Audio)
            .ok_or_else(|| Error::Stitch("the soundtrack has no audio".into()))?;
        (s.index(), s.parameters())
    };
    let mut decoder = codec::Context::from_parameters(parameters)
        .and_then(|c| c.decoder().audio())
        .map_err(ff("decoding the soundtrack"))?;
    let mut resampler: Option<ffmpeg::software::resampling::Context> = None;
    let mut decoded = frame::Audio::empty();
    let mut step = |decoded: &mut frame::Audio, track: &mut Track| -> Result<()> {
        // A file that does not say its layout (a plain WAV) has the default for its channels.
        if decoded.channel_layout().is_empty() {
            decoded.set_channel_layout(ChannelLayout::default(i32::from(decoded.channels())));
        }
        if resampler.is_none() {
            let layout = decoded.channel_layout();
            let r = ffmpeg::software::resampling::Context::get(
                decoded.format(),
                layout,
                decoded.rate(),
                format::Sample::F32(format::sample::Type::Planar),
                ChannelLayout::STEREO,
                RATE,
            )
            .map_err(ff("resampling the soundtrack"))?;
            resampler = Some(r);
        }
        let mut out = frame::Audio::empty();
        resampler.as_mut().expect("made above").run(decoded, &mut out).map_err(ff("resampling the soundtrack"))?;
        let n = out.samples();
        track.push(&out.plane::<f32>(0)[..n], &out.plane::<f32>(1)[..n]);
        while let Some(planes) = track.ready() {
            emit(planes)?;
        }
        Ok(())
    };
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        // A damaged packet is skipped, as players do; the checked start decoded at submit.
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            step(&mut decoded, track)?;
        }
        if track.full() {
            return Ok(());
        }
    }
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        step(&mut decoded, track)?;
    }
    Ok(())
}

/// The AAC encoder and the packets it made, in the output's audio time base.
struct Aac {
    encoder: ffmpeg::encoder::Audio,
    packets: Vec<ffmpeg::Packet>,
    tb: ffmpeg::Rational,
    /// Samples handed to the encoder so far: the next frame's time, in 1/RATE.
    next: i64,
}

impl Aac {
    /// Encodes one frame of samples.
    fn encode(&mut self, (left, right): Planes) -> Result<()> {
        let mut frame =
            frame::Audio::new(format::Sample::F32(format::sample::Type::Planar), left.len(), ChannelLayout::STEREO);
        frame.set_rate(RATE);
        frame.plane_mut::<f32>(0).copy_from_slice(&left);
        frame.plane_mut::<f32>(1).copy_from_slice(&right);
        frame.set_pts(Some(self.next));
        self.next += left.len() as i64;
        self.encoder.send_frame(&frame).map_err(ff("encoding the soundtrack"))?;
        self.drain();
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ffmpeg::Packet>> {
        self.encoder.send_eof().map_err(ff("ending the soundtrack"))?;
        self.drain();
        Ok(self.packets)
    }

    fn drain(&mut self) {
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(1);
            packet.rescale_ts((1, RATE as i32), self.tb);
            self.packets.push(std::mem::replace(&mut packet, ffmpeg::Packet::empty()));
        }
    }
}

fn ff(context: &'static str) -> impl Fn(ffmpeg::Error) -> Error {
    move |e| Error::Stitch(format!("{context}: {}", e.to_string().to_lowercase()))
}
