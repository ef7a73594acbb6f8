//! A render's motion frame by frame: its schedules placed once for its timing, then read for
//! each frame by the engine (and by anything that wants to know where the camera is).

use super::{ParamError, RenderParams};
use crate::schedule::{Placed, PlacedBlend, ANGLE, CENTRE, ITERS, ZOOM};

/// How a frame is made from the one before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    /// Magnification from the previous frame: the fps-th root of the zoom per second.
    pub factor: f64,
    /// The zoom's fixed point as fractions of the width and height.
    pub centre: (f64, f64),
    /// Rotation from the previous frame in radians, anticlockwise as shown.
    pub turn: f64,
}

impl Camera {
    /// The camera of a movie before schedules: zoom about the middle, no rotation.
    pub fn zoom(factor: f64) -> Self {
        Self { factor, centre: (0.5, 0.5), turn: 0.0 }
    }
}

/// The schedules of a render, placed for its frame rate and tempo.
pub struct Motion<'a> {
    zoom: Placed<'a>,
    centre: Placed<'a>,
    angle: Placed<'a>,
    iters: Placed<'a>,
    blend: Option<PlacedBlend<'a>>,
    fps: f64,
}

impl RenderParams {
    /// Whether anything moves but a constant zoom about the middle: what `status` and the
    /// dashboard show a schedule for.
    pub fn is_directed(&self) -> bool {
        self.zoom.as_constant().is_none()
            || self.iters.as_constant().is_none()
            || self.centre_is_set()
            || self.angle_is_set()
            || self.blend.is_some()
    }

    /// Whether the centre is anything but the middle (what renders before schedules had).
    pub fn centre_is_set(&self) -> bool {
        self.centre.as_constant() != Some([0.5, 0.5])
    }

    /// Whether the camera turns at all (renders before schedules never did).
    pub fn angle_is_set(&self) -> bool {
        self.angle.as_constant() != Some([0.0, 0.0])
    }

    /// The camera at `frame`, in words: `at 4.0 s (frame 120): zoom 2.31x a second about
    /// 0.42,0.55, turning 4.0 degrees a second, 5 iterations a frame`.
    pub fn motion_words(&self, frame: u32) -> Result<String, ParamError> {
        let motion = self.motion()?;
        let frame = frame.min(self.frames.saturating_sub(1));
        let fps = self.fps.as_f64();
        let camera = motion.camera(frame)?;
        let turn = match camera.turn.to_degrees() * fps {
            0.0 => String::new(),
            d => format!(", turning {d:.1} degrees a second"),
        };
        let styles = match &self.blend {
            Some(blend) => format!(", styles {}", style_words(blend.names(), &motion.weights(frame)?)),
            None => String::new(),
        };
        Ok(format!(
            "at {:.1} s (frame {frame}): zoom {:.2}x a second about {:.2},{:.2}{turn}, {} iterations a frame{styles}",
            f64::from(frame) / fps,
            camera.factor.powf(fps),
            camera.centre.0,
            camera.centre.1,
            motion.iters(frame)?
        ))
    }

    /// The render's motion. Fails only on schedules `validate` refuses.
    pub fn motion(&self) -> Result<Motion<'_>, ParamError> {
        let timing = self.timing();
        Ok(Motion {
            zoom: self.zoom.place(&ZOOM, &timing)?,
            centre: self.centre.place(&CENTRE, &timing)?,
            angle: self.angle.place(&ANGLE, &timing)?,
            iters: self.iters.place(&ITERS, &timing)?,
            blend: self.blend.as_ref().map(|b| b.place(&timing)).transpose()?,
            fps: timing.fps,
        })
    }
}

impl Motion<'_> {
    /// The camera that makes frame `frame` from frame `frame - 1`.
    pub fn camera(&self, frame: u32) -> Result<Camera, ParamError> {
        let [zoom, _] = self.zoom.at(frame)?;
        let [x, y] = self.centre.at(frame)?;
        let [degrees, _] = self.angle.at(frame)?;
        Ok(Camera { factor: zoom.powf(1.0 / self.fps), centre: (x, y), turn: (degrees / self.fps).to_radians() })
    }

    /// Each style's share of frame `frame` (summing to 1; `[1.0]` for a movie of one style).
    pub fn weights(&self, frame: u32) -> Result<Vec<f64>, ParamError> {
        match &self.blend {
            Some(blend) => blend.at(frame),
            None => Ok(vec![1.0]),
        }
    }

    /// Optimiser iterations for frame `frame`, a whole number from 1.
    pub fn iters(&self, frame: u32) -> Result<u32, ParamError> {
        let [n, _] = self.iters.at(frame)?;
        Ok((n.round() as u32).max(1))
    }
}

/// Style weights in words, the ones in play only: `a 0.30, b 0.70`.
pub fn style_words(names: &[String], weights: &[f64]) -> String {
    let words: Vec<String> =
        names.iter().zip(weights).filter(|(_, w)| **w > 0.0).map(|(n, w)| format!("{n} {w:.2}")).collect();
    words.join(", ")
}
