//! Gram matrices and the style loss (style only, no content term).
//!
//! G = (F - s)(F - s)^T / (H W) per layer, with s = `GRAM_SHIFT` as in the original gramzoom:
//! the shift folds the channel means into the Gram matrix, so first-order statistics match too.
//! Normalising by H W (the original divided the squared error by (H W C)^2 for equal sizes) makes
//! the style's Gram matrices independent of its size, which is what decouples the style image's
//! size from the output's. Loss per layer: sum((G - Gs)^2) / C^2, weighted.

use tch::{Kind, Tensor};

pub const GRAM_SHIFT: f64 = 1.0;

/// The Gram matrix of `features`, accumulated in fp32 at least: bf16 features are widened first,
/// since a sum over a million positions in bf16 keeps three significant digits.
pub fn gram(features: &Tensor) -> Tensor {
    let (n, c, h, w) = features.size4().expect("features are NCHW");
    let features = match features.kind() {
        Kind::BFloat16 | Kind::Half => features.to_kind(Kind::Float),
        _ => features.shallow_clone(),
    };
    let f = features - GRAM_SHIFT;
    if f.stride()[1] == 1 && c > 1 {
        // Channels-last: (N, HW, C) is a free view of it, and G = F^T F.
        let f = f.permute([0, 2, 3, 1]).reshape([n, h * w, c]);
        return f.transpose(1, 2).matmul(&f) / (h * w) as f64;
    }
    let f = f.reshape([n, c, h * w]);
    f.matmul(&f.transpose(1, 2)) / (h * w) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A channels-last feature map (bf16 runs) gives the same Gram matrix by its own path.
    #[test]
    fn channels_last_features_give_the_same_gram() {
        let f = Tensor::rand([1, 6, 5, 7], (Kind::Double, Device::Cpu));
        let nhwc = crate::vgg::to_channels_last(&f);
        assert_eq!(nhwc.stride()[1], 1);
        assert!((gram(&f) - gram(&nhwc)).abs().max().double_value(&[]) < 1e-12);
    }

    #[test]
    fn gram_gradient_matches_finite_differences() {
        let f = Tensor::rand([1, 4, 3, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let target = Tensor::rand([1, 4, 4], (Kind::Double, Device::Cpu));
        let loss_of = |f: &Tensor| (gram(f) - &target).square().sum(Kind::Double);
        loss_of(&f).backward();
        let grad = f.grad();
        let eps = 1e-6;
        for idx in [[0i64, 0, 0, 0], [0, 3, 2, 4], [0, 1, 1, 2]] {
            let bump = |d: f64| {
                tch::no_grad(|| {
                    let y = f.detach().copy();
                    let _ = y.get(0).get(idx[1]).get(idx[2]).get(idx[3]).g_add_scalar_(d);
                    loss_of(&y).double_value(&[])
                })
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
            let an = grad.double_value(&idx);
            assert!((fd - an).abs() < 1e-6 * an.abs().max(1.0), "{idx:?}: {fd} vs {an}");
        }
    }
}
