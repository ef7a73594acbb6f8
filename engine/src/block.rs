//! The style loss of a frame and its gradient computed block by block, exactly, so that the
//! memory of an iteration grows with the block and not with the frame (after Galerne, Raad,
//! Lezama and Morel, "Scaling Painting Style Transfer", EGSR 2024).
//!
//! Both losses are functions of sums over feature positions: a Gram matrix sums f f^T, the
//! sliced distance sorts the projections of every position. So the frame is cut into tiles;
//! each tile is computed with a margin of neighbouring pixels around it (clipped at the frame's
//! edges), wide enough that every feature position the tile *owns* sees exactly the pixels it
//! sees in the whole frame:
//!
//! - **pass 1** runs each block forward without a graph and keeps only what the whole frame's
//!   loss needs from the owned positions: the Gram sums (C x C per layer), or the projections
//!   (K values per position per layer) that are then sorted together;
//! - the global loss gives the derivative at every owned position: 2/N (dL/dG) f for a Gram
//!   matrix, the gap to its quantile for a sorted projection;
//! - **pass 2** runs each block again with a graph and back-propagates those derivatives from
//!   its owned positions only; each block's whole image gradient (tile and margin) is added at
//!   its place. Every position is owned by exactly one block, so each term of the whole frame's
//!   gradient is added exactly once.
//!
//! Nothing is approximated: the loss and gradient are the whole frame's up to float rounding
//! (sums in another order), and ties between equal projections (the whole-frame sort breaks
//! them arbitrarily too). The cost is the margins and a second forward pass.
//!
//! Margins come from the network's receptive field (`Vgg::reach`): a feature at a layer
//! `s` = 2^pools times coarser than the image reads `L` pixels either side of its `s` pixels
//! (for VGG16's conv5_3, 90). Tiles and margins are multiples of `s` so that every block's
//! pooling grid is the frame's.

use crate::gram::GRAM_SHIFT;
use crate::loss::{Directions, StyleTarget};
use crate::params::LossKind;
use crate::spread::{Spread, Work};
use crate::vgg::Vgg;
use tch::{Kind, Tensor};

mod layout;

use layout::Span;
pub use layout::{BlockChoice, Layout, Reach, MAX_TILE_SIDE};

/// A block's owned features of one layer as a (C, n) matrix in `kind`.
fn owned(features: &Tensor, (x, y): (Span, Span), scale: i64, kind: Kind) -> Tensor {
    let c = features.size()[1];
    let ((x0, nx), (y0, ny)) = (x.owned_at(scale), y.owned_at(scale));
    features.narrow(2, y0, ny).narrow(3, x0, nx).to_kind(kind).reshape([c, nx * ny])
}

fn crop(image: &Tensor, (x, y): (Span, Span)) -> Tensor {
    image.narrow(2, y.run.0, y.run.1 - y.run.0).narrow(3, x.run.0, x.run.1 - x.run.0)
}

/// Where a block's owned features of one layer sit in that layer's whole feature map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub row: i64,
    pub rows: i64,
    pub col: i64,
    pub cols: i64,
}

/// Runs `net` over `image` block by block without a graph, handing each block's owned features
/// of each layer of `indexes`, as (C, n) in `kind`, row-major, to `each` with their region.
pub(crate) fn for_each_owned(
    net: &Vgg,
    image: &Tensor,
    indexes: &[usize],
    layout: &Layout,
    kind: Kind,
    mut each: impl FnMut(usize, Tensor, Region),
) {
    let (_, _, h, w) = image.size4().expect("images are NCHW");
    tch::no_grad(|| {
        for block in layout.blocks(w, h) {
            let feats = net.features(&crop(image, block), indexes);
            for (l, f) in feats.iter().enumerate() {
                let s = net.scale(indexes[l]);
                let ((_, cols), (_, rows)) = (block.0.owned_at(s), block.1.owned_at(s));
                let region = Region { row: block.1.own.0 / s, rows, col: block.0.own.0 / s, cols };
                each(l, owned(f, block, s, kind), region);
            }
        }
    })
}

/// What pass 1 leaves for pass 2, per layer.
enum Derivative {
    /// The derivative at a position is this (C x C) matrix times its f - shift: 2/N dL/dG.
    Gram(Tensor),
    /// The derivative along each direction at every owned position, (K, N) in block order, and
    /// the directions (C, K).
    Sliced { by_position: Tensor, directions: Tensor },
}

/// The style loss of `image` (1x3xHxW, the roll already applied) and its gradient, computed
/// block by block, spread over `spread`'s devices when given. The loss is detached; the
/// gradient has the image's shape and kind. `step(done, total)` is called after each block of
/// each pass.
pub(crate) fn loss_and_grad(
    target: &StyleTarget,
    net: &Vgg,
    image: &Tensor,
    dirs: Option<&Directions>,
    layout: &Layout,
    spread: Option<&Spread>,
    step: &mut dyn FnMut(u32, u32),
) -> (Tensor, Tensor) {
    let (_, _, h, w) = image.size4().expect("images are NCHW");
    let image = image.detach();
    let blocks = layout.blocks(w, h);
    let indexes = target.indexes().to_vec();
    let scales: Vec<i64> = indexes.iter().map(|&i| net.scale(i)).collect();
    let kind = if image.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let total = 2 * blocks.len() as u32;
    let home = image.device();
    let (loss, derivatives, counts) = pass_one(target, net, &image, dirs, &blocks, &scales, kind, spread, step);

    let grad = image.zeros_like();
    let mut offsets = vec![0i64; indexes.len()];
    let make = |b: usize| -> Work<Tensor> {
        let block = blocks[b];
        let crop = crop(&image, block);
        // This block's derivatives: the Gram matrices, or its own columns of the projections'.
        let derivatives: Vec<(Tensor, Option<Tensor>)> = derivatives
            .iter()
            .enumerate()
            .map(|(l, d)| match d {
                Derivative::Gram(m) => (m.shallow_clone(), None),
                Derivative::Sliced { by_position, directions } => {
                    let mine = by_position.narrow(1, offsets[l], counts[b][l]);
                    offsets[l] += counts[b][l];
                    (directions.shallow_clone(), Some(mine))
                }
            })
            .collect();
        let (indexes, scales) = (indexes.clone(), scales.clone());
        Box::new(move |net: &Vgg| {
            let device = net.device();
            let x = crop.to_device(device).detach().set_requires_grad(true);
            let feats = net.features(&x, &indexes);
            let mut surrogate = Tensor::zeros([], (kind, device));
            for (l, f) in feats.iter().enumerate() {
                let mine = owned(f, block, scales[l], kind);
                let d = tch::no_grad(|| match &derivatives[l] {
                    (m, None) => m.to_device(device).matmul(&(mine.detach() - GRAM_SHIFT)),
                    (directions, Some(along)) => directions.to_device(device).matmul(&along.to_device(device)),
                });
                surrogate += (mine * d).sum(kind);
            }
            surrogate.backward();
            x.grad().to_device(home)
        })
    };
    crate::spread::run(spread, net, blocks.len(), make, |b, g| {
        let (bx, by) = blocks[b];
        let _ = grad
            .narrow(2, by.run.0, by.run.1 - by.run.0)
            .narrow(3, bx.run.0, bx.run.1 - bx.run.0)
            .g_add_(&g.to_kind(grad.kind()));
        step(blocks.len() as u32 + b as u32 + 1, total);
    });
    (loss, grad)
}

/// Pass 1: the global loss and its derivatives, and each block's count of owned positions per
/// layer.
#[allow(clippy::too_many_arguments)]
fn pass_one(
    target: &StyleTarget,
    net: &Vgg,
    image: &Tensor,
    dirs: Option<&Directions>,
    blocks: &[(Span, Span)],
    scales: &[i64],
    kind: Kind,
    spread: Option<&Spread>,
    step: &mut dyn FnMut(u32, u32),
) -> (Tensor, Vec<Derivative>, Vec<Vec<i64>>) {
    let indexes = target.indexes().to_vec();
    let layers = indexes.len();
    let total = 2 * blocks.len() as u32;
    let home = image.device();
    let gram = target.kind() == LossKind::Gram;
    let directions: Vec<Tensor> = match (gram, dirs) {
        (true, _) => Vec::new(),
        (false, Some(Directions(d))) => d.iter().map(Tensor::shallow_clone).collect(),
        (false, None) => panic!("a sliced distance needs its directions"),
    };
    // Per block and layer: the Gram sum of its positions, or its projections (K, n).
    let make = |b: usize| -> Work<Vec<(Tensor, i64)>> {
        let block = blocks[b];
        let crop = crop(image, block);
        let (indexes, scales) = (indexes.clone(), scales.to_vec());
        let directions: Vec<Tensor> = directions.iter().map(Tensor::shallow_clone).collect();
        Box::new(move |net: &Vgg| {
            tch::no_grad(|| {
                let device = net.device();
                let feats = net.features(&crop.to_device(device), &indexes);
                feats
                    .iter()
                    .enumerate()
                    .map(|(l, f)| {
                        let m = owned(f, block, scales[l], kind);
                        let n = m.size()[1];
                        let part = if directions.is_empty() {
                            let m = m - GRAM_SHIFT;
                            m.matmul(&m.transpose(0, 1))
                        } else {
                            directions[l].to_device(device).transpose(0, 1).matmul(&m)
                        };
                        (part.to_device(home), n)
                    })
                    .collect()
            })
        })
    };
    let mut parts: Vec<Vec<Tensor>> = (0..layers).map(|_| Vec::new()).collect();
    let mut sums: Vec<Option<Tensor>> = (0..layers).map(|_| None).collect();
    let mut counts = Vec::with_capacity(blocks.len());
    crate::spread::run(spread, net, blocks.len(), make, |b, out| {
        counts.push(out.iter().map(|(_, n)| *n).collect::<Vec<i64>>());
        for (l, (part, _)) in out.into_iter().enumerate() {
            if gram {
                sums[l] = Some(match sums[l].take() {
                    Some(s) => s + part,
                    None => part,
                });
            } else {
                parts[l].push(part);
            }
        }
        step(b as u32 + 1, total);
    });
    tch::no_grad(|| {
        let mut loss = Tensor::zeros([], (kind, home));
        let derivatives = if gram {
            sums.into_iter()
                .enumerate()
                .zip(target.gram_layers())
                .map(|((l, sum), (weight, style))| {
                    let n: i64 = counts.iter().map(|c| c[l]).sum();
                    let gram = sum.expect("every layer has positions") / n as f64;
                    let c = gram.size()[0] as f64;
                    let gap = gram - style.reshape([c as i64, c as i64]);
                    loss += gap.square().sum(kind) * (weight / (c * c));
                    Derivative::Gram(gap * (4.0 * weight / (c * c * n as f64)))
                })
                .collect()
        } else {
            parts
                .into_iter()
                .enumerate()
                .map(|(l, parts)| {
                    let all = Tensor::cat(&parts, 1);
                    let (k, n) = (all.size()[0], all.size()[1]);
                    let (sorted, order) = all.sort(1, false);
                    let gap = sorted - target.quantiles(l, &directions[l].transpose(0, 1), n);
                    let weight = target.layer_weight(l);
                    loss += gap.square().mean(kind) * weight;
                    let by_position = all.zeros_like().scatter(1, &order, &(gap * (2.0 * weight / (k * n) as f64)));
                    Derivative::Sliced { by_position, directions: directions[l].shallow_clone() }
                })
                .collect()
        };
        (loss, derivatives, counts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Purpose, Stream};
    use crate::vgg::Network;
    use tch::Device;

    fn rand(seed: u64, h: i64, w: i64) -> Tensor {
        let mut rng = Stream::new(seed, 0, Purpose::InitNoise);
        let v: Vec<f32> = (0..3 * h * w).map(|_| rng.next_f32()).collect();
        Tensor::from_slice(&v).reshape([1, 3, h, w])
    }

    fn whole(target: &StyleTarget, net: &Vgg, x: &Tensor, dirs: Option<&Directions>) -> (f64, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let loss = target.loss(net, &x, dirs);
        loss.backward();
        (loss.double_value(&[]), x.grad())
    }

    /// The block-wise loss and gradient equal the whole frame's for both losses, at two frame
    /// sizes (one not a multiple of the pooling) and two tile layouts each, with layers down to
    /// conv4_1 (margin 32, alignment 8) and to conv5_1 (margin 64, alignment 16).
    ///
    /// In fp64 they agree to rounding (measured 1e-15): the method is exact. In fp32 the Gram
    /// gradient agrees within 1e-6, the sliced one within 1e-3 (measured 2e-4 to 7e-4): a
    /// projection's last bit depends on the shape of the product that made it, and the sort
    /// orders near-equal projections by it. fp32's own error is larger (the whole frame in fp32
    /// against fp64: 2e-4 to 3e-3 for either loss), so blocks cost nothing measurable.
    #[test]
    fn blocks_give_the_whole_frames_loss_and_gradient() {
        for (kind, gram_tolerance, sliced_tolerance) in [(Kind::Double, 1e-12f64, 1e-12f64), (Kind::Float, 1e-5, 1e-3)]
        {
            let net = Vgg::random(Network::Vgg16, Device::Cpu).to_kind(kind);
            let style = rand(1, 64, 64).to_kind(kind);
            for (layers, tiles) in [
                (vec![(0, 1.0), (2, 0.5), (4, 1.0), (7, 2.0)], [(32, 32), (40, 72)]),
                (vec![(1, 1.0), (10, 1.0)], [(64, 64), (64, 80)]),
            ] {
                let reach = net.reach(&layers.iter().map(|l| l.0).collect::<Vec<_>>()).expect("vgg has a reach");
                for (h, w) in [(72, 80), (57, 83)] {
                    let x = rand(2, h, w).to_kind(kind);
                    for loss_kind in [LossKind::Gram, LossKind::Swd] {
                        let target = StyleTarget::new(&net, &style, &layers, loss_kind, 0);
                        let dirs = target.directions(&mut Stream::new(3, 0, Purpose::Directions));
                        let (loss, grad) = whole(&target, &net, &x, dirs.as_ref());
                        for &(tw, th) in &tiles {
                            let layout = Layout::new(tw, th, reach).unwrap();
                            assert!(layout.count(w, h) > 1, "{tw}x{th} on {w}x{h} is one block");
                            let mut steps = Vec::new();
                            let (bl, bg) =
                                loss_and_grad(&target, &net, &x, dirs.as_ref(), &layout, None, &mut |d, t| {
                                    steps.push((d, t))
                                });
                            let n = 2 * layout.count(w, h) as u32;
                            assert_eq!(
                                steps,
                                (1..=n).map(|d| (d, n)).collect::<Vec<_>>(),
                                "each block of each pass reported"
                            );
                            let bl = bl.double_value(&[]);
                            let at =
                                format!("{kind:?} {loss_kind:?}, layers {layers:?}, frame {w}x{h}, tiles {tw}x{th}");
                            let tolerance = if loss_kind == LossKind::Gram { gram_tolerance } else { sliced_tolerance };
                            assert!(
                                (bl - loss).abs() <= tolerance.max(1e-6) * loss.abs(),
                                "{at}: loss {bl} in blocks, {loss} whole"
                            );
                            let err = (&bg - &grad).norm().double_value(&[]) / grad.norm().double_value(&[]);
                            assert!(err < tolerance, "{at}: gradient off by {err}");
                        }
                    }
                }
            }
        }
    }

    /// Spread over three CPU "devices" (threads of their own, one libtorch thread each, as the
    /// render thread here), the loss and gradient are the one device's bit for bit, both losses.
    #[test]
    fn blocks_spread_over_devices_give_the_same_bits() {
        tch::set_num_threads(1);
        let net = Vgg::random(Network::Vgg16, Device::Cpu);
        let layers = [(0, 1.0), (2, 0.5), (4, 1.0), (7, 2.0)];
        let layout = Layout::new(32, 32, net.reach(&[0, 2, 4, 7]).unwrap()).unwrap();
        let spread = crate::spread::Spread::new(&net, &[Device::Cpu, Device::Cpu]);
        let x = rand(2, 80, 96);
        for kind in [LossKind::Gram, LossKind::Swd] {
            let target = StyleTarget::new(&net, &rand(1, 64, 64), &layers, kind, 0);
            let dirs = target.directions(&mut Stream::new(3, 0, Purpose::Directions));
            let mut steps = 0;
            let (l1, g1) = loss_and_grad(&target, &net, &x, dirs.as_ref(), &layout, None, &mut |_, _| {});
            let (l3, g3) =
                loss_and_grad(&target, &net, &x, dirs.as_ref(), &layout, Some(&spread), &mut |_, _| steps += 1);
            assert_eq!(steps, 2 * layout.count(96, 80), "{kind:?}: every block of both passes reported");
            assert!(l1.equal(&l3) && g1.equal(&g3), "{kind:?}: spread over 3 devices differs from one");
        }
    }

    #[test]
    fn margins_follow_the_receptive_field() {
        let net = Vgg::random(Network::Vgg16, Device::Cpu);
        // conv1_1: one pixel either side; conv3_1: 10, two pools; conv5_3 (all layers): 90.
        assert_eq!(net.reach(&[0]), Some(Reach { margin: 1, align: 1 }));
        assert_eq!(net.reach(&[0, 4]), Some(Reach { margin: 12, align: 4 }));
        assert_eq!(net.reach(&(0..13).collect::<Vec<_>>()), Some(Reach { margin: 96, align: 16 }));
        let multiscale = Vgg::random(Network::Multiscale, Device::Cpu);
        assert_eq!(multiscale.reach(&[0, 3]), None, "the pyramid's blur reads reflected borders");
    }

    #[test]
    fn block_choices_parse_and_bad_ones_name_the_flag() {
        assert_eq!("auto".parse::<BlockChoice>().unwrap(), BlockChoice::Auto);
        assert_eq!("off".parse::<BlockChoice>().unwrap(), BlockChoice::Off);
        assert_eq!("64x48".parse::<BlockChoice>().unwrap(), BlockChoice::Tile { width: 64, height: 48 });
        for bad in ["", "64", "0x64", "64x", "x", "64x64x2", "100000x64", "-1x5", "on"] {
            let e = bad.parse::<BlockChoice>().unwrap_err().to_string();
            assert!(e.contains("--blocks") && e.contains("WIDTHxHEIGHT"), "{bad:?}: {e}");
        }
        let reach = Reach { margin: 96, align: 16 };
        let e = Layout::new(64, 200, reach).unwrap_err().to_string();
        assert!(e.contains("--blocks") && e.contains("margin of 96"), "{e}");
        assert_eq!(Layout::new(100, 96, reach).unwrap().tile, (112, 96), "rounded up to the pooling");
    }
}
