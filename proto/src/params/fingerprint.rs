//! The render fingerprint: what a hand-off state carries so that only the render that made it
//! resumes it. Its text form is fixed forever (states in stores were made with it), so it is
//! spelled out here field by field, and the tests pin the digests of a few parameter sets: any
//! change to this text, or to how Rust prints a float, fails them before it strands a state.

use super::{hex, LossKind, Precision, RenderParams, StyleScale};
use crate::schedule::Schedule;
use sha2::{Digest, Sha256};

/// A number as the fingerprint has always written it: Rust's `Debug` form of an f64 (the
/// shortest that reads back exactly, `.0` on whole numbers, an exponent when very small or
/// large: `2.0`, `0.5`, `1e-5`). The tests pin it.
fn number(x: f64) -> String {
    format!("{x:?}")
}

impl RenderParams {
    /// Identifies everything that determines the frame sequence except its length, so that a
    /// hand-off state is only ever resumed by a render that would have produced it. The frame
    /// count is left out on purpose: a movie can be extended from its last state.
    pub fn fingerprint(&self, style_digest: &str, weights_digest: &str) -> String {
        // The layers as they were first written (a Rust list of tuples): `[("conv1_1", 1.0)]`.
        let layers: Vec<String> = self.layers.iter().map(|(name, w)| format!("({name:?}, {})", number(*w))).collect();
        let style_scale = match self.style_scale {
            StyleScale::Times(k) => number(k),
            StyleScale::Auto => "auto".into(),
        };
        let canon = format!(
            "v1|{}x{}|{}/{}|{}|{}|{}|{}|{}|{}|{}|{}|[{}]|{}|{}",
            self.width,
            self.height,
            self.fps.num,
            self.fps.den,
            scheduled(&self.zoom, number),
            scheduled(&self.iters, |n| format!("{}", n.round() as u32)),
            self.warmup,
            self.seed,
            self.optimizer.name(),
            number(self.learning_rate()),
            style_scale,
            self.network.name(),
            layers.join(", "),
            style_digest,
            weights_digest,
        );
        // Only what fp32 renders never had: their fingerprints (and stored states) still hold.
        let canon = match self.precision {
            Precision::Fp32 => canon,
            p => format!("{canon}|{}", p.name()),
        };
        let canon = match self.loss {
            LossKind::Gram => canon,
            l => format!("{canon}|loss={}", l.name()),
        };
        // Motion that renders before schedules could not have: only when set.
        let mut canon = canon;
        if self.centre_is_set() {
            canon = format!("{canon}|centre={}", self.centre.text());
        }
        if self.angle_is_set() {
            canon = format!("{canon}|angle={}", self.angle.text());
        }
        // Several styles: their names in order (the style digest lists theirs in the same
        // order) and how they are mixed over time.
        if let Some(blend) = &self.blend {
            canon = format!("{canon}|styles={}|blend={}", blend.names().join(","), blend.text());
        }
        if let Some(bpm) = self.bpm.filter(|_| self.uses_beats()) {
            canon = format!("{canon}|bpm={}", number(bpm));
        }
        if let Some(grid) = self.beats.as_ref().filter(|_| self.uses_beats()) {
            let times: Vec<String> = grid.times().iter().map(|&t| number(t)).collect();
            canon = format!("{canon}|beats={}", times.join(","));
        }
        hex(&Sha256::digest(canon.as_bytes()))
    }

    /// Whether any schedule, the blend's included, counts in beats.
    pub fn uses_beats(&self) -> bool {
        [&self.zoom, &self.iters, &self.centre, &self.angle].iter().any(|s| s.uses_beats())
            || self.blend.as_ref().is_some_and(|b| b.uses_beats())
    }
}

/// A constant as it was always written (`2.0` for the zoom, `4` for iterations); a schedule as
/// its text, marked so that it can never read as a constant.
fn scheduled(s: &Schedule, constant: impl Fn(f64) -> String) -> String {
    match s.as_constant() {
        Some([v, _]) => constant(v),
        None => format!("schedule:{}", s.text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Network;
    use crate::params::{Fps, OptimizerKind};

    /// Fingerprints of states already in stores: these digests must never change.
    #[test]
    fn fingerprints_of_stored_states_never_change() {
        let default = RenderParams::default();
        let every_field = RenderParams {
            width: 1920,
            height: 1080,
            frames: 7,
            fps: Fps { num: 30000, den: 1001 },
            zoom: 1.25.into(),
            iters: 6.into(),
            warmup: 300,
            seed: 42,
            optimizer: OptimizerKind::Lbfgs,
            learning_rate: Some(0.5),
            style_scale: StyleScale::Times(1.5),
            network: Network::Vgg19,
            layers: vec![("conv1_1".into(), 1.0), ("conv3_1".into(), 0.25)],
            precision: Precision::Bf16,
            loss: LossKind::Swd,
            ..RenderParams::default()
        };
        let small_numbers = RenderParams {
            learning_rate: Some(1e-5),
            style_scale: StyleScale::Times(0.05),
            zoom: 3.0.into(),
            ..RenderParams::default()
        };
        for (what, params, want) in [
            ("default", &default, "0081adc531eb46c552356f6403bc72bd97e021d58f2c9f13d712a2294e0d3740"),
            ("every field set", &every_field, "1d4e4513837312e15b24d0425e2ee4a07dea2b6039de697a4b075cc4cf5a799e"),
            ("small numbers", &small_numbers, "0d7adfed96f31af3712df175264e7c53c6542042fc05e7c13ed2ada626579846"),
        ] {
            assert_eq!(params.fingerprint("style", "weights"), want, "{what}");
        }
        let longer = RenderParams { frames: 9000, ..default.clone() };
        assert_eq!(
            longer.fingerprint("style", "weights"),
            default.fingerprint("style", "weights"),
            "length is left out"
        );
    }

    /// A movie written differently is the same movie; every change of motion is another.
    #[test]
    fn motion_is_in_the_fingerprint_only_where_it_moves() {
        use crate::schedule::{Spec, ANGLE, CENTRE, ITERS, ZOOM};
        let parse = |spec: &Spec, text: &str| Schedule::parse(spec, text).unwrap();
        let fp = |p: &RenderParams| p.fingerprint("style", "weights");
        let base = RenderParams::default();
        let same = RenderParams {
            zoom: parse(&ZOOM, " 2 "),
            iters: parse(&ITERS, "4.0"),
            centre: parse(&CENTRE, "0.5, 0.5"),
            angle: parse(&ANGLE, "0"),
            // A tempo no schedule uses changes no pixel.
            bpm: Some(120.0),
            ..base.clone()
        };
        assert_eq!(fp(&same), fp(&base));
        let beats = RenderParams { zoom: parse(&ZOOM, "0:(2), 4b:(3)"), bpm: Some(120.0), ..base.clone() };
        let grid = |times: Vec<f64>| Some(std::sync::Arc::new(crate::schedule::BeatGrid::new(times).unwrap()));
        // The soundtrack's beats change pixels only where a schedule counts beats.
        let on_grid = RenderParams { bpm: None, beats: grid(vec![0.25, 0.75, 1.25]), ..beats.clone() };
        assert_eq!(fp(&RenderParams { beats: grid(vec![0.25, 0.75]), ..base.clone() }), fp(&base));
        let names = ["a".to_string(), "b".to_string()];
        let blend = |names: &[String], text: &str| RenderParams {
            blend: Some(crate::schedule::Blend::parse(names, text).unwrap()),
            ..RenderParams::default()
        };
        let swapped = ["b".to_string(), "a".to_string()];
        let beat_fade = RenderParams { bpm: Some(120.0), ..blend(&names, "0:(a), 4b:(b)") };
        let moved = [
            blend(&names, "0:(a), 10:(b)"),
            blend(&names, "0:(a), 10:(b) ease-in"),
            blend(&swapped, "0:(a), 10:(b)"),
            RenderParams { blend: Some(crate::schedule::Blend::equal(&names)), ..base.clone() },
            RenderParams { bpm: Some(100.0), ..beat_fade.clone() },
            beat_fade,
            RenderParams { zoom: parse(&ZOOM, "0:(2), 10:(3)"), ..base.clone() },
            RenderParams { zoom: parse(&ZOOM, "0:(2), 10:(3) cubic"), ..base.clone() },
            RenderParams { iters: parse(&ITERS, "0:(4), 10:(5)"), ..base.clone() },
            RenderParams { centre: parse(&CENTRE, "0.4, 0.5"), ..base.clone() },
            RenderParams { angle: parse(&ANGLE, "5"), ..base.clone() },
            RenderParams { bpm: Some(121.0), ..beats.clone() },
            RenderParams { beats: grid(vec![0.25, 0.75, 1.26]), ..on_grid.clone() },
            on_grid,
            beats,
            base,
        ];
        let prints: std::collections::HashSet<String> = moved.iter().map(fp).collect();
        assert_eq!(prints.len(), moved.len(), "every motion has its own fingerprint");
    }
}
