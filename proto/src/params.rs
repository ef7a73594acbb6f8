//! Render parameters: what a user asks for, validated once, with limits stated in the errors.
//!
//! The same struct travels from the CLI to the engine and over gRPC (see `wire`), so validation
//! lives here, in the one crate both the coordinator and the worker link, and not in the CLI.

pub use crate::network::{LayerSpec, Network};
use crate::schedule::{BeatGrid, Blend, Schedule, Timing};
use std::path::Path;
use std::sync::Arc;

mod fingerprint;
mod motion;
mod validate;
pub use validate::check_style_names;

pub use motion::{style_words, Camera, Motion};

pub const MIN_SIDE: u32 = 32;
pub const MAX_SIDE: u32 = 7680;
pub const MAX_FRAMES: u32 = 1_000_000;
pub const MAX_ITERS: u32 = 10_000;
pub const MAX_WARMUP: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    Adam,
    Lbfgs,
}

impl std::str::FromStr for OptimizerKind {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        match s {
            "adam" => Ok(Self::Adam),
            "lbfgs" => Ok(Self::Lbfgs),
            _ => Err(ParamError::new("--optimizer", format!("expected adam or lbfgs, got {s:?}"))),
        }
    }
}

impl OptimizerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Adam => "adam",
            Self::Lbfgs => "lbfgs",
        }
    }
}

/// The number format the network runs in. The image, the optimiser's state, the Gram matrices
/// and the loss stay fp32 whatever it is: the master copy that zoom, hand-off and frames use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    /// fp32 numbers, with TF32 tensor cores for matrix products and convolutions on NVIDIA GPUs
    /// (inputs rounded to a 10-bit mantissa, fp32 sums); the same as fp32 on a CPU.
    Tf32,
    /// Weights and activations in bfloat16 (tensor cores on a GPU); features are widened to
    /// fp32 before their Gram matrices.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
        }
    }

    /// The wire form: empty for fp32 (what a client that sets nothing sends).
    pub fn from_wire(s: &str) -> Result<Self, ParamError> {
        match s {
            "" | "fp32" => Ok(Self::Fp32),
            "tf32" => Ok(Self::Tf32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(ParamError::new(
                "--precision",
                format!("expected fp32, tf32 or bf16, got {:?}", crate::limits::quoted_prefix(s)),
            )),
        }
    }
}

/// What the style loss compares between the image's features and the style's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossKind {
    /// Gram matrices (second moments), as in Gatys et al. and the original gramzoom.
    #[default]
    Gram,
    /// The sliced Wasserstein distance between the feature distributions (Heitz et al., CVPR
    /// 2021): each layer's features projected on random directions, sorted, and compared
    /// quantile by quantile, which matches whole distributions rather than second moments.
    /// Closer colours and detail, likelier lines through the zoom's centre (measured).
    Swd,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gram => "gram",
            Self::Swd => "swd",
        }
    }

    /// The wire form: empty for gram (what a client that sets nothing sends).
    pub fn from_wire(s: &str) -> Result<Self, ParamError> {
        match s {
            "" | "gram" => Ok(Self::Gram),
            "swd" => Ok(Self::Swd),
            _ => Err(ParamError::new(
                "--loss",
                format!("expected gram or swd, got {:?}", crate::limits::quoted_prefix(s)),
            )),
        }
    }
}

/// Frames per second as an exact rational (29.97 is 2997/100), because encoders need exact time
/// bases and durations must come out right over a million frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fps {
    pub num: u32,
    pub den: u32,
}

impl Fps {
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl std::str::FromStr for Fps {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        let bad =
            || ParamError::new("--fps", format!("expected a number between 1 and 240 such as 30 or 29.97, got {s:?}"));
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() || frac.len() > 3 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let den = 10u32.pow(frac.len() as u32);
        let num: u32 = format!("{int}{frac}").parse().map_err(|_| bad())?;
        let g = gcd(num, den);
        let fps = Fps { num: num / g.max(1), den: den / g.max(1) };
        if !(1.0..=240.0).contains(&fps.as_f64()) {
            return Err(bad());
        }
        Ok(fps)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `WxH`, e.g. `1920x1080`.
pub fn parse_size(s: &str) -> Result<(u32, u32), ParamError> {
    let bad = || ParamError::new("--size", format!("expected WIDTHxHEIGHT such as 1920x1080, got {s:?}"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?))
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderParams {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: Fps,
    /// Magnification per second, a schedule (`crate::schedule`); a frame's factor is the fps-th
    /// root of its value, applied exactly. Below 1 zooms out.
    pub zoom: Schedule,
    /// Optimiser iterations per frame, a schedule (rounded to whole iterations).
    pub iters: Schedule,
    /// The zoom's fixed point as fractions of the frame (x, y), a schedule; (0.5, 0.5) is the
    /// centre.
    pub centre: Schedule,
    /// Rotation about the centre in degrees per second, a schedule; 0 is none.
    pub angle: Schedule,
    /// Beats per minute: the unit of `b` keys and of `b` in formulas.
    pub bpm: Option<f64>,
    /// The soundtrack's beats (`--beats`), in place of `bpm`.
    pub beats: Option<Arc<BeatGrid>>,
    pub warmup: u32,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    /// Step size; `None` picks the optimiser's default.
    pub learning_rate: Option<f64>,
    /// How big the style image is made before its statistics are taken.
    pub style_scale: StyleScale,
    pub network: Network,
    /// Conv layers used by the style loss with their weights; empty means all, equally weighted.
    pub layers: Vec<(String, f64)>,
    pub precision: Precision,
    pub loss: LossKind,
    /// Several named styles and their weights over the movie (`--style NAME=PATH`, `--blend`);
    /// `None`: one style, as before styles could change.
    pub blend: Option<Blend>,
}

impl Default for RenderParams {
    fn default() -> Self {
        Self {
            width: 256,
            height: 256,
            frames: 90,
            fps: Fps { num: 30, den: 1 },
            zoom: Schedule::constant(2.0),
            iters: Schedule::constant(4.0),
            centre: Schedule::constant2(0.5, 0.5),
            angle: Schedule::constant(0.0),
            bpm: None,
            beats: None,
            warmup: 120,
            seed: 0,
            optimizer: OptimizerKind::Adam,
            learning_rate: None,
            style_scale: StyleScale::Auto,
            network: Network::Vgg16,
            layers: Vec::new(),
            precision: Precision::Fp32,
            loss: LossKind::Gram,
            blend: None,
        }
    }
}

impl RenderParams {
    /// (layer index, weight) pairs for the style loss.
    pub fn loss_layers(&self) -> Vec<(usize, f64)> {
        let names: Vec<String> = self.network.layers().into_iter().map(|l| l.name).collect();
        if self.layers.is_empty() {
            return (0..names.len()).map(|i| (i, 1.0)).collect();
        }
        self.layers.iter().filter_map(|(n, w)| names.iter().position(|x| x == n).map(|i| (i, *w))).collect()
    }

    /// How many style images the render takes: one per named style, or the one.
    pub fn style_count(&self) -> usize {
        self.blend.as_ref().map_or(1, |b| b.names().len())
    }

    /// Time as the schedules see it.
    pub fn timing(&self) -> Timing {
        Timing { fps: self.fps.as_f64(), bpm: self.bpm, beats: self.beats.clone() }
    }

    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(match self.optimizer {
            OptimizerKind::Adam => 0.02,
            OptimizerKind::Lbfgs => 1.0,
        })
    }

    /// The settings a user tells renders apart by, in words: `64x48, vgg16, gram loss, bf16,
    /// adam, seed 0`. Shown when a state is refused by a render it does not belong to.
    pub fn summary(&self) -> String {
        format!(
            "{}x{}, {}, {} loss, {}, {}, seed {}",
            self.width,
            self.height,
            self.network.name(),
            self.loss.name(),
            self.precision.name(),
            self.optimizer.name(),
            self.seed
        )
    }
}

/// How big the style image is made before its statistics are taken, relative to the output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StyleScale {
    /// At the output's scale when the style is larger (its shorter side made the output's), at
    /// its own pixel size when smaller: upscaling a style adds blur, never detail, and the
    /// engine copies the blur (a 451x300 photo upscaled 3.6x for 1080p gave smeared frames).
    Auto,
    /// The style's shorter side this many times the output's shorter side, up or down.
    Times(f64),
}

impl StyleScale {
    /// The wire form: 0 for auto (what a client that sets nothing sends), else the factor.
    pub fn to_wire(self) -> f64 {
        match self {
            Self::Auto => 0.0,
            Self::Times(k) => k,
        }
    }

    pub fn from_wire(k: f64) -> Self {
        if k == 0.0 {
            Self::Auto
        } else {
            Self::Times(k)
        }
    }
}

impl std::fmt::Display for StyleScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Times(k) => write!(f, "{k}"),
        }
    }
}

impl std::str::FromStr for StyleScale {
    type Err = ParamError;

    fn from_str(s: &str) -> Result<Self, ParamError> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match s.trim().parse::<f64>() {
            Ok(k) if k.is_finite() && (0.05..=8.0).contains(&k) => Ok(Self::Times(k)),
            _ => Err(ParamError::new(
                "--style-scale",
                format!("must be auto or a number between 0.05 and 8.0, got {:?}", crate::limits::quoted_prefix(s)),
            )),
        }
    }
}

/// A render parameter that is out of range; `field` is the CLI flag name, so messages read like
/// `--size: width must be between 32 and 7680, got 7`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: &'static str,
    pub message: String,
}

impl ParamError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// What a render produces: a movie or the last frame as a still.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Mp4,
    Gif,
    Png,
    Jpeg,
}

impl OutputKind {
    pub fn from_path(path: &Path) -> Result<Self, ParamError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("mp4") => Ok(Self::Mp4),
            Some("gif") => Ok(Self::Gif),
            Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            other => Err(ParamError::new(
                "--output",
                format!("unknown output extension {:?}; use .mp4, .gif, .png or .jpg", other.unwrap_or("")),
            )),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Mp4 => "mp4",
            Self::Gif => "gif",
            Self::Png => "png",
            Self::Jpeg => "jpg",
        }
    }

    /// Whether the output holds every frame (a movie) or only the last one (a still).
    pub fn is_movie(self) -> bool {
        matches!(self, Self::Mp4 | Self::Gif)
    }

    /// Limits of the format itself, checked before any work is done.
    pub fn check(self, width: u32, height: u32, fps: Fps) -> Result<(), ParamError> {
        match self {
            Self::Mp4 if width % 2 == 1 || height % 2 == 1 => Err(ParamError::new(
                "--size",
                format!("an .mp4 (H.264, yuv420p) needs an even width and height, got {width}x{height}; use an even size, or .gif or .png output"),
            )),
            Self::Gif if fps.as_f64() > 50.0 => Err(ParamError::new(
                "--fps",
                format!("a .gif stores frame delays in 1/100 s and players slow down delays below 2/100 s, so at most 50 fps works, got {}", fps.as_f64()),
            )),
            _ => Ok(()),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fps_parses_exact_rationals() {
        let cases = [
            ("30", Some((30, 1))),
            ("29.97", Some((2997, 100))),
            ("23.976", Some((2997, 125))),
            ("0", None),
            ("241", None),
            ("x", None),
            ("1.2345", None),
        ];
        for (s, want) in cases {
            let got = s.parse::<Fps>().ok().map(|f| (f.num, f.den));
            assert_eq!(got, want, "{s}");
        }
    }
}
