//! Where a frame's blocks are: `--blocks` as the user wrote it, the reach of a network's
//! layers, and the tiles of a frame with their margins.

use crate::error::ParamError;

/// `--blocks`: how a frame's loss is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockChoice {
    /// The whole frame at once when it fits the device's memory, blocks sized to fit otherwise.
    #[default]
    Auto,
    /// The whole frame at once, refused up front when it does not fit.
    Off,
    /// Tiles of this size (the margin comes on top).
    Tile { width: u32, height: u32 },
}

/// The largest tile side `--blocks` takes (a frame's side is at most this anyway).
pub const MAX_TILE_SIDE: u32 = 16_384;

impl std::str::FromStr for BlockChoice {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        let bad = || {
            ParamError::new(
                "--blocks",
                format!(
                    "expected auto, off or WIDTHxHEIGHT in pixels (each 1 to {MAX_TILE_SIDE}), got {:?}",
                    proto::limits::quoted_prefix(s)
                ),
            )
        };
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            _ => {
                let (w, h) = s.split_once('x').ok_or_else(bad)?;
                let side = |v: &str| v.parse::<u32>().ok().filter(|v| (1..=MAX_TILE_SIDE).contains(v));
                Ok(Self::Tile { width: side(w).ok_or_else(bad)?, height: side(h).ok_or_else(bad)? })
            }
        }
    }
}

impl std::fmt::Display for BlockChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Off => f.write_str("off"),
            Self::Tile { width, height } => write!(f, "{width}x{height}"),
        }
    }
}

/// How far the deepest layer of a loss reaches: pixels of margin a block needs on each side,
/// and the alignment (2^pools) its corners and tiles keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub margin: i64,
    pub align: i64,
}

/// Tiles of a frame's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Tile width and height, multiples of `reach.align`.
    pub tile: (i64, i64),
    pub reach: Reach,
}

impl Layout {
    /// A tile of at least `width` x `height` rounded up to the alignment, or an error naming the
    /// margin when the tile is smaller than it (a block would be mostly margin: more than nine
    /// times the work of its tile).
    pub fn new(width: u32, height: u32, reach: Reach) -> Result<Self, ParamError> {
        let up = |v: u32| (v as i64 + reach.align - 1) / reach.align * reach.align;
        let (w, h) = (up(width), up(height));
        if w.min(h) < reach.margin {
            return Err(ParamError::new(
                "--blocks",
                format!(
                    "a block of {width}x{height} is smaller than the margin of {} pixels these layers need around \
                     it: use at least {m}x{m}, or fewer deep layers",
                    reach.margin,
                    m = reach.margin.max(reach.align)
                ),
            ));
        }
        Ok(Self { tile: (w, h), reach })
    }

    /// How many blocks a frame of `width` x `height` takes.
    pub fn count(&self, width: i64, height: i64) -> usize {
        ((width + self.tile.0 - 1) / self.tile.0 * ((height + self.tile.1 - 1) / self.tile.1)) as usize
    }

    /// The largest block (tile and margins, clipped to a frame of this size), width x height.
    pub fn largest_block(&self, width: i64, height: i64) -> (i64, i64) {
        let m = self.reach.margin;
        ((self.tile.0 + 2 * m).min(width), (self.tile.1 + 2 * m).min(height))
    }

    pub(super) fn blocks(&self, width: i64, height: i64) -> Vec<(Span, Span)> {
        let xs = spans(width, self.tile.0, self.reach.margin);
        let ys = spans(height, self.tile.1, self.reach.margin);
        ys.iter().flat_map(|y| xs.iter().map(move |x| (*x, *y))).collect()
    }
}

/// One axis of a block: the pixels it owns and the pixels it computes (owned plus margins).
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) own: (i64, i64),
    pub(super) run: (i64, i64),
    /// The frame's length along this axis.
    len: i64,
}

fn spans(len: i64, tile: i64, margin: i64) -> Vec<Span> {
    (0..len)
        .step_by(tile as usize)
        .map(|a| {
            let b = (a + tile).min(len);
            Span { own: (a, b), run: ((a - margin).max(0), (b + margin).min(len)), len }
        })
        .collect()
}

impl Span {
    /// The owned positions of a feature map `s` times coarser than the image, in the block's
    /// own coordinates: (start, count). The frame's map has len / s positions (pooling floors).
    pub(super) fn owned_at(&self, s: i64) -> (i64, i64) {
        let start = self.own.0 / s;
        let end = if self.own.1 == self.len { self.len / s } else { self.own.1 / s };
        (start - self.run.0 / s, (end - start).max(0))
    }
}
