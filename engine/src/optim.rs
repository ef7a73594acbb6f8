//! Optimisers whose whole state is explicit: tensors the zoom can resample and the hand-off can
//! serialise, plus a few scalars. tch's own optimisers hide their state, and tch has no L-BFGS.

use crate::colour::Preconditioner;
use crate::params::OptimizerKind;
use proto::handoff::optimizer as names;
use tch::{Kind, Tensor};

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
/// L-BFGS history length (PyTorch's default; the most a hand-off state may hold).
const LBFGS_HISTORY: usize = names::MAX_LBFGS_HISTORY;
/// No pixel moves more than this in one L-BFGS step: there is no line search, and right after a
/// zoom the curvature pairs are only approximate.
const LBFGS_MAX_STEP: f64 = 0.25;

/// Named tensors and named scalars (as exact decimal strings) of a serialised state.
pub type NamedTensors = Vec<(String, Tensor)>;
pub type Scalars = Vec<(String, String)>;

#[derive(Debug)]
pub struct AdamState {
    pub m: Tensor,
    pub v: Tensor,
    pub step: u64,
}

#[derive(Debug, Default)]
pub struct LbfgsState {
    /// Position differences s_k, oldest first.
    pub s: Vec<Tensor>,
    /// Gradient differences y_k, oldest first.
    pub y: Vec<Tensor>,
    pub prev_grad: Option<Tensor>,
    /// The last step actually taken (x_{k+1} - x_k).
    pub prev_step: Option<Tensor>,
}

#[derive(Debug)]
pub enum OptimState {
    Adam(AdamState),
    Lbfgs(LbfgsState),
}

impl OptimState {
    pub fn new(kind: OptimizerKind, like: &Tensor) -> Self {
        match kind {
            OptimizerKind::Adam => Self::Adam(AdamState { m: like.zeros_like(), v: like.zeros_like(), step: 0 }),
            OptimizerKind::Lbfgs => Self::Lbfgs(LbfgsState::default()),
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        match self {
            Self::Adam(_) => OptimizerKind::Adam,
            Self::Lbfgs(_) => OptimizerKind::Lbfgs,
        }
    }

    /// One update of `x` in place given the gradient at `x`, projected onto the box [0, 1] where
    /// images live (so no pixel drifts out of range over thousands of frames).
    /// With `precond`, Adam runs on the gradient in the preconditioner's space and its step is
    /// mapped back (L-BFGS takes plain steps).
    pub fn step(&mut self, x: &mut Tensor, grad: &Tensor, lr: f64, precond: Option<&Preconditioner>) {
        tch::no_grad(|| match self {
            Self::Adam(st) => {
                adam_step(st, x, grad, lr, precond);
                let _ = x.clamp_(0.0, 1.0);
            }
            Self::Lbfgs(st) => lbfgs_step(st, x, grad, lr, &mut |t| t.double_value(&[])),
        })
    }

    /// Applies a spatial map (the zoom) to every image-shaped tensor of the state. Adam's second
    /// moment must stay non-negative, and resampling kernels with negative lobes can break that.
    pub fn map_spatial(&mut self, f: impl Fn(&Tensor) -> Tensor) {
        tch::no_grad(|| match self {
            Self::Adam(st) => {
                st.m = f(&st.m);
                st.v = f(&st.v).clamp_min(0.0);
            }
            Self::Lbfgs(st) => {
                st.s.iter_mut().for_each(|t| *t = f(t));
                st.y.iter_mut().for_each(|t| *t = f(t));
                st.prev_grad = st.prev_grad.as_ref().map(&f);
                st.prev_step = st.prev_step.as_ref().map(&f);
            }
        })
    }

    /// Named tensors and scalars for serialisation; `from_parts` inverts it exactly.
    pub fn to_parts(&self) -> (NamedTensors, Scalars) {
        match self {
            Self::Adam(st) => (
                vec![(names::ADAM_M.into(), st.m.shallow_clone()), (names::ADAM_V.into(), st.v.shallow_clone())],
                vec![(names::KIND.into(), "adam".into()), (names::ADAM_STEP.into(), st.step.to_string())],
            ),
            Self::Lbfgs(st) => {
                let mut t = Vec::new();
                for (i, (s, y)) in st.s.iter().zip(&st.y).enumerate() {
                    t.push((names::lbfgs_s(i), s.shallow_clone()));
                    t.push((names::lbfgs_y(i), y.shallow_clone()));
                }
                if let Some(g) = &st.prev_grad {
                    t.push((names::LBFGS_PREV_GRAD.into(), g.shallow_clone()));
                }
                if let Some(d) = &st.prev_step {
                    t.push((names::LBFGS_PREV_STEP.into(), d.shallow_clone()));
                }
                (t, vec![(names::KIND.into(), "lbfgs".into()), (names::LBFGS_HISTORY.into(), st.s.len().to_string())])
            }
        }
    }

    pub fn from_parts(
        mut tensors: std::collections::HashMap<String, Tensor>,
        scalars: &std::collections::HashMap<String, String>,
    ) -> Result<Self, String> {
        let mut take = |k: &str| tensors.remove(k).ok_or_else(|| format!("missing tensor {k}"));
        let scalar = |k: &str| scalars.get(k).ok_or_else(|| format!("missing field {k}"));
        match scalar(names::KIND)?.as_str() {
            "adam" => {
                let step = scalar(names::ADAM_STEP)?.parse().map_err(|_| "adam.step is not an integer".to_string())?;
                Ok(Self::Adam(AdamState { m: take(names::ADAM_M)?, v: take(names::ADAM_V)?, step }))
            }
            "lbfgs" => {
                let n: usize =
                    scalar(names::LBFGS_HISTORY)?.parse().map_err(|_| "lbfgs.history is not an integer".to_string())?;
                if n > LBFGS_HISTORY {
                    return Err(format!("lbfgs.history is {n}, at most {LBFGS_HISTORY} allowed"));
                }
                let mut st = LbfgsState::default();
                for i in 0..n {
                    st.s.push(take(&names::lbfgs_s(i))?);
                    st.y.push(take(&names::lbfgs_y(i))?);
                }
                st.prev_grad = take(names::LBFGS_PREV_GRAD).ok();
                st.prev_step = take(names::LBFGS_PREV_STEP).ok();
                Ok(Self::Lbfgs(st))
            }
            other => Err(format!("unknown optimizer {other:?}")),
        }
    }
}

fn adam_step(st: &mut AdamState, x: &mut Tensor, g: &Tensor, lr: f64, precond: Option<&Preconditioner>) {
    let pulled;
    let g = match precond {
        Some(p) => {
            pulled = p.pull(g);
            &pulled
        }
        None => g,
    };
    st.step += 1;
    let t = st.step as i32;
    st.m = &st.m * ADAM_BETA1 + g * (1.0 - ADAM_BETA1);
    st.v = &st.v * ADAM_BETA2 + g.square() * (1.0 - ADAM_BETA2);
    let mhat = &st.m / (1.0 - ADAM_BETA1.powi(t));
    let vhat = &st.v / (1.0 - ADAM_BETA2.powi(t));
    let ratio = mhat / (vhat.sqrt() + ADAM_EPS);
    let update = match precond {
        // Adam's ratio is about +-1 at most while m and v are its own averages; after a zoom
        // resampled them with Lanczos's negative lobes, a v near zero under a non-zero m made
        // single pixels jump (saturated colour dots in a grey style). The clip bounds a step
        // by lr, as Adam intends (only for designs with a preconditioner: others keep their
        // fingerprints' exact behaviour).
        Some(p) => p.push(&(ratio.clamp(-1.0, 1.0) * lr)),
        None => ratio * lr,
    };
    let _ = x.f_sub_(&update).expect("adam update");
}

/// `a·b` as a 0-dim double tensor on the tensors' device: reading it back would wait for the
/// device, so the recursion below keeps its scalars there.
fn dot(a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).sum(Kind::Double)
}

/// L-BFGS with the two-loop recursion and PyTorch's step rule without line search: the first
/// step is scaled by 1/|g|_1, later steps use `lr` and the Hessian scale y·s / y·y.
///
/// Every scalar of the recursion stays a device tensor; `read` brings one back to the host,
/// which on a GPU waits for all queued work. A step reads two: whether the new curvature pair
/// is usable, and whether the direction descends (the two decisions that change what runs).
/// It read about 35 when each dot product came back on its own.
fn lbfgs_step(st: &mut LbfgsState, x: &mut Tensor, g: &Tensor, lr: f64, read: &mut dyn FnMut(&Tensor) -> f64) {
    if let (Some(pg), Some(ps)) = (&st.prev_grad, &st.prev_step) {
        let y = g - pg;
        if read(&dot(&y, ps)) > 1e-10 {
            if st.s.len() == LBFGS_HISTORY {
                drop(st.s.remove(0));
                drop(st.y.remove(0));
            }
            st.s.push(ps.shallow_clone());
            st.y.push(y);
        }
    }
    let mut dir = if st.s.is_empty() {
        -g
    } else {
        let rho: Vec<Tensor> = st.s.iter().zip(&st.y).map(|(s, y)| dot(y, s).reciprocal()).collect();
        let mut q = -g;
        let mut alpha = Vec::with_capacity(st.s.len());
        for i in (0..st.s.len()).rev() {
            let a = &rho[i] * dot(&st.s[i], &q);
            q -= &st.y[i] * &a;
            alpha.push(a);
        }
        alpha.reverse();
        let (yl, sl) = (st.y.last().unwrap(), st.s.last().unwrap());
        let h_diag = dot(yl, sl) / dot(yl, yl);
        let mut r = q * h_diag;
        for i in 0..st.s.len() {
            let beta = &rho[i] * dot(&st.y[i], &r);
            r += &st.s[i] * (&alpha[i] - beta);
        }
        r
    };
    let t = if st.s.is_empty() || read(&dot(g, &dir)) >= 0.0 {
        // Fresh start, or the history no longer gives a descent direction: steepest descent.
        st.s.clear();
        st.y.clear();
        dir = -g;
        let g1 = g.abs().sum(Kind::Double);
        g1.clamp_min(1e-30).reciprocal().clamp_max(1.0) * lr
    } else {
        Tensor::from(lr).to_device(g.device())
    };
    let step = dir * t;
    // No pixel moves more than LBFGS_MAX_STEP: scaled down on the device when one would.
    let biggest = step.abs().max().to_kind(Kind::Double);
    let step = &step * (biggest.clamp_min(LBFGS_MAX_STEP).reciprocal() * LBFGS_MAX_STEP);
    // The curvature pair must use the step actually taken after projection onto [0, 1].
    let before = x.copy();
    *x += &step;
    let _ = x.clamp_(0.0, 1.0);
    st.prev_grad = Some(g.shallow_clone());
    st.prev_step = Some(&*x - before);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Minimises sum((x - c)^2 * a) from zero; returns the final loss.
    fn minimise(kind: OptimizerKind, lr: f64, steps: usize) -> f64 {
        let c = Tensor::from_slice(&[0.3f32, 0.8, 0.1, 0.55]).reshape([1, 1, 2, 2]);
        let a = Tensor::from_slice(&[1.0f32, 3.0, 0.5, 2.0]).reshape([1, 1, 2, 2]);
        let mut x = Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu));
        let mut st = OptimState::new(kind, &x);
        for _ in 0..steps {
            let g = (&x - &c) * &a * 2.0;
            st.step(&mut x, &g, lr, None);
        }
        ((&x - &c).square() * &a).sum(Kind::Double).double_value(&[])
    }

    /// The L-BFGS step brings back at most two scalars from the device however long its
    /// history (each is a wait for the GPU), and still converges.
    #[test]
    fn an_lbfgs_step_reads_two_scalars_back_at_most() {
        let c = Tensor::from_slice(&[0.3f32, 0.8, 0.1, 0.55, 0.9, 0.2]).reshape([1, 1, 2, 3]);
        let a = Tensor::from_slice(&[1.0f32, 3.0, 0.5, 2.0, 1.5, 4.0]).reshape([1, 1, 2, 3]);
        let mut x = Tensor::zeros([1, 1, 2, 3], (Kind::Float, Device::Cpu));
        let mut st = LbfgsState::default();
        let (mut most, mut longest) = (0, 0);
        for _ in 0..30 {
            let g = (&x - &c) * &a * 2.0;
            let mut reads = 0;
            tch::no_grad(|| {
                lbfgs_step(&mut st, &mut x, &g, 1.0, &mut |t| {
                    reads += 1;
                    t.double_value(&[])
                })
            });
            most = most.max(reads);
            longest = longest.max(st.s.len());
        }
        assert!(longest > 2, "the history was used: {longest} pairs at most");
        assert!(most <= 2, "{most} reads in one step");
        let loss = ((&x - &c).square() * &a).sum(Kind::Double).double_value(&[]);
        assert!(loss < 1e-8, "{loss}");
    }

    #[test]
    fn both_optimisers_minimise_a_quadratic() {
        assert!(minimise(OptimizerKind::Adam, 0.05, 300) < 1e-4);
        assert!(minimise(OptimizerKind::Lbfgs, 1.0, 20) < 1e-8);
    }
}
