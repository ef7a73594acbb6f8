//! How much memory an iteration needs, how much the device has, and so whether a frame's loss
//! is computed whole or in blocks (`--blocks`, see `block`). A frame too large for the device
//! is refused or split before any work, never left to the kernel's out-of-memory killer or to a
//! CUDA allocation failure halfway through a render.
#![allow(unsafe_code)]

use crate::block::{BlockChoice, Layout, Reach};
use crate::error::ParamError;
use crate::params::{LossKind, RenderParams};
use crate::vgg::Vgg;
use tch::Device;

/// The share of the available memory a render plans to use; the rest is left for what the
/// estimate does not count (libtorch's allocator slack, the encoder, other processes' growth).
const USABLE: f64 = 0.8;

/// Bytes an iteration holds per feature value of the analytic count in `Footprint::of`, by
/// measurement (fp32, every VGG16 layer, Gram loss: 540 values a pixel): on the CPU the peak
/// RSS of `gramzoom bench` grew by 2.9 KB a pixel from 512x512 to 1024x1024 (5.1 bytes a
/// value), on an H100 a 4K frame took 29.5 GB (3.6 KB a pixel, 6.3). The larger, rounded up.
const BYTES_PER_VALUE: f64 = 6.5;

/// What the spectrum term (`spectrum`) holds per frame pixel during an iteration.
pub const SPECTRUM_BYTES_PER_PIXEL: f64 = 8.0 * 4.0;

/// Per-pixel memory of an iteration: what grows with the computed block, and what grows with
/// the whole frame whatever the blocks (the image, its gradient, the optimiser's state, and for
/// a sliced distance the projections that are sorted together).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    pub per_block_pixel: f64,
    pub per_frame_pixel: f64,
}

impl Footprint {
    /// The footprint of a loss over `layers` of `net`: every layer up to the deepest is
    /// computed (values per pixel: channels / scale^2), the ones the loss reads are kept twice
    /// (their copy in the loss). Multiplied by what a value costs in `BYTES_PER_VALUE`.
    pub fn of(net: &Vgg, layers: &[usize], loss: LossKind) -> Self {
        let last = layers.iter().copied().max().unwrap_or(0);
        let values: f64 = (0..=last)
            .map(|i| {
                let per_pixel = net.channels(i) as f64 / (net.scale(i) * net.scale(i)) as f64;
                per_pixel * if layers.contains(&i) { 2.0 } else { 1.0 }
            })
            .sum();
        // Image, gradient, Adam's two moments, the step and its preconditioned copies: about
        // twelve fp32 images.
        let mut per_frame = 12.0 * 3.0 * 4.0;
        if net.origin.design().is_some_and(crate::vgg::RandomDesign::matches_spectrum) {
            // The spectrum term, always of the whole frame: the grey, its half spectrum and the
            // projection (complex, half the bins each), the ratio, the inverse and the gradient
            // spread over three channels: about eight fp32 values.
            per_frame += SPECTRUM_BYTES_PER_PIXEL;
        }
        if loss == LossKind::Swd {
            // Projections, sorted copy, sort order (8 bytes), gap and derivative: K <= 64 values
            // per position of every layer read, 24 bytes each.
            per_frame += layers
                .iter()
                .map(|&i| {
                    net.channels(i).min(crate::swd::MAX_DIRECTIONS) as f64 * 24.0 / (net.scale(i) * net.scale(i)) as f64
                })
                .sum::<f64>();
        }
        Self { per_block_pixel: values * BYTES_PER_VALUE, per_frame_pixel: per_frame }
    }

    /// Bytes for a frame of `width` x `height` computed whole.
    pub fn whole(&self, width: i64, height: i64) -> f64 {
        (self.per_block_pixel + self.per_frame_pixel) * (width * height) as f64
    }

    /// Bytes for a frame computed in `layout`'s blocks.
    pub fn in_blocks(&self, layout: &Layout, width: i64, height: i64) -> f64 {
        let (bw, bh) = layout.largest_block(width, height);
        self.per_block_pixel * (bw * bh) as f64 + self.per_frame_pixel * (width * height) as f64
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// What `choice` means for a frame of `width` x `height` on a device with `available` bytes
/// (`None`: unknown, taken as enough): `None` for the whole frame at once, or the blocks' layout.
/// `reach` is `None` for a network that cannot be cut into blocks.
pub fn resolve(
    choice: BlockChoice,
    reach: Option<Reach>,
    footprint: Footprint,
    (width, height): (u32, u32),
    available: Option<u64>,
) -> Result<Option<Layout>, ParamError> {
    let (w, h) = (width as i64, height as i64);
    let budget = available.map(|a| a as f64 * USABLE);
    let fits = |bytes: f64| budget.is_none_or(|b| bytes <= b);
    let whole = footprint.whole(w, h);
    let avail = || gib(available.unwrap_or(0) as f64);
    let no_reach = || ParamError::new("--blocks", "blocks need a VGG network (this one reads an image pyramid)");
    match choice {
        BlockChoice::Off if fits(whole) => Ok(None),
        BlockChoice::Off => Err(ParamError::new(
            "--blocks",
            format!(
                "off: a whole {width}x{height} frame needs about {} with these layers and {} is available \
                 (planning on {:.0}%); use --blocks auto (the default) or a block size such as 512x512",
                gib(whole),
                avail(),
                USABLE * 100.0
            ),
        )),
        BlockChoice::Tile { width: tw, height: th } => {
            let layout = Layout::new(tw, th, reach.ok_or_else(no_reach)?)?;
            let need = footprint.in_blocks(&layout, w, h);
            if !fits(need) {
                return Err(ParamError::new(
                    "--blocks",
                    format!(
                        "{tw}x{th}: a {width}x{height} frame in these blocks needs about {} and {} is available; \
                         use smaller blocks or --blocks auto",
                        gib(need),
                        avail()
                    ),
                ));
            }
            Ok((layout.count(w, h) > 1).then_some(layout))
        }
        BlockChoice::Auto if fits(whole) => Ok(None),
        BlockChoice::Auto => {
            let reach = reach.ok_or_else(no_reach)?;
            let budget = budget.expect("a frame that does not fit has a budget");
            // The largest square tile whose block fits next to the frame-sized tensors.
            let room = budget - footprint.per_frame_pixel * (w * h) as f64;
            let block_side = if room > 0.0 { (room / footprint.per_block_pixel).sqrt() as i64 } else { 0 };
            let tile = (block_side - 2 * reach.margin) / reach.align * reach.align;
            if tile < reach.margin.max(reach.align) {
                return Err(ParamError::new(
                    "--size",
                    format!(
                        "a {width}x{height} frame does not fit in {} of memory even in blocks (the frame's own \
                         tensors need about {}, a block of {m}x{m} pixels {} more)",
                        avail(),
                        gib(footprint.per_frame_pixel * (w * h) as f64),
                        gib(footprint.per_block_pixel * ((3 * reach.margin).pow(2)) as f64),
                        m = 3 * reach.margin
                    ),
                ));
            }
            let side = |v: i64| tile.min((v + reach.align - 1) / reach.align * reach.align) as u32;
            Layout::new(side(w), side(h), reach).map(Some)
        }
    }
}

/// The blocks `choice` asks for a render of `params` on `device` (see `resolve`), logged when
/// the frame is cut.
pub fn plan(
    choice: BlockChoice,
    params: &RenderParams,
    net: &Vgg,
    device: Device,
) -> Result<Option<Layout>, ParamError> {
    let layers: Vec<usize> = params.loss_layers().iter().map(|l| l.0).collect();
    let footprint = Footprint::of(net, &layers, params.loss);
    let available = available(device);
    let layout = resolve(choice, net.reach(&layers), footprint, (params.width, params.height), available)?;
    if let Some(l) = &layout {
        tracing::info!(
            tile = %format!("{}x{}", l.tile.0, l.tile.1),
            margin = l.reach.margin,
            blocks = l.count(params.width as i64, params.height as i64),
            available_mib = available.map(|a| a >> 20),
            "the frame's loss is computed in blocks"
        );
    }
    Ok(layout)
}

/// For a frame computed whole and spread over `devices`: the blocks `split` cuts it into when
/// `choice` is auto, or `None` (with a warning: the extra devices idle) when it was not, or the
/// frame is too small.
pub fn split_for(choice: BlockChoice, params: &RenderParams, net: &Vgg, devices: usize) -> Option<Layout> {
    if choice != BlockChoice::Auto {
        tracing::warn!(devices, "--blocks off: the frame is computed whole, on the first device; the others idle");
        return None;
    }
    let layers: Vec<usize> = params.loss_layers().iter().map(|l| l.0).collect();
    let split = net.reach(&layers).and_then(|reach| split(devices, reach, params.width, params.height));
    if split.is_none() {
        tracing::warn!(devices, "the frame is too small to cut into a block per device: rendering on the first device");
    }
    split
}

/// Blocks that cut a frame into one per device (`devices` of them, as near to squares as the
/// count allows), or `None` when the tiles would be smaller than the margin.
pub fn split(devices: usize, reach: Reach, width: u32, height: u32) -> Option<Layout> {
    let (w, h) = (width as f64, height as f64);
    let (cols, rows) =
        (1..=devices).filter(|c| devices.is_multiple_of(*c)).map(|c| (c, devices / c)).min_by(|a, b| {
            let skew = |(c, r): (usize, usize)| ((w / c as f64) / (h / r as f64)).ln().abs();
            skew(*a).total_cmp(&skew(*b))
        })?;
    let tile = |side: f64, n: usize| (side / n as f64).ceil() as u32;
    Layout::new(tile(w, cols), tile(h, rows), reach).ok()
}

/// Bytes the device can still give a render: for the CPU what the kernel reports available,
/// capped by the process's cgroup (a container's memory limit); for a CUDA device its free
/// memory. `None` when it cannot be told.
pub fn available(device: Device) -> Option<u64> {
    let reported = reported(device);
    match cap() {
        Some(cap) => Some(reported.map_or(cap, |r| r.min(cap))),
        None => reported,
    }
}

/// `GRAMZOOM_MEMORY_GIB`: the most memory a render plans with, for a machine shared with other
/// work the kernel cannot see coming (another render starting, a service's peak). Ignored,
/// with a warning, when it is not a positive number.
fn cap() -> Option<u64> {
    let v = std::env::var("GRAMZOOM_MEMORY_GIB").ok()?;
    match v.trim().parse::<f64>() {
        Ok(g) if g > 0.0 && g.is_finite() => Some((g * (1u64 << 30) as f64) as u64),
        _ => {
            tracing::warn!(value = %v, "GRAMZOOM_MEMORY_GIB is not a positive number of GiB: ignored");
            None
        }
    }
}

fn reported(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(index) => cuda_free(index),
        _ => {
            let machine = meminfo_available();
            let cgroup = cgroup_room();
            match (machine, cgroup) {
                (Some(m), Some(c)) => Some(m.min(c)),
                (m, c) => m.or(c),
            }
        }
    }
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// The room left under this process's cgroup memory limit (v2, then v1), if it has one.
fn cgroup_room() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ] {
        // "max" (v2) or a huge number (v1) mean no limit.
        if let Some(limit) = read(limit).filter(|&l| l < 1 << 60) {
            return Some(limit.saturating_sub(read(usage).unwrap_or(0)));
        }
    }
    None
}

/// The free memory of CUDA device `index`, asked of the CUDA runtime libtorch has loaded
/// (`cudaMemGetInfo` counts what libtorch's caching allocator holds as used). Run on the
/// render's thread: it switches the thread's current device and switches it back.
fn cuda_free(index: usize) -> Option<u64> {
    type GetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    for name in [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"] {
        // SAFETY: RTLD_NOLOAD only returns a library this process already loaded (libtorch's
        // runtime), so no initialiser runs; the symbols are looked up by their C names and
        // called with the documented signatures of the CUDA runtime API; the device switched to
        // is switched back.
        unsafe {
            let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            if lib.is_null() {
                continue;
            }
            let sym = |s: &std::ffi::CStr| libc::dlsym(lib, s.as_ptr());
            let (info, get, set) = (sym(c"cudaMemGetInfo"), sym(c"cudaGetDevice"), sym(c"cudaSetDevice"));
            let result = if info.is_null() || get.is_null() || set.is_null() {
                None
            } else {
                let info = std::mem::transmute::<*mut libc::c_void, GetInfo>(info);
                let get = std::mem::transmute::<*mut libc::c_void, GetDevice>(get);
                let set = std::mem::transmute::<*mut libc::c_void, SetDevice>(set);
                let mut current = 0i32;
                let (mut free, mut total) = (0usize, 0usize);
                if get(&mut current) == 0 && set(index as i32) == 0 {
                    let ok = info(&mut free, &mut total) == 0;
                    set(current);
                    ok.then_some(free as u64)
                } else {
                    None
                }
            };
            libc::dlclose(lib);
            return result;
        }
    }
    None
}

/// The process's peak resident memory so far (VmHWM), for `bench`.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vgg::Network;

    fn vgg16_all() -> (Option<Reach>, Footprint) {
        let net = Vgg::random(Network::Vgg16, Device::Cpu);
        let layers: Vec<usize> = (0..13).collect();
        (net.reach(&layers), Footprint::of(&net, &layers, LossKind::Gram))
    }

    /// `auto` keeps a frame that fits whole and splits one that does not into blocks that fit;
    /// `off` refuses a frame that does not fit, naming the sizes; a memory too small even for
    /// blocks is refused; an unknown memory is taken as enough.
    #[test]
    fn frames_are_split_or_refused_by_the_memory_they_need() {
        let (reach, fp) = vgg16_all();
        let gib = 1u64 << 30;
        let hd = (1920, 1080);
        assert_eq!(resolve(BlockChoice::Auto, reach, fp, hd, Some(64 * gib)).unwrap(), None);
        assert_eq!(resolve(BlockChoice::Off, reach, fp, hd, None).unwrap(), None);
        let eight_k = (7680, 4320);
        let e = resolve(BlockChoice::Off, reach, fp, eight_k, Some(24 * gib)).unwrap_err().to_string();
        assert!(e.contains("--blocks") && e.contains("7680x4320") && e.contains("24.0 GiB"), "{e}");
        let layout = resolve(BlockChoice::Auto, reach, fp, eight_k, Some(24 * gib)).unwrap().expect("blocks");
        assert!(fp.in_blocks(&layout, 7680, 4320) <= 24.0 * gib as f64 * USABLE);
        assert!(layout.count(7680, 4320) > 1 && layout.tile.0 % 16 == 0, "{layout:?}");
        let e = resolve(BlockChoice::Auto, reach, fp, eight_k, Some(gib / 4)).unwrap_err().to_string();
        assert!(e.contains("--size") && e.contains("even in blocks"), "{e}");
        let e = resolve(BlockChoice::Tile { width: 4096, height: 4096 }, reach, fp, eight_k, Some(24 * gib))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--blocks") && e.contains("4096x4096") && e.contains("smaller blocks"), "{e}");
        // A tile as large as the frame is the whole frame.
        let whole = resolve(BlockChoice::Tile { width: 2048, height: 2048 }, reach, fp, hd, None).unwrap();
        assert_eq!(whole, None);
        let e = resolve(BlockChoice::Auto, None, fp, eight_k, Some(24 * gib)).unwrap_err().to_string();
        assert!(e.contains("VGG"), "{e}");
    }

    /// The default design's spectrum term works on the whole frame, also in blocks: its
    /// buffers count per frame pixel (at 8K, about 1 GiB a plan must leave room for).
    #[test]
    fn the_spectrum_term_counts_per_frame_pixel() {
        use crate::vgg::RandomDesign;
        let layers: Vec<usize> = (0..13).collect();
        let of =
            |design| Footprint::of(&Vgg::random_with(Network::Vgg16, design, Device::Cpu), &layers, LossKind::Gram);
        let (plain, spectrum) = (of(RandomDesign::HeColour), of(RandomDesign::HeSpectrum));
        assert_eq!(spectrum.per_block_pixel, plain.per_block_pixel);
        assert_eq!(spectrum.per_frame_pixel - plain.per_frame_pixel, SPECTRUM_BYTES_PER_PIXEL);
    }

    #[test]
    fn this_machine_reports_its_memory() {
        let a = available(Device::Cpu).expect("linux reports available memory");
        assert!(a > 1 << 26, "{a}");
        assert!(peak_rss().expect("VmHWM") > 1 << 20);
    }
}
