//! VGG16/VGG19 feature extractors (convolutional part only), in torchvision's layout so that
//! torchvision's published state dicts load by name (`features.{index}.weight`).

use crate::error::{EngineError, Result};
use crate::rng::{Purpose, Stream};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

pub use proto::params::{LayerSpec, Network};

/// Random filters already drawn in this process, the most recently used first, by network and
/// whether they are zero-mean. Drawing VGG16's 14.7 M weights costs about a second of CPU (an
/// f64 logarithm and cosine each), and an engine is built for every segment a worker renders
/// (in the test suite, hundreds of times a run). The copy costs memory: VGG16's filters are
/// 59 MB, VGG19's 80 MB (a CPU render of 64x48 grows from about 280 to 334 MB), so two are
/// kept: a process renders with one network at a time, and `bench --compare-features` goes
/// through them in turn.
static DRAWN: Mutex<Vec<((Network, bool), Filters)>> = Mutex::new(Vec::new());
const DRAWN_KEPT: usize = 2;

/// Each layer's filters, flattened in torchvision's weight layout.
type Filters = Arc<Vec<Vec<f32>>>;

/// The He-normal filters of `network`'s layers, in order (see `draw_filters`), drawn once per
/// process.
fn random_filters(network: Network, zero_mean: bool) -> Filters {
    let key = (network, zero_mean);
    // A poisoned lock only means another thread panicked while holding it; the list is whole.
    let lock = || DRAWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    {
        let mut drawn = lock();
        if let Some(at) = drawn.iter().position(|(k, _)| *k == key) {
            let hit = drawn.remove(at);
            let filters = hit.1.clone();
            drawn.insert(0, hit);
            return filters;
        }
    }
    // Drawn without the lock: two threads asking at once both draw (the same bits).
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
    let filters = Arc::new(draw_filters(network, zero_mean, threads));
    let mut drawn = lock();
    drawn.retain(|(k, _)| *k != key);
    drawn.insert(0, (key, filters.clone()));
    drawn.truncate(DRAWN_KEPT);
    filters
}

/// He-normal filters (std sqrt(2 / fan-in)) from one fixed stream, layer after layer, made
/// zero-mean per output channel when asked. Every weight is a pure function of its place in
/// the stream, so each layer is drawn in pieces on `threads` threads (libtorch's count: the
/// render's CPU share) and comes out bit for bit as drawn in a row, as every earlier release
/// drew them.
fn draw_filters(network: Network, zero_mean: bool, threads: usize) -> Vec<Vec<f32>> {
    let mut rng = Stream::new(0x6772_616d_7a6f_6f6d, 0, Purpose::Network);
    let threads = threads.clamp(1, 16);
    network
        .layers()
        .into_iter()
        .map(|spec| {
            let fan_in = spec.cin * spec.kernel * spec.kernel;
            let std = (2.0 / fan_in as f32).sqrt();
            let mut w = vec![0f32; spec.cout * fan_in];
            let piece = w.len().div_ceil(threads).max(1);
            let draw = |k: usize, part: &mut [f32]| {
                rng.normals_after((k * piece) as u64, part);
                part.iter_mut().for_each(|v| *v *= std);
            };
            std::thread::scope(|scope| {
                let mut parts = w.chunks_mut(piece).enumerate();
                let here = parts.next();
                for (k, part) in parts {
                    scope.spawn(move || draw(k, part));
                }
                if let Some((k, part)) = here {
                    draw(k, part);
                }
            });
            rng.skip_normals(w.len() as u64);
            for filter in w.chunks_mut(fan_in).filter(|_| zero_mean) {
                let mean = filter.iter().sum::<f32>() / fan_in as f32;
                filter.iter_mut().for_each(|v| *v -= mean);
            }
            w
        })
        .collect()
}

fn weight_shape(l: &LayerSpec) -> [i64; 4] {
    let k = l.kernel as i64;
    [l.cout as i64, l.cin as i64, k, k]
}

struct Conv {
    spec: LayerSpec,
    weight: Tensor,
    bias: Tensor,
}

/// Where the network's weights came from; random features are announced once to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsOrigin {
    /// Deterministic random features (no pretrained file available).
    Random(RandomDesign),
    /// Loaded from a file; the string is the file's SHA-256.
    File { path: String, sha256: String },
}

impl WeightsOrigin {
    /// Part of the render fingerprint: a state made with one network must not resume on another.
    pub fn digest(&self) -> String {
        match self {
            Self::Random(design) => format!("random-v1-{}", design.revised_name()),
            Self::File { sha256, .. } => sha256.clone(),
        }
    }

    /// The random design, for random features.
    pub fn design(&self) -> Option<RandomDesign> {
        match self {
            Self::Random(design) => Some(*design),
            Self::File { .. } => None,
        }
    }
}

/// How random features are made, compared by `gramzoom bench --compare-features`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomDesign {
    /// He-normal filters, zero biases, max-pooling: a VGG as initialised before training. The
    /// default until stop 18 (it matched colours and the scale of detail best of these four,
    /// but its frames were colour speckle; `HeColour` keeps its filters).
    He,
    /// He-normal filters made zero-mean per output channel, max-pooling.
    ZeroMean,
    /// Zero-mean filters with 2x2 average pooling, which keeps more of every position's response.
    ZeroMeanAvgPool,
    /// He-normal filters with average pooling.
    HeAvgPool,
    /// He-normal filters, max-pooling, and optimiser steps taken in the style's colour space
    /// with chroma blurred (`colour`): no colour speckle, grey styles stay grey. The default
    /// from stop 18 to stop 37.
    HeColour,
    /// `HeColour`, and the frame's grey drawn towards the style's Fourier modulus (`spectrum`):
    /// the scales and directions of the style's detail, which Gram matrices of random shallow
    /// features do not hold (a regular lattice such as a brick wall). The default.
    HeSpectrum,
}

impl RandomDesign {
    pub const ALL: [RandomDesign; 6] =
        [Self::He, Self::ZeroMean, Self::ZeroMeanAvgPool, Self::HeAvgPool, Self::HeColour, Self::HeSpectrum];
    pub const DEFAULT: RandomDesign = Self::HeSpectrum;

    pub fn name(self) -> &'static str {
        match self {
            Self::He => "he",
            Self::ZeroMean => "zero-mean",
            Self::ZeroMeanAvgPool => "zero-mean-avgpool",
            Self::HeAvgPool => "he-avgpool",
            Self::HeColour => "he-colour",
            Self::HeSpectrum => "he-spectrum",
        }
    }

    /// The name in the weights' digest: a design whose frames change gets a new one, so that a
    /// state it stored is refused by a render that would go on differently. `he-spectrum` holds
    /// the coarsest frequencies of seamless styles since stop 38 (`spectrum::LOST_MAX`).
    fn revised_name(self) -> &'static str {
        match self {
            Self::HeSpectrum => "he-spectrum-2",
            other => other.name(),
        }
    }

    /// Whether the optimiser steps in the style's colour space (`colour`).
    pub fn steps_in_colour_space(self) -> bool {
        matches!(self, Self::HeColour | Self::HeSpectrum)
    }

    /// Whether the frame's grey is drawn towards the style's spectrum (`spectrum`).
    pub fn matches_spectrum(self) -> bool {
        self == Self::HeSpectrum
    }
}

pub struct Vgg {
    convs: Vec<Conv>,
    avg_pool: bool,
    /// Weights and activations laid out channels-last (NHWC in memory, NCHW in shape), the
    /// layout tensor cores read without a transpose.
    channels_last: bool,
    mean: Tensor,
    std: Tensor,
    pub origin: WeightsOrigin,
}

impl Vgg {
    /// Random features in the default design, see `random_with`.
    pub fn random(network: Network, device: Device) -> Self {
        Self::random_with(network, RandomDesign::DEFAULT, device)
    }

    /// Random features from a fixed seed, generated on the CPU by our own RNG so that every
    /// device and every worker of a cluster gets the same network.
    pub fn random_with(network: Network, design: RandomDesign, device: Device) -> Self {
        let zero_mean = matches!(design, RandomDesign::ZeroMean | RandomDesign::ZeroMeanAvgPool);
        let filters = random_filters(network, zero_mean);
        let convs = network
            .layers()
            .into_iter()
            .zip(filters.iter())
            .map(|(spec, w)| {
                let weight = Tensor::from_slice(w).reshape(weight_shape(&spec)).to_device(device);
                let bias = Tensor::zeros([spec.cout as i64], (Kind::Float, device));
                Conv { spec, weight, bias }
            })
            .collect();
        let mut net = Self::with_convs(convs, device, WeightsOrigin::Random(design));
        net.avg_pool = matches!(design, RandomDesign::ZeroMeanAvgPool | RandomDesign::HeAvgPool);

        net
    }

    /// Builds the network from named tensors (a torchvision state dict); every conv weight and
    /// bias must be present with torchvision's shape. Extra tensors (the classifier) are ignored.
    pub fn from_tensors(
        network: Network,
        mut tensors: HashMap<String, Tensor>,
        path: &Path,
        sha256: String,
        device: Device,
    ) -> Result<Self> {
        let err = |reason: String| EngineError::Weights { path: path.to_path_buf(), reason };
        let mut convs = Vec::new();
        for spec in network.layers() {
            let mut take = |key: String, shape: &[i64]| -> Result<Tensor> {
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| err(format!("missing tensor {key} ({} {})", network.name(), spec.name)))?;
                if t.size() != shape {
                    return Err(err(format!(
                        "tensor {key} has shape {:?}, {} {} needs {:?}",
                        t.size(),
                        network.name(),
                        spec.name,
                        shape
                    )));
                }
                Ok(t.to_kind(Kind::Float).to_device(device))
            };
            let weight = take(spec.weight_key(), &weight_shape(&spec))?;
            let bias = take(spec.bias_key(), &[spec.cout as i64])?;
            convs.push(Conv { spec, weight, bias });
        }
        Ok(Self::with_convs(convs, device, WeightsOrigin::File { path: path.display().to_string(), sha256 }))
    }

    fn with_convs(convs: Vec<Conv>, device: Device, origin: WeightsOrigin) -> Self {
        let mean = Tensor::from_slice(&[0.485f32, 0.456, 0.406]).reshape([1, 3, 1, 1]).to_device(device);
        let std = Tensor::from_slice(&[0.229f32, 0.224, 0.225]).reshape([1, 3, 1, 1]).to_device(device);
        Self { convs, avg_pool: false, channels_last: false, mean, std, origin }
    }

    /// The same network laid out channels-last: libtorch picks NHWC convolution kernels for a
    /// channels-last input and weight (cuDNN's tensor-core kernels want it; with NCHW it
    /// transposes around every convolution) and keeps the layout through ReLU and pooling.
    pub fn channels_last(mut self) -> Self {
        for c in &mut self.convs {
            c.weight = to_channels_last(&c.weight);
        }
        self.channels_last = true;
        self
    }

    /// The same network in another precision (double for gradient checks, half on GPUs).
    pub fn to_kind(&self, kind: Kind) -> Self {
        self.map(|t| t.to_kind(kind))
    }

    /// The device the network's weights are on.
    pub fn device(&self) -> Device {
        self.mean.device()
    }

    /// The same network on another device (a render spread over several, `spread`).
    pub fn to_device(&self, device: Device) -> Self {
        self.map(|t| t.to_device(device))
    }

    /// The same network with `f` applied to every tensor it holds.
    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        let convs =
            self.convs.iter().map(|c| Conv { spec: c.spec.clone(), weight: f(&c.weight), bias: f(&c.bias) }).collect();
        Self {
            convs,
            avg_pool: self.avg_pool,
            channels_last: self.channels_last,
            mean: f(&self.mean),
            std: f(&self.std),
            origin: self.origin.clone(),
        }
    }

    pub fn layer_names(&self) -> Vec<String> {
        self.convs.iter().map(|c| c.spec.name.clone()).collect()
    }

    /// Output channels of layer `index`.
    pub fn channels(&self, index: usize) -> i64 {
        self.convs[index].spec.cout as i64
    }

    /// How much coarser than the image layer `index`'s feature map is: 2^(pools before it).
    pub fn scale(&self, index: usize) -> i64 {
        1 << self.convs.iter().take(index + 1).filter(|c| c.spec.pool_before).count()
    }

    /// The margin a block needs around its tile for the features of `layers` at its positions
    /// to be the whole frame's, and the alignment its corners keep (`block`). A feature at a
    /// layer `s` times coarser reads its `s` pixels and `L` more on either side, where each 3x3
    /// convolution adds the current pixel spacing to `L` and a pool doubles the spacing. `None`
    /// for a network that reads an image pyramid (its blur reflects at the block's borders).
    pub fn reach(&self, layers: &[usize]) -> Option<crate::block::Reach> {
        let last = layers.iter().copied().max().unwrap_or(0);
        let (mut spacing, mut extent) = (1i64, 0i64);
        for conv in self.convs.iter().take(last + 1) {
            if conv.spec.image_level.is_some() {
                return None;
            }
            if conv.spec.pool_before {
                spacing *= 2;
            }
            extent += (conv.spec.kernel / 2) as i64 * spacing;
        }
        Some(crate::block::Reach { margin: (extent + spacing - 1) / spacing * spacing, align: spacing })
    }

    /// Post-ReLU activations of the conv layers at `layers` (indices into `layer_names`), for an
    /// RGB batch in [0, 1]. Stops after the deepest requested layer.
    pub fn features(&self, image: &Tensor, layers: &[usize]) -> Vec<Tensor> {
        let last = layers.iter().copied().max().unwrap_or(0);
        // In the network's own number format (bf16 runs take an fp32 image).
        let mut x = (image.to_kind(self.mean.kind()) - &self.mean) / &self.std;
        if self.channels_last {
            x = to_channels_last(&x);
        }
        let mut out = Vec::with_capacity(layers.len());
        // The image averaged down 2^level times, for layers that read it (multi-scale network).
        let mut pyramid = vec![x.shallow_clone()];
        for (i, conv) in self.convs.iter().enumerate().take(last + 1) {
            if let Some(level) = conv.spec.image_level {
                while pyramid.len() <= level as usize {
                    let down = blur_down(pyramid.last().expect("level 0"));
                    pyramid.push(down);
                }
                x = pyramid[level as usize].shallow_clone();
            } else if conv.spec.pool_before {
                x = if self.avg_pool {
                    x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
                } else {
                    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
                };
            }
            let pad = (conv.spec.kernel / 2) as i64;
            x = x.conv2d(&conv.weight, Some(&conv.bias), [1, 1], [pad, pad], [1, 1], 1).relu();
            if layers.contains(&i) {
                out.push(x.shallow_clone());
            }
        }
        out
    }
}

/// The tensor's values with channels-last strides (tch has no memory-format argument: NHWC
/// made contiguous, viewed back as NCHW, is that layout).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Half the size, after a 5-tap binomial blur (a Gaussian pyramid's step). A 2x2 average would
/// be cheaper, but its gradient lands in 2x2 blocks and the coarse layers then print a grid
/// into the image.
fn blur_down(x: &Tensor) -> Tensor {
    let c = x.size()[1];
    let taps = Tensor::from_slice(&[1f32, 4., 6., 4., 1.]).to_kind(x.kind()).to_device(x.device()) / 16.0;
    let kernel = taps.unsqueeze(1).matmul(&taps.unsqueeze(0)).expand([c, 1, 5, 5], false);
    let (h, w) = (x.size()[2], x.size()[3]);
    // Reflected borders so that the edges are not darkened; tiny images are padded by copying.
    let padded = if h > 2 && w > 2 { x.reflection_pad2d([2, 2, 2, 2]) } else { x.replication_pad2d([2, 2, 2, 2]) };
    padded.conv2d(&kernel, None::<&Tensor>, [2, 2], [0, 0], [1, 1], c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_indices() {
        let idx: Vec<usize> = Network::Vgg16.layers().iter().map(|l| l.index).collect();
        assert_eq!(idx, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
        let l19 = Network::Vgg19.layers();
        assert_eq!(l19.len(), 16);
        assert_eq!(l19.last().unwrap().index, 34);
        assert_eq!(l19[4].name, "conv3_1");
        assert!(l19[4].pool_before);
    }

    /// Stored states carry these digests: a design's never changes while its frames do not,
    /// and a design whose frames changed has a new one.
    #[test]
    fn random_designs_keep_their_digests() {
        let digests: Vec<String> = RandomDesign::ALL.iter().map(|d| WeightsOrigin::Random(*d).digest()).collect();
        assert_eq!(
            digests,
            [
                "random-v1-he",
                "random-v1-zero-mean",
                "random-v1-zero-mean-avgpool",
                "random-v1-he-avgpool",
                "random-v1-he-colour",
                "random-v1-he-spectrum-2",
            ]
        );
    }

    /// The channels-last network computes the same features, and keeps the layout through the
    /// stack (a layer that fell back to NCHW would cost a transpose per convolution on a GPU).
    #[test]
    fn channels_last_computes_the_same_features_in_nhwc() {
        let net = Vgg::random(Network::Vgg16, Device::Cpu);
        let x = Tensor::rand([1, 3, 40, 48], (Kind::Float, Device::Cpu));
        let plain = net.features(&x, &[1, 4, 9]);
        let nhwc = Vgg::random(Network::Vgg16, Device::Cpu).channels_last().features(&x, &[1, 4, 9]);
        for (a, b) in plain.iter().zip(&nhwc) {
            assert!(a.is_contiguous() && !b.is_contiguous(), "layouts: {:?} {:?}", a.stride(), b.stride());
            assert_eq!(b.stride()[1], 1, "channels are innermost");
            let err = (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]);
            assert!(err < 1e-5, "relative difference {err}");
        }
    }

    /// The random filters are the ones every release has drawn (workers of this version and
    /// of the last must render the same frames for the same fingerprint): the first layer's
    /// first weight, the last layer's last, and the sum and sum of squares of all as stop 35
    /// drew them one after another; every weight the same whether drawn on one thread or
    /// several, and the process's cached copy the same as a fresh draw.
    #[test]
    fn random_filters_are_the_ones_every_release_drew() {
        let cases = [
            (
                Network::Vgg16,
                false,
                1.4820899069309235e-1,
                -1.663735695183277e-2,
                (9.087413330941867e1, 8.439250796729742e3),
            ),
            (
                Network::Vgg19,
                true,
                1.0131677985191345e-1,
                -3.211885318160057e-2,
                (8.140240072407323e-5, 1.0988365187302557e4),
            ),
        ];
        for (network, zero_mean, first, last, sums) in cases {
            let one = draw_filters(network, zero_mean, 1);
            // Every weight, through its sum and sum of squares in f64 in order.
            let sum: f64 = one.iter().flatten().map(|v| f64::from(*v)).sum();
            let sq: f64 = one.iter().flatten().map(|v| f64::from(*v) * f64::from(*v)).sum();
            assert_eq!((sum, sq), sums, "{network:?}");
            assert_eq!(f64::from(one[0][0]), first, "{network:?}");
            assert_eq!(f64::from(*one.last().unwrap().last().unwrap()), last, "{network:?}");
            let same = |a: &[Vec<f32>], b: &[Vec<f32>]| {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| x.iter().map(|v| v.to_bits()).eq(y.iter().map(|v| v.to_bits())))
            };
            assert!(same(&one, &draw_filters(network, zero_mean, 3)), "{network:?} on three threads");
            assert!(same(&one, &random_filters(network, zero_mean)), "{network:?} drawn for the process");
            assert!(same(&one, &random_filters(network, zero_mean)), "{network:?} from the process's copy");
        }
    }

    #[test]
    fn random_network_is_deterministic() {
        let a = Vgg::random(Network::Vgg16, Device::Cpu);
        let b = Vgg::random(Network::Vgg16, Device::Cpu);
        let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let fa = a.features(&x, &[0, 12]);
        let fb = b.features(&x, &[0, 12]);
        assert_eq!(fa[1].size(), [1, 512, 2, 2]);
        assert!(fa[0].equal(&fb[0]) && fa[1].equal(&fb[1]));
    }
}
