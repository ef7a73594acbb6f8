//! Optimisation steps in the style's colour space: the built-in network's cure for colour
//! speckle (`RandomDesign::HeColour`, and the default `HeSpectrum`).
//!
//! Adam normalises every pixel channel's step by its own gradient history, so a direction the
//! loss barely constrains gets steps as large as one it does: with random features, which mix
//! colour channels at random, that direction is chroma, and every iteration sprinkled colour
//! noise of the full step size over the image. A grey style came out in rainbow colours.
//!
//! The image x is stepped as x = mu + C y (Mordvintsev et al., "Differentiable Image
//! Parameterizations", Distill 2018, decorrelate colours the same way), where C is the square
//! root of the style's colour covariance scaled so its largest gain is `STEP_GAIN`, with a
//! floor (`MIN_GAIN`) so no colour is frozen, and the chroma components of a step are blurred
//! (`blur`, sigma about 1 pixel: paintings and photographs change hue at edges and in regions,
//! at a coarser scale than luminance, which is also why JPEG halves chroma), while the finest
//! luminance detail of a step is raised a little (`SHARPEN`). Nothing of y is ever
//! stored: Adam runs on the gradient mapped back (C^T, then the blur, which is symmetric), and its
//! step is mapped forward (the blur, then C). So the hand-off state is the image and Adam's
//! moments as before (the moments are of the mapped gradient), the zoom resamples them as
//! before, and C is a function of the style alone, computed in f64 by a fixed sequence of
//! operations, so every worker of a segmented render gets the same bits.

use tch::{Device, Kind, Tensor};

/// The gain of the style's strongest colour direction (mostly luminance): 1, a step moves it by
/// the learning rate, as plain Adam would. Each frame's zoom resamples the image and softens its
/// finest grain a little, and 4 iterations a frame do not restore all of it on fine-grained
/// styles (detail distance 1.14 on the grey gravel at 96x80; 0.49 with 10 iterations). A gain
/// of 2.5 restores it (0.65-0.75, wheatfield 0.99 to 0.61) but grew what crosses the zoom's
/// centre: the quality test's two-seed line ratio for VGG19 reached 1.37 (2.0: 1.40; one seed
/// 1.60), against 1.23 at 1. Lines are the artifact zoom movies are judged by, so 1 it is.
pub const STEP_GAIN: f64 = 1.0;

/// How much the finest luminance detail of a step is raised: grey + SHARPEN * (grey - blur(grey)),
/// 1.6x at the highest frequency, 1 for smooth steps (and the same on the gradient Adam sees, so
/// the map stays its own adjoint).
/// Each frame's zoom resamples the image and softens its finest grain a little, which 4
/// iterations of plain steps did not restore (detail distance 1.14 on the grey gravel at
/// 96x80, 0.49 with 10 iterations); with 0.6 they do (0.79 to 0.83; wheatfield 0.99 to 0.72)
/// and the lines through the centre did not grow, where raising every step (`STEP_GAIN` 2.5)
/// restored the grain too but grew them.
pub const SHARPEN: f64 = 0.6;

/// The smallest gain of a colour direction, so that no colour is frozen. Measured on the grey
/// gravel at 128x96: 0.15 left chroma speckle (score 3.4, chroma 9.7 above the style's), 0.03
/// renders it grey (1.0 to 1.2, chroma +2).
pub const MIN_GAIN: f64 = 0.03;

/// The colour map of one style: C (3x3, row-major) in the basis of its principal colours, and
/// the style's mean colour.
#[derive(Debug, Clone)]
pub struct ColourSpace {
    /// Principal colour directions, as rows, strongest first.
    basis: [[f64; 3]; 3],
    /// Gain per principal direction, `STEP_GAIN` for the strongest.
    gains: [f64; 3],
    pub mean: [f64; 3],
    /// The style's colour covariance, from which the rest follows (and blends are mixed).
    cov: [[f64; 3]; 3],
}

impl ColourSpace {
    /// From the style's pixels (1x3xHxW in [0, 1]); sums run in f64 in pixel order, so the result
    /// does not depend on libtorch's threads.
    pub fn of_style(style: &Tensor) -> Self {
        let flat = style.to_device(Device::Cpu).to_kind(Kind::Double).squeeze_dim(0).flatten(1, -1);
        let v = Vec::<f64>::try_from(flat.transpose(0, 1).contiguous().flatten(0, -1)).expect("double pixels");
        let n = (v.len() / 3).max(1) as f64;
        let mut mean = [0.0; 3];
        for px in v.chunks_exact(3) {
            (0..3).for_each(|c| mean[c] += px[c]);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut cov = [[0.0; 3]; 3];
        for px in v.chunks_exact(3) {
            for i in 0..3 {
                for j in 0..3 {
                    cov[i][j] += (px[i] - mean[i]) * (px[j] - mean[j]);
                }
            }
        }
        cov.iter_mut().flatten().for_each(|x| *x /= n);
        Self::of_moments(mean, cov)
    }

    fn of_moments(mean: [f64; 3], cov: [[f64; 3]; 3]) -> Self {
        let (values, vectors) = eigen_symmetric(cov);
        let top = values[0].max(1e-12);
        let gains = values.map(|l| ((l.max(0.0) / top).sqrt() * STEP_GAIN).max(MIN_GAIN));
        Self { basis: vectors, gains, mean, cov }
    }

    /// The colour space of a blend of styles, weights summing to 1: that of the mixture of
    /// their pixels (mean and covariance of the mixture), so a frame half-way through a
    /// cross-fade from a grey style to a colourful one steps in half the colour. A style
    /// weighing 1 is its own space exactly.
    pub fn mixture(parts: &[(&ColourSpace, f64)]) -> Self {
        let parts: Vec<&(&ColourSpace, f64)> = parts.iter().filter(|(_, w)| *w > 0.0).collect();
        if parts.len() == 1 {
            return parts[0].0.clone();
        }
        let mut mean = [0.0; 3];
        for (space, w) in &parts {
            (0..3).for_each(|c| mean[c] += w * space.mean[c]);
        }
        let mut cov = [[0.0; 3]; 3];
        for (space, w) in &parts {
            for i in 0..3 {
                for j in 0..3 {
                    let (di, dj) = (space.mean[i] - mean[i], space.mean[j] - mean[j]);
                    cov[i][j] += w * (space.cov[i][j] + di * dj);
                }
            }
        }
        Self::of_moments(mean, cov)
    }

    /// C as a 3x3 tensor: sum over directions of gain * u u^T (symmetric).
    fn matrix(&self, kind: Kind, device: Device) -> Tensor {
        let mut m = [0f64; 9];
        for (u, g) in self.basis.iter().zip(self.gains) {
            for i in 0..3 {
                for j in 0..3 {
                    m[i * 3 + j] += g * u[i] * u[j];
                }
            }
        }
        Tensor::from_slice(&m).reshape([3, 3]).to_kind(kind).to_device(device)
    }

    /// Noise to start from: uniform noise `u` in [0, 1) mapped through C around the style's mean
    /// (a grey style starts from grey noise, a blue one from blue noise), clamped to [0, 1].
    pub fn noise(&self, u: &Tensor) -> Tensor {
        let c = self.matrix(u.kind(), u.device()) / self.gains[0];
        let mean = Tensor::from_slice(&self.mean).reshape([1, 3, 1, 1]).to_kind(u.kind()).to_device(u.device());
        (apply(&c, &(u - 0.5)) + mean).clamp(0.0, 1.0)
    }

    /// The preconditioner for tensors of `kind` on `device`.
    pub fn preconditioner(&self, kind: Kind, device: Device) -> Preconditioner {
        let (r2, r3, r6) = (0.5f64.sqrt(), (1.0f64 / 3.0).sqrt(), (1.0f64 / 6.0).sqrt());
        let opponent = [r3, r3, r3, r2, -r2, 0.0, r6, r6, -2.0 * r6];
        let opponent = Tensor::from_slice(&opponent).reshape([3, 3]).to_kind(kind).to_device(device);
        let taps = Tensor::from_slice(&[1f64, 4., 6., 4., 1.]).to_kind(kind).to_device(device) / 16.0;
        Preconditioner { c: self.matrix(kind, device), opponent, taps }
    }
}

/// x's step = C * filter(step in y); y's gradient = filter(C^T * x's gradient), where `filter`
/// blurs chroma and raises the finest grey detail.
#[derive(Debug)]
pub struct Preconditioner {
    c: Tensor,
    /// Grey (1, 1, 1)/sqrt 3 and two opponent colour axes orthogonal to it, as rows.
    opponent: Tensor,
    /// The binomial blur's taps, made once on the device rather than copied there per call.
    taps: Tensor,
}

impl Preconditioner {
    /// The gradient with respect to y from the gradient with respect to x.
    pub fn pull(&self, grad: &Tensor) -> Tensor {
        self.filter(&apply(&self.c, grad))
    }

    /// The step of x from a step of y.
    pub fn push(&self, step: &Tensor) -> Tensor {
        apply(&self.c, &self.filter(step))
    }

    fn filter(&self, t: &Tensor) -> Tensor {
        let coords = apply(&self.opponent, t);
        let grey = coords.narrow(1, 0, 1);
        let grey = &grey + (&grey - blur(&grey, &self.taps)) * SHARPEN;
        let chroma = blur(&coords.narrow(1, 1, 2), &self.taps);
        // The opponent basis is orthonormal: its transpose maps the coordinates back.
        apply(&self.opponent.tr(), &Tensor::cat(&[grey, chroma], 1))
    }
}

/// Variance added to both colour distributions of a transport map, so that a direction a style
/// hardly varies in (chroma, for a grey style) is not stretched without bound.
const TRANSPORT_FLOOR: f64 = 1e-4;

/// The optimal transport map between the Gaussians of two colour spaces' pixels,
/// x -> A (x - mean_from) + mean_to with A = F^-1/2 (F^1/2 T F^1/2)^1/2 F^-1/2 (symmetric): what
/// moves a frame's colours along with a blend of styles on the move. In f64 by a fixed sequence
/// of operations, so every worker computes the same map.
pub fn transport(from: &ColourSpace, to: &ColourSpace, image: &Tensor) -> Tensor {
    let floor = |c: [[f64; 3]; 3]| {
        let mut c = c;
        (0..3).for_each(|i| c[i][i] += TRANSPORT_FLOOR);
        c
    };
    let (f, t) = (floor(from.cov), floor(to.cov));
    let f_half = power(f, 0.5);
    let f_inv_half = power(f, -0.5);
    let middle = power(mul(mul(f_half, t), f_half), 0.5);
    let a = mul(mul(f_inv_half, middle), f_inv_half);
    let m: Vec<f64> = a.iter().flatten().copied().collect();
    let kind = image.kind();
    let m = Tensor::from_slice(&m).reshape([3, 3]).to_kind(kind).to_device(image.device());
    let mean = |v: [f64; 3]| Tensor::from_slice(&v).reshape([1, 3, 1, 1]).to_kind(kind).to_device(image.device());
    (apply(&m, &(image - mean(from.mean))) + mean(to.mean)).clamp(0.0, 1.0)
}

/// A symmetric positive 3x3 matrix to the power `p`, through its eigenvectors.
fn power(a: [[f64; 3]; 3], p: f64) -> [[f64; 3]; 3] {
    let (values, vectors) = eigen_symmetric(a);
    let mut out = [[0.0; 3]; 3];
    for (u, l) in vectors.iter().zip(values) {
        let g = l.max(1e-12).powf(p);
        for i in 0..3 {
            for j in 0..3 {
                out[i][j] += g * u[i] * u[j];
            }
        }
    }
    out
}

fn mul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// `m` (3x3) applied to every pixel of an Nx3xHxW tensor.
fn apply(m: &Tensor, t: &Tensor) -> Tensor {
    t.conv2d(&m.reshape([3, 3, 1, 1]), None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1)
}

/// A 5-tap binomial blur per channel (sigma 1 pixel) with wrap-around borders, as the image
/// tiles (the loss sees it rolled): a symmetric operator, so `pull` is `push`'s adjoint.
fn blur(t: &Tensor, taps: &Tensor) -> Tensor {
    let c = t.size()[1];
    let kernel = |shape: [i64; 4]| taps.reshape(shape).expand([c, 1, shape[2], shape[3]], false).contiguous();
    let padded = t.pad([2, 2, 2, 2], "circular", None);
    let across = padded.conv2d(&kernel([1, 1, 1, 5]), None::<&Tensor>, [1, 1], [0, 0], [1, 1], c);
    across.conv2d(&kernel([1, 1, 5, 1]), None::<&Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// Eigenvalues (descending) and eigenvectors (as rows) of a symmetric 3x3 matrix, by cyclic
/// Jacobi rotations: a fixed sequence of f64 operations, the same on every machine.
fn eigen_symmetric(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..64 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        if off < 1e-30 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
            // a = J^T a J with J the rotation in the (p, q) plane; v accumulates J.
            for row in &mut a {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (rp, rq) = (a[p], a[q]);
            for k in 0..3 {
                a[p][k] = c * rp[k] - s * rq[k];
                a[q][k] = s * rp[k] + c * rq[k];
            }
            for row in &mut v {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let values = order.map(|i| a[i][i]);
    let vectors = order.map(|i| [v[0][i], v[1][i], v[2][i]]);
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let a = [[0.05, 0.02, -0.01], [0.02, 0.04, 0.015], [-0.01, 0.015, 0.03]];
        let (values, vectors) = eigen_symmetric(a);
        assert!(values[0] >= values[1] && values[1] >= values[2]);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| values[k] * vectors[k][i] * vectors[k][j]).sum();
                assert!((r - a[i][j]).abs() < 1e-12, "({i},{j}): {r} vs {}", a[i][j]);
                let dot: f64 = (0..3).map(|k| vectors[i][k] * vectors[j][k]).sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
    }

    /// A grey style's colour space steps grey: a step made of pure chroma noise comes out with
    /// its chroma scaled by `MIN_GAIN` at most and blurred, and the starting noise is grey too;
    /// a colourful style's keeps luma steps whole.
    #[test]
    fn a_grey_style_steps_in_grey() {
        let grey = Tensor::rand([1, 1, 16, 16], (Kind::Double, Device::Cpu)).expand([1, 3, 16, 16], false);
        let space = ColourSpace::of_style(&grey);
        assert!((space.gains[0] - STEP_GAIN).abs() < 1e-9 && space.gains[1] <= MIN_GAIN + 1e-9);
        let p = space.preconditioner(Kind::Double, Device::Cpu);
        let noise = Tensor::randn([1, 3, 32, 32], (Kind::Double, Device::Cpu));
        let chroma = |t: &Tensor| (t - t.mean_dim(1, true, Kind::Double)).square().mean(Kind::Double).double_value(&[]);
        let step = p.push(&noise);
        assert!(chroma(&step) < 0.1 * MIN_GAIN * MIN_GAIN * chroma(&noise), "{} vs {}", chroma(&step), chroma(&noise));
        // A smooth grey step is kept whole; a pixel-fine grey one is raised by `SHARPEN`.
        let flat = Tensor::full([1, 3, 32, 32], 0.3, (Kind::Double, Device::Cpu));
        assert!((p.push(&flat) - &flat * STEP_GAIN).abs().max().double_value(&[]) < 1e-9, "grey steps are whole");
        let checker = (Tensor::arange(32, (Kind::Double, Device::Cpu)).remainder(2) * 2.0 - 1.0).reshape([1, 1, 1, 32]);
        let fine = checker.expand([1, 3, 32, 32], false).contiguous();
        let raised = p.push(&fine).abs().mean(Kind::Double).double_value(&[]);
        assert!((raised - (1.0 + SHARPEN) * STEP_GAIN).abs() < 1e-9, "{raised}");
        let start = space.noise(&Tensor::rand([1, 3, 32, 32], (Kind::Double, Device::Cpu)));
        assert!(chroma(&start) < MIN_GAIN * MIN_GAIN * 0.1, "{}", chroma(&start));
    }

    /// The mixture of two styles' colour spaces is that of their pixels put together.
    #[test]
    fn a_blend_steps_in_the_colours_of_both_styles() {
        let a = Tensor::rand([1, 3, 8, 8], (Kind::Double, Device::Cpu));
        let b = Tensor::rand([1, 3, 8, 8], (Kind::Double, Device::Cpu)) * 0.3 + 0.5;
        let (sa, sb) = (ColourSpace::of_style(&a), ColourSpace::of_style(&b));
        let both = ColourSpace::of_style(&Tensor::cat(&[&a, &b], 3));
        let mixed = ColourSpace::mixture(&[(&sa, 0.5), (&sb, 0.5)]);
        for i in 0..3 {
            assert!((mixed.mean[i] - both.mean[i]).abs() < 1e-12);
            for j in 0..3 {
                assert!((mixed.cov[i][j] - both.cov[i][j]).abs() < 1e-12, "({i},{j})");
            }
        }
        let alone = ColourSpace::mixture(&[(&sa, 0.0), (&sb, 1.0)]);
        assert_eq!((alone.basis, alone.gains, alone.mean), (sb.basis, sb.gains, sb.mean));
    }

    /// The transport map takes pixels distributed as one style's to the other's mean and
    /// covariance (up to the floor it adds, and the clamp to [0, 1]), and a style to itself.
    #[test]
    fn transport_moves_one_styles_colours_to_anothers() {
        let a = Tensor::rand([1, 3, 40, 40], (Kind::Double, Device::Cpu)) * 0.3 + 0.3;
        let grey = Tensor::rand([1, 1, 40, 40], (Kind::Double, Device::Cpu)).expand([1, 3, 40, 40], false) * 0.4 + 0.1;
        let b = (&grey + Tensor::from_slice(&[0.3, 0.2, 0.0]).reshape([1, 3, 1, 1])).clamp(0.0, 1.0);
        let (sa, sb) = (ColourSpace::of_style(&a), ColourSpace::of_style(&b));
        let moved = ColourSpace::of_style(&transport(&sa, &sb, &a));
        for i in 0..3 {
            assert!((moved.mean[i] - sb.mean[i]).abs() < 1e-3, "mean {i}: {} vs {}", moved.mean[i], sb.mean[i]);
            for j in 0..3 {
                let (got, want) = (moved.cov[i][j], sb.cov[i][j]);
                // Uniform pixels mapped past 0 or 1 are clamped: a few percent of the spread.
                assert!((got - want).abs() < 0.05 * sb.cov[i][i].max(sb.cov[j][j]), "cov ({i},{j}): {got} vs {want}");
            }
        }
        let same = transport(&sa, &sa, &a);
        assert!((same - &a).abs().max().double_value(&[]) < 1e-9, "a style to itself changes nothing");
    }

    /// pull is push's adjoint (<push(a), b> = <a, pull(b)>), so Adam on pulled gradients descends.
    #[test]
    fn pull_is_the_adjoint_of_push() {
        let style = Tensor::rand([1, 3, 12, 12], (Kind::Double, Device::Cpu));
        let p = ColourSpace::of_style(&style).preconditioner(Kind::Double, Device::Cpu);
        let (a, b) = (
            Tensor::randn([1, 3, 20, 24], (Kind::Double, Device::Cpu)),
            Tensor::randn([1, 3, 20, 24], (Kind::Double, Device::Cpu)),
        );
        let lhs = (p.push(&a) * &b).sum(Kind::Double).double_value(&[]);
        let rhs = (&a * p.pull(&b)).sum(Kind::Double).double_value(&[]);
        assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
