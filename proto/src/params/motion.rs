//! A render's motion frame by frame: its schedules placed once for its timing, then read for
//! each frame by the engine (and by anything that wants to know where the camera is).

use super::{ParamError, RenderParams};
use crate::schedule::{Placed, ANGLE, CENTRE, ITERS, ZOOM};

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
    fps: f64,
}

impl RenderParams {
    /// The render's motion. Fails only on schedules `validate` refuses.
    pub fn motion(&self) -> Result<Motion<'_>, ParamError> {
        let timing = self.timing();
        Ok(Motion {
            zoom: self.zoom.place(&ZOOM, &timing)?,
            centre: self.centre.place(&CENTRE, &timing)?,
            angle: self.angle.place(&ANGLE, &timing)?,
            iters: self.iters.place(&ITERS, &timing)?,
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

    /// Optimiser iterations for frame `frame`, a whole number from 1.
    pub fn iters(&self, frame: u32) -> Result<u32, ParamError> {
        let [n, _] = self.iters.at(frame)?;
        Ok((n.round() as u32).max(1))
    }
}
