//! Styles over time: a render's styles, each turned into its loss target (and colour space)
//! once, and mixed by each frame's weights (`proto::schedule::Blend`) into what that frame is
//! optimised against, its [`Look`].
//!
//! Mixing is a few weighted sums of Gram matrices (or a list of weighted samples, for the
//! sliced distance) and of 3x3 colour moments: cheap next to one iteration, and done only when
//! the weights change. Every input is a function of the global frame index, so a segment
//! starting mid-fade mixes exactly what the one-piece render mixed there.
//!
//! The loss alone moves a frame's colours slowly: 4 iterations a frame took a fade from the
//! grey gravel to the wheat field two seconds past its last key to reach two thirds of the
//! wheat field's colourfulness. So while the weights move, each frame's colours are carried
//! from the previous frame's blend to this one's by the optimal transport map between their
//! colour distributions (`colour::transport`, Gaussian: an affine map), and the loss then
//! draws the new style's texture into colours already its own; the fade is done by its last
//! key (`tests/e2e/blend.rs`). Frames whose weights do not move are never touched, so a movie
//! of one style renders exactly as before.

use crate::block::Layout;
use crate::colour::{ColourSpace, Preconditioner};
use crate::error::{ParamError, Result};
use crate::loss::StyleTarget;
use crate::params::RenderParams;
use crate::spectrum::{SpectrumTarget, StyleSpectrum};
use crate::style::Style;
use crate::vgg::{RandomDesign, Vgg};
use tch::{Device, Kind};

/// What one frame is optimised against: the styles mixed by its weights.
pub(crate) struct Look {
    pub target: StyleTarget,
    pub weights: Vec<f64>,
    /// The blend's colour distribution (mean and covariance of its styles' pixels): the space a
    /// design that steps in colour steps in, and what a moving blend carries colours by.
    pub palette: ColourSpace,
    /// The palette's preconditioner, for a design that steps in colour.
    pub precond: Option<Preconditioner>,
    /// The blend's spectrum, for a design with the spectrum term (`spectrum`).
    pub spectrum: Option<SpectrumTarget>,
}

impl Look {
    /// The colour space steps and noise are taken in, for a design that steps in colour.
    pub fn colour_space(&self) -> Option<&ColourSpace> {
        self.precond.as_ref().map(|_| &self.palette)
    }
}

/// Each style's target at the output's size and colour space.
pub(crate) struct Palette {
    targets: Vec<StyleTarget>,
    /// Each style's colour space, whether or not the design steps in colour.
    spaces: Vec<ColourSpace>,
    in_colour: bool,
    /// Each style's spectrum, for a design with the spectrum term.
    spectra: Option<Vec<StyleSpectrum>>,
    /// The blocks a style's features are computed in (`None`: whole), as the frames' are.
    blocks: Option<Layout>,
}

impl Palette {
    /// Targets, colour spaces and, for a design with the spectrum term, spectra for every
    /// style, in order.
    pub fn new(p: &RenderParams, styles: &[Style], net: &Vgg, device: Device, blocks: Option<Layout>) -> Result<Self> {
        // How the network's design steps; pretrained weights take plain steps.
        let design = net.origin.design();
        let in_colour = design.is_some_and(RandomDesign::steps_in_colour_space);
        let spectrum = design.is_some_and(RandomDesign::matches_spectrum);
        if styles.len() != p.style_count() {
            return Err(ParamError::new(
                "--style",
                format!("the render was given {} style images, its parameters name {}", styles.len(), p.style_count()),
            )
            .into());
        }
        let targets = styles.iter().map(|s| target(p, s, net, device, 1.0, blocks.as_ref())).collect::<Result<_>>()?;
        let short = p.width.min(p.height);
        let scaled: Vec<_> = styles
            .iter()
            .map(|s| Ok(s.tensor(s.scaled_size(short, p.style_scale)?, Device::Cpu)))
            .collect::<Result<_>>()?;
        let spaces = scaled.iter().map(ColourSpace::of_style).collect();
        let spectra = spectrum.then(|| scaled.iter().map(StyleSpectrum::of_style).collect());
        Ok(Self { targets, spaces, in_colour, spectra, blocks })
    }

    /// The colour distribution of a blend.
    pub fn palette(&self, weights: &[f64]) -> ColourSpace {
        let parts: Vec<(&ColourSpace, f64)> = self.spaces.iter().zip(weights.iter().copied()).collect();
        ColourSpace::mixture(&parts)
    }

    /// The look of a frame whose styles weigh `weights`.
    pub fn look(&self, weights: &[f64], device: Device) -> Look {
        let parts: Vec<(&StyleTarget, f64)> = self.targets.iter().zip(weights.iter().copied()).collect();
        let spectrum = self.spectra.as_ref().map(|spectra| mix_spectra(spectra, weights));
        self.look_of(StyleTarget::mix(&parts), weights, spectrum, device)
    }

    /// The look of a warm-up stage whose output is `factor` of the full size: targets of the
    /// styles at that scale, the colour space of the full size.
    pub fn stage_look(
        &self,
        p: &RenderParams,
        styles: &[Style],
        net: &Vgg,
        device: Device,
        factor: f64,
        weights: &[f64],
    ) -> Result<Look> {
        let targets =
            styles
                .iter()
                .zip(weights)
                .map(|(s, w)| {
                    if *w > 0.0 {
                        target(p, s, net, device, factor, self.blocks.as_ref()).map(Some)
                    } else {
                        Ok(None)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
        let parts: Vec<(&StyleTarget, f64)> =
            targets.iter().zip(weights).filter_map(|(t, w)| t.as_ref().map(|t| (t, *w))).collect();
        // The styles' spectra at the stage's scale, as their targets are.
        let spectrum = match self.spectra {
            None => None,
            Some(_) => {
                let short = ((p.width.min(p.height) as f64) * factor).round() as u32;
                let spectra = styles
                    .iter()
                    .zip(weights)
                    .filter(|(_, w)| **w > 0.0)
                    .map(|(s, w)| {
                        let image = s.tensor(s.scaled_size(short, p.style_scale)?, Device::Cpu);
                        Ok((StyleSpectrum::of_style(&image), *w))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let parts: Vec<(&StyleSpectrum, f64)> = spectra.iter().map(|(s, w)| (s, *w)).collect();
                Some(SpectrumTarget::mix(&parts))
            }
        };
        Ok(self.look_of(StyleTarget::mix(&parts), weights, spectrum, device))
    }

    /// A look with its palette mixed once, and the preconditioner made from it.
    fn look_of(&self, target: StyleTarget, weights: &[f64], spectrum: Option<SpectrumTarget>, device: Device) -> Look {
        let palette = self.palette(weights);
        let precond = self.in_colour.then(|| palette.preconditioner(Kind::Float, device));
        Look { target, weights: weights.to_vec(), palette, precond, spectrum }
    }
}

fn mix_spectra(spectra: &[StyleSpectrum], weights: &[f64]) -> SpectrumTarget {
    let parts: Vec<(&StyleSpectrum, f64)> = spectra.iter().zip(weights.iter().copied()).collect();
    SpectrumTarget::mix(&parts)
}

/// A style's side of the loss for an output scaled by `factor` (warm-up stages use less than 1).
fn target(
    p: &RenderParams,
    style: &Style,
    net: &Vgg,
    device: Device,
    factor: f64,
    blocks: Option<&Layout>,
) -> Result<StyleTarget> {
    let short = ((p.width.min(p.height) as f64) * factor).round() as u32;
    let size = style.scaled_size(short, p.style_scale)?;
    let image = style.tensor(size, device);
    let (_, _, h, w) = image.size4().expect("a style is NCHW");
    Ok(match blocks.filter(|l| l.count(w, h) > 1) {
        Some(layout) => StyleTarget::new_in_blocks(net, &image, &p.loss_layers(), p.loss, p.seed, layout),
        None => StyleTarget::new(net, &image, &p.loss_layers(), p.loss, p.seed),
    })
}
