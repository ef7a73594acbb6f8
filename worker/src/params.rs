//! Render parameters: what a user asks for, validated once, with limits stated in the errors.
//!
//! The same struct travels from the CLI to the engine (and later over gRPC), so validation lives
//! here and not in the CLI.

use crate::error::ParamError;
use crate::vgg::Network;
use sha2::{Digest, Sha256};

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
    /// Magnification per second; the per-frame factor is its fps-th root, applied exactly.
    pub zoom: f64,
    pub iters: u32,
    pub warmup: u32,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    /// Step size; `None` picks the optimiser's default.
    pub learning_rate: Option<f64>,
    /// The style image is resized so that its shorter side is this times the output's shorter side.
    pub style_scale: f64,
    pub network: Network,
    /// Conv layers used by the style loss with their weights; empty means all, equally weighted.
    pub layers: Vec<(String, f64)>,
}

impl Default for RenderParams {
    fn default() -> Self {
        Self {
            width: 256,
            height: 256,
            frames: 90,
            fps: Fps { num: 30, den: 1 },
            zoom: 2.0,
            iters: 4,
            warmup: 120,
            seed: 0,
            optimizer: OptimizerKind::Adam,
            learning_rate: None,
            style_scale: 1.0,
            network: Network::Vgg16,
            layers: Vec::new(),
        }
    }
}

impl RenderParams {
    pub fn validate(&self) -> Result<(), ParamError> {
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return Err(ParamError::new(
                    "--size",
                    format!("{name} must be between {MIN_SIDE} and {MAX_SIDE}, got {v}"),
                ));
            }
        }
        if !(1..=MAX_FRAMES).contains(&self.frames) {
            return Err(ParamError::new(
                "--frames",
                format!("must be between 1 and {MAX_FRAMES}, got {}", self.frames),
            ));
        }
        if !(self.zoom.is_finite() && (1.0..=16.0).contains(&self.zoom)) {
            return Err(ParamError::new(
                "--zoom",
                format!("magnification per second must be between 1.0 and 16.0, got {}", self.zoom),
            ));
        }
        if !(1..=MAX_ITERS).contains(&self.iters) {
            return Err(ParamError::new("--iters", format!("must be between 1 and {MAX_ITERS}, got {}", self.iters)));
        }
        if self.warmup > MAX_WARMUP {
            return Err(ParamError::new("--warmup", format!("must be at most {MAX_WARMUP}, got {}", self.warmup)));
        }
        if !(self.style_scale.is_finite() && (0.05..=8.0).contains(&self.style_scale)) {
            return Err(ParamError::new(
                "--style-scale",
                format!("must be between 0.05 and 8.0, got {}", self.style_scale),
            ));
        }
        let names: Vec<String> = self.network.layers().into_iter().map(|l| l.name).collect();
        for (name, w) in &self.layers {
            if !names.contains(name) {
                return Err(ParamError::new(
                    "--layers",
                    format!("{} has no layer {name:?}; it has {}", self.network.name(), names.join(",")),
                ));
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(ParamError::new(
                    "--layers",
                    format!("weight of {name} must be a non-negative number, got {w}"),
                ));
            }
        }
        if let Some(lr) = self.learning_rate {
            if !(lr.is_finite() && lr > 0.0 && lr <= 100.0) {
                return Err(ParamError::new("--lr", format!("must be above 0 and at most 100, got {lr}")));
            }
        }
        Ok(())
    }

    /// Zoom factor between consecutive frames.
    /// (layer index, weight) pairs for the style loss.
    pub fn loss_layers(&self) -> Vec<(usize, f64)> {
        let names: Vec<String> = self.network.layers().into_iter().map(|l| l.name).collect();
        if self.layers.is_empty() {
            return (0..names.len()).map(|i| (i, 1.0)).collect();
        }
        self.layers.iter().filter_map(|(n, w)| names.iter().position(|x| x == n).map(|i| (i, *w))).collect()
    }

    pub fn zoom_per_frame(&self) -> f64 {
        self.zoom.powf(1.0 / self.fps.as_f64())
    }

    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(match self.optimizer {
            OptimizerKind::Adam => 0.02,
            OptimizerKind::Lbfgs => 1.0,
        })
    }

    /// Identifies everything that determines the frame sequence except its length, so that a
    /// hand-off state is only ever resumed by a render that would have produced it. The frame
    /// count is left out on purpose: a movie can be extended from its last state.
    pub fn fingerprint(&self, style_digest: &str, weights_digest: &str) -> String {
        let canon = format!(
            "v1|{}x{}|{}/{}|{:?}|{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{}|{}",
            self.width,
            self.height,
            self.fps.num,
            self.fps.den,
            self.zoom,
            self.iters,
            self.warmup,
            self.seed,
            self.optimizer.name(),
            self.learning_rate(),
            self.style_scale,
            self.network.name(),
            self.layers,
            style_digest,
            weights_digest,
        );
        hex(&Sha256::digest(canon.as_bytes()))
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

    #[test]
    fn validation_names_the_field() {
        type Mutation = fn(&mut RenderParams);
        let cases: [(Mutation, &str); 6] = [
            (|p| p.width = 0, "--size"),
            (|p| p.height = 9000, "--size"),
            (|p| p.frames = 0, "--frames"),
            (|p| p.zoom = 0.5, "--zoom"),
            (|p| p.iters = 0, "--iters"),
            (|p| p.style_scale = 0.0, "--style-scale"),
        ];
        for (mutate, field) in cases {
            let mut p = RenderParams::default();
            mutate(&mut p);
            assert_eq!(p.validate().unwrap_err().field, field);
        }
        RenderParams::default().validate().unwrap();
    }
}
