//! The per-frame camera move: output pixel p samples the previous frame at
//! c + R(-a)(p - c) / z, with c the zoom's fixed point (`--centre`, by default the true centre
//! ((W-1)/2, (H-1)/2), fractional for even sizes), z the exact per-frame factor and a the
//! per-frame turn (`--angle`), so nothing is truncated and the fixed point stays put.
//!
//! Sampling is Lanczos-3, which keeps detail at every sub-pixel phase: separable (6 + 6 taps)
//! when nothing turns, over a 6x6 window when it does. That alone does not remove the original
//! gramzoom's line artifact: any interpolation is the identity at phase 0, the phase is ~0
//! around the fixed point, and content near the centre lingers there for many frames, so the
//! central row and column escape the (small) blur every other row gets and accumulate into lines
//! (measured: 1.45x the median row's gradient at 128x128). So the stored image is kept at a
//! per-frame random sub-pixel offset o_t in [-1/2, 1/2]^2 (see `jitter`): the map between stored
//! frames gains a translation o_t/z - o_{t-1} whose phase is uniform, so all rows see the same
//! blur statistics, while the shown frame stays within half a pixel of the exact camera and
//! never drifts.
//!
//! Taps beyond the frame are clamped to it, as they always were (zooming in they only reach past
//! the outermost pixels). Pixels whose source lies wholly outside the previous frame, the border
//! a camera zooming out or turning brings into view, are marked (`incoming`) and the engine
//! seeds them with fresh noise for the optimiser to grow: clamped samples there would smear the
//! edge into streaks, and wrapped ones (the image is a torus to the optimiser, which sees it
//! rolled) tile the movie with copies of itself (measured: a lattice of lines).

pub use proto::params::Camera;
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
/// their normalised weights, laid out as [TAPS, n]. Output i samples c + (i + to - c)/z - from, with
/// c the fixed point `centre` (a fraction of the side) in pixels.
fn axis_taps(n: usize, factor: f64, centre: f64, from: f64, to: f64) -> (Vec<i64>, Vec<f32>, Vec<bool>) {
    let c = centre * (n as f64 - 1.0);
    let mut idx = vec![0i64; TAPS as usize * n];
    let mut wts = vec![0f32; TAPS as usize * n];
    let mut outside = vec![false; n];
    for i in 0..n {
        let src = c + (i as f64 + to - c) / factor - from;
        outside[i] = !(-0.5..=n as f64 - 0.5).contains(&src);
        let base = src.floor() as i64 - 2;
        let w: Vec<f64> = (0..TAPS).map(|k| lanczos3(src - (base + k) as f64)).collect();
        let sum: f64 = w.iter().sum();
        for k in 0..TAPS as usize {
            idx[k * n + i] = (base + k as i64).clamp(0, n as i64 - 1);
            wts[k * n + i] = (w[k] / sum) as f32;
        }
    }
    (idx, wts, outside)
}

/// The sub-pixel offset (x, y) of the stored image of `frame` from the exact camera: zero for
/// frame 0, uniform in [-1/2, 1/2)^2 after, a pure function of (seed, frame).
pub fn jitter(seed: u64, frame: u32) -> (f64, f64) {
    if frame == 0 {
        return (0.0, 0.0);
    }
    let mut s = crate::rng::Stream::new(seed, frame as u64, crate::rng::Purpose::Jitter);
    (s.next_f32() as f64 - 0.5, s.next_f32() as f64 - 0.5)
}

/// One frame's camera move, from a stored image at offset `from` to one at offset `to`
/// (offsets from `jitter`).
pub struct Zoom {
    taps: Taps,
    /// 1 where the output samples outside the previous frame (zooming out, or the corners a
    /// turn brings in), 0 elsewhere, [1, 1, H, W]; `None` when no pixel does.
    incoming: Option<Tensor>,
}

enum Taps {
    /// No turn: rows, then columns, each [TAPS, n] indices and weights.
    Separable { rows: (Tensor, Tensor), cols: (Tensor, Tensor) },
    /// A turn: for every output pixel, 6 source rows and 6 source columns ([H, W] each, clamped
    /// at the border) with their weights; a sample is the product of its row's and column's.
    Window { rows: Vec<(Tensor, Tensor)>, cols: Vec<(Tensor, Tensor)>, width: i64 },
}

impl Zoom {
    pub fn new(width: usize, height: usize, camera: &Camera, from: (f64, f64), to: (f64, f64), device: Device) -> Self {
        if camera.turn == 0.0 {
            let make = |n: usize, centre: f64, from: f64, to: f64| {
                let (i, w, outside) = axis_taps(n, camera.factor, centre, from, to);
                let taps = (
                    Tensor::from_slice(&i).reshape([TAPS, n as i64]).to_device(device),
                    Tensor::from_slice(&w).reshape([TAPS, n as i64]).to_device(device),
                );
                let outside: Vec<f32> = outside.iter().map(|&o| f32::from(u8::from(o))).collect();
                (taps, outside)
            };
            let (rows, out_rows) = make(height, camera.centre.1, from.1, to.1);
            let (cols, out_cols) = make(width, camera.centre.0, from.0, to.0);
            let incoming = (out_rows.iter().chain(&out_cols).any(|&o| o > 0.0)).then(|| {
                let r = Tensor::from_slice(&out_rows).reshape([height as i64, 1]);
                let c = Tensor::from_slice(&out_cols).reshape([1, width as i64]);
                r.maximum(&c).reshape([1, 1, height as i64, width as i64]).to_device(device)
            });
            return Self { taps: Taps::Separable { rows, cols }, incoming };
        }
        let (w, h) = (width as i64, height as i64);
        let (cx, cy) = (camera.centre.0 * (w - 1) as f64, camera.centre.1 * (h - 1) as f64);
        let opts = (Kind::Double, device);
        // Offsets from the fixed point of every output pixel, in the camera's frame.
        let dx = (Tensor::arange(w, opts) + (to.0 - cx)).reshape([1, w]).expand([h, w], false);
        let dy = (Tensor::arange(h, opts) + (to.1 - cy)).reshape([h, 1]).expand([h, w], false);
        let (cos, sin) = (camera.turn.cos() / camera.factor, camera.turn.sin() / camera.factor);
        let sx = (&dx * cos - &dy * sin) + (cx - from.0);
        let sy = (&dx * sin + &dy * cos) + (cy - from.1);
        let outside =
            sx.lt(-0.5).logical_or(&sx.gt(w as f64 - 0.5)).logical_or(&sy.lt(-0.5)).logical_or(&sy.gt(h as f64 - 0.5));
        let incoming =
            bool::try_from(outside.any()).unwrap_or(true).then(|| outside.to_kind(Kind::Float).reshape([1, 1, h, w]));
        Self { taps: Taps::Window { rows: window_taps(&sy, h), cols: window_taps(&sx, w), width: w }, incoming }
    }

    /// Where the output samples outside the previous frame: 1 there, 0 elsewhere, [1, 1, H, W].
    /// Wrapped samples there continue the edge (no seam) but copy the frame, and a camera that
    /// keeps zooming out would tile the movie with copies of itself, which the optimiser (whose
    /// gradient is periodic where the image is) never undoes; the engine seeds these pixels
    /// with fresh noise instead.
    pub fn incoming(&self) -> Option<&Tensor> {
        self.incoming.as_ref()
    }

    /// Moves an NCHW tensor as the camera moves.
    pub fn apply(&self, t: &Tensor) -> Tensor {
        match &self.taps {
            Taps::Separable { rows, cols } => {
                let t = resample(t, 2, rows);
                resample(&t, 3, cols)
            }
            Taps::Window { rows, cols, width } => {
                let size = t.size();
                let flat = t.reshape([size[0] * size[1], -1]);
                let mut acc = Tensor::zeros(t.size(), (Kind::Float, t.device()));
                for (row, row_w) in rows {
                    let base = row * *width;
                    for (col, col_w) in cols {
                        let idx = (&base + col).flatten(0, -1);
                        acc += flat.index_select(1, &idx).reshape(size.as_slice()) * (row_w * col_w);
                    }
                }
                acc
            }
        }
    }
}

/// Lanczos-3 taps along one axis for source coordinates `src` ([H, W], pixels): 6 pairs of
/// (indices clamped into 0..n, normalised float weights).
fn window_taps(src: &Tensor, n: i64) -> Vec<(Tensor, Tensor)> {
    let base = src.floor() - 2.0;
    let weights: Vec<Tensor> = (0..TAPS)
        .map(|k| {
            let d = src - (&base + k as f64);
            let pd = &d * std::f64::consts::PI;
            let w = (pd.sin() * (&pd / 3.0).sin() * 3.0) / (&pd * &pd);
            let w = w.where_self(&d.abs().gt(1e-12), &d.ones_like());
            w * d.abs().lt(3.0).to_kind(Kind::Double)
        })
        .collect();
    let sum = weights.iter().fold(src.zeros_like(), |acc, w| acc + w);
    let base = base.to_kind(Kind::Int64);
    weights
        .iter()
        .enumerate()
        .map(|(k, w)| ((&base + k as i64).clamp(0, n - 1), (w / &sum).to_kind(Kind::Float)))
        .collect()
}

fn resample(t: &Tensor, dim: i64, (idx, wts): &(Tensor, Tensor)) -> Tensor {
    let n = idx.size()[1];
    let shape: Vec<i64> = if dim == 2 { vec![1, 1, n, 1] } else { vec![1, 1, 1, n] };
    let mut acc = Tensor::zeros(t.size(), (Kind::Float, t.device()));
    for k in 0..TAPS {
        acc += t.index_select(dim, &idx.get(k)) * wts.get(k).reshape(shape.as_slice());
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth pattern f(x, y) rastered at `at(x, y)`.
    fn pattern(w: i64, h: i64, f: impl Fn(f64, f64) -> f64, at: impl Fn(f64, f64) -> (f64, f64)) -> Tensor {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = at(x as f64, y as f64);
                v.push(f(sx, sy) as f32);
            }
        }
        Tensor::from_slice(&v).reshape([1, 1, h, w])
    }

    /// Where output pixel (x, y) of a frame stored at offset `to` looks in the previous frame's
    /// camera: c + R(-a)(p - c) / z, R anticlockwise as shown (y points down).
    fn source(w: i64, h: i64, cam: &Camera, to: (f64, f64)) -> impl Fn(f64, f64) -> (f64, f64) {
        let (cx, cy) = (cam.centre.0 * (w - 1) as f64, cam.centre.1 * (h - 1) as f64);
        let cam = *cam;
        move |x, y| {
            let (dx, dy) = (x + to.0 - cx, y + to.1 - cy);
            let (c, s) = (cam.turn.cos(), cam.turn.sin());
            (cx + (dx * c - dy * s) / cam.factor, cy + (dx * s + dy * c) / cam.factor)
        }
    }

    #[test]
    fn the_camera_moves_a_known_pattern_where_it_should() {
        let smooth = |x: f64, y: f64| (x * 0.21).sin() + (y * 0.17).cos() + 0.01 * x;
        let cam = |factor, centre, turn: f64| Camera { factor, centre, turn: turn.to_radians() };
        let mid = (0.5, 0.5);
        let cases = [
            (64i64, 48i64, cam(1.03, mid, 0.0), (0.0, 0.0), (0.0, 0.0)),
            (65, 47, cam(1.5, mid, 0.0), (0.0, 0.0), (0.0, 0.0)),
            (40, 40, cam(1.0, mid, 0.0), (0.0, 0.0), (0.0, 0.0)),
            (64, 48, cam(1.03, mid, 0.0), (0.3, -0.4), (-0.2, 0.45)),
            // Off the middle, turning, both, and zooming out while turning.
            (64, 48, cam(1.1, (0.25, 0.7), 0.0), (0.3, -0.4), (-0.2, 0.45)),
            (64, 48, cam(1.0, mid, 3.0), (0.0, 0.0), (0.0, 0.0)),
            (64, 48, cam(1.05, (0.3, 0.6), -7.0), (0.3, -0.4), (-0.2, 0.45)),
            (64, 48, cam(0.97, mid, 2.0), (0.1, 0.2), (-0.3, 0.1)),
        ];
        for (w, h, camera, from, to) in cases {
            // Stored images: the camera's view shifted by their offsets.
            let src = pattern(w, h, smooth, |x, y| (x + from.0, y + from.1));
            let want = pattern(w, h, smooth, source(w, h, &camera, to));
            let got = Zoom::new(w as usize, h as usize, &camera, from, to, Device::Cpu).apply(&src);
            // Compare away from the border, where samples wrap. Lanczos-3's ripple costs ~0.2% of
            // the amplitude (2); a centre off by half a pixel would cost ~5%.
            let m = 8;
            let inner = |t: &Tensor| t.narrow(2, m, h - 2 * m).narrow(3, m, w - 2 * m);
            let err = (inner(&got) - inner(&want)).abs().max().double_value(&[]);
            assert!(err < 1e-2, "{w}x{h} {camera:?}: max error {err}");
        }
    }

    #[test]
    fn what_comes_into_view_is_marked_and_the_rest_is_the_exact_camera() {
        let (w, h) = (48i64, 40i64);
        let smooth = |x: f64, y: f64| (x * 0.21).sin() + (y * 0.17).cos();
        for camera in [Camera::zoom(0.9), Camera { factor: 0.95, centre: (0.3, 0.6), turn: 0.1 }] {
            let src = pattern(w, h, smooth, |x, y| (x, y));
            let want = pattern(w, h, smooth, source(w, h, &camera, (0.0, 0.0)));
            let zoom = Zoom::new(w as usize, h as usize, &camera, (0.0, 0.0), (0.0, 0.0), Device::Cpu);
            // Marked: the corners, not the middle.
            let incoming = zoom.incoming().expect("a border came into view");
            let at = |x: i64, y: i64| incoming.double_value(&[0, 0, y, x]);
            assert_eq!((at(0, 0), at(w - 1, h - 1), at(w / 2, h / 2)), (1.0, 1.0, 0.0), "{camera:?}");
            // Unmarked pixels whose taps stay inside the frame (5 pixels in from the marked
            // ones: 3 taps, and a turn) are the exact camera's.
            let inside = incoming.ones_like() - incoming;
            let far = inside.neg().max_pool2d([11, 11], [1, 1], [5, 5], [1, 1], false).neg();
            let err = ((&zoom.apply(&src) - &want).abs() * &far).max().double_value(&[]);
            // 1% of the pattern's range: a turn's window ripples more than the separable taps;
            // a centre half a pixel off would cost 5%.
            assert!(err < 2e-2, "{camera:?}: max error {err} away from what came into view");
            assert!(far.sum(Kind::Float).double_value(&[]) > 0.3 * (w * h) as f64, "most of the frame is checked");
        }
        // Zooming in, everything shown was in the previous frame.
        let zoom_in = Zoom::new(w as usize, h as usize, &Camera::zoom(1.05), (0.4, -0.3), (-0.2, 0.4), Device::Cpu);
        assert!(zoom_in.incoming().is_none());
    }

    #[test]
    fn the_window_without_a_turn_is_the_separable_zoom() {
        let img = Tensor::randn([1, 3, 30, 40], (Kind::Float, Device::Cpu));
        let camera = Camera { factor: 1.07, centre: (0.4, 0.55), turn: 0.0 };
        let separable = Zoom::new(40, 30, &camera, (0.2, -0.1), (-0.3, 0.4), Device::Cpu).apply(&img);
        // A turn too small to move any sample measurably takes the window's path.
        let turned = Camera { turn: 1e-12, ..camera };
        let window = Zoom::new(40, 30, &turned, (0.2, -0.1), (-0.3, 0.4), Device::Cpu).apply(&img);
        let err = (separable - window).abs().max().double_value(&[]);
        assert!(err < 1e-4, "max difference {err}");
    }

    /// The line of the original gramzoom, as a mechanism: each frame the zoom blurs every row
    /// a little except those at the fixed point (phase 0), and what escapes the blur there
    /// piles up over the frames into a line through the centre. Modelled without a network: a
    /// 96x80 movie at the default 2x a second and 30 fps whose optimiser is fresh noise added
    /// after each zoom. With the movie's jitter no central row or column keeps more gradient
    /// than the median one (measured 1.02 rows, 1.02 columns); with the offsets at zero the
    /// same measure shows the line (1.29, 1.31), so the check can see what it is for. Exact and
    /// design-free, unlike a rendered movie, whose centre holds chance content for many frames
    /// (ARCHITECTURE.md "Quality tests").
    #[test]
    fn with_the_jitter_no_row_or_column_escapes_the_zooms_blur_at_the_fixed_point() {
        let (w, h) = (96usize, 80usize);
        let camera = Camera::zoom(2f64.powf(1.0 / 30.0));
        let noise = |t: u64| {
            let mut s = crate::rng::Stream::new(11, t, crate::rng::Purpose::InitNoise);
            let v: Vec<f32> = (0..w * h).map(|_| s.next_normal()).collect();
            Tensor::from_slice(&v).reshape([1, 1, h as i64, w as i64])
        };
        // The central band's ratio (`quality::centre_line_ratio`) over the last 240 of 300
        // frames.
        let lines = |jittered: bool| {
            let offset = |t: u32| if jittered { jitter(3, t) } else { (0.0, 0.0) };
            let mut image = noise(0);
            let mut planes = Vec::new();
            for t in 1..=300u32 {
                let zoom = Zoom::new(w, h, &camera, offset(t - 1), offset(t), Device::Cpu);
                image = zoom.apply(&image) * 0.95 + noise(t.into()) * 0.3;
                if t > 60 {
                    planes.push(image.get(0).get(0).to_kind(Kind::Double));
                }
            }
            crate::quality::centre_band_ratio(crate::quality::plane_gradient_profiles(planes))
        };
        let (on, off) = (lines(true), lines(false));
        eprintln!("jitter on: rows {:.3} columns {:.3}; off: rows {:.3} columns {:.3}", on.0, on.1, off.0, off.1);
        assert!(on.0 < 1.1 && on.1 < 1.1, "with the jitter, a line through the centre: {on:?}");
        assert!(off.0 > 1.2 && off.1 > 1.2, "without it the measure must see the line: {off:?}");
    }

    #[test]
    fn centre_is_the_fixed_point_and_identity_is_exact() {
        // A single bright pixel at the fixed point stays there, whether it zooms or turns.
        for (centre, at) in [((0.5, 0.5), (16, 16)), ((0.25, 0.75), (8, 24))] {
            for turn in [0.0, 0.3] {
                let img = Tensor::zeros([1, 1, 33, 33], (Kind::Float, Device::Cpu));
                let _ = img.get(0).get(0).get(at.1).get(at.0).fill_(1.0);
                let camera = Camera { factor: 1.2, centre, turn };
                let out = Zoom::new(33, 33, &camera, (0.0, 0.0), (0.0, 0.0), Device::Cpu).apply(&img);
                let max_at = out.flatten(0, -1).argmax(0, false).int64_value(&[]);
                assert_eq!(max_at, at.1 * 33 + at.0, "{camera:?}");
            }
        }
        let img = Tensor::randn([1, 3, 33, 33], (Kind::Float, Device::Cpu));
        let same = Zoom::new(33, 33, &Camera::zoom(1.0), (0.0, 0.0), (0.0, 0.0), Device::Cpu).apply(&img);
        assert!((same - &img).abs().max().double_value(&[]) < 1e-6);
    }
}
