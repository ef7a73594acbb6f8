//! Bounds on everything a request can carry, in one place. Anything reachable over the network
//! is bounded before it is stored, decoded or echoed: a 48 KB PNG declaring 20000x20000 pixels
//! would cost hundreds of megabytes to decode, a megabyte job name would break every later
//! listing, and an error that quotes its input in full can outgrow gRPC's metadata limit.
//! README.md's "Limits" table lists these.

use crate::params::ParamError;

/// Encoded size of a style image.
pub const MAX_STYLE_BYTES: u64 = 64 << 20;
/// Encoded size of a soundtrack: a ten-minute movie's in FLAC is about 60 MB, in WAV 100 MB.
pub const MAX_AUDIO_BYTES: u64 = 512 << 20;
/// Seconds `--audio-offset` may move a soundtrack either way.
pub const MAX_AUDIO_OFFSET: f64 = 86_400.0;
/// Pixels of a style image as stored in its file, read from the header before decoding.
pub const MAX_STYLE_IMAGE_PIXELS: u64 = 50_000_000;
/// A job's name and its style's file name.
pub const MAX_NAME_LEN: usize = 256;
/// A worker's name and device description.
pub const MAX_WORKER_NAME_LEN: usize = 128;
/// Devices a worker may spread a frame over (as `engine::device::MAX_DEVICES`).
pub const MAX_WORKER_DEVICES: usize = 16;
/// Networks a worker may list weights for when it registers.
pub const MAX_WORKER_WEIGHTS: usize = 8;
/// Encoded size of a preview JPEG (a heartbeat's, or a poster).
pub const MAX_PREVIEW_BYTES: usize = 64 << 10;
/// Width or height of a preview, in pixels.
pub const MAX_PREVIEW_SIDE: u32 = 640;
/// Entries of `--layers` (VGG19 has 16 conv layers).
pub const MAX_LAYERS: usize = 16;
/// A layer's weight in the style loss. Weights only matter relative to each other, and 10,000
/// to 1 is past any design; a weight like 1e300 overflows the loss to infinity and every render
/// of the job diverges, on every worker it is sent to.
pub const MAX_LAYER_WEIGHT: f64 = 10_000.0;
/// Denominator of a frame rate: `--fps` takes at most three decimals (29.97 is 2997/100).
pub const MAX_FPS_DEN: u32 = 1000;
/// A hand-off state of a `width`x`height` render, at most: the image and what the optimiser
/// keeps (L-BFGS: ten pairs of history and two more tensors), as float32, plus its header. A
/// state's size follows from its job; an upload or a download declaring more is refused before
/// its bytes are taken.
pub fn max_state_bytes(width: u32, height: u32) -> u64 {
    let tensor = 3 * u64::from(width) * u64::from(height) * 4;
    let tensors = 1 + 2 * crate::handoff::optimizer::MAX_LBFGS_HISTORY as u64 + 2;
    tensors * tensor + (64 << 10)
}

/// An encoded chunk of `frames` frames of `width`x`height`, at most: no encoder we use writes
/// more than the raw RGB frames (x264 at its highest quality stays well under), plus room for
/// container headers and GIF palettes.
pub fn max_chunk_bytes(width: u32, height: u32, frames: u32) -> u64 {
    let frame = 3 * u64::from(width) * u64::from(height) + 1024;
    u64::from(frames.max(1)) * frame + (1 << 20)
}

/// A failure reason as stored in a segment's history; longer ones are cut.
pub const MAX_REASON_LEN: usize = 1024;
/// How much of a bad value an error quotes.
pub const QUOTE_LEN: usize = 64;

/// At most the first [`QUOTE_LEN`] characters of `input`, marked when cut.
pub fn quoted_prefix(input: &str) -> String {
    cut(input, QUOTE_LEN)
}

/// `input` cut to at most `max` characters, marked when cut.
pub fn cut(input: &str, max: usize) -> String {
    match input.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &input[..end]),
        None => input.to_string(),
    }
}

/// Fails when `value` is longer than `max` bytes, naming the field and quoting a prefix.
pub fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), ParamError> {
    if value.len() > max {
        return Err(ParamError::new(
            field,
            format!("is {} bytes, at most {max} allowed: {:?}", value.len(), quoted_prefix(value)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_refused_and_quoted_short() {
        assert!(check_len("name", &"x".repeat(MAX_NAME_LEN), MAX_NAME_LEN).is_ok());
        let err = check_len("name", &"é".repeat(1 << 20), MAX_NAME_LEN).unwrap_err().to_string();
        assert!(err.starts_with("name: is 2097152 bytes, at most 256 allowed: \"éé"), "{err}");
        assert!(err.len() < 200, "{err}");
        assert_eq!(quoted_prefix("short"), "short");
    }
}
