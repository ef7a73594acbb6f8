//! Measurements of a rendered movie, used by the tests and by `gramzoom bench --features`:
//! line artifacts through the centre, zoom consistency between frames, and how close colours
//! and the scale of detail are to the style's.

use crate::segment::Frame;
use tch::{Device, Kind, Tensor};

fn luma(frame: &Frame) -> Tensor {
    let t = frame.to_tensor().squeeze_dim(0).to_kind(Kind::Double) * 255.0;
    (t.get(0) * 0.299 + t.get(1) * 0.587 + t.get(2) * 0.114).to_device(Device::Cpu)
}

/// Mean |vertical gradient| of each row (between row r and r+1), and mean |horizontal
/// gradient| of each column, averaged over `frames`.
pub fn gradient_profiles(frames: &[Frame]) -> (Vec<f64>, Vec<f64>) {
    plane_gradient_profiles(frames.iter().map(luma))
}

/// The same over grey planes [H, W] (double): the frames' luma, or any image one channel at a
/// time (the zoom's own tests measure its blur on noise with it).
pub fn plane_gradient_profiles(planes: impl IntoIterator<Item = Tensor>) -> (Vec<f64>, Vec<f64>) {
    let mut rows: Option<Tensor> = None;
    let mut cols: Option<Tensor> = None;
    let mut n = 0usize;
    for y in planes {
        let (h, w) = (y.size()[0], y.size()[1]);
        let r = (y.narrow(0, 1, h - 1) - y.narrow(0, 0, h - 1)).abs().mean_dim(1, false, Kind::Double);
        let c = (y.narrow(1, 1, w - 1) - y.narrow(1, 0, w - 1)).abs().mean_dim(0, false, Kind::Double);
        rows = Some(rows.map_or(r.shallow_clone(), |a| a + &r));
        cols = Some(cols.map_or(c.shallow_clone(), |a| a + &c));
        n += 1;
    }
    let n = n.max(1) as f64;
    let v = |t: Option<Tensor>| t.map(|t| Vec::<f64>::try_from(t / n).expect("double")).unwrap_or_default();
    (v(rows), v(cols))
}

/// The largest ratio, over the central 20% band, of a row's (column's) mean gradient to the
/// median row's (column's). Straight lines through the zoom's fixed point push it up; the
/// original gramzoom scores above 3.
pub fn centre_line_ratio(frames: &[Frame]) -> (f64, f64) {
    centre_band_ratio(gradient_profiles(frames))
}

/// `centre_line_ratio` of profiles from `gradient_profiles` or `plane_gradient_profiles`.
pub fn centre_band_ratio((rows, cols): (Vec<f64>, Vec<f64>)) -> (f64, f64) {
    let band = |p: &[f64]| {
        let mut sorted = p.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2].max(1e-9);
        let n = p.len() + 1;
        let (lo, hi) = (n * 2 / 5, (n * 3).div_ceil(5).min(p.len()));
        p[lo..hi].iter().fold(0.0f64, |m, v| m.max(v / median))
    };
    (band(&rows), band(&cols))
}

/// Root-mean-square difference, in 8-bit levels, between two frames.
pub fn rms(a: &Tensor, b: &Tensor) -> f64 {
    ((a - b).square().mean(Kind::Double).double_value(&[])).sqrt() * 255.0
}

/// Per-channel mean and standard deviation, in 8-bit levels.
pub fn colour_stats(image: &Tensor) -> ([f64; 3], [f64; 3]) {
    let t = image.to_kind(Kind::Double).squeeze_dim(0).flatten(1, -1) * 255.0;
    let mean = Vec::<f64>::try_from(t.mean_dim(1, false, Kind::Double)).expect("double");
    let std = Vec::<f64>::try_from(t.std_dim(1, false, false)).expect("double");
    ([mean[0], mean[1], mean[2]], [std[0], std[1], std[2]])
}

/// Share of the luma's spectral energy (DC removed) in octave bands of spatial frequency, from
/// 1/2 cycle per pixel down: the "scale of detail" of a texture, independent of contrast.
pub fn detail_bands(image: &Tensor) -> Vec<f64> {
    let t = image.to_kind(Kind::Double).squeeze_dim(0);
    let y = t.get(0) * 0.299 + t.get(1) * 0.587 + t.get(2) * 0.114;
    let y = &y - y.mean(Kind::Double);
    let (h, w) = (y.size()[0], y.size()[1]);
    let power = y.fft_rfft2(None::<&[i64]>, [0, 1], "ortho").abs().square();
    let fy = Tensor::fft_fftfreq(h, 1.0, (Kind::Double, Device::Cpu)).abs().unsqueeze(1);
    let fx = Tensor::fft_rfftfreq(w, 1.0, (Kind::Double, Device::Cpu)).unsqueeze(0);
    let radius = (fy.square() + fx.square()).sqrt();
    let total = power.sum(Kind::Double).double_value(&[]).max(1e-12);
    (0..5)
        .map(|k| {
            let hi = 0.5f64.powi(k) * if k == 0 { 1.5 } else { 1.0 };
            let lo = 0.5f64.powi(k + 1);
            let mask = radius.gt(lo).logical_and(&radius.le(hi));
            (&power * mask).sum(Kind::Double).double_value(&[]) / total
        })
        .collect()
}

/// Mean luma gradient (|d Y| over both axes, 8-bit levels): how much fine detail an image
/// holds. A blurred texture scores low, sharp strokes and grain high.
pub fn luma_gradient(image: &Tensor) -> f64 {
    let t = image.to_kind(Kind::Double).squeeze_dim(0) * 255.0;
    let y = t.get(0) * 0.299 + t.get(1) * 0.587 + t.get(2) * 0.114;
    let (h, w) = (y.size()[0], y.size()[1]);
    (y.narrow(0, 1, h - 1) - y.narrow(0, 0, h - 1)).abs().mean(Kind::Double).double_value(&[])
        + (y.narrow(1, 1, w - 1) - y.narrow(1, 0, w - 1)).abs().mean(Kind::Double).double_value(&[])
}

/// Mean chroma gradient (|d Cb| + |d Cr| over both axes, 8-bit levels): colour speckle that
/// luma measures miss. Painted and photographed textures change hue mostly at edges.
pub fn chroma_gradient(image: &Tensor) -> f64 {
    let t = image.to_kind(Kind::Double).squeeze_dim(0) * 255.0;
    let (r, g, b) = (t.get(0), t.get(1), t.get(2));
    let cb = &r * -0.1687 + &g * -0.3313 + &b * 0.5;
    let cr = &r * 0.5 + &g * -0.4187 + &b * -0.0813;
    let grad = |c: &Tensor| {
        let (h, w) = (c.size()[0], c.size()[1]);
        (c.narrow(0, 1, h - 1) - c.narrow(0, 0, h - 1)).abs().mean(Kind::Double).double_value(&[])
            + (c.narrow(1, 1, w - 1) - c.narrow(1, 0, w - 1)).abs().mean(Kind::Double).double_value(&[])
    };
    grad(&cb) + grad(&cr)
}

/// Mean CIELAB chroma (sqrt(a*^2 + b*^2), D65 white): how colourful an image is. A grey image
/// scores 0; the gallery's paintings 15 to 40.
pub fn mean_chroma(image: &Tensor) -> f64 {
    let t = image.to_kind(Kind::Double).squeeze_dim(0).to_device(Device::Cpu);
    // sRGB to linear light, then to XYZ relative to the D65 white.
    let lin = (&t / 12.92).where_self(&t.le(0.04045), &((&t + 0.055) / 1.055).pow_tensor_scalar(2.4));
    let (r, g, b) = (lin.get(0), lin.get(1), lin.get(2));
    let x = (&r * 0.412_456_4 + &g * 0.357_576_1 + &b * 0.180_437_5) / 0.950_47;
    let y = &r * 0.212_672_9 + &g * 0.715_152_2 + &b * 0.072_175;
    let z = (&r * 0.019_333_9 + &g * 0.119_192 + &b * 0.950_304_1) / 1.088_83;
    let f = |v: &Tensor| {
        let eps = 216.0 / 24389.0;
        (v * (24389.0 / 27.0) + 16.0).divide_scalar(116.0).where_self(&v.le(eps), &v.pow_tensor_scalar(1.0 / 3.0))
    };
    let (fx, fy, fz) = (f(&x), f(&y), f(&z));
    let a = (&fx - &fy) * 500.0;
    let b = (&fy - &fz) * 200.0;
    (a.square() + b.square()).sqrt().mean(Kind::Double).double_value(&[])
}

/// Mean |log2| ratio of the band energies of two images: 0 when the scale of detail matches,
/// 1 when bands are off by a factor 2 on average.
pub fn detail_distance(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (detail_bands(a), detail_bands(b));
    x.iter().zip(&y).map(|(p, q)| ((p + 1e-6) / (q + 1e-6)).log2().abs()).sum::<f64>() / x.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: impl Fn(u32, u32) -> u8) -> Frame {
        let (w, h) = (64u32, 64u32);
        let rgb = (0..h).flat_map(|y| (0..w).flat_map(move |x| [x, y, 0])).collect::<Vec<u32>>();
        let rgb = rgb.chunks(3).flat_map(|p| [f(p[0], p[1]); 3]).collect();
        Frame { index: 0, width: w, height: h, rgb }
    }

    /// Grey has no chroma; pure sRGB red has CIELAB chroma 104.6.
    #[test]
    fn mean_chroma_of_grey_and_red() {
        let grey = Tensor::full([1, 3, 4, 4], 0.5, (Kind::Double, Device::Cpu));
        assert!(mean_chroma(&grey) < 0.01, "{}", mean_chroma(&grey));
        let red = Tensor::from_slice(&[1.0f64, 0.0, 0.0]).reshape([1, 3, 1, 1]).expand([1, 3, 4, 4], false);
        assert!((mean_chroma(&red) - 104.55).abs() < 0.2, "{}", mean_chroma(&red));
    }

    /// The line metric passes plain texture and catches one line through the centre.
    #[test]
    fn centre_line_ratio_catches_a_central_line() {
        let noise = |x: u32, y: u32| ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) % 97 + 80) as u8;
        let clean = frame(noise);
        let lined = frame(|x, y| if y == 32 { 250 } else { noise(x, y) });
        assert!(centre_line_ratio(std::slice::from_ref(&clean)).0 < 1.3);
        assert!(centre_line_ratio(std::slice::from_ref(&lined)).0 > 1.3);
        assert!(centre_line_ratio(std::slice::from_ref(&lined)).1 < 1.3, "a row line leaves columns alone");
    }
}
