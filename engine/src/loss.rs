//! The style loss (style only, no content term): how far an image's features at the chosen
//! layers are from the style's, by Gram matrices (`gram`) or by sliced Wasserstein distance
//! (`swd`), as `--loss` says. The style's side is computed once per job and scale.

use crate::gram::gram;
use crate::params::LossKind;
use crate::rng::{Purpose, Stream};
use crate::swd;
use crate::vgg::Vgg;
use tch::{Kind, Tensor};

/// One layer of the loss: its weight, and what the image's features there are compared with:
/// the style's Gram matrix (a blend of styles' mixed linearly, as neural-style mixes them), or
/// samples of its feature vectors, (C, M), with their weight in a blend (whose sorted
/// projections are mixed quantile by quantile: the 1-D Wasserstein barycentre, so a half-way
/// frame is drawn towards features half-way between the styles', not towards a mixture of both).
struct Layer {
    weight: f64,
    target: Tensor,
    /// More styles' samples with their weights, for a blended sliced distance; `target` is the
    /// first's, weighted `first_weight`.
    more: Vec<(Tensor, f64)>,
    first_weight: f64,
}

/// The sliced distance's random directions for one draw, a (C, K) matrix per layer of the loss.
/// Drawn once and used for every iteration that shares the draw.
pub struct Directions(pub(crate) Vec<Tensor>);

pub struct StyleTarget {
    kind: LossKind,
    layers: Vec<Layer>,
    /// The feature layer of each of `layers`, in order.
    indexes: Vec<usize>,
}

impl StyleTarget {
    /// `layers` are (feature layer, weight) pairs. `seed` picks the style's feature sample for
    /// the sliced distance (the render's seed, so a render is a function of its parameters alone).
    pub fn new(net: &Vgg, style: &Tensor, layers: &[(usize, f64)], kind: LossKind, seed: u64) -> Self {
        let indexes: Vec<usize> = layers.iter().map(|l| l.0).collect();
        let layers = tch::no_grad(|| {
            let feats = net.features(style, &indexes);
            assert_eq!(feats.len(), layers.len(), "one feature map per layer asked for");
            feats
                .iter()
                .zip(layers)
                .map(|(f, &(index, weight))| {
                    let target = match kind {
                        LossKind::Gram => gram(f),
                        LossKind::Swd => swd::samples(f, &mut Stream::new(seed, index as u64, Purpose::Samples)),
                    };
                    Layer { weight, target, more: Vec::new(), first_weight: 1.0 }
                })
                .collect()
        });
        Self { kind, layers, indexes }
    }

    /// `new`, with the style's features computed in `layout`'s blocks (`block`), so that a
    /// style scaled to a frame too large for memory costs a block's memory. The same targets up
    /// to float rounding (sums in another order); the sliced distance keeps the same positions.
    pub fn new_in_blocks(
        net: &Vgg,
        style: &Tensor,
        layers: &[(usize, f64)],
        kind: LossKind,
        seed: u64,
        layout: &crate::block::Layout,
    ) -> Self {
        let indexes: Vec<usize> = layers.iter().map(|l| l.0).collect();
        let (_, _, h, w) = style.size4().expect("a style is NCHW");
        let wide = swd::wide_kind(style.kind());
        let sizes: Vec<(i64, i64)> = indexes.iter().map(|&i| (h / net.scale(i), w / net.scale(i))).collect();
        let targets: Vec<Tensor> = match kind {
            LossKind::Gram => {
                let mut sums: Vec<Option<Tensor>> = (0..layers.len()).map(|_| None).collect();
                crate::block::for_each_owned(net, style, &indexes, layout, wide, |l, f, _| {
                    let m = f - crate::gram::GRAM_SHIFT;
                    let product = m.matmul(&m.transpose(0, 1));
                    sums[l] = Some(match sums[l].take() {
                        Some(s) => s + product,
                        None => product,
                    });
                });
                sums.into_iter()
                    .zip(&sizes)
                    .map(|(s, (lh, lw))| (s.expect("every layer has positions") / (lh * lw) as f64).unsqueeze(0))
                    .collect()
            }
            LossKind::Swd => {
                // Which column of the samples each kept position fills, per layer.
                let picks: Vec<Vec<i64>> = indexes
                    .iter()
                    .zip(&sizes)
                    .map(|(&i, (lh, lw))| {
                        let mut rng = Stream::new(seed, i as u64, Purpose::Samples);
                        swd::picks(lh * lw, &mut rng).unwrap_or_else(|| (0..lh * lw).collect())
                    })
                    .collect();
                let mut out: Vec<Option<Tensor>> = (0..layers.len()).map(|_| None).collect();
                crate::block::for_each_owned(net, style, &indexes, layout, wide, |l, f, r| {
                    let samples = out[l]
                        .get_or_insert_with(|| f.new_zeros([f.size()[0], picks[l].len() as i64], (wide, f.device())));
                    let width = sizes[l].1;
                    let (slots, local): (Vec<i64>, Vec<i64>) = picks[l]
                        .iter()
                        .enumerate()
                        .filter_map(|(slot, &p)| {
                            let (y, x) = (p / width - r.row, p % width - r.col);
                            ((0..r.rows).contains(&y) && (0..r.cols).contains(&x))
                                .then_some((slot as i64, y * r.cols + x))
                        })
                        .unzip();
                    if !slots.is_empty() {
                        let at = |v: &[i64]| Tensor::from_slice(v).to_device(f.device());
                        let _ = samples.index_copy_(1, &at(&slots), &f.index_select(1, &at(&local)));
                    }
                });
                out.into_iter().map(|t| t.expect("every layer has positions")).collect()
            }
        };
        let layers = targets
            .into_iter()
            .zip(layers)
            .map(|(target, &(_, weight))| Layer { weight, target, more: Vec::new(), first_weight: 1.0 })
            .collect();
        Self { kind, layers, indexes }
    }

    /// The targets of several styles (built alike, from the same layers and loss) mixed by
    /// `weights` (summing to 1). A style weighing 1 is that style's target exactly, so a blend
    /// that holds one style renders the frames that style alone would.
    pub fn mix(parts: &[(&StyleTarget, f64)]) -> StyleTarget {
        let parts: Vec<&(&StyleTarget, f64)> = parts.iter().filter(|(_, w)| *w > 0.0).collect();
        let (first, w0) = *parts[0];
        let layers = (0..first.layers.len())
            .map(|l| {
                let base = &first.layers[l];
                if parts.len() == 1 {
                    return Layer {
                        weight: base.weight,
                        target: base.target.shallow_clone(),
                        more: Vec::new(),
                        first_weight: 1.0,
                    };
                }
                match first.kind {
                    LossKind::Gram => {
                        let target = tch::no_grad(|| {
                            parts.iter().skip(1).fold(&base.target * w0, |sum, (t, w)| sum + &t.layers[l].target * *w)
                        });
                        Layer { weight: base.weight, target, more: Vec::new(), first_weight: 1.0 }
                    }
                    LossKind::Swd => Layer {
                        weight: base.weight,
                        target: base.target.shallow_clone(),
                        more: parts.iter().skip(1).map(|(t, w)| (t.layers[l].target.shallow_clone(), *w)).collect(),
                        first_weight: w0,
                    },
                }
            })
            .collect();
        StyleTarget { kind: first.kind, layers, indexes: first.indexes.clone() }
    }

    /// The directions of the next draw from `draws`, or `None` for a Gram loss (which draws
    /// nothing). The caller keys the stream by frame, so a frame's draws do not depend on its
    /// segment.
    pub fn directions(&self, draws: &mut Stream) -> Option<Directions> {
        match self.kind {
            LossKind::Gram => None,
            LossKind::Swd => {
                let channels: Vec<i64> = self.layers.iter().map(|l| l.target.size()[0]).collect();
                let device = self.layers.first().map_or(tch::Device::Cpu, |l| l.target.device());
                let dirs = swd::directions(&channels, draws, device);
                Some(Directions(dirs.iter().zip(&self.layers).map(|(d, l)| d.to_kind(l.target.kind())).collect()))
            }
        }
    }

    /// The feature layers the loss reads, in order.
    pub fn indexes(&self) -> &[usize] {
        &self.indexes
    }

    pub fn kind(&self) -> LossKind {
        self.kind
    }

    /// Each layer's weight and Gram target (1 x C x C), for a Gram loss.
    pub(crate) fn gram_layers(&self) -> impl Iterator<Item = (f64, &Tensor)> {
        self.layers.iter().map(|l| (l.weight, &l.target))
    }

    pub(crate) fn layer_weight(&self, layer: usize) -> f64 {
        self.layers[layer].weight
    }

    /// The style's (or blend's) sorted projections of layer `layer` along `t` (K x C),
    /// resampled to `n` quantiles: what a sliced distance compares an image's sorted projections
    /// with.
    pub(crate) fn quantiles(&self, layer: usize, t: &Tensor, n: i64) -> Tensor {
        let l = &self.layers[layer];
        tch::no_grad(|| {
            l.more.iter().fold(swd::quantiles(&l.target, t, n) * l.first_weight, |sum, (s, w)| {
                sum + swd::quantiles(s, t, n) * *w
            })
        })
    }

    /// The style loss of `image` (1x3xHxW in [0, 1]) as a scalar that keeps the graph, with
    /// `dirs` from `directions` (required by a sliced distance).
    pub fn loss(&self, net: &Vgg, image: &Tensor, dirs: Option<&Directions>) -> Tensor {
        let feats = net.features(image, &self.indexes);
        // fp32 at least (bf16 features are widened); fp64 stays fp64 for the gradient checks.
        let kind = if image.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let mut total = Tensor::zeros([], (kind, image.device()));
        match (self.kind, dirs) {
            (LossKind::Gram, _) => {
                for (f, layer) in feats.iter().zip(&self.layers) {
                    let c = f.size()[1] as f64;
                    total += (gram(f) - &layer.target).square().sum(kind) * (layer.weight / (c * c));
                }
            }
            (LossKind::Swd, Some(Directions(dirs))) => {
                assert_eq!(dirs.len(), self.layers.len(), "one direction matrix per layer");
                for ((f, layer), d) in feats.iter().zip(&self.layers).zip(dirs) {
                    let distance = if layer.more.is_empty() {
                        swd::distance(f, &layer.target, d)
                    } else {
                        let mut samples = vec![(&layer.target, layer.first_weight)];
                        samples.extend(layer.more.iter().map(|(t, w)| (t, *w)));
                        swd::distance_to_blend(f, &samples, d)
                    };
                    total += distance * layer.weight;
                }
            }
            (LossKind::Swd, None) => panic!("a sliced distance needs its directions"),
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn draws() -> Stream {
        Stream::new(0, 0, Purpose::Directions)
    }

    /// The analytic gradient of the style loss, through the Gram matrices and the network, must
    /// match central finite differences.
    #[test]
    fn loss_gradient_matches_finite_differences() {
        let net = Vgg::random(crate::vgg::Network::Vgg16, Device::Cpu).to_kind(Kind::Double);
        let style = Tensor::rand([1, 3, 24, 24], (Kind::Double, Device::Cpu));
        let target = StyleTarget::new(&net, &style, &[(0, 1.0), (2, 0.5), (4, 2.0)], LossKind::Gram, 0);
        let x = Tensor::rand([1, 3, 16, 16], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let loss = target.loss(&net, &x, target.directions(&mut draws()).as_ref());
        loss.backward();
        let grad = x.grad();
        let eps = 1e-6;
        for &(c, i, j) in &[(0i64, 3i64, 5i64), (1, 8, 8), (2, 15, 0), (0, 0, 15)] {
            let bump = |d: f64| {
                tch::no_grad(|| {
                    let y = x.detach().copy();
                    let _ = y.get(0).get(c).get(i).get(j).g_add_scalar_(d);
                    target.loss(&net, &y, target.directions(&mut draws()).as_ref()).double_value(&[])
                })
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
            let an = grad.double_value(&[0, c, i, j]);
            let scale = an.abs().max(fd.abs()).max(1e-6);
            assert!((fd - an).abs() / scale < 1e-4, "({c},{i},{j}): finite difference {fd} vs analytic {an}");
        }
    }

    /// A style's targets computed in blocks are its whole targets: the same Gram matrices up to
    /// rounding, the same sampled feature vectors for the sliced distance (with a layer large
    /// enough to be sampled and layers kept whole), on a style whose size is no multiple of the
    /// pooling.
    #[test]
    fn style_targets_in_blocks_are_the_whole_styles() {
        let net = Vgg::random(crate::vgg::Network::Vgg16, Device::Cpu);
        let style = Tensor::rand([1, 3, 150, 133], (Kind::Float, Device::Cpu));
        let layers = [(0, 1.0), (2, 0.5), (4, 1.0), (7, 2.0)];
        let reach = net.reach(&[0, 2, 4, 7]).unwrap();
        for tile in [(32, 32), (48, 96)] {
            let layout = crate::block::Layout::new(tile.0, tile.1, reach).unwrap();
            for kind in [LossKind::Gram, LossKind::Swd] {
                let whole = StyleTarget::new(&net, &style, &layers, kind, 9);
                let blocks = StyleTarget::new_in_blocks(&net, &style, &layers, kind, 9, &layout);
                for (a, b) in whole.layers.iter().zip(&blocks.layers) {
                    assert_eq!(a.target.size(), b.target.size(), "{kind:?}");
                    let err =
                        (&a.target - &b.target).abs().max().double_value(&[]) / a.target.abs().max().double_value(&[]);
                    assert!(err < 1e-5, "{kind:?} {tile:?}: targets differ by {err}");
                }
            }
        }
    }

    /// A style weighing 1 in a blend is its own target bit for bit; a blend of a style with
    /// itself is that style (both losses); a half-way Gram target is the mean of the two.
    #[test]
    fn blended_targets_mix_their_styles() {
        let net = Vgg::random(crate::vgg::Network::Vgg16, Device::Cpu).to_kind(Kind::Double);
        let a = Tensor::rand([1, 3, 24, 24], (Kind::Double, Device::Cpu));
        let b = Tensor::rand([1, 3, 32, 32], (Kind::Double, Device::Cpu)) * 0.5;
        let x = Tensor::rand([1, 3, 16, 16], (Kind::Double, Device::Cpu));
        let layers = [(0, 1.0), (2, 0.5), (4, 2.0)];
        for kind in [LossKind::Gram, LossKind::Swd] {
            let (ta, tb) = (StyleTarget::new(&net, &a, &layers, kind, 0), StyleTarget::new(&net, &b, &layers, kind, 0));
            let dirs = ta.directions(&mut draws());
            let loss = |t: &StyleTarget| t.loss(&net, &x, dirs.as_ref()).double_value(&[]);
            assert_eq!(loss(&StyleTarget::mix(&[(&ta, 0.0), (&tb, 1.0)])).to_bits(), loss(&tb).to_bits(), "{kind:?}");
            let itself = loss(&StyleTarget::mix(&[(&ta, 0.3), (&ta, 0.7)]));
            assert!((itself - loss(&ta)).abs() < 1e-9 * loss(&ta), "{kind:?}: {itself} vs {}", loss(&ta));
            let half = StyleTarget::mix(&[(&ta, 0.5), (&tb, 0.5)]);
            let (la, lb, lh) = (loss(&ta), loss(&tb), loss(&half));
            assert!(lh < la.max(lb), "{kind:?}: half-way {lh}, a {la}, b {lb}");
            if kind == LossKind::Gram {
                for (l, (ga, gb)) in half.layers.iter().zip(ta.layers.iter().zip(&tb.layers)) {
                    let mean = (&ga.target + &gb.target) / 2.0;
                    assert!((&l.target - mean).abs().max().double_value(&[]) < 1e-12);
                }
            }
        }
    }

    /// bf16 and fp32 networks agree on the loss and its gradient within bf16's precision (about
    /// three significant digits per operation), for both losses. The sliced distance's gradient
    /// agrees less closely: bf16 rounding swaps the order of near-equal projections, and with it
    /// which style quantile a position is pulled towards (measured: cosine 0.979).
    #[test]
    fn bf16_and_fp32_agree_on_loss_and_gradient() {
        let net = Vgg::random(crate::vgg::Network::Vgg16, Device::Cpu);
        let half = net.to_kind(Kind::BFloat16);
        let rand = |side: i64, seed: u64| {
            let mut rng = Stream::new(seed, 0, Purpose::InitNoise);
            let v: Vec<f32> = (0..3 * side * side).map(|_| rng.next_f32()).collect();
            Tensor::from_slice(&v).reshape([1, 3, side, side])
        };
        let (style, x) = (rand(40, 1), rand(32, 2));
        for (loss, min_cosine) in [(LossKind::Gram, 0.98), (LossKind::Swd, 0.95)] {
            let run = |net: &Vgg| {
                let target = StyleTarget::new(net, &style, &[(0, 1.0), (2, 1.0), (4, 1.0), (7, 1.0)], loss, 0);
                let x = x.detach().set_requires_grad(true);
                let l = target.loss(net, &x, target.directions(&mut draws()).as_ref());
                l.backward();
                (l.double_value(&[]), x.grad())
            };
            let ((l32, g32), (l16, g16)) = (run(&net), run(&half));
            assert!((l16 - l32).abs() < 0.03 * l32.abs(), "{loss:?}: loss {l16} in bf16, {l32} in fp32");
            let cos = (&g32 * &g16).sum(Kind::Double).double_value(&[])
                / (g32.norm().double_value(&[]) * g16.norm().double_value(&[]));
            let ratio = g16.norm().double_value(&[]) / g32.norm().double_value(&[]);
            eprintln!("{loss:?}: loss {l16} in bf16, {l32} in fp32; gradient cosine {cos:.4}, norm ratio {ratio:.4}");
            assert!(
                cos > min_cosine && (ratio - 1.0).abs() < 0.05,
                "{loss:?}: gradient cosine {cos}, norm ratio {ratio}"
            );
        }
    }
}
