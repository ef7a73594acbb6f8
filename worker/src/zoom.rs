//! The per-frame zoom: output pixel (x, y) samples the previous frame at
//! c + ((x, y) - c) / z, with c = ((W-1)/2, (H-1)/2) the true centre (fractional for even sizes)
//! and z the exact per-frame factor, so nothing is truncated and the fixed point is the centre.
//!
//! Sampling is separable Lanczos-3. Why not bilinear: its blur depends on the sub-pixel phase,
//! which is ~0 around the fixed point and large elsewhere, and content near the centre lingers
//! there for many frames; the phase-dependent blur then accumulates into a sharp horizontal and
//! vertical line through the centre (the original gramzoom's artifact). Lanczos-3 keeps detail at
//! every phase, so all rows see nearly the same filter.

use tch::{Device, Kind, Tensor};

const TAPS: i64 = 6;

fn lanczos3(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else if x.abs() < 3.0 {
        let px = std::f64::consts::PI * x;
        3.0 * px.sin() * (px / 3.0).sin() / (px * px)
    } else {
        0.0
    }
}

/// Taps along one axis: for each output index, 6 source indices (clamped at the border) and
/// their normalised weights, laid out as [TAPS, n].
fn axis_taps(n: usize, factor: f64) -> (Vec<i64>, Vec<f32>) {
    let c = (n as f64 - 1.0) / 2.0;
    let mut idx = vec![0i64; TAPS as usize * n];
    let mut wts = vec![0f32; TAPS as usize * n];
    for i in 0..n {
        let src = c + (i as f64 - c) / factor;
        let base = src.floor() as i64 - 2;
        let w: Vec<f64> = (0..TAPS)
            .map(|k| lanczos3(src - (base + k) as f64))
            .collect();
        let sum: f64 = w.iter().sum();
        for k in 0..TAPS as usize {
            idx[k * n + i] = (base + k as i64).clamp(0, n as i64 - 1);
            wts[k * n + i] = (w[k] / sum) as f32;
        }
    }
    (idx, wts)
}

/// A zoom by a fixed factor for one frame size, precomputed once per render.
pub struct Zoom {
    rows: (Tensor, Tensor),
    cols: (Tensor, Tensor),
}

impl Zoom {
    pub fn new(width: usize, height: usize, factor: f64, device: Device) -> Self {
        let make = |n: usize| {
            let (i, w) = axis_taps(n, factor);
            (
                Tensor::from_slice(&i)
                    .reshape([TAPS, n as i64])
                    .to_device(device),
                Tensor::from_slice(&w)
                    .reshape([TAPS, n as i64])
                    .to_device(device),
            )
        };
        Self {
            rows: make(height),
            cols: make(width),
        }
    }

    /// Zooms an NCHW tensor about its centre.
    pub fn apply(&self, t: &Tensor) -> Tensor {
        let t = resample(t, 2, &self.rows);
        resample(&t, 3, &self.cols)
    }
}

fn resample(t: &Tensor, dim: i64, (idx, wts): &(Tensor, Tensor)) -> Tensor {
    let n = idx.size()[1];
    let shape: Vec<i64> = if dim == 2 {
        vec![1, 1, n, 1]
    } else {
        vec![1, 1, 1, n]
    };
    let mut acc = Tensor::zeros(t.size(), (Kind::Float, t.device()));
    for k in 0..TAPS {
        acc += t.index_select(dim, &idx.get(k)) * wts.get(k).reshape(shape.as_slice());
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth pattern f(x, y); zooming its raster must give f sampled at c + (p - c) / z.
    fn pattern(w: i64, h: i64, at: impl Fn(f64, f64) -> (f64, f64)) -> Tensor {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = at(x as f64, y as f64);
                v.push(((sx * 0.21).sin() + (sy * 0.17).cos() + 0.01 * sx) as f32);
            }
        }
        Tensor::from_slice(&v).reshape([1, 1, h, w])
    }

    #[test]
    fn zoom_geometry_on_a_known_pattern() {
        for (w, h, z) in [(64i64, 48i64, 1.03f64), (65, 47, 1.5), (40, 40, 1.0)] {
            let (cx, cy) = ((w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0);
            let src = pattern(w, h, |x, y| (x, y));
            let want = pattern(w, h, |x, y| (cx + (x - cx) / z, cy + (y - cy) / z));
            let got = Zoom::new(w as usize, h as usize, z, Device::Cpu).apply(&src);
            // Compare away from the border, where clamping changes the taps. Lanczos-3's ripple
            // costs ~0.2% of the amplitude (2); a centre off by half a pixel would cost ~5%.
            let inner = |t: &Tensor| t.narrow(2, 4, h - 8).narrow(3, 4, w - 8);
            let err = (inner(&got) - inner(&want)).abs().max().double_value(&[]);
            assert!(err < 1e-2, "{w}x{h} z={z}: max error {err}");
        }
    }

    #[test]
    fn centre_is_the_fixed_point_and_identity_is_exact() {
        // A single bright pixel at the exact centre of an odd-sized image stays there.
        let mut img = Tensor::zeros([1, 1, 33, 33], (Kind::Float, Device::Cpu));
        let _ = img.get(0).get(0).get(16).get(16).fill_(1.0);
        let out = Zoom::new(33, 33, 1.2, Device::Cpu).apply(&img);
        let max_at = out.flatten(0, -1).argmax(0, false).int64_value(&[]);
        assert_eq!(max_at, 16 * 33 + 16);
        let same = Zoom::new(33, 33, 1.0, Device::Cpu).apply(&img);
        assert!((same - &img).abs().max().double_value(&[]) < 1e-6);
    }
}
