//! Reading a schedule's text. The structure (keys, units, parentheses, easing names) is read
//! here; formulas are exmex's. Every error names the flag, the key and the character.

use super::{At, Body, Ease, Key, Schedule, Spec, Value, Vars, MAX_FORMULA_LEN, MAX_SCHEDULE_KEYS, MAX_SCHEDULE_LEN};
use crate::limits::{check_len, quoted_prefix};
use crate::params::ParamError;
use exmex::Express;

/// A formula of `t`, `s` and `b`.
#[derive(Debug, Clone)]
pub(super) struct Formula {
    expr: exmex::FlatEx<f64>,
    /// Which variable each of the expression's (alphabetically ordered) variables is.
    order: Vec<Var>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    T,
    S,
    B,
}

impl Formula {
    pub(super) fn eval(&self, vars: Vars) -> Result<f64, String> {
        let values: Vec<f64> = self
            .order
            .iter()
            .map(|v| match v {
                Var::T => vars.t,
                Var::S => vars.s,
                Var::B => vars.b,
            })
            .collect();
        self.expr.eval(&values).map_err(|e| e.msg().to_string())
    }

    pub(super) fn uses_beats(&self) -> bool {
        self.order.contains(&Var::B)
    }
}

/// A piece of the text and the byte where it starts.
pub(super) type Piece<'a> = (usize, &'a str);

/// Reads the values inside a key's parentheses (the text and the byte where it starts).
pub(super) type ValueReader<'a, 'r> = dyn Fn(usize, &'a str) -> Result<Vec<Value>, ParamError> + 'r;

pub(super) fn schedule(spec: &Spec, text: &str) -> Result<Schedule, ParamError> {
    check_len(spec.flag, text, MAX_SCHEDULE_LEN)?;
    let at = Cursor { spec, text };
    if text.trim().is_empty() {
        return Err(ParamError::new(
            spec.flag,
            "is empty: give a number, a formula of t, s and b, or keys such as \"0:(1.5), 4s:(3)\"",
        ));
    }
    let parts = at.split(0, text)?;
    let keyed = parts.iter().any(|(start, part)| at.top_colon(*start, part).is_some());
    let body = if !keyed {
        let values = at.values(0, text, &parts)?;
        match numbers(&values) {
            // A constant reads the same however it was written (`2`, `2.0`, ` 2 `).
            Some(v) => {
                return Ok(if spec.components == 2 {
                    Schedule::constant2(v[0], v[1])
                } else {
                    Schedule::constant(v[0])
                })
            }
            None => Body::Keys(vec![Key {
                at: At::Frame(0.0),
                values,
                ease: super::Ease::Linear,
                column: 1,
                written: text.trim().to_string(),
            }]),
        }
    } else {
        if parts.len() > MAX_SCHEDULE_KEYS {
            return Err(ParamError::new(
                spec.flag,
                format!("has {} keys, at most {MAX_SCHEDULE_KEYS} allowed", parts.len()),
            ));
        }
        Body::Keys(parts.iter().map(|(start, part)| at.key(*start, part)).collect::<Result<_, _>>()?)
    };
    Ok(Schedule { text: text.trim().to_string(), body })
}

fn numbers(values: &[Value]) -> Option<[f64; 2]> {
    let mut out = [0.0; 2];
    for (slot, v) in out.iter_mut().zip(values) {
        match v {
            Value::Number(x) => *slot = *x,
            Value::Formula(_) => return None,
        }
    }
    Some(out)
}

/// The text being read, for positions in messages.
pub(super) struct Cursor<'a> {
    pub(super) spec: &'a Spec,
    pub(super) text: &'a str,
}

impl<'a> Cursor<'a> {
    /// 1-based character of a byte offset.
    fn column(&self, byte: usize) -> usize {
        self.text[..byte].chars().count() + 1
    }

    pub(super) fn error(&self, byte: usize, message: impl std::fmt::Display) -> ParamError {
        ParamError::new(self.spec.flag, format!("character {}: {message}", self.column(byte)))
    }

    /// `piece` (starting at byte `start` of the text) split at its commas outside parentheses.
    pub(super) fn split(&self, start: usize, piece: &'a str) -> Result<Vec<Piece<'a>>, ParamError> {
        let mut parts = Vec::new();
        let (mut depth, mut from, mut opened) = (0usize, 0usize, Vec::new());
        for (i, ch) in piece.char_indices() {
            match ch {
                '(' => {
                    depth += 1;
                    opened.push(i);
                }
                ')' if depth == 0 => return Err(self.error(start + i, "this ')' closes nothing")),
                ')' => {
                    depth -= 1;
                    opened.pop();
                }
                ',' if depth == 0 => {
                    parts.push((start + from, &piece[from..i]));
                    from = i + 1;
                }
                _ => {}
            }
        }
        if let Some(&open) = opened.last() {
            return Err(self.error(start + open, "this '(' is never closed"));
        }
        parts.push((start + from, &piece[from..]));
        Ok(parts)
    }

    /// The byte of a ':' outside parentheses in `piece`, if any.
    pub(super) fn top_colon(&self, _start: usize, piece: &str) -> Option<usize> {
        let mut depth = 0i32;
        for (i, ch) in piece.char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                ':' if depth == 0 => return Some(i),
                _ => {}
            }
        }
        None
    }

    /// One key: `KEY:(VALUE[, VALUE]) [EASING]`.
    fn key(&self, start: usize, piece: &'a str) -> Result<Key, ParamError> {
        self.key_with(start, piece, &|start, inner| self.values(start, inner, &self.split(start, inner)?))
    }

    /// One key whose parenthesised value (at byte `start`) is read by `read`.
    pub(super) fn key_with(&self, start: usize, piece: &'a str, read: &ValueReader<'a, '_>) -> Result<Key, ParamError> {
        let lead = piece.len() - piece.trim_start().len();
        let (start, piece) = (start + lead, piece.trim());
        let written = piece.to_string();
        let Some(colon) = self.top_colon(start, piece) else {
            return Err(self.error(
                start,
                format!(
                    "{:?} is not a key: write KEY:(VALUE), such as 120:(1.5), 4s:(1.5) or 8b:(1.5)",
                    quoted_prefix(piece)
                ),
            ));
        };
        let at = self.at(start, piece[..colon].trim())?;
        let rest = &piece[colon + 1..];
        let lead = rest.len() - rest.trim_start().len();
        let (rest_start, rest) = (start + colon + 1 + lead, rest.trim());
        if !rest.starts_with('(') {
            return Err(self.error(rest_start, "a key's value goes in parentheses: 120:(1.5)"));
        }
        let close = matching(rest).ok_or_else(|| self.error(rest_start, "this '(' is never closed"))?;
        let values = read(rest_start + 1, &rest[1..close])?;
        let tail = rest[close + 1..].trim();
        let ease = if tail.is_empty() {
            Ease::Linear
        } else {
            let names: Vec<&str> = Ease::ALL.iter().map(|(n, _)| *n).collect();
            Ease::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(tail)).map(|(_, e)| *e).ok_or_else(|| {
                self.error(
                    rest_start + close + 1 + (rest[close + 1..].len() - rest[close + 1..].trim_start().len()),
                    format!("unknown easing {:?}; use {}", quoted_prefix(tail), names.join(", ")),
                )
            })?
        };
        Ok(Key { at, values, ease, column: self.column(start), written })
    }

    /// A key's place: `120` (frame), `4s` or `2.5s` (seconds), `8b` (beats).
    fn at(&self, start: usize, key: &str) -> Result<At, ParamError> {
        let bad = || {
            self.error(
                start,
                format!("{:?} is not a key: use a frame (120), seconds (4s) or beats (8b)", quoted_prefix(key)),
            )
        };
        let (digits, make): (&str, fn(f64) -> At) = if let Some(d) = key.strip_suffix(['s', 'S']) {
            (d, At::Second)
        } else if let Some(d) = key.strip_suffix(['b', 'B']) {
            (d, At::Beat)
        } else {
            (key, At::Frame)
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let x: f64 = digits.parse().map_err(|_| bad())?;
        if !x.is_finite() {
            return Err(bad());
        }
        Ok(make(x))
    }

    /// The values of `parts` (of `whole`, at `start`): exactly as many as the spec's numbers.
    fn values(&self, start: usize, whole: &str, parts: &[Piece<'a>]) -> Result<Vec<Value>, ParamError> {
        if parts.len() != self.spec.components {
            let want = match self.spec.components {
                1 => "one value".to_string(),
                n => format!("{n} values separated by a comma (X,Y)"),
            };
            return Err(self.error(start, format!("expected {want}, got {:?}", quoted_prefix(whole.trim()))));
        }
        parts.iter().map(|(at, part)| self.value(*at, part)).collect()
    }

    /// A number, or a formula of `t`, `s` and `b`.
    pub(super) fn value(&self, start: usize, piece: &str) -> Result<Value, ParamError> {
        let lead = piece.len() - piece.trim_start().len();
        let (start, piece) = (start + lead, piece.trim());
        if piece.is_empty() {
            return Err(self.error(start, "a value is missing"));
        }
        if piece.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
            if let Ok(x) = piece.parse::<f64>() {
                return Ok(Value::Number(x));
            }
        }
        if piece.len() > MAX_FORMULA_LEN {
            return Err(self.error(
                start,
                format!(
                    "a formula is {} bytes, at most {MAX_FORMULA_LEN} allowed: {:?}",
                    piece.len(),
                    quoted_prefix(piece)
                ),
            ));
        }
        let expr = exmex::parse::<f64>(piece)
            .map_err(|e| self.error(start, format!("{:?} is not a formula: {}", quoted_prefix(piece), e.msg())))?;
        let mut order = Vec::new();
        for name in expr.var_names() {
            order.push(match name.as_str() {
                "t" => Var::T,
                "s" => Var::S,
                "b" => Var::B,
                other => {
                    return Err(self.error(
                        start,
                        format!(
                            "unknown name {:?} in {:?}; a formula may use t (frame), s (seconds), b (beats), PI, TAU, E and functions such as sin, cos, exp, ln, abs, floor",
                            quoted_prefix(other),
                            quoted_prefix(piece)
                        ),
                    ))
                }
            });
        }
        Ok(Value::Formula(Box::new(Formula { expr, order })))
    }
}

/// The byte of the ')' that closes the '(' at the start of `s`.
fn matching(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}
