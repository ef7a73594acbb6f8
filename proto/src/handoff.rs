//! The hand-off state's file format, defined once: the engine writes and resumes states, the
//! coordinator checks uploaded ones without libtorch, and both read them through [`parse`].
//!
//! A state is one safetensors file: the image in optimisation space (`image`, float, not
//! 8-bit) and the optimiser's tensors, all F32, plus metadata: the format tag, the next frame
//! to render, the render fingerprint (a state only resumes the render that made it), what made
//! it in words, the optimiser's scalars, and a SHA-256 over the tensor payload that detects
//! truncation or corruption in transit or storage.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The format tag; a change of layout gets a new one.
pub const FORMAT: &str = "gramzoom-handoff-v1";
/// The image tensor's name; every other tensor is the optimiser's.
pub const IMAGE: &str = "image";
/// Longest `made_by` a state may carry.
pub const MAX_MADE_BY: usize = 512;

/// The optimiser's part of a state: the scalar that names it, and its tensors by name. The
/// engine writes them under these names and `parse` accepts no others.
pub mod optimizer {
    /// The scalar naming the optimiser: `adam` or `lbfgs`.
    pub const KIND: &str = "optimizer";
    pub const ADAM_STEP: &str = "adam.step";
    pub const ADAM_M: &str = "adam.m";
    pub const ADAM_V: &str = "adam.v";
    /// How many (s, y) pairs an L-BFGS state holds.
    pub const LBFGS_HISTORY: &str = "lbfgs.history";
    /// The most pairs a state may hold (PyTorch's default history).
    pub const MAX_LBFGS_HISTORY: usize = 10;
    pub const LBFGS_PREV_GRAD: &str = "lbfgs.prev_grad";
    pub const LBFGS_PREV_STEP: &str = "lbfgs.prev_step";

    pub fn lbfgs_s(i: usize) -> String {
        format!("lbfgs.s.{i}")
    }

    pub fn lbfgs_y(i: usize) -> String {
        format!("lbfgs.y.{i}")
    }
}

/// The metadata keys the format owns; any other key is an optimiser scalar.
mod key {
    pub const FORMAT: &str = "format";
    pub const NEXT_FRAME: &str = "next_frame";
    pub const FINGERPRINT: &str = "fingerprint";
    pub const MADE_BY: &str = "made_by";
    pub const SHA256: &str = "sha256";
    pub const ALL: [&str; 5] = [FORMAT, NEXT_FRAME, FINGERPRINT, MADE_BY, SHA256];
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandoffError {
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("format is {found:?}, expected {FORMAT}")]
    Format { found: Option<String> },
    #[error("missing or invalid {0}")]
    Field(&'static str),
    #[error("made_by is over {MAX_MADE_BY} bytes")]
    MadeByTooLong,
    #[error("tensor {name} is {dtype}, expected F32")]
    NotF32 { name: String, dtype: String },
    #[error("checksum mismatch: the file is corrupt or truncated")]
    Checksum,
    #[error("missing tensor {IMAGE}")]
    NoImage,
    #[error("the optimiser state is not one the engine writes: {0}")]
    Optimizer(String),
    #[error("tensor {0} is not part of a {1} state")]
    UnknownTensor(String, &'static str),
    #[error("tensor {0} holds a value that is not finite (NaN, or an infinite pixel)")]
    NotFinite(String),
    #[error("tensor {name} is {found:?}, the image is {image:?}: every tensor has the image's shape")]
    Shape { name: String, found: Vec<usize>, image: Vec<usize> },
}

/// What a state says of itself, besides its tensors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Header {
    /// The next frame to render; frames before it are done.
    pub next_frame: u32,
    pub fingerprint: String,
    /// `RenderParams::summary` of the render that made it, so that a render refusing the state
    /// can say which setting differs; empty in states written before it existed.
    pub made_by: String,
    /// The optimiser's scalars, by name.
    pub scalars: HashMap<String, String>,
}

/// One F32 tensor: name, shape and little-endian bytes.
pub type Entry<'a> = (String, Vec<usize>, &'a [u8]);

/// A state file read and verified: header, checksum, every tensor F32, an image present.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub tensors: Vec<Entry<'a>>,
}

impl Parsed<'_> {
    /// The image tensor's shape.
    pub fn image_shape(&self) -> &[usize] {
        self.tensors.iter().find(|t| t.0 == IMAGE).map(|t| t.1.as_slice()).expect("parse checks it is there")
    }

    /// The optimiser the state is for (`adam`, `lbfgs`), as `OptimizerKind::name` spells it.
    pub fn optimizer(&self) -> &str {
        self.header.scalars.get(optimizer::KIND).map(String::as_str).expect("parse checks it is there")
    }
}

/// The SHA-256 over tensor names, shapes and bytes, in name order.
fn payload_digest(entries: &[Entry<'_>]) -> String {
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, shape, bytes) in sorted {
        h.update(name.as_bytes());
        h.update(format!("{shape:?}").as_bytes());
        h.update(bytes);
    }
    crate::params::hex(&h.finalize())
}

/// Writes a state file. `tensors` must hold the image.
pub fn serialize(header: &Header, tensors: &[Entry<'_>]) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut meta = header.scalars.clone();
    meta.insert(key::FORMAT.into(), FORMAT.into());
    meta.insert(key::NEXT_FRAME.into(), header.next_frame.to_string());
    meta.insert(key::FINGERPRINT.into(), header.fingerprint.clone());
    meta.insert(key::MADE_BY.into(), header.made_by.clone());
    meta.insert(key::SHA256.into(), payload_digest(tensors));
    let views =
        tensors.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match")));
    safetensors::tensor::serialize(views, &Some(meta)).expect("serialising in memory cannot fail")
}

/// Reads and verifies a state file.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, HandoffError> {
    use safetensors::tensor::{Dtype, SafeTensors};
    let not_safetensors = |e: safetensors::SafeTensorError| HandoffError::NotSafetensors(format!("{e:?}"));
    // Deserialising checks the header against the buffer: every tensor's bytes lie inside it.
    SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
    let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
    let mut meta = header.metadata().clone().unwrap_or_default();
    if meta.get(key::FORMAT).map(String::as_str) != Some(FORMAT) {
        return Err(HandoffError::Format { found: meta.remove(key::FORMAT) });
    }
    let data = &bytes[8 + header_len..];
    let mut tensors = Vec::new();
    for (name, info) in header.tensors() {
        if info.dtype != Dtype::F32 {
            return Err(HandoffError::NotF32 { name, dtype: format!("{:?}", info.dtype) });
        }
        let (start, end) = info.data_offsets;
        tensors.push((name, info.shape.clone(), &data[start..end]));
    }
    if meta.get(key::SHA256) != Some(&payload_digest(&tensors)) {
        return Err(HandoffError::Checksum);
    }
    if !tensors.iter().any(|t| t.0 == IMAGE) {
        return Err(HandoffError::NoImage);
    }
    let next_frame =
        meta.get(key::NEXT_FRAME).and_then(|s| s.parse().ok()).ok_or(HandoffError::Field(key::NEXT_FRAME))?;
    let fingerprint = meta.remove(key::FINGERPRINT).ok_or(HandoffError::Field(key::FINGERPRINT))?;
    let made_by = meta.remove(key::MADE_BY).unwrap_or_default();
    if made_by.len() > MAX_MADE_BY {
        return Err(HandoffError::MadeByTooLong);
    }
    meta.retain(|k, _| !key::ALL.contains(&k.as_str()));
    let parsed = Parsed { header: Header { next_frame, fingerprint, made_by, scalars: meta }, tensors };
    check_contents(&parsed)?;
    Ok(parsed)
}

/// The tensors are exactly the image and what the named optimiser keeps, all of the image's
/// shape, with the scalars the engine reads, and every value is finite: what the engine's
/// loader (`OptimState::from_parts`) would refuse is refused here too, so that the coordinator,
/// which checks uploads with this, never accepts a state the next worker then cannot load
/// (that worker would be charged for it).
fn check_contents(parsed: &Parsed<'_>) -> Result<(), HandoffError> {
    use optimizer::*;
    let scalar = |k: &str| parsed.header.scalars.get(k).map(String::as_str);
    // What the optimiser needs, and what it may also keep.
    let (kind, required, optional): (&'static str, Vec<String>, Vec<String>) = match scalar(KIND) {
        Some("adam") => {
            if scalar(ADAM_STEP).and_then(|s| s.parse::<u64>().ok()).is_none() {
                return Err(HandoffError::Optimizer(format!("{ADAM_STEP} is not a whole number")));
            }
            ("adam", vec![ADAM_M.into(), ADAM_V.into()], vec![])
        }
        Some("lbfgs") => {
            let n: usize = scalar(LBFGS_HISTORY)
                .and_then(|n| n.parse().ok())
                .filter(|&n| n <= MAX_LBFGS_HISTORY)
                .ok_or_else(|| HandoffError::Optimizer(format!("{LBFGS_HISTORY} must be 0 to {MAX_LBFGS_HISTORY}")))?;
            let names: Vec<String> = (0..n).flat_map(|i| [lbfgs_s(i), lbfgs_y(i)]).collect();
            ("lbfgs", names, vec![LBFGS_PREV_GRAD.into(), LBFGS_PREV_STEP.into()])
        }
        other => return Err(HandoffError::Optimizer(format!("unknown optimizer {other:?}"))),
    };
    let image = parsed.image_shape().to_vec();
    for (name, shape, bytes) in &parsed.tensors {
        if name != IMAGE && !required.contains(name) && !optional.contains(name) {
            return Err(HandoffError::UnknownTensor(crate::limits::quoted_prefix(name), kind));
        }
        if *shape != image {
            let name = crate::limits::quoted_prefix(name);
            return Err(HandoffError::Shape { name, found: shape.clone(), image });
        }
        // The image must be finite. The optimiser's tensors must not be NaN; an infinity can be
        // honest there (Adam's second moment overflows under huge gradients, and only stops
        // the pixels it covers from moving).
        let bad = |x: f32| if name == IMAGE { !x.is_finite() } else { x.is_nan() };
        if bytes.chunks_exact(4).any(|c| bad(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))) {
            return Err(HandoffError::NotFinite(name.clone()));
        }
    }
    if let Some(missing) = required.iter().find(|r| !parsed.tensors.iter().any(|t| &t.0 == *r)) {
        return Err(HandoffError::Optimizer(format!("missing tensor {missing}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(n: usize, k: f32) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32 * k).to_le_bytes()).collect()
    }

    fn sample() -> Vec<u8> {
        let (image, m) = (floats(24, 0.5), floats(24, -1.0));
        let header = Header {
            next_frame: 17,
            fingerprint: "abc".into(),
            made_by: "4x2, vgg16".into(),
            scalars: HashMap::from([
                ("optimizer".to_string(), "adam".to_string()),
                ("adam.step".to_string(), "3".to_string()),
            ]),
        };
        let v = floats(24, 2.0);
        serialize(
            &header,
            &[
                (IMAGE.into(), vec![1, 3, 2, 4], &image),
                ("adam.m".into(), vec![1, 3, 2, 4], &m),
                ("adam.v".into(), vec![1, 3, 2, 4], &v),
            ],
        )
    }

    #[test]
    fn a_state_reads_back_as_written_and_damage_is_named() {
        let bytes = sample();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.header.next_frame, 17);
        assert_eq!(parsed.header.fingerprint, "abc");
        assert_eq!(parsed.header.made_by, "4x2, vgg16");
        assert_eq!(parsed.header.scalars["adam.step"], "3");
        assert_eq!(parsed.image_shape(), [1, 3, 2, 4]);

        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        assert_eq!(parse(&flipped).unwrap_err(), HandoffError::Checksum);
        assert!(matches!(parse(&bytes[..bytes.len() / 2]), Err(HandoffError::NotSafetensors(_))));
        let no_image = serialize(&Header::default(), &[("adam.m".into(), vec![2], &floats(2, 1.0))]);
        assert_eq!(parse(&no_image).unwrap_err(), HandoffError::NoImage);
        // What the next worker would choke on, refused here: a NaN, a tensor nobody reads, an
        // optimiser the engine does not have.
        let adam = parse(&bytes).unwrap().header;
        let mut nan = floats(24, 0.5);
        nan[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        let image = floats(24, 0.5);
        let cases: Vec<(Header, Vec<Entry>, HandoffError)> = vec![
            (adam.clone(), vec![(IMAGE.into(), vec![24], &nan)], HandoffError::NotFinite(IMAGE.into())),
            (
                adam.clone(),
                vec![(IMAGE.into(), vec![24], &image), ("payload".into(), vec![24], &image)],
                HandoffError::UnknownTensor("payload".into(), "adam"),
            ),
            (
                Header { scalars: HashMap::from([("optimizer".into(), "sgd".into())]), ..adam.clone() },
                vec![(IMAGE.into(), vec![24], &image)],
                HandoffError::Optimizer("unknown optimizer Some(\"sgd\")".into()),
            ),
            (
                Header {
                    scalars: HashMap::from([
                        ("optimizer".into(), "lbfgs".into()),
                        ("lbfgs.history".into(), "11".into()),
                    ]),
                    ..adam.clone()
                },
                vec![(IMAGE.into(), vec![24], &image)],
                HandoffError::Optimizer("lbfgs.history must be 0 to 10".into()),
            ),
            // What the engine's loader would refuse: a missing moment, a step that is not a
            // count, a tensor of another shape than the image.
            (
                adam.clone(),
                vec![(IMAGE.into(), vec![24], &image), ("adam.m".into(), vec![24], &image)],
                HandoffError::Optimizer("missing tensor adam.v".into()),
            ),
            (
                Header {
                    scalars: HashMap::from([("optimizer".into(), "adam".into()), ("adam.step".into(), "-1".into())]),
                    ..adam.clone()
                },
                vec![(IMAGE.into(), vec![24], &image)],
                HandoffError::Optimizer("adam.step is not a whole number".into()),
            ),
            (
                adam.clone(),
                vec![(IMAGE.into(), vec![24], &image), ("adam.m".into(), vec![4, 6], &image)],
                HandoffError::Shape { name: "adam.m".into(), found: vec![4, 6], image: vec![24] },
            ),
        ];
        for (header, tensors, want) in cases {
            assert_eq!(parse(&serialize(&header, &tensors)).unwrap_err(), want);
        }
        let mut inf = floats(24, 1.0);
        inf[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let shape = vec![1, 3, 2, 4];
        let honest = [(IMAGE.into(), shape.clone(), &image[..]), ("adam.m".into(), shape.clone(), &image[..])];
        let with_v =
            |v: &[u8]| serialize(&adam, &[honest[0].clone(), honest[1].clone(), ("adam.v".into(), shape.clone(), v)]);
        parse(&with_v(&inf)).expect("an overflowed second moment is honest");
        assert_eq!(parse(&with_v(&nan)).unwrap_err(), HandoffError::NotFinite("adam.v".into()));
        let mut other = bytes.clone();
        let at = other.windows(FORMAT.len()).position(|w| w == FORMAT.as_bytes()).unwrap();
        other[at + FORMAT.len() - 1] = b'9';
        assert_eq!(parse(&other).unwrap_err(), HandoffError::Format { found: Some("gramzoom-handoff-v9".into()) });
    }
}
