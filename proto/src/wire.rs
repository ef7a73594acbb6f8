//! Conversions between the domain types and their gramzoom.v1 messages. Decoding validates, so
//! a request that converts is a request the engine accepts.

use crate::params::{Fps, Network, OptimizerKind, OutputKind, ParamError, RenderParams};
use crate::schedule::{BeatGrid, Blend, Schedule, ANGLE, CENTRE, ITERS, ZOOM};
use crate::v1;
use std::sync::Arc;

pub fn params_to_wire(p: &RenderParams) -> v1::RenderParams {
    v1::RenderParams {
        width: p.width,
        height: p.height,
        frames: p.frames,
        fps_num: p.fps.num,
        fps_den: p.fps.den,
        // A constant travels as the number it always was; a schedule as its text.
        zoom: p.zoom.as_constant().map_or(0.0, |[z, _]| z),
        zoom_schedule: if p.zoom.as_constant().is_some() { String::new() } else { p.zoom.text().into() },
        iters: p.iters.as_constant().map_or(0, |[n, _]| n.round() as u32),
        iters_schedule: if p.iters.as_constant().is_some() { String::new() } else { p.iters.text().into() },
        centre: if p.centre_is_set() { p.centre.text().into() } else { String::new() },
        angle: if p.angle_is_set() { p.angle.text().into() } else { String::new() },
        bpm: p.bpm,
        warmup: p.warmup,
        seed: p.seed,
        optimizer: p.optimizer.name().into(),
        learning_rate: p.learning_rate,
        style_scale: p.style_scale.to_wire(),
        network: p.network.name().into(),
        layers: p.layers.iter().map(|(name, weight)| v1::LayerWeight { name: name.clone(), weight: *weight }).collect(),
        precision: match p.precision {
            crate::params::Precision::Fp32 => String::new(),
            other => other.name().into(),
        },
        loss: match p.loss {
            crate::params::LossKind::Gram => String::new(),
            other => other.name().into(),
        },
        styles: p.blend.as_ref().map_or_else(Vec::new, |b| b.names().to_vec()),
        blend: p.blend.as_ref().map_or_else(String::new, |b| b.text().into()),
        beats: p.beats.as_ref().map_or_else(Vec::new, |g| g.times().to_vec()),
    }
}

/// Decodes and validates, every frame of every schedule included (up to a few seconds for a
/// million frames of formulas: async callers run it off their runtime); errors name the CLI
/// flag of the offending field.
pub fn params_from_wire(w: &v1::RenderParams) -> Result<RenderParams, ParamError> {
    let p = decode(w)?;
    p.validate()?;
    Ok(p)
}

/// Decodes parameters of a job the coordinator accepted, whose schedules it walked frame by
/// frame at submit: every limit is checked again but that walk (see
/// `RenderParams::validate_settings`). For the coordinator reading its own database, a worker
/// reading its assignment (a segment of a long job need not walk a million frames; the engine
/// evaluates its own, and a failure there names the frame), and anyone showing a job.
pub fn params_walked_at_submit(w: &v1::RenderParams) -> Result<RenderParams, ParamError> {
    let p = decode(w)?;
    p.validate_settings()?;
    Ok(p)
}

fn decode(w: &v1::RenderParams) -> Result<RenderParams, ParamError> {
    let p = RenderParams {
        width: w.width,
        height: w.height,
        frames: w.frames,
        fps: Fps { num: w.fps_num, den: w.fps_den },
        zoom: match w.zoom_schedule.as_str() {
            "" => Schedule::constant(w.zoom),
            text => Schedule::parse(&ZOOM, text)?,
        },
        iters: match w.iters_schedule.as_str() {
            "" => Schedule::from(w.iters),
            text => Schedule::parse(&ITERS, text)?,
        },
        centre: match w.centre.as_str() {
            "" => Schedule::constant2(0.5, 0.5),
            text => Schedule::parse(&CENTRE, text)?,
        },
        angle: match w.angle.as_str() {
            "" => Schedule::constant(0.0),
            text => Schedule::parse(&ANGLE, text)?,
        },
        bpm: w.bpm,
        beats: match w.beats.as_slice() {
            [] => None,
            times => Some(Arc::new(BeatGrid::new(times.to_vec())?)),
        },
        warmup: w.warmup,
        seed: w.seed,
        optimizer: w.optimizer.parse::<OptimizerKind>()?,
        learning_rate: w.learning_rate,
        style_scale: crate::params::StyleScale::from_wire(w.style_scale),
        network: w.network.parse::<Network>()?,
        layers: w.layers.iter().map(|l| (l.name.clone(), l.weight)).collect(),
        precision: crate::params::Precision::from_wire(&w.precision)?,
        loss: crate::params::LossKind::from_wire(&w.loss)?,
        blend: blend(w)?,
    };
    Ok(p)
}

/// Several named styles and their blend; the names are checked before the blend is read
/// against them.
fn blend(w: &v1::RenderParams) -> Result<Option<Blend>, ParamError> {
    if w.styles.is_empty() {
        if !w.blend.is_empty() {
            return Err(ParamError::new("--blend", "blends named styles: give them as --style NAME=PATH"));
        }
        return Ok(None);
    }
    crate::params::check_style_names(&w.styles)?;
    Ok(Some(match w.blend.as_str() {
        "" => Blend::equal(&w.styles),
        text => Blend::parse(&w.styles, text)?,
    }))
}

pub fn output_to_wire(kind: OutputKind) -> v1::OutputFormat {
    match kind {
        OutputKind::Mp4 => v1::OutputFormat::Mp4,
        OutputKind::Gif => v1::OutputFormat::Gif,
        OutputKind::Png => v1::OutputFormat::Png,
        OutputKind::Jpeg => v1::OutputFormat::Jpeg,
    }
}

pub fn output_from_wire(value: i32) -> Result<OutputKind, ParamError> {
    match v1::OutputFormat::try_from(value) {
        Ok(v1::OutputFormat::Mp4) => Ok(OutputKind::Mp4),
        Ok(v1::OutputFormat::Gif) => Ok(OutputKind::Gif),
        Ok(v1::OutputFormat::Png) => Ok(OutputKind::Png),
        Ok(v1::OutputFormat::Jpeg) => Ok(OutputKind::Jpeg),
        _ => Err(ParamError::new("--output", format!("output format must be mp4, gif, png or jpeg, got {value}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_bad_fields_are_named() {
        let mut p =
            RenderParams { learning_rate: Some(0.5), layers: vec![("conv2_1".into(), 2.0)], ..Default::default() };
        p.fps = Fps { num: 2997, den: 100 };
        assert_eq!(params_from_wire(&params_to_wire(&p)).unwrap(), p);
        let swd = RenderParams { loss: crate::params::LossKind::Swd, network: Network::Vgg19, ..Default::default() };
        assert_eq!(params_from_wire(&params_to_wire(&swd)).unwrap(), swd);
        let directed = RenderParams {
            zoom: Schedule::parse(&ZOOM, "0:(1.5) ease-in-out, 2s:(3), 80:(0.5)").unwrap(),
            iters: Schedule::parse(&ITERS, "0:(2), 4b:(6)").unwrap(),
            centre: Schedule::parse(&CENTRE, "0.5+0.1*sin(s), 0.5").unwrap(),
            angle: Schedule::parse(&ANGLE, "10").unwrap(),
            bpm: Some(128.0),
            ..Default::default()
        };
        let back = params_from_wire(&params_to_wire(&directed)).unwrap();
        assert_eq!(back, directed);
        assert_eq!(back.fingerprint("s", "w"), directed.fingerprint("s", "w"));
        let grid = crate::schedule::BeatGrid::new(vec![0.2, 0.7, 1.21, 1.7]).unwrap();
        let on_beats = RenderParams { bpm: None, beats: Some(Arc::new(grid)), ..directed.clone() };
        let back = params_from_wire(&params_to_wire(&on_beats)).unwrap();
        assert_eq!(back, on_beats);
        assert_eq!(back.fingerprint("s", "w"), on_beats.fingerprint("s", "w"));
        assert_ne!(on_beats.fingerprint("s", "w"), directed.fingerprint("s", "w"));
        // A client from before schedules sends numbers only: the movie it always got.
        let old = v1::RenderParams { zoom: 3.0, iters: 5, ..params_to_wire(&RenderParams::default()) };
        let old = params_from_wire(&old).unwrap();
        assert_eq!(
            (old.zoom, old.iters, old.centre, old.angle),
            (3.0.into(), 5.into(), Schedule::constant2(0.5, 0.5), 0.0.into())
        );

        type Mutation = fn(&mut v1::RenderParams);
        let cases: [(Mutation, &str); 15] = [
            (|w| w.optimizer = "sgd".into(), "--optimizer"),
            (|w| w.loss = "l2".into(), "--loss"),
            (|w| w.precision = "fp8".into(), "--precision"),
            (|w| w.network = "resnet".into(), "--network"),
            (|w| w.fps_den = 0, "--fps"),
            (|w| w.width = 8, "--size"),
            (|w| w.layers.push(v1::LayerWeight { name: "conv9_9".into(), weight: 1.0 }), "--layers"),
            (|w| w.zoom_schedule = "0:(2), 9999:(3)".into(), "--zoom"),
            (|w| w.iters_schedule = "0:(x)".into(), "--iters"),
            (|w| w.centre = "0.5".into(), "--centre"),
            (|w| w.angle = "0:(b)".into(), "--angle"),
            (|w| w.bpm = Some(f64::NAN), "--bpm"),
            (|w| w.beats = vec![1.0, 0.5], "--beats"),
            (|w| w.beats = vec![0.0; crate::schedule::MAX_BEATS + 1], "--beats"),
            (|w| (w.bpm, w.beats) = (Some(120.0), vec![0.0, 0.5]), "--bpm"),
        ];
        for (mutate, field) in cases {
            let mut w = params_to_wire(&p);
            mutate(&mut w);
            assert_eq!(params_from_wire(&w).unwrap_err().field, field);
        }
        assert_eq!(output_from_wire(0).unwrap_err().field, "--output");
        assert_eq!(output_from_wire(output_to_wire(OutputKind::Gif) as i32).unwrap(), OutputKind::Gif);
    }
}
