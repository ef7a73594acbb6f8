//! Rendering a range of frames from a start state: the unit of work of both `gramzoom render`
//! and a cluster worker.
//!
//! Frame i > 0 starts from frame i-1 zoomed by the per-frame factor (the optimiser state is
//! zoomed with it), is optimised `iters` times, and is emitted. Frame 0 starts from the warm-up:
//! noise at about 1/8 of the size, optimised and upsampled in steps, so large structure is laid
//! out first. Every random draw depends only on (seed, frame), so rendering [0, n) at once and
//! rendering [0, k) then [k, n) from a serialised state give bit-identical frames on the CPU.

use crate::blend::{Look, Palette};
use crate::block::{BlockChoice, Layout};
use crate::colour::ColourSpace;
use crate::error::{EngineError, Result, Stage};
use crate::handoff::State;
use crate::loss::Directions;
use crate::optim::OptimState;
use crate::params::RenderParams;
use crate::rng::{Purpose, Stream};
use crate::share::CpuShare;
use crate::style::{rgb_to_tensor, Style, Styles};
use crate::vgg::Vgg;
use crate::zoom::{jitter, Zoom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Warm-up stages below this shorter side are skipped: the deepest layers need room.
const MIN_STAGE_SIDE: u32 = 32;
/// L-BFGS keeps one roll for this many warm-up iterations (the original's 20-evaluation runs).
const LBFGS_WARMUP_RUN: u32 = 20;
/// Warm-up randomness uses "frame" keys past any real frame index.
const WARMUP_KEY: u64 = 1 << 40;

/// One rendered frame, 8-bit RGB, row-major.
#[derive(Debug, Clone)]
pub struct Frame {
    pub index: u32,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    fn from_tensor(index: u32, image: &Tensor) -> Self {
        let (_, _, h, w) = image.size4().expect("NCHW");
        let bytes = (image.clamp(0.0, 1.0) * 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .squeeze_dim(0)
            .permute([1, 2, 0])
            .contiguous()
            .to_device(Device::Cpu);
        Self {
            index,
            width: w as u32,
            height: h as u32,
            rgb: Vec::<u8>::try_from(bytes.flatten(0, -1)).expect("uint8 tensor"),
        }
    }

    pub fn to_image(&self) -> image::RgbImage {
        image::RgbImage::from_raw(self.width, self.height, self.rgb.clone())
            .expect("frame buffer has width*height*3 bytes")
    }

    pub fn to_tensor(&self) -> Tensor {
        rgb_to_tensor(&self.to_image())
    }
}

/// What the engine reports as it goes, on the render thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// A warm-up iteration done, of `total`; with the loss when it was read back (every
    /// `WARMUP_CHECK_EVERY` iterations and at each stage's end: a read waits for the device).
    Warmup { done: u32, total: u32, loss: Option<f64> },
    /// An iteration of a frame done; `frames_done` of this call's `frames_total` are finished.
    Iteration { frames_done: u32, frames_total: u32 },
    /// A frame finished, with its last iteration's loss.
    Frame { frames_done: u32, frames_total: u32, loss: f64 },
    /// A step of an iteration computed in blocks (`block`): `done` of `total`, each block
    /// counting twice (its forward pass, then its gradient). A huge frame's iteration can take
    /// minutes; its blocks show that it moves.
    Block { done: u32, total: u32 },
}

impl Progress {
    /// Whether an optimiser iteration just ran (a finished frame reports after its last one).
    pub fn is_iteration(&self) -> bool {
        matches!(self, Self::Warmup { .. } | Self::Iteration { .. })
    }
}

pub struct Engine {
    params: RenderParams,
    device: Device,
    net: Vgg,
    /// The style images, in the order the parameters name them.
    styles: Vec<Style>,
    /// Each style's target and colour space at the output's size, mixed per frame.
    palette: Palette,
    fingerprint: String,
    cancel: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    /// A CPU render's part in sharing the machine with other renders (see `share`).
    share: Option<CpuShare>,
    /// The blocks a frame's loss is computed in (`block`), `None` for the whole frame at once;
    /// chosen for the output's size (warm-up stages take fewer).
    blocks: Option<Layout>,
    /// What `--blocks` asked for, for `spread_over` to choose blocks when it was `auto`.
    block_choice: BlockChoice,
    /// The extra devices a render spreads its blocks over (`spread`).
    spread: Option<crate::spread::Spread>,
}

impl Engine {
    /// `styles`: one style, or every style the parameters name, in their order.
    pub fn new(params: RenderParams, styles: impl Into<Styles>, net: Vgg, device: Device) -> Result<Self> {
        Self::with_blocks(params, styles, net, device, BlockChoice::Auto)
    }

    /// `new`, computing the loss as `blocks` says (`--blocks`): refused before any work when
    /// the frame or its blocks do not fit the device's memory, or a block is smaller than the
    /// margin its layers need.
    pub fn with_blocks(
        params: RenderParams,
        styles: impl Into<Styles>,
        net: Vgg,
        device: Device,
        blocks: BlockChoice,
    ) -> Result<Self> {
        let blocks_choice = blocks;
        let styles = styles.into();
        // Every limit but the frame-by-frame walk of the schedules, which takes seconds on a
        // long job and is the submitter's (CLI, coordinator): each frame rendered evaluates its
        // own, range included, and a bad one fails naming the frame.
        params.validate_settings()?;
        let fingerprint = params.fingerprint(&styles.digest(), &net.origin.digest());
        let net = match params.precision {
            crate::params::Precision::Fp32 | crate::params::Precision::Tf32 => net,
            crate::params::Precision::Bf16 => {
                if let Some(warning) = crate::device::bf16_cpu_warning(device, crate::device::cpu_has_native_bf16()) {
                    // Once a process: a CPU worker builds an engine for every segment it renders.
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| tracing::warn!("{warning}"));
                }
                net.to_kind(tch::Kind::BFloat16).channels_last()
            }
        };
        let blocks = crate::memory::plan(blocks, &params, &net, device)?;
        let palette = Palette::new(&params, &styles.0, &net, device, blocks)?;
        Ok(Self {
            blocks,
            block_choice: blocks_choice,
            spread: None,
            palette,
            params,
            device,
            net,
            styles: styles.0,
            fingerprint,
            cancel: Arc::new(AtomicBool::new(false)),
            finish: Arc::new(AtomicBool::new(false)),
            share: if device == Device::Cpu { CpuShare::for_process() } else { None },
        })
    }

    /// The same engine spreading each iteration's blocks over `devices` (`--device
    /// cuda:0,cuda:1`), the first being the engine's own: one thread per extra device with a
    /// copy of the network. With `--blocks auto` and a frame that fits whole, the frame is cut
    /// into one block per device; with `off` the extra devices idle (a warning says so).
    pub fn spread_over(mut self, devices: &[Device]) -> Result<Self> {
        if devices.first() != Some(&self.device) {
            return Err(crate::error::ParamError::new(
                "--device",
                format!("the first device of the list must be the render's own, {:?}", self.device),
            )
            .into());
        }
        let extra = &devices[1..];
        if extra.is_empty() {
            return Ok(self);
        }
        let whole = self.blocks.is_none();
        let split = whole.then(|| crate::memory::split_for(self.block_choice, &self.params, &self.net, devices.len()));
        if let Some(layout) = split.flatten() {
            self.palette = Palette::new(&self.params, &self.styles, &self.net, self.device, Some(layout))?;
            self.blocks = Some(layout);
        }
        self.spread = Some(crate::spread::Spread::new(&self.net, extra));
        tracing::info!(devices = devices.len(), blocks = ?self.blocks.map(|l| l.tile), "each frame's blocks are spread over devices");
        Ok(self)
    }

    /// How many devices a render uses (more than one once spread over several).
    pub fn device_count(&self) -> usize {
        self.spread.as_ref().map_or(1, |s| s.count())
    }

    /// The blocks a frame's loss is computed in, `None` for the whole frame at once.
    pub fn blocks(&self) -> Option<Layout> {
        self.blocks
    }

    pub fn params(&self) -> &RenderParams {
        &self.params
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Set it to stop the render at the next iteration with `EngineError::Cancelled`.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Set it to end `render` early but cleanly: after the frame in hand, with the state ready
    /// for the next frame (a preempted worker hands over what it finished).
    pub fn finish_flag(&self) -> Arc<AtomicBool> {
        self.finish.clone()
    }

    /// What frame `frame` is optimised against: `look` again when its weights are the frame's.
    fn look_at(&self, motion: &crate::params::Motion<'_>, frame: u32, look: Option<Look>) -> Result<Look> {
        let weights = motion.weights(frame)?;
        Ok(match look {
            Some(look) if look.weights == weights => look,
            _ => self.palette.look(&weights, self.device),
        })
    }

    /// Warm-up stage sizes, smallest first, ending at the output size.
    fn stages(&self) -> Vec<(u32, u32)> {
        let (w, h) = (self.params.width, self.params.height);
        let mut out: Vec<(u32, u32)> = [8u32, 4, 2]
            .iter()
            .map(|d| ((w as f64 / *d as f64).round() as u32, (h as f64 / *d as f64).round() as u32))
            .filter(|&(sw, sh)| sw.min(sh) >= MIN_STAGE_SIDE)
            .collect();
        out.push((w, h));
        out
    }

    /// Sets libtorch's process-wide GPU switches for this render, as it starts (not when the
    /// engine is built: a worker builds the next job's engine while another renders). A CPU
    /// render touches none of them. A process renders on the GPU one job at a time.
    fn configure_device(&self) {
        if self.device.is_cuda() {
            // cuDNN times its convolution algorithms once per shape and keeps the fastest. The
            // choice can differ between runs, so GPU frames are exact only within one process
            // (as they already were only within one kind of GPU).
            tch::Cuda::cudnn_set_benchmark(true);
            // Tensor cores for fp32 maths only when asked (libtorch's default lets cuDNN use
            // TF32 for convolutions but not cuBLAS for the Gram products; fp32 means fp32 here).
            crate::tf32::allow(self.params.precision != crate::params::Precision::Fp32);
        }
    }

    /// The state before frame 0: noise grown through the warm-up stages.
    pub fn initial_state(&self, progress: &mut dyn FnMut(Progress)) -> Result<State> {
        self.configure_device();
        let _turn = self.share.as_ref().map(CpuShare::enter);
        let p = &self.params;
        let stages = self.stages();
        let motion = p.motion()?;
        // The warm-up grows frame 0: the styles as they are mixed there.
        let full = self.look_at(&motion, 0, None)?;
        let mut rng = Stream::new(p.seed, WARMUP_KEY, Purpose::InitNoise);
        let (w0, h0) = stages[0];
        let noise: Vec<f32> = (0..3 * w0 as usize * h0 as usize).map(|_| rng.next_f32()).collect();
        let mut image = Tensor::from_slice(&noise).reshape([1, 3, h0 as i64, w0 as i64]).to_device(self.device);
        if let Some(space) = full.colour_space() {
            image = space.noise(&image);
        }
        let mut optim = OptimState::new(p.optimizer, &image);
        let mut done = 0u32;
        for (s, &(sw, sh)) in stages.iter().enumerate() {
            if s > 0 {
                image = tch::no_grad(|| {
                    image.upsample_bicubic2d([sh as i64, sw as i64], false, None, None).clamp(0.0, 1.0)
                });
                optim = OptimState::new(p.optimizer, &image);
            }
            let last = s + 1 == stages.len();
            let stage;
            let look = if last {
                &full
            } else {
                let factor = sh.min(sw) as f64 / p.height.min(p.width) as f64;
                stage = self.palette.stage_look(p, &self.styles, &self.net, self.device, factor, &full.weights)?;
                &stage
            };
            let n = p.warmup / stages.len() as u32 + u32::from((s as u32) < p.warmup % stages.len() as u32);
            let run = match p.optimizer {
                crate::params::OptimizerKind::Adam => 1,
                crate::params::OptimizerKind::Lbfgs => LBFGS_WARMUP_RUN,
            };
            let mut rolls = Stream::new(p.seed, WARMUP_KEY + 1 + s as u64, Purpose::Roll);
            let mut draws = Stream::new(p.seed, WARMUP_KEY + 1 + s as u64, Purpose::Directions);
            let mut shift = (0, 0);
            for k in 0..n {
                if k % run == 0 {
                    shift = (rolls.below(sh as u64) as i64, rolls.below(sw as u64) as i64);
                }
                let dirs = look.target.directions(&mut draws);
                let loss = self.iterate(look, &mut image, &mut optim, shift, dirs.as_ref(), progress)?;
                done += 1;
                // The loss is read back (a device sync) only now and then, not every iteration.
                let checked = k + 1 == n || done.is_multiple_of(WARMUP_CHECK_EVERY);
                let loss = if checked { Some(finite(&loss, Stage::Warmup { iteration: done })?) } else { None };
                progress(Progress::Warmup { done, total: p.warmup, loss });
            }
        }
        Ok(State { next_frame: 0, image, optim, fingerprint: self.fingerprint.clone(), made_by: self.params.summary() })
    }

    /// Renders frames `state.next_frame .. end`, handing each to `on_frame` as soon as it is done,
    /// and leaves `state` ready for frame `end` (or for the frame after the one in hand when the
    /// finish flag was set).
    pub fn render(
        &self,
        state: &mut State,
        end: u32,
        on_frame: &mut dyn FnMut(Frame) -> Result<()>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        if state.fingerprint != self.fingerprint {
            let mine = self.params.summary();
            let reason = if state.made_by.is_empty() || state.made_by == mine {
                "it was made by a render with other parameters, style or weights".to_string()
            } else {
                format!("it was made by a render with other settings ({:?}), this render is {mine}", state.made_by)
            };
            return Err(EngineError::StateMismatch { reason });
        }
        let (h, w) = (self.params.height as i64, self.params.width as i64);
        if state.image.size() != [1, 3, h, w] {
            return Err(EngineError::StateMismatch {
                reason: format!("its image is {:?}, the render needs [1, 3, {h}, {w}]", state.image.size()),
            });
        }
        self.configure_device();
        let _turn = self.share.as_ref().map(CpuShare::enter);
        let (start, total) = (state.next_frame, end.saturating_sub(state.next_frame));
        // Adam rolls every iteration; L-BFGS once a frame (its history needs one function).
        let roll_every = match self.params.optimizer {
            crate::params::OptimizerKind::Adam => Some(1),
            crate::params::OptimizerKind::Lbfgs => None,
        };
        // The schedules are functions of the global frame index only, so a segment starting
        // anywhere moves the camera exactly as the one-piece render does.
        let motion = self.params.motion()?;
        let mut look = None;
        while state.next_frame < end {
            let i = state.next_frame;
            let iters = motion.iters(i)?;
            let frame_look = self.look_at(&motion, i, look.take())?;
            if i > 0 {
                let p = &self.params;
                let (from, to) = (jitter(p.seed, i - 1), jitter(p.seed, i));
                let camera = motion.camera(i)?;
                let zoom = Zoom::new(p.width as usize, p.height as usize, &camera, from, to, self.device);
                state.image = tch::no_grad(|| zoom.apply(&state.image));
                // A blend on the move carries the frame's colours with it (see `blend`).
                let before = motion.weights(i - 1)?;
                if before != frame_look.weights {
                    let from = self.palette.palette(&before);
                    state.image = tch::no_grad(|| crate::colour::transport(&from, &frame_look.palette, &state.image));
                }
                if let Some(incoming) = zoom.incoming() {
                    let space = frame_look.colour_space();
                    state.image = tch::no_grad(|| self.seed_incoming(&state.image, incoming, i, space));
                }
                state.optim.map_spatial(|t| zoom.apply(t));
            }
            let mut rolls = Stream::new(self.params.seed, i as u64, Purpose::Roll);
            // One draw of directions for every iteration of a frame (see `swd`).
            let dirs = frame_look.target.directions(&mut Stream::new(self.params.seed, i as u64, Purpose::Directions));
            let mut shift = (0, 0);
            let mut last = None;
            for k in 0..iters {
                if k % roll_every.unwrap_or(iters) == 0 {
                    shift = (rolls.below(h as u64) as i64, rolls.below(w as u64) as i64);
                }
                last = Some(self.iterate(
                    &frame_look,
                    &mut state.image,
                    &mut state.optim,
                    shift,
                    dirs.as_ref(),
                    progress,
                )?);
                progress(Progress::Iteration { frames_done: i - start, frames_total: total });
            }
            // One read-back of the loss per frame (the frame itself is read back next anyway):
            // a sync every iteration kept a GPU from running ahead of the host. A loss gone
            // non-finite in any iteration of the frame is non-finite here too.
            let loss = match &last {
                Some(l) => finite(l, Stage::Frame(i))?,
                None => 0.0,
            };
            on_frame(Frame::from_tensor(i, &state.image))?;
            state.next_frame += 1;
            look = Some(frame_look);
            progress(Progress::Frame { frames_done: i + 1 - start, frames_total: total, loss });
            if self.finish.load(Ordering::Relaxed) {
                break;
            }
        }
        Ok(())
    }

    /// `image` with the pixels marked in `incoming` (see `Zoom::incoming`) replaced by fresh
    /// noise for frame `frame`, drawn as the warm-up's is (in the style's colours where the
    /// design has them) at half its amplitude: full-amplitude noise left a band of grain at the
    /// border (2.4 times the median gradient), a quarter a flat band the optimiser drew lines
    /// into; half scored 1.26 and no line (`tests/e2e/direction.rs`).
    fn seed_incoming(&self, image: &Tensor, incoming: &Tensor, frame: u32, space: Option<&ColourSpace>) -> Tensor {
        let mut rng = Stream::new(self.params.seed, frame as u64, Purpose::Incoming);
        let size = image.size();
        let n: i64 = size.iter().product();
        let noise: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 0.5 + 0.5).collect();
        let mut noise = Tensor::from_slice(&noise).reshape(size.as_slice()).to_device(self.device);
        if let Some(space) = space {
            noise = space.noise(&noise);
        }
        image * (1.0 - incoming) + noise * incoming
    }

    /// One optimiser iteration on the image rolled by `shift` (a circular shift makes the
    /// network see the image's wrap-around seams, so the texture tiles, as the original's roll).
    /// The roll is inside the differentiated function, so the state never needs rolling back.
    fn iterate(
        &self,
        look: &Look,
        image: &mut Tensor,
        optim: &mut OptimState,
        shift: (i64, i64),
        dirs: Option<&Directions>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        if let Some(share) = &self.share {
            share.adjust();
        }
        let (_, _, h, w) = image.size4().expect("images are NCHW");
        let (loss, grad) = match self.blocks.filter(|layout| layout.count(w, h) > 1) {
            None => {
                let x = image.detach().set_requires_grad(true);
                let loss = look.target.loss(&self.net, &x.roll([shift.0, shift.1], [2, 3]), dirs);
                loss.backward();
                (loss.detach(), x.grad())
            }
            Some(layout) => {
                let rolled = tch::no_grad(|| image.roll([shift.0, shift.1], [2, 3]));
                let mut step = |done, total| progress(Progress::Block { done, total });
                let (loss, grad) = crate::block::loss_and_grad(
                    &look.target,
                    &self.net,
                    &rolled,
                    dirs,
                    &layout,
                    self.spread.as_ref(),
                    &mut step,
                );
                (loss, grad.roll([-shift.0, -shift.1], [2, 3]))
            }
        };
        // The spectrum term is of the whole frame (one FFT), whether or not the loss is in blocks.
        let grad = match &look.spectrum {
            Some(spectrum) => &grad + spectrum.gradient(image, &grad),
            None => grad,
        };
        optim.step(image, &grad, self.params.learning_rate(), look.precond.as_ref());
        Ok(loss)
    }
}

/// Warm-up iterations between checks of the loss (each check waits for the device).
const WARMUP_CHECK_EVERY: u32 = 16;

/// The loss's value, or `Diverged` when it is not finite. Waits for the device.
fn finite(loss: &Tensor, at: Stage) -> Result<f64> {
    let value = loss.double_value(&[]);
    if value.is_finite() {
        Ok(value)
    } else {
        Err(EngineError::Diverged { at, loss: value })
    }
}
