//! Validation of render parameters: every limit a render has, checked once, each error naming
//! the flag (`--size`) and what is allowed. The CLI, the coordinator (at submit) and the worker
//! all call it, so a job that cannot render is refused before anyone spends time on it.

use super::*;
use crate::limits::{quoted_prefix, MAX_FPS_DEN, MAX_LAYERS, MAX_LAYER_WEIGHT};
use crate::schedule::{check_style_name, ANGLE, BPM_RANGE, CENTRE, ITERS, MAX_STYLES, ZOOM};

impl RenderParams {
    /// Every limit, each frame of every schedule included: what the CLI, the coordinator at
    /// submit and a worker taking a job call. Walking a million frames of formulas takes up to
    /// a few seconds, so the async callers run it off their runtime.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_settings()?;
        self.check_schedules()
    }

    /// Every schedule, frame by frame: a formula that divides by zero at frame 90,000 is
    /// refused at submit, not by the worker that reaches it.
    pub fn check_schedules(&self) -> Result<(), ParamError> {
        let timing = self.timing();
        for (schedule, spec) in
            [(&self.zoom, &ZOOM), (&self.iters, &ITERS), (&self.centre, &CENTRE), (&self.angle, &ANGLE)]
        {
            schedule.check(spec, &timing, self.frames)?;
        }
        if let Some(blend) = &self.blend {
            blend.check(&timing, self.frames)?;
        }
        Ok(())
    }

    /// Every limit but the frame-by-frame walk of the schedules: for parameters that passed
    /// [`RenderParams::validate`] when they were submitted and are read back from the
    /// coordinator's own database (on every upload, with the database in hand).
    pub fn validate_settings(&self) -> Result<(), ParamError> {
        // The denominator is bounded too: 4294967295/4294967295 is 1 fps, and libx264 refuses
        // its time base. Every value accepted here encodes (tested at the extremes).
        if !(1..=MAX_FPS_DEN).contains(&self.fps.den) || !(1.0..=240.0).contains(&self.fps.as_f64()) {
            return Err(ParamError::new(
                "--fps",
                format!(
                    "must be between 1 and 240 frames per second with a denominator of at most {MAX_FPS_DEN}, got {}/{}",
                    self.fps.num, self.fps.den
                ),
            ));
        }
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
        if self.bpm.is_some() && self.beats.is_some() {
            return Err(ParamError::new("--bpm", "and --beats both set the tempo; give one"));
        }
        if let Some(bpm) = self.bpm {
            let (low, high) = BPM_RANGE;
            if !(bpm.is_finite() && (low..=high).contains(&bpm)) {
                return Err(ParamError::new(
                    "--bpm",
                    format!("must be between {low} and {high} beats per minute, got {bpm}"),
                ));
            }
        }
        if self.warmup > MAX_WARMUP {
            return Err(ParamError::new("--warmup", format!("must be at most {MAX_WARMUP}, got {}", self.warmup)));
        }
        if let StyleScale::Times(k) = self.style_scale {
            if !(k.is_finite() && (0.05..=8.0).contains(&k)) {
                return Err(ParamError::new(
                    "--style-scale",
                    format!("must be auto or a number between 0.05 and 8.0, got {k}"),
                ));
            }
        }
        let names: Vec<String> = self.network.layers().into_iter().map(|l| l.name).collect();
        if self.layers.len() > MAX_LAYERS {
            return Err(ParamError::new("--layers", format!("at most {MAX_LAYERS} layers, got {}", self.layers.len())));
        }
        for (name, w) in &self.layers {
            if !names.contains(name) {
                return Err(ParamError::new(
                    "--layers",
                    format!(
                        "{} has no layer {:?}; it has {}",
                        self.network.name(),
                        quoted_prefix(name),
                        names.join(",")
                    ),
                ));
            }
            if !(w.is_finite() && (0.0..=MAX_LAYER_WEIGHT).contains(w)) {
                return Err(ParamError::new(
                    "--layers",
                    format!("weight of {name} must be a number from 0 to {MAX_LAYER_WEIGHT}, got {w}"),
                ));
            }
        }
        if !self.layers.is_empty() && self.layers.iter().all(|(_, w)| *w == 0.0) {
            return Err(ParamError::new(
                "--layers",
                "at least one layer needs a weight above 0: with none the loss is 0 and nothing renders",
            ));
        }
        if let Some(blend) = &self.blend {
            check_style_names(blend.names())?;
        }
        if let Some(lr) = self.learning_rate {
            if !(lr.is_finite() && lr > 0.0 && lr <= 100.0) {
                return Err(ParamError::new("--lr", format!("must be above 0 and at most 100, got {lr}")));
            }
        }
        Ok(())
    }
}

/// A movie's style names: one to `MAX_STYLES` of them, each a name, none twice.
pub fn check_style_names(names: &[String]) -> Result<(), ParamError> {
    if !(1..=MAX_STYLES).contains(&names.len()) {
        return Err(ParamError::new(
            "--style",
            format!("a movie has 1 to {MAX_STYLES} named styles, got {}", names.len()),
        ));
    }
    for (i, name) in names.iter().enumerate() {
        check_style_name(name)?;
        if names[..i].contains(name) {
            return Err(ParamError::new("--style", format!("two styles are named {name:?}; each needs its own name")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    #[test]
    fn validation_names_the_field() {
        type Mutation = fn(&mut RenderParams);
        let cases: [(Mutation, &str); 14] = [
            (|p| p.width = 0, "--size"),
            (|p| p.height = 9000, "--size"),
            (|p| p.frames = 0, "--frames"),
            (|p| p.zoom = 0.01.into(), "--zoom"),
            (|p| p.zoom = Schedule::parse(&ZOOM, "0:(2), 100:(3)").unwrap(), "--zoom"),
            (|p| p.iters = 0.into(), "--iters"),
            (|p| p.centre = Schedule::constant2(0.5, -0.1), "--centre"),
            (|p| p.angle = Schedule::parse(&ANGLE, "0:(0), 4b:(90)").unwrap(), "--angle"),
            (|p| p.bpm = Some(0.0), "--bpm"),
            (|p| p.style_scale = StyleScale::Times(0.0), "--style-scale"),
            // A weight that overflows the loss: every render of the job would diverge, and each
            // divergence would be charged to the worker that tried it.
            (|p| p.layers = vec![("conv1_1".into(), 1e300)], "--layers"),
            (|p| p.layers = vec![("conv1_1".into(), 10_000.5)], "--layers"),
            (|p| p.layers = vec![("conv1_1".into(), 0.0), ("conv2_1".into(), 0.0)], "--layers"),
            (|p| p.learning_rate = Some(f64::INFINITY), "--lr"),
        ];
        for (mutate, field) in cases {
            let mut p = RenderParams::default();
            mutate(&mut p);
            assert_eq!(p.validate().unwrap_err().field, field);
        }
        RenderParams::default().validate().unwrap();
        let heavy =
            RenderParams { layers: vec![("conv1_1".into(), 10_000.0), ("conv2_1".into(), 0.0)], ..Default::default() };
        heavy.validate().expect("the largest weight, beside a zero one, is allowed");
    }
}
