//! Styles over time: a schedule of blend weights over a movie's named styles.
//!
//! Written as the motion schedules are, with each key's value a mix of named styles:
//! `0:(a), 20s:(a), 30s:(b) ease-in-out, 40s:(a:0.3, b:0.7)`. A name alone weighs 1, a name
//! with a weight weighs that (a number or a formula of `t`, `s`, `b`), a style not named in a
//! key weighs 0 there. A constant mix is one value in parentheses, `(a:1, b:3)`, or a name.
//! Each style's weight is interpolated between keys on its own (with the key's easing), then
//! the weights of a frame are divided by their sum: what the engine mixes its targets by.
//!
//! Parsed once into one weight schedule per style with the same keys, so evaluation, easing,
//! units, ranges and messages are the motion schedules' own.

use super::parse::Cursor;
use super::{At, Body, Ease, Key, Placed, Schedule, Spec, Timing, Value, MAX_SCHEDULE_KEYS, MAX_SCHEDULE_LEN};
use crate::limits::{check_len, quoted_prefix};
use crate::params::ParamError;

/// Styles one movie may blend: each is uploaded, stored and turned into targets.
pub const MAX_STYLES: usize = 8;
/// Bytes of a style's name.
pub const MAX_STYLE_NAME: usize = 32;

/// One style's weight: any number from 0 (normalised per frame, so only ratios matter).
pub const BLEND: Spec = Spec { flag: "--blend", components: 1, log: false, range: (0.0, 1e6), unit: "style weight" };

/// The blend as written, with the styles it was read against.
#[derive(Debug, Clone)]
pub struct Blend {
    text: String,
    names: Vec<String>,
    /// One weight schedule per style, in the order of `names`.
    weights: Vec<Schedule>,
}

impl PartialEq for Blend {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.names == other.names
    }
}

/// Checks a style's name: a letter, then letters, digits, `_` or `-`.
pub fn check_style_name(name: &str) -> Result<(), ParamError> {
    let ok = name.len() <= MAX_STYLE_NAME
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ParamError::new(
            "--style",
            format!(
                "{:?} is not a style name: a letter, then letters, digits, '_' or '-', at most {MAX_STYLE_NAME} bytes",
                quoted_prefix(name)
            ),
        ))
    }
}

impl Blend {
    /// Every style weighs the same, at every frame: several styles with no `--blend`.
    pub fn equal(names: &[String]) -> Self {
        Self {
            text: String::new(),
            names: names.to_vec(),
            weights: names.iter().map(|_| Schedule::constant(1.0)).collect(),
        }
    }

    /// Parses `text` against the movie's style `names`.
    pub fn parse(names: &[String], text: &str) -> Result<Self, ParamError> {
        check_len(BLEND.flag, text, MAX_SCHEDULE_LEN)?;
        let at = Cursor { spec: &BLEND, text };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ParamError::new(
                BLEND.flag,
                "is empty: give a style's name, a mix such as \"(a:1, b:3)\", or keys such as \"0:(a), 30s:(b)\"",
            ));
        }
        let lead = text.len() - text.trim_start().len();
        let read = |start: usize, inner: &str| mix(&at, names, start, inner);
        let keys = if trimmed.starts_with('(') || at.top_colon(lead, trimmed).is_none() {
            // One mix for the whole movie: `(a:1, b:3)` or a name.
            let inner = trimmed.strip_prefix('(').and_then(|t| t.strip_suffix(')'));
            let (start, inner) = match inner {
                Some(inner) => (lead + 1, inner),
                None => (lead, trimmed),
            };
            let values = read(start, inner)?;
            vec![Key { at: At::Frame(0.0), values, ease: Ease::Linear, column: 1, written: trimmed.to_string() }]
        } else {
            let parts = at.split(0, text)?;
            if parts.len() > MAX_SCHEDULE_KEYS {
                return Err(ParamError::new(
                    BLEND.flag,
                    format!("has {} keys, at most {MAX_SCHEDULE_KEYS} allowed", parts.len()),
                ));
            }
            parts.iter().map(|(start, part)| at.key_with(*start, part, &read)).collect::<Result<_, _>>()?
        };
        let weights = (0..names.len())
            .map(|i| {
                let keys = keys.iter().map(|k| Key { values: vec![k.values[i].clone()], ..k.clone() }).collect();
                Schedule { text: trimmed.to_string(), body: Body::Keys(keys) }
            })
            .collect();
        Ok(Self { text: trimmed.to_string(), names: names.to_vec(), weights })
    }

    /// The text as given; empty for equal weights.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether any key is in beats or any weight uses `b`.
    pub fn uses_beats(&self) -> bool {
        self.weights.iter().any(Schedule::uses_beats)
    }

    /// The weights placed for `timing`.
    pub fn place(&self, timing: &Timing) -> Result<PlacedBlend<'_>, ParamError> {
        let placed = self.weights.iter().map(|w| w.place(&BLEND, timing)).collect::<Result<_, _>>()?;
        Ok(PlacedBlend { placed, timing: timing.clone() })
    }

    /// Every frame's weights: keys in order and in the movie, each weight finite and in range,
    /// and at least one above 0.
    pub fn check(&self, timing: &Timing, frames: u32) -> Result<(), ParamError> {
        for w in &self.weights {
            w.check_keys(&BLEND, timing, frames)?;
        }
        let constant = self.weights.iter().all(|w| w.as_constant().is_some());
        let placed = self.place(timing)?;
        for frame in 0..if constant { 1 } else { frames } {
            placed.at(frame)?;
        }
        Ok(())
    }
}

/// A blend placed in frames: what a render evaluates frame by frame.
pub struct PlacedBlend<'a> {
    placed: Vec<Placed<'a>>,
    timing: Timing,
}

impl PlacedBlend<'_> {
    /// Each style's share of frame `frame`, summing to 1.
    pub fn at(&self, frame: u32) -> Result<Vec<f64>, ParamError> {
        let raw = self.placed.iter().map(|p| p.at(frame).map(|[w, _]| w)).collect::<Result<Vec<_>, _>>()?;
        let sum: f64 = raw.iter().sum();
        if sum <= 0.0 {
            return Err(ParamError::new(
                BLEND.flag,
                format!(
                    "at frame {frame} ({} s) every style weighs 0; at least one must weigh more",
                    super::short(f64::from(frame) / self.timing.fps)
                ),
            ));
        }
        Ok(raw.iter().map(|w| w / sum).collect())
    }
}

/// The values of one mix, `a`, `a:0.3, b:0.7` or `a:0.5+0.5*sin(s)`: one per style, 0 for a
/// style not named.
fn mix(at: &Cursor<'_>, names: &[String], start: usize, inner: &str) -> Result<Vec<Value>, ParamError> {
    let mut values = vec![None; names.len()];
    for (part_start, part) in at.split(start, inner)? {
        let lead = part.len() - part.trim_start().len();
        let (part_start, part) = (part_start + lead, part.trim());
        if part.is_empty() {
            return Err(at.error(part_start, "a style's name is missing"));
        }
        let (name, value) = match at.top_colon(part_start, part) {
            Some(colon) => (part[..colon].trim(), Some((part_start + colon + 1, &part[colon + 1..]))),
            None => (part, None),
        };
        let Some(i) = names.iter().position(|n| n == name) else {
            let known = if names.is_empty() {
                "the movie has no named styles (give them as --style NAME=PATH)".to_string()
            } else {
                format!("the movie's styles are {}", names.join(", "))
            };
            return Err(at.error(part_start, format!("unknown style {:?}; {known}", quoted_prefix(name))));
        };
        if values[i].is_some() {
            return Err(at.error(part_start, format!("style {name:?} is named twice in one mix")));
        }
        values[i] = Some(match value {
            Some((value_start, text)) => at.value(value_start, text)?,
            None => Value::Number(1.0),
        });
    }
    Ok(values.into_iter().map(|v| v.unwrap_or(Value::Number(0.0))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    const TIMING: Timing = Timing { fps: 10.0, bpm: Some(120.0), beats: None };

    #[test]
    fn a_cross_fade_moves_the_weights_from_one_style_to_the_other() {
        let blend = Blend::parse(&names(), "0:(a), 10:(a) ease-in-out, 30:(b), 4s:(a:1, b:3)").unwrap();
        blend.check(&TIMING, 41).unwrap();
        let placed = blend.place(&TIMING).unwrap();
        let at = |f| placed.at(f).unwrap();
        assert_eq!(at(0), vec![1.0, 0.0]);
        assert_eq!(at(10), vec![1.0, 0.0]);
        assert_eq!(at(20), vec![0.5, 0.5]);
        assert_eq!(at(30), vec![0.0, 1.0]);
        assert_eq!(at(40), vec![0.25, 0.75]);
        // Eased: slow at both ends of the fade.
        assert!(at(12)[1] < 0.05 && at(28)[1] > 0.95, "{:?} {:?}", at(12), at(28));
        for (text, want) in [("(a:1, b:3)", [0.25, 0.75]), ("b", [0.0, 1.0]), (" (a) ", [1.0, 0.0])] {
            let blend = Blend::parse(&names(), text).unwrap();
            assert_eq!(blend.place(&TIMING).unwrap().at(7).unwrap(), want.to_vec(), "{text}");
        }
        let equal = Blend::equal(&names());
        assert_eq!(equal.place(&TIMING).unwrap().at(3).unwrap(), vec![0.5, 0.5]);
        let beats = Blend::parse(&names(), "0:(a), 4b:(b:1+0*b)").unwrap();
        assert!(beats.uses_beats() && !blend_of("0:(a), 4s:(b)").uses_beats());
    }

    fn blend_of(text: &str) -> Blend {
        Blend::parse(&names(), text).unwrap()
    }

    #[test]
    fn bad_blends_name_the_key_and_the_character() {
        for (text, frames, want) in [
            ("0:(a), 10:(c)", 20, "character 12: unknown style \"c\"; the movie's styles are a, b"),
            ("0:(a, a)", 20, "character 7: style \"a\" is named twice"),
            ("0:(a), 30:(b)", 20, "key \"30:(b)\" (character 8) is at frame 30, past the movie's end"),
            ("0:(a:-1, b)", 20, "the style weight is -1"),
            ("0:(a:0, b:0)", 20, "at frame 0 (0 s) every style weighs 0"),
            ("0:(a:1/abs(t-5), b)", 20, "gives inf at frame 5"),
            ("0:(a:sin(t)+q)", 20, "unknown name \"q\""),
            ("(a:1, ", 20, "character 1: this '(' is never closed"),
            ("0:(a), 2:(b) wobbly", 20, "unknown easing \"wobbly\""),
            ("0:(,)", 20, "a style's name is missing"),
        ] {
            let err = Blend::parse(&names(), text).and_then(|b| b.check(&TIMING, frames)).unwrap_err();
            assert_eq!(err.field, "--blend", "{text}");
            assert!(err.message.contains(want), "{text}: {}", err.message);
        }
        let err = Blend::parse(&[], "a").unwrap_err();
        assert!(err.message.contains("no named styles"), "{}", err.message);
        let many = (0..=MAX_SCHEDULE_KEYS).map(|k| format!("{k}:(a)")).collect::<Vec<_>>().join(",");
        assert!(Blend::parse(&names(), &many).unwrap_err().message.contains("keys, at most 1000"));
        let huge = format!("0:(a:{})", "1+".repeat(1 << 20) + "1");
        assert!(Blend::parse(&names(), &huge).unwrap_err().message.contains("bytes"));
        for bad in ["", "1a", "a b", "a=b", &"x".repeat(33)] {
            assert_eq!(check_style_name(bad).unwrap_err().field, "--style", "{bad:?}");
        }
        check_style_name("Autumn_2-b").unwrap();
    }
}
