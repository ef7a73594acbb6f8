//! Stream copy: a soundtrack already in a codec every MP4 player takes (AAC, MP3) is muxed as
//! it is, its packets from the offset to the movie's end, so it keeps the quality it was
//! encoded at and costs no encoding. Cut at packet boundaries (an AAC packet is 21 to 23 ms,
//! an MP3 one 24 to 26 ms): each end is within half a packet of the movie's, less than a frame
//! at 30 fps. Where copying cannot make the movie's soundtrack (another codec, silence to put
//! before it or after its end, a container tag MP4 refuses), [`super::mux`] transcodes.

use super::{ff, write_video, Error, Result};
use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, format, media};
use std::path::Path;

/// Codecs copied into the MP4 as they are.
const COPIED: [codec::Id; 2] = [codec::Id::AAC, codec::Id::MP3];

/// Muxes `video` with `audio`'s own packets into `out` when that makes the movie's soundtrack;
/// `Ok(false)` when it cannot (nothing to keep in `out` then).
pub(super) fn mux(video: &Path, audio: &Path, offset: f64, seconds: f64, out: &Path) -> Result<bool> {
    if offset < 0.0 {
        return Ok(false);
    }
    let mut ain = format::input(audio).map_err(ff("opening the soundtrack"))?;
    let (aindex, atb, aparams) = {
        let s = ain.streams().best(media::Type::Audio).ok_or_else(|| Error::Stitch("no audio".into()))?;
        (s.index(), s.time_base(), s.parameters())
    };
    if !COPIED.contains(&aparams.id()) {
        return Ok(false);
    }
    let (end, tb_s) = (offset + seconds, f64::from(atb));
    // The packets whose middle lies in the movie's time, in order, and whether the file lasts
    // to the movie's end; read before anything is written, since a short file is transcoded.
    let mut packets = Vec::new();
    let mut covered = false;
    for (stream, packet) in ain.packets() {
        if stream.index() != aindex {
            continue;
        }
        let (Some(pts), duration) = (packet.pts(), packet.duration()) else { continue };
        let middle = (pts as f64 + duration as f64 / 2.0) * tb_s;
        if middle >= end {
            covered = true;
            break;
        }
        if middle >= offset {
            packets.push(packet);
        }
        // Never more than the movie needs: the rest of a long file is not read.
        if packets.len() > 1 << 22 {
            return Ok(false);
        }
    }
    let last_end = packets.last().map(|p| (p.pts().unwrap_or(0) + p.duration()) as f64 * tb_s);
    if !covered && last_end.is_none_or(|e| e < end - 0.03) {
        return Ok(false);
    }
    let Some(first) = packets.first().and_then(|p| p.pts()) else { return Ok(false) };

    let (mut vin, vindex, vtb, mut octx) = super::with_video(video, out)?;
    let mut aost = octx.add_stream(ffmpeg::encoder::find(codec::Id::None)).map_err(ff("adding the audio stream"))?;
    aost.set_parameters(aparams);
    aost.set_time_base(atb);
    let mut options = ffmpeg::Dictionary::new();
    options.set("movflags", "+faststart");
    octx.write_header_with(options).map_err(ff("writing the output's header"))?;
    let (vtb_out, atb_out) = (octx.stream(0).expect("video").time_base(), octx.stream(1).expect("audio").time_base());
    let mut video = vin.packets().filter(|(s, _)| s.index() == vindex).map(|(_, p)| p).peekable();
    for mut packet in packets {
        let at = (packet.pts().unwrap_or(first) - first) as f64 * tb_s;
        while let Some(v) = video.next_if(|p| p.dts().unwrap_or(0) as f64 * f64::from(vtb) <= at) {
            write_video(v, vtb, vtb_out, &mut octx)?;
        }
        // The movie's first frame plays with the offset's packet.
        packet.set_pts(packet.pts().map(|p| p - first));
        packet.set_dts(packet.dts().map(|d| d - first));
        packet.rescale_ts(atb, atb_out);
        packet.set_stream(1);
        packet.set_position(-1);
        packet.write_interleaved(&mut octx).map_err(ff("writing audio"))?;
    }
    for v in video {
        write_video(v, vtb, vtb_out, &mut octx)?;
    }
    octx.write_trailer().map_err(ff("writing the output's trailer"))?;
    Ok(true)
}
