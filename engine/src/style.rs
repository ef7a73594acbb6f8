//! The style image: decoding, and resizing it to the scale the user asked for.

use crate::error::{EngineError, ParamError, Result};
use crate::params::{hex, StyleScale};
use image::imageops::FilterType;
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::path::Path;
use tch::{Device, Tensor};

/// The smallest style side the deepest VGG layers can see (four 2x2 poolings).
const MIN_STYLE_SIDE: u32 = 32;
/// Style images are capped at this many pixels after scaling: memory grows with it, and a
/// Gram matrix gains nothing from more.
pub const MAX_STYLE_PIXELS: u64 = 40_000_000;

/// The example style compiled into the binary: `gramzoom render` works with no file at all.
pub const EMBEDDED: &[u8] = include_bytes!("../../examples/wheatfield.jpg");

pub struct Style {
    pub image: RgbImage,
    /// SHA-256 of the encoded file, part of the render fingerprint.
    pub digest: String,
}

impl Style {
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let unreadable = |e: image::ImageError| EngineError::Style {
            path: origin.to_path_buf(),
            reason: format!("not a readable png or jpeg image: {}", e.to_string().to_lowercase()),
        };
        // The header first: a small file may declare a huge image, and decoding allocates it.
        let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| unreadable(e.into()))?
            .into_dimensions()
            .map_err(unreadable)?;
        if u64::from(w) * u64::from(h) > proto::limits::MAX_STYLE_IMAGE_PIXELS {
            return Err(EngineError::Style {
                path: origin.to_path_buf(),
                reason: format!(
                    "image is {w}x{h}, more than the {} megapixels a style image may have",
                    proto::limits::MAX_STYLE_IMAGE_PIXELS / 1_000_000
                ),
            });
        }
        let image = image::load_from_memory(bytes).map_err(unreadable)?.to_rgb8();
        if image.width() < 8 || image.height() < 8 {
            return Err(EngineError::Style {
                path: origin.to_path_buf(),
                reason: format!("image is {}x{}, at least 8x8 needed", image.width(), image.height()),
            });
        }
        Ok(Self { image, digest: hex(&Sha256::digest(bytes)) })
    }

    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_bytes(path).map(|(style, _)| style)
    }

    /// The style and its encoded bytes (which a render submits to its coordinator).
    pub fn open_with_bytes(path: &Path) -> Result<(Self, Vec<u8>)> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::Style { path: path.to_path_buf(), reason: e.to_string().to_lowercase() })?;
        Ok((Self::from_bytes(&bytes, path)?, bytes))
    }

    pub fn embedded() -> Self {
        Self::from_bytes(EMBEDDED, Path::new("<embedded wheatfield.jpg>")).expect("embedded style decodes")
    }

    /// The size the style takes for an output whose shorter side is `out_short`: its own aspect,
    /// scaled as `scale` says, and never with a shorter side below what VGG's deepest layers see.
    pub fn scaled_size(&self, out_short: u32, scale: StyleScale) -> Result<(u32, u32), ParamError> {
        let (w, h) = (self.image.width() as f64, self.image.height() as f64);
        // The shorter side the style gets (computed as it always was for a number, so renders
        // with an explicit --style-scale keep their exact sizes).
        let target = match scale {
            StyleScale::Times(k) => out_short as f64 * k,
            StyleScale::Auto => w.min(h).min(out_short as f64),
        };
        let k = target.max(MIN_STYLE_SIDE as f64) / w.min(h);
        let size = ((w * k).round().max(1.0) as u32, (h * k).round().max(1.0) as u32);
        if size.0 as u64 * size.1 as u64 > MAX_STYLE_PIXELS {
            return Err(ParamError::new(
                "--style-scale",
                format!(
                    "the style image would be {}x{}, above the limit of {MAX_STYLE_PIXELS} pixels; lower it",
                    size.0, size.1
                ),
            ));
        }
        Ok(size)
    }

    /// 1x3xHxW float tensor in [0, 1] at the given size (Lanczos-3 resampling).
    pub fn tensor(&self, size: (u32, u32), device: Device) -> Tensor {
        let img = if (self.image.width(), self.image.height()) == size {
            self.image.clone()
        } else {
            image::imageops::resize(&self.image, size.0, size.1, FilterType::Lanczos3)
        };
        rgb_to_tensor(&img).to_device(device)
    }
}

/// The style images of a render, in the order its parameters name them (one for a movie of
/// one style).
pub struct Styles(pub Vec<Style>);

impl From<Style> for Styles {
    fn from(style: Style) -> Self {
        Self(vec![style])
    }
}

impl From<Vec<Style>> for Styles {
    fn from(styles: Vec<Style>) -> Self {
        Self(styles)
    }
}

impl Styles {
    /// What the fingerprint knows the styles by: the one style's SHA-256, or every style's in
    /// order, comma-separated (what the coordinator keeps for a job).
    pub fn digest(&self) -> String {
        self.0.iter().map(|s| s.digest.as_str()).collect::<Vec<_>>().join(",")
    }
}

pub fn rgb_to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(img.as_raw()).reshape([h, w, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(tch::Kind::Float)
        / 255.0
}
