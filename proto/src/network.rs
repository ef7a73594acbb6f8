//! The feature networks' layer tables: which conv layers a network has, their channels and
//! kernels and where each reads its input. They live in `proto` (not with the tensors) so that
//! the coordinator can validate `--layers` without linking libtorch.

use crate::limits::quoted_prefix;
use crate::params::ParamError;

/// The feature network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Vgg16,
    Vgg19,
    /// A shallow multi-scale random network in the spirit of Ustyuzhaninov, Brendel, Gatys and
    /// Bethge (ICLR 2017): two 3x3 conv layers of 128 random filters on each level of a
    /// Gaussian pyramid of the image (1, 1/2, ... 1/16), side by side rather than stacked.
    /// Measured against the VGG16 design it lost (coarser texture, lines through the zoom's
    /// centre, too little fine detail at a few iterations per frame; ARCHITECTURE.md), so it is
    /// not offered to users: `gramzoom bench --compare-features` keeps the comparison
    /// reproducible.
    Multiscale,
}

/// The multi-scale network's pyramid levels and filters per layer.
const MULTISCALE_LEVELS: u32 = 5;
const MULTISCALE_FILTERS: usize = 128;

impl Network {
    /// The networks a user can choose.
    pub const ALL: [Network; 2] = [Self::Vgg16, Self::Vgg19];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vgg16 => "vgg16",
            Self::Vgg19 => "vgg19",
            Self::Multiscale => "multiscale",
        }
    }

    /// Whether pretrained weights exist for it (torchvision's VGGs).
    pub fn pretrainable(self) -> bool {
        !matches!(self, Self::Multiscale)
    }

    /// Output channels per conv block (torchvision's configurations D and E).
    fn blocks(self) -> &'static [(usize, usize)] {
        match self {
            Self::Vgg16 => &[(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)],
            Self::Vgg19 => &[(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)],
            Self::Multiscale => &[],
        }
    }

    /// Every conv layer: its name (`conv3_2`, or `p2_1` for the first layer on the image at 1/4
    /// size), torchvision module index, channels, kernel, and where its input comes from.
    pub fn layers(self) -> Vec<LayerSpec> {
        if self == Self::Multiscale {
            let mut out = Vec::new();
            for level in 0..MULTISCALE_LEVELS {
                for i in 0..2 {
                    out.push(LayerSpec {
                        name: format!("p{level}_{}", i + 1),
                        index: out.len(),
                        cin: if i == 0 { 3 } else { MULTISCALE_FILTERS },
                        cout: MULTISCALE_FILTERS,
                        kernel: 3,
                        pool_before: false,
                        image_level: (i == 0).then_some(level),
                    });
                }
            }
            return out;
        }
        let mut out = Vec::new();
        let (mut index, mut cin) = (0usize, 3usize);
        for (b, &(n, cout)) in self.blocks().iter().enumerate() {
            for i in 0..n {
                out.push(LayerSpec {
                    name: format!("conv{}_{}", b + 1, i + 1),
                    index,
                    cin,
                    cout,
                    kernel: 3,
                    pool_before: b > 0 && i == 0,
                    image_level: None,
                });
                index += 2; // conv, relu
                cin = cout;
            }
            index += 1; // max-pool
        }
        out
    }
}

impl std::str::FromStr for Network {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Self::Multiscale.name() {
            return Err(ParamError::new(
                "--network",
                "multiscale is an experimental design kept for `gramzoom bench --compare-features` (it failed the \
                 line and detail checks); expected vgg16 or vgg19",
            ));
        }
        Self::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| ParamError::new("--network", format!("expected vgg16 or vgg19, got {:?}", quoted_prefix(s))))
    }
}

#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub name: String,
    pub index: usize,
    pub cin: usize,
    pub cout: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// A 2x2 pool before it (VGG), on the previous layer's output.
    pub pool_before: bool,
    /// Reads the image itself, averaged down 2^level times, rather than the previous layer's
    /// output (the multi-scale network's layers run side by side).
    pub image_level: Option<u32>,
}

impl LayerSpec {
    pub fn weight_key(&self) -> String {
        format!("features.{}.weight", self.index)
    }
    pub fn bias_key(&self) -> String {
        format!("features.{}.bias", self.index)
    }
}
