//! Schedules: a setting that changes over the movie (zoom, centre, rotation, iterations).
//!
//! A schedule is written as Deforum writes its motion, with Parseq's units and per-key easing:
//!
//! - `2` or `0.3,0.6`: a constant, as before schedules existed;
//! - `1.5 + 0.5*sin(TAU*s/8)`: a formula of `t` (the frame), `s` (seconds) and `b` (beats, with
//!   `--bpm`), evaluated by exmex (float-only, so `1/2` is 0.5);
//! - `0:(1.5), 4s:(3) ease-in-out, 8b:(1.5)`: keys at a frame, a second or a beat, each with a
//!   value (a number or a formula) and the easing from it to the next key (linear unless named:
//!   `step`, `cubic`, `ease-in`, `ease-out`, `ease-in-out`). Before the first key the first
//!   value holds, after the last key the last.
//!
//! Every value is a pure function of the global frame index, the frame rate and the tempo, all
//! part of the job, so where a segment boundary falls or which worker renders it changes
//! nothing. Keys stay in their own units: a movie made longer keeps its second and beat keys
//! where they were in time. What a schedule may hold, and its range, is its [`Spec`].

mod beats;
mod blend;
mod parse;

pub use beats::{BeatGrid, MAX_BEATS};
pub use blend::{check_style_name, Blend, PlacedBlend, BLEND, MAX_STYLES, MAX_STYLE_NAME};

use crate::params::ParamError;
use std::sync::Arc;

/// Bytes of one schedule's text.
pub const MAX_SCHEDULE_LEN: usize = 64 << 10;
/// Keys of one schedule.
pub const MAX_SCHEDULE_KEYS: usize = 1000;
/// Bytes of one formula: long enough for any motion (Deforum's default zoom is 37), short
/// enough that checking every frame of a million-frame job at submit stays well under a second.
pub const MAX_FORMULA_LEN: usize = 256;
/// Beats per minute that `--bpm` accepts.
pub const BPM_RANGE: (f64, f64) = (1.0, 1000.0);

/// What a schedule sets: its flag, how many numbers a value has, their range, and how values
/// are interpolated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub flag: &'static str,
    /// Numbers per value: 2 for the centre, 1 for the rest.
    pub components: usize,
    /// Interpolated in log space (the zoom: halfway between 1.5 and 6 is 3).
    pub log: bool,
    /// Inclusive range every frame's value must lie in.
    pub range: (f64, f64),
    /// What the numbers are, for messages.
    pub unit: &'static str,
}

/// Magnification per second; below 1 zooms out.
pub const ZOOM: Spec =
    Spec { flag: "--zoom", components: 1, log: true, range: (1.0 / 16.0, 16.0), unit: "magnification per second" };
/// The zoom's fixed point as fractions of the frame's width and height.
pub const CENTRE: Spec =
    Spec { flag: "--centre", components: 2, log: false, range: (0.0, 1.0), unit: "fraction of the frame" };
/// Rotation in degrees per second, anticlockwise as shown.
pub const ANGLE: Spec =
    Spec { flag: "--angle", components: 1, log: false, range: (-360.0, 360.0), unit: "degrees per second" };
/// Optimiser iterations per frame (rounded to a whole number).
pub const ITERS: Spec = Spec {
    flag: "--iters",
    components: 1,
    log: false,
    range: (1.0, crate::params::MAX_ITERS as f64),
    unit: "iterations per frame",
};

/// Time as a schedule sees it: the job's frame rate and tempo, a constant one or the
/// soundtrack's beats.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub fps: f64,
    pub bpm: Option<f64>,
    pub beats: Option<Arc<BeatGrid>>,
}

impl Timing {
    fn vars(&self, frame: f64) -> Vars {
        let s = frame / self.fps;
        Vars { t: frame, s, b: self.beat_at(s).unwrap_or(0.0) }
    }

    /// Beats at second `s`, when the movie has a tempo.
    fn beat_at(&self, s: f64) -> Option<f64> {
        match (&self.beats, self.bpm) {
            (Some(grid), _) => Some(grid.beat_at(s)),
            (None, Some(bpm)) => Some(s * bpm / 60.0),
            (None, None) => None,
        }
    }

    /// The second of beat `b`, when the movie has a tempo.
    fn seconds_at(&self, b: f64) -> Option<f64> {
        match (&self.beats, self.bpm) {
            (Some(grid), _) => Some(grid.seconds_at(b)),
            (None, Some(bpm)) => Some(b * 60.0 / bpm),
            (None, None) => None,
        }
    }

    fn has_tempo(&self) -> bool {
        self.bpm.is_some() || self.beats.is_some()
    }
}

/// The variables a formula may use.
#[derive(Debug, Clone, Copy)]
struct Vars {
    t: f64,
    s: f64,
    b: f64,
}

/// A schedule as written, and parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    body: Body,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

#[derive(Debug, Clone)]
enum Body {
    /// Numbers only, no keys: what every render was before schedules.
    Constant([f64; 2]),
    /// Keys in order of writing; a lone formula is one key at frame 0.
    Keys(Vec<Key>),
}

#[derive(Debug, Clone)]
struct Key {
    at: At,
    values: Vec<Value>,
    ease: Ease,
    /// Where the key starts in the text (1-based character), for messages.
    column: usize,
    /// The key as written, for messages.
    written: String,
}

/// Where a key is, in the unit it was written in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    Frame(f64),
    Second(f64),
    Beat(f64),
}

#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    /// Boxed: exmex keeps its nodes inline (about 20 KB).
    Formula(Box<parse::Formula>),
}

/// How a value moves from its key to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ease {
    Linear,
    /// Holds until the next key.
    Step,
    /// A cubic through the neighbouring keys (Catmull-Rom): smooth speed across keys.
    Cubic,
    EaseIn,
    EaseOut,
    EaseInOut,
}

impl Ease {
    pub const ALL: [(&'static str, Ease); 6] = [
        ("linear", Ease::Linear),
        ("step", Ease::Step),
        ("cubic", Ease::Cubic),
        ("ease-in", Ease::EaseIn),
        ("ease-out", Ease::EaseOut),
        ("ease-in-out", Ease::EaseInOut),
    ];

    /// The share of the way from this key's value to the next at `u` in [0, 1).
    fn weight(self, u: f64) -> f64 {
        match self {
            Ease::Linear | Ease::Cubic => u,
            Ease::Step => 0.0,
            Ease::EaseIn => u * u,
            Ease::EaseOut => 1.0 - (1.0 - u) * (1.0 - u),
            Ease::EaseInOut => u * u * (3.0 - 2.0 * u),
        }
    }
}

impl From<f64> for Schedule {
    fn from(value: f64) -> Self {
        Self::constant(value)
    }
}

impl From<u32> for Schedule {
    fn from(value: u32) -> Self {
        Self::constant(f64::from(value))
    }
}

impl Schedule {
    /// A constant schedule (`--zoom 2`).
    pub fn constant(value: f64) -> Self {
        Self { text: number(value), body: Body::Constant([value, 0.0]) }
    }

    /// A constant two-number schedule (`--centre 0.5,0.5`).
    pub fn constant2(x: f64, y: f64) -> Self {
        Self { text: format!("{},{}", number(x), number(y)), body: Body::Constant([x, y]) }
    }

    /// Parses `text` as a schedule of `spec`; keys and formulas are checked against the movie
    /// later, by [`Schedule::check`].
    pub fn parse(spec: &Spec, text: &str) -> Result<Self, ParamError> {
        parse::schedule(spec, text)
    }

    /// The text as given (the fingerprint's and the wire's form).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value when the schedule is a plain constant.
    pub fn as_constant(&self) -> Option<[f64; 2]> {
        match self.body {
            Body::Constant(v) => Some(v),
            Body::Keys(_) => None,
        }
    }

    /// The value at `frame`: the first `spec.components` numbers (placing the keys first; a
    /// render that asks for many frames keeps a [`Placed`]).
    pub fn at(&self, spec: &Spec, timing: &Timing, frame: u32) -> Result<[f64; 2], ParamError> {
        self.place(spec, timing)?.at(frame)
    }

    /// The schedule with its keys placed in frames for `timing`.
    pub fn place<'a>(&'a self, spec: &'a Spec, timing: &Timing) -> Result<Placed<'a>, ParamError> {
        let positions = match &self.body {
            Body::Constant(_) => Vec::new(),
            Body::Keys(keys) => keys.iter().map(|k| k.frame(spec, timing)).collect::<Result<_, _>>()?,
        };
        Ok(Placed { schedule: self, spec, timing: timing.clone(), positions })
    }

    /// Checks the schedule against a movie of `frames` frames: keys in order and not past its
    /// end, beats only with a tempo, and every frame's value finite and in range.
    pub fn check(&self, spec: &Spec, timing: &Timing, frames: u32) -> Result<(), ParamError> {
        self.check_keys(spec, timing, frames)?;
        let frames_to_check = if self.as_constant().is_some() { 1 } else { frames };
        let placed = self.place(spec, timing)?;
        for frame in 0..frames_to_check {
            placed.at(frame)?;
        }
        Ok(())
    }

    /// The keys alone: in order, not past the end, beats only with a tempo.
    fn check_keys(&self, spec: &Spec, timing: &Timing, frames: u32) -> Result<(), ParamError> {
        if let Body::Keys(keys) = &self.body {
            let mut last: Option<(f64, &Key)> = None;
            for key in keys {
                let at = key.frame(spec, timing)?;
                if let Some((before, previous)) = last {
                    if at <= before {
                        return Err(key.error(
                            spec,
                            format!(
                                "is at frame {}, not after the key before it ({} at frame {}); keys go in time order",
                                short(at),
                                previous.written,
                                short(before)
                            ),
                        ));
                    }
                }
                if at > f64::from(frames) {
                    return Err(key.error(
                        spec,
                        format!(
                            "is at frame {}, past the movie's end (frame {frames}, {} s)",
                            short(at),
                            short(f64::from(frames) / timing.fps)
                        ),
                    ));
                }
                last = Some((at, key));
            }
        }
        if !timing.has_tempo() && self.uses_beats() {
            return Err(ParamError::new(spec.flag, "uses beats (b), which needs --bpm (or --beats from the audio)"));
        }
        Ok(())
    }

    /// Whether any key is in beats or any formula uses `b`: such a schedule needs `--bpm`.
    pub fn uses_beats(&self) -> bool {
        match &self.body {
            Body::Constant(_) => false,
            Body::Keys(keys) => keys.iter().any(|k| {
                matches!(k.at, At::Beat(_)) || k.values.iter().any(|v| matches!(v, Value::Formula(f) if f.uses_beats()))
            }),
        }
    }
}

/// A schedule with its keys placed in frames: what a render evaluates frame by frame.
pub struct Placed<'a> {
    schedule: &'a Schedule,
    spec: &'a Spec,
    timing: Timing,
    positions: Vec<f64>,
}

impl Placed<'_> {
    /// The value at `frame`, in its spec's range. Errors name the key in effect when a formula
    /// gives something that is not a finite number (a positive one for the zoom), and the frame
    /// when the value is out of range.
    pub fn at(&self, frame: u32) -> Result<[f64; 2], ParamError> {
        let value = self.unchecked(frame)?;
        let spec = self.spec;
        for v in &value[..spec.components] {
            if !(v.is_finite() && (spec.range.0..=spec.range.1).contains(v)) {
                return Err(ParamError::new(
                    spec.flag,
                    format!(
                        "at frame {frame} ({} s) the {} is {}; it must be between {} and {}",
                        short(f64::from(frame) / self.timing.fps),
                        spec.unit,
                        v,
                        spec.range.0,
                        spec.range.1
                    ),
                ));
            }
        }
        Ok(value)
    }

    fn unchecked(&self, frame: u32) -> Result<[f64; 2], ParamError> {
        let keys = match &self.schedule.body {
            Body::Constant(v) => return Ok(*v),
            Body::Keys(keys) => keys,
        };
        let (spec, positions) = (self.spec, &self.positions);
        let t = f64::from(frame);
        // The key in effect: the last one at or before t (the first before any key).
        let k = positions.partition_point(|&x| x <= t).saturating_sub(1);
        let vars = self.timing.vars(t);
        let mut out = [0.0; 2];
        for (c, slot) in out.iter_mut().enumerate().take(spec.components) {
            // Values in interpolation space: logarithms for the zoom.
            let value = |i: usize| keys[i].value(spec, c, vars, frame).map(|v| if spec.log { v.ln() } else { v });
            if k + 1 >= keys.len() || t < positions[k] || keys[k].ease == Ease::Step {
                // A held value is the key's own number, not a round trip through its logarithm.
                *slot = keys[k].value(spec, c, vars, frame)?;
                continue;
            }
            let (here, next) = (value(k)?, value(k + 1)?);
            let u = (t - positions[k]) / (positions[k + 1] - positions[k]);
            let v = if keys[k].ease == Ease::Cubic {
                let before = if k > 0 { Some((positions[k - 1], value(k - 1)?)) } else { None };
                let after = if k + 2 < keys.len() { Some((positions[k + 2], value(k + 2)?)) } else { None };
                hermite((positions[k], here), (positions[k + 1], next), before, after, u)
            } else {
                here + (next - here) * keys[k].ease.weight(u)
            };
            *slot = if spec.log { v.exp() } else { v };
        }
        Ok(out)
    }
}

impl Key {
    /// Where the key is, in frames (fractional when seconds or beats fall between frames).
    fn frame(&self, spec: &Spec, timing: &Timing) -> Result<f64, ParamError> {
        Ok(match self.at {
            At::Frame(f) => f,
            At::Second(s) => s * timing.fps,
            At::Beat(b) => match timing.seconds_at(b) {
                Some(s) => s * timing.fps,
                None => return Err(self.error(spec, "is in beats, which needs --bpm (or --beats from the audio)")),
            },
        })
    }

    /// Component `c` of the value at `vars`: finite, and above 0 for the zoom.
    fn value(&self, spec: &Spec, c: usize, vars: Vars, frame: u32) -> Result<f64, ParamError> {
        let v = match &self.values[c] {
            Value::Number(x) => *x,
            Value::Formula(f) => f.eval(vars).map_err(|e| self.error(spec, format!("at frame {frame}: {e}")))?,
        };
        if !v.is_finite() {
            return Err(self.error(spec, format!("gives {v} at frame {frame}; every frame needs a finite number")));
        }
        if spec.log && v <= 0.0 {
            return Err(self.error(spec, format!("gives {v} at frame {frame}; a {} must be above 0", spec.unit)));
        }
        Ok(v)
    }

    fn error(&self, spec: &Spec, message: impl std::fmt::Display) -> ParamError {
        ParamError::new(
            spec.flag,
            format!("key {:?} (character {}) {message}", crate::limits::quoted_prefix(&self.written), self.column),
        )
    }
}

/// Catmull-Rom on uneven keys: a cubic Hermite from `a` to `b` whose slopes come from the
/// neighbouring keys (one-sided at the ends), so speed is continuous across keys.
fn hermite(a: (f64, f64), b: (f64, f64), before: Option<(f64, f64)>, after: Option<(f64, f64)>, u: f64) -> f64 {
    let chord = (b.1 - a.1) / (b.0 - a.0);
    let m0 = before.map_or(chord, |p| (b.1 - p.1) / (b.0 - p.0));
    let m1 = after.map_or(chord, |n| (n.1 - a.1) / (n.0 - a.0));
    let span = b.0 - a.0;
    let (u2, u3) = (u * u, u * u * u);
    (2.0 * u3 - 3.0 * u2 + 1.0) * a.1
        + (u3 - 2.0 * u2 + u) * span * m0
        + (-2.0 * u3 + 3.0 * u2) * b.1
        + (u3 - u2) * span * m1
}

/// A number for a message: at most three decimals, no trailing zeros (`37.5`, `1`).
fn short(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A number as Rust's `Debug` writes it (`2.0`, `0.5`): exact, and what fingerprints use.
fn number(x: f64) -> String {
    format!("{x:?}")
}

#[cfg(test)]
mod tests;
