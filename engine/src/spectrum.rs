//! The spectrum term of the built-in network's default design (`RandomDesign::HeSpectrum`):
//! the frame's grey (the mean of its channels) is drawn towards the Fourier modulus of the
//! style's grey, its phase left free.
//!
//! Gram matrices of random shallow features hold how much of each local pattern a style has,
//! not at what scales and in which directions its energy lies: the grey brick wall, a regular
//! lattice, came out with grain on its smooth faces and streaks where its bricks repeat (detail
//! distance about 1.0 against 0.5 on textures without a lattice; ARCHITECTURE.md, "Colour
//! steps"). Liu, Gousseau and Xia ("Texture synthesis through convolutional neural networks
//! and spectrum constraints", ICPR 2016) add to Gatys' loss the distance of the image to its
//! projection on the images with the style's Fourier modulus: 1/2 ||u - u'||^2 where u' keeps
//! u's phase and takes the style's modulus. Its gradient is u - u', one FFT and one inverse FFT
//! a frame iteration, next to nothing beside the network.
//!
//! A frame and its style differ in size, and the style is not periodic where frames are (the
//! zoom wraps them around). So the style's spectrum is taken of its periodic component
//! (Moisan, "Periodic plus smooth image decomposition", 2011: without it the jump across the
//! style's borders puts a cross of false energy through the spectrum) and read as a power
//! density: with orthonormal FFTs a bin's expected power is the density at its frequency,
//! whatever the image's size, so the frame's target at each of its bins is the style's density
//! at that frequency, interpolated between the style's bins, and averaged over them where the
//! style's bins are finer than the frame's. The mean is left to the colour steps, and so are
//! the coarsest frequencies (`FREE_CYCLES`) of a style whose periodic component lost much of
//! its variance (`LOST_MAX`): there its coarsest frequencies are not the style's. Everything is
//! a function of the style and the frame's size, so segmented renders compute the same bits.

use std::cell::RefCell;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// The coarsest frequencies the term holds on a style whose layout runs into its borders, in
/// cycles per the style's shorter side (see `LOST_MAX`): below, such a style's periodogram is
/// mostly its layout (a few large regions) rather than its texture, and its periodic component
/// has lost part of that power with its borders (on the immunohistochemistry style, about half
/// of it below 7 cycles): held there, the frames lost a sixth of their grey spread (41 levels
/// against the style's 48). The Gram loss keeps them.
pub const FREE_CYCLES: f64 = 3.0;

/// The share of a style's grey variance its periodic component may lose for the term to hold
/// every frequency but the mean. Textures and paintings that wrap almost seamlessly lose 0.4
/// to 2.4% (gravel, the brick wall, the wheat field at 108 to 128 px), photographs and the
/// immunohistochemistry slide 28 to 36%: for the former the periodic component's coarsest
/// frequencies are the style's, and leaving them free cost the wheat field its layout (its
/// frames' detail distance in the gallery 0.91 free, 0.09 held).
pub const LOST_MAX: f64 = 0.1;

/// How strongly the spectrum's gradient counts beside the style loss's, as a share of the
/// latter's root mean square (see `SpectrumTarget::gradient`).
pub const WEIGHT: f64 = 0.5;

/// One style's power spectrum density: the periodic component's periodogram, centred (the zero
/// frequency at (H/2, W/2)), (1, 1, H, W) in f64 on the CPU.
#[derive(Debug)]
pub struct StyleSpectrum {
    power: Tensor,
    /// Below this frequency (cycles per pixel) the term leaves the frame alone: `FREE_CYCLES`
    /// over the style's shorter side, or 0 (see `LOST_MAX`).
    free_below: f64,
}

impl StyleSpectrum {
    /// Of a style as the network sees it (1x3xHxW in [0, 1]).
    pub fn of_style(style: &Tensor) -> Self {
        let grey = style.to_device(Device::Cpu).to_kind(Kind::Double).mean_dim(1, false, Kind::Double).squeeze_dim(0);
        let p = periodic(&grey);
        let p = &p - p.mean(Kind::Double);
        let power = p.fft_fft2(None::<&[i64]>, [0, 1], "ortho").abs().square();
        let power = power.fft_fftshift(Some([0i64, 1].as_slice()));
        let short = power.size()[0].min(power.size()[1]).max(1);
        // The share of the style's grey variance its periodic component lost with the jumps
        // across its borders: what its layout put there.
        let lost = 1.0 - p.var(false).double_value(&[]) / grey.var(false).double_value(&[]).max(1e-12);
        let free_below = if lost > LOST_MAX { FREE_CYCLES / short as f64 } else { 0.0 };
        Self { power: power.unsqueeze(0).unsqueeze(0), free_below }
    }

    /// The density at the bins of an orthonormal `rfft2` of an h x w image, (h, w/2 + 1).
    fn at_bins(&self, h: i64, w: i64) -> Tensor {
        let (sh, sw) = (self.power.size()[2], self.power.size()[3]);
        // Where the style's bins are finer than the frame's, a frame bin holds the density
        // averaged over its width: a box of about that many style bins, odd so it is centred.
        // Frequencies wrap around (a real image's density at -1/2 is that at +1/2), so the box
        // wraps, and one more row and column, copies of the first, let the sampling below reach
        // +1/2 of an even-sized style.
        let odd = |k: f64| (k.floor() as i64).max(1) | 1;
        let (ky, kx) = (odd(sh as f64 / h as f64), odd(sw as f64 / w as f64));
        let density = self.power.pad([kx / 2, kx / 2 + 1, ky / 2, ky / 2 + 1], "circular", None).avg_pool2d(
            [ky, kx],
            [1, 1],
            [0, 0],
            false,
            true,
            None::<i64>,
        );
        // Frequency f (cycles per pixel) sits at centred index f * n + floor(n / 2); grid
        // coordinates with align_corners map index i of the n + 1 to 2 i / n - 1.
        let opts = (Kind::Double, Device::Cpu);
        let coord = |freq: Tensor, n: i64| (freq * n as f64 + (n / 2) as f64) * (2.0 / n as f64) - 1.0;
        let fy = coord(Tensor::fft_fftfreq(h, 1.0, opts), sh);
        let fx = coord(Tensor::fft_rfftfreq(w, 1.0, opts), sw);
        let (gy, gx) = (fy.unsqueeze(1).expand([h, w / 2 + 1], false), fx.unsqueeze(0).expand([h, w / 2 + 1], false));
        let grid = Tensor::stack(&[gx, gy], 2).unsqueeze(0);
        // Bilinear, clamped at the border (never reached but for rounding).
        density.grid_sampler(&grid, 0, 1, true).squeeze_dim(0).squeeze_dim(0)
    }
}

/// What a frame's grey is drawn towards: its styles' densities mixed by their weights (a
/// frame half-way through a cross-fade takes half of each), as a modulus per frame size.
pub struct SpectrumTarget {
    parts: Vec<(StyleSpectrum, f64)>,
    /// The modulus at the last frame size asked for, on the frames' device, with -1 where the
    /// term leaves the frame alone: sizes change only between warm-up stages.
    modulus: RefCell<Option<((i64, i64), Tensor)>>,
}

impl SpectrumTarget {
    pub fn mix(parts: &[(&StyleSpectrum, f64)]) -> Self {
        let parts = parts
            .iter()
            .filter(|(_, w)| *w > 0.0)
            .map(|(s, w)| (StyleSpectrum { power: s.power.shallow_clone(), free_below: s.free_below }, *w))
            .collect();
        Self { parts, modulus: RefCell::new(None) }
    }

    fn modulus(&self, h: i64, w: i64, device: Device) -> Tensor {
        let mut cached = self.modulus.borrow_mut();
        if let Some((size, m)) = cached.as_ref() {
            if *size == (h, w) {
                return m.shallow_clone();
            }
        }
        let opts = (Kind::Double, Device::Cpu);
        let mut density = Tensor::zeros([h, w / 2 + 1], opts);
        for (s, weight) in &self.parts {
            density += s.at_bins(h, w) * *weight;
        }
        // Free below the coarsest of the styles' limits (the zero frequency, the mean, always).
        let free_below = self.parts.iter().map(|(s, _)| s.free_below).fold(0.0, f64::max);
        let fy = Tensor::fft_fftfreq(h, 1.0, opts).unsqueeze(1);
        let fx = Tensor::fft_rfftfreq(w, 1.0, opts).unsqueeze(0);
        let held = (fy.square() + fx.square()).sqrt().ge(free_below).logical_and(&(fy.ne(0.0).logical_or(&fx.ne(0.0))));
        let m = density
            .clamp_min(0.0)
            .sqrt()
            .where_self(&held, &Tensor::from(-1.0f64))
            .to_kind(Kind::Float)
            .to_device(device);
        *cached = Some(((h, w), m.shallow_clone()));
        m
    }

    /// The spectrum term's gradient with respect to `image` (1x3xHxW), scaled to `WEIGHT` of
    /// `style_grad`'s root mean square. The scale follows the style loss, whose size varies
    /// over orders of magnitude with the network, the layers and the frame's size, so one
    /// weight serves them all; it is the style's gradient that sets it, never the spectrum's
    /// own (which falls to nothing as the spectrum is matched).
    pub fn gradient(&self, image: &Tensor, style_grad: &Tensor) -> Tensor {
        let (_, _, h, w) = image.size4().expect("images are NCHW");
        let grey = image.detach().to_kind(Kind::Float).mean_dim(1, true, Kind::Float).squeeze_dim(0).squeeze_dim(0);
        // d/dx_c of the mean of three channels is a third.
        let grad = self.grey_gradient(&grey) / 3.0;
        // A tensor, not a number: reading it back would make a GPU wait every iteration.
        let scale = rms(style_grad) / rms(&grad).clamp_min(1e-30) * WEIGHT;
        (grad * scale).unsqueeze(0).unsqueeze(0).expand([1, 3, h, w], false).to_kind(style_grad.kind())
    }

    /// The gradient of 1/2 sum over the held frequencies of (|F(grey)| - target)^2 with
    /// respect to `grey` (H x W): grey less its projection on the target's modulus.
    fn grey_gradient(&self, grey: &Tensor) -> Tensor {
        let (h, w) = (grey.size()[0], grey.size()[1]);
        let target = self.modulus(h, w, grey.device()).to_kind(grey.kind());
        let spectrum = grey.fft_rfft2(None::<&[i64]>, [0, 1], "ortho");
        // Held bins take the target's modulus with their own phase; free ones stay as they are.
        let held = target.ge(0.0);
        let ratio = (&target / spectrum.abs().clamp_min(1e-12)).where_self(&held, &target.ones_like());
        grey - (spectrum * ratio).fft_irfft2(Some([h, w].as_slice()), [0, 1], "ortho")
    }
}

fn rms(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float).square().mean(Kind::Float).sqrt()
}

/// The periodic component of an image (H x W, f64): the image less the smooth image whose
/// Laplacian is the jumps across its borders, so that it wraps around without a jump.
fn periodic(u: &Tensor) -> Tensor {
    let (h, w) = (u.size()[0], u.size()[1]);
    let v = u.zeros_like();
    let rows = u.get(h - 1) - u.get(0);
    let cols = u.select(1, w - 1) - u.select(1, 0);
    let _ = v.get(0).g_add_(&rows);
    let _ = v.get(h - 1).g_sub_(&rows);
    let _ = v.select(1, 0).g_add_(&cols);
    let _ = v.select(1, w - 1).g_sub_(&cols);
    let opts = (Kind::Double, Device::Cpu);
    let cy = (Tensor::arange(h, opts) * (2.0 * PI / h as f64)).cos().unsqueeze(1);
    let cx = (Tensor::arange(w, opts) * (2.0 * PI / w as f64)).cos().unsqueeze(0);
    let denom = (cy + cx) * 2.0 - 4.0;
    let _ = denom.get(0).get(0).fill_(1.0);
    let s = v.fft_fft2(None::<&[i64]>, [0, 1], "ortho") / denom;
    let _ = s.get(0).get(0).fill_(0.0);
    u - s.fft_ifft2(None::<&[i64]>, [0, 1], "ortho").real()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texture(h: i64, w: i64, seed: u64) -> Tensor {
        let mut rng = crate::rng::Stream::new(seed, 0, crate::rng::Purpose::Samples);
        let v: Vec<f64> = (0..3 * h * w).map(|_| rng.next_f32() as f64).collect();
        Tensor::from_slice(&v).reshape([1, 3, h, w])
    }

    /// A ramp jumps by its whole height where it wraps around; its periodic part by a
    /// twenty-fourth of it, and keeps a small share of its variance (the rest is smooth).
    #[test]
    fn the_periodic_part_of_a_ramp_wraps_without_a_jump() {
        let opts = (Kind::Double, Device::Cpu);
        let ramp = Tensor::arange(24, opts).unsqueeze(0).expand([16, 24], false).contiguous() / 23.0;
        let p = periodic(&ramp);
        let wrap = (p.select(1, 23) - p.select(1, 0)).abs().max().double_value(&[]);
        let step = (p.narrow(1, 1, 23) - p.narrow(1, 0, 23)).abs().max().double_value(&[]);
        // The ramp jumps by 1 where it wraps; its periodic part by its own step, 1/24.
        assert!(wrap < 0.05 && step < wrap, "wrap {wrap} step {step}");
        let share = p.var(true).double_value(&[]) / ramp.var(true).double_value(&[]);
        assert!(share < 0.01, "{share}");
    }

    /// A frame of the style's own size gets the style's own periodogram at every bin; a frame
    /// of half its size the average over the style's bins its bins cover.
    #[test]
    fn the_target_is_the_style_density_at_the_frame_bins() {
        let style = texture(32, 40, 1);
        let spectrum = StyleSpectrum::of_style(&style);
        let grey = periodic(&style.mean_dim(1, false, Kind::Double).squeeze_dim(0));
        let own = (&grey - grey.mean(Kind::Double)).fft_rfft2(None::<&[i64]>, [0, 1], "ortho").abs().square();
        let at = spectrum.at_bins(32, 40);
        let diff = (&at - &own).abs().max().double_value(&[]);
        assert!(diff < 1e-9 * own.max().double_value(&[]), "{diff}");
        // Half the size: each bin averages about 3x3 of the style's; the total power (the
        // variance, by Parseval) is kept to within the noise of the estimate.
        let half = spectrum.at_bins(16, 20);
        let mean_power = |p: &Tensor| p.mean(Kind::Double).double_value(&[]);
        let ratio = mean_power(&half) / mean_power(&own);
        assert!((0.8..1.25).contains(&ratio), "{ratio}");
    }

    /// A texture that wraps almost seamlessly has every frequency but the mean held; the same
    /// texture under a layout that runs into its borders (dark left, bright right: its periodic
    /// component loses most of that) leaves its coarsest frequencies free.
    #[test]
    fn coarse_frequencies_are_held_unless_the_layout_runs_into_the_borders() {
        let free_bins = |style: &Tensor| {
            let target = SpectrumTarget::mix(&[(&StyleSpectrum::of_style(style), 1.0)]);
            target.modulus(32, 40, Device::Cpu).lt(0.0).sum(Kind::Int64).int64_value(&[])
        };
        let noise = texture(32, 40, 4);
        assert_eq!(free_bins(&noise), 1, "only the mean");
        let ramp = Tensor::arange(40, (Kind::Double, Device::Cpu)) / 39.0;
        let layout = noise * 0.2 + ramp.view([1, 1, 1, 40]) * 0.8;
        // Under 3 cycles per 32 px: the rfft bins within about 3 rows and 4 columns of the mean
        // (18 of them on a 32x40 frame, give or take the ones on the circle).
        let free = free_bins(&layout);
        assert!((14..=20).contains(&free), "{free} bins free");
    }

    /// The gradient is that of 1/2 sum (|F| - target)^2 (finite differences), and a frame whose
    /// modulus is the target's gets none.
    #[test]
    fn gradient_matches_finite_differences() {
        let style = StyleSpectrum::of_style(&texture(24, 24, 2));
        let target = SpectrumTarget::mix(&[(&style, 1.0)]);
        let grey = texture(12, 16, 3).get(0).get(0);
        let loss = |g: &Tensor| {
            let m = target.modulus(12, 16, Device::Cpu).to_kind(Kind::Double);
            let f = g.fft_rfft2(None::<&[i64]>, [0, 1], "ortho").abs();
            let d = (f - &m).square() * m.ge(0.0).to_kind(Kind::Double);
            // Columns other than zero and Nyquist stand for two bins of the full spectrum.
            let twice = d.narrow(1, 1, 7).sum(Kind::Double);
            (d.sum(Kind::Double) + twice).double_value(&[]) * 0.5
        };
        let grad = target.grey_gradient(&grey);
        for (y, x) in [(0, 0), (3, 5), (11, 15), (6, 8)] {
            let e = 1e-6;
            let bump = |s: f64| {
                let g = grey.copy();
                let _ = g.get(y).get(x).g_add_scalar_(s * e);
                loss(&g)
            };
            let numeric = (bump(1.0) - bump(-1.0)) / (2.0 * e);
            let exact = grad.get(y).get(x).double_value(&[]);
            assert!((numeric - exact).abs() < 1e-6 * (1.0 + exact.abs()), "({y}, {x}): {numeric} against {exact}");
        }
        let matched = grey.copy() - grad;
        let again = target.grey_gradient(&matched).abs().max().double_value(&[]);
        assert!(again < 1e-9, "{again}");
    }
}
