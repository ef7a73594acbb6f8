//! The hand-off state between segments: everything frame `next_frame` needs, and nothing else.
//! Its file format is `proto::handoff` (the coordinator checks uploads against the same
//! definition). Per-frame randomness is a function of (seed, frame), so no RNG state is carried.

use crate::error::{EngineError, Result};
use crate::optim::OptimState;
use proto::handoff::{self, Header};
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct State {
    /// The next frame to render; frames before it are done.
    pub next_frame: u32,
    /// 1x3xHxW float image, nominally in [0, 1].
    pub image: Tensor,
    pub optim: OptimState,
    pub fingerprint: String,
    /// What made it, in words (`RenderParams::summary`), so that a render refusing the state
    /// can say which setting differs; empty in states written before it existed.
    pub made_by: String,
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let v = Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().flatten(0, -1))
        .expect("float tensor");
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

impl State {
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut tensors, scalars) = self.optim.to_parts();
        tensors.push((handoff::IMAGE.into(), self.image.shallow_clone()));
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.size().iter().map(|&d| d as usize).collect(), tensor_bytes(t)))
            .collect();
        let entries: Vec<handoff::Entry> = owned.iter().map(|(n, s, b)| (n.clone(), s.clone(), b.as_slice())).collect();
        let header = Header {
            next_frame: self.next_frame,
            fingerprint: self.fingerprint.clone(),
            made_by: self.made_by.clone(),
            scalars: scalars.into_iter().collect(),
        };
        handoff::serialize(&header, &entries)
    }

    /// Parses and verifies a state; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path, device: Device) -> Result<Self> {
        let err = |reason: String| EngineError::State { path: origin.to_path_buf(), reason };
        let parsed = handoff::parse(bytes).map_err(|e| err(e.to_string()))?;
        let mut tensors = std::collections::HashMap::new();
        for (name, shape, data) in parsed.tensors {
            let floats: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            tensors.insert(name, Tensor::from_slice(&floats).reshape(shape.as_slice()).to_device(device));
        }
        let image = tensors.remove(handoff::IMAGE).expect("parse checks the image is there");
        let Header { next_frame, fingerprint, made_by, scalars } = parsed.header;
        let optim = OptimState::from_parts(tensors, &scalars).map_err(err)?;
        Ok(Self { next_frame, image, optim, fingerprint, made_by })
    }

    /// Writes atomically: a reader never sees a half-written state under `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |e: std::io::Error| EngineError::State { path: path.to_path_buf(), reason: e.to_string() };
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, self.to_bytes()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| EngineError::State { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::from_bytes(&bytes, path, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::OptimizerKind;

    fn exercised_state(kind: OptimizerKind) -> State {
        let mut x = Tensor::rand([1, 3, 8, 6], (Kind::Float, Device::Cpu));
        let mut optim = OptimState::new(kind, &x);
        for i in 0..4 {
            let g = (&x - 0.5) * (i as f64 + 1.0);
            optim.step(&mut x, &g, 0.5, None);
        }
        State { next_frame: 17, image: x, optim, fingerprint: "abc".into(), made_by: "64x48, vgg16".into() }
    }

    /// Continuing an optimisation from a restored state gives bit-identical results.
    #[test]
    fn optimiser_state_round_trips_exactly() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Lbfgs] {
            let mut a = exercised_state(kind);
            let mut b = State::from_bytes(&a.to_bytes(), Path::new("mem"), Device::Cpu).unwrap();
            assert_eq!((b.next_frame, b.fingerprint.as_str(), b.optim.kind()), (17, "abc", kind));
            assert_eq!(b.made_by, a.made_by);
            for i in 0..3 {
                let ga = (&a.image - 0.25) * (i as f64 + 2.0);
                let gb = (&b.image - 0.25) * (i as f64 + 2.0);
                a.optim.step(&mut a.image, &ga, 0.5, None);
                b.optim.step(&mut b.image, &gb, 0.5, None);
            }
            assert!(a.image.equal(&b.image), "{kind:?} diverged after restore");
        }
    }

    #[test]
    fn corruption_is_detected() {
        let mut bytes = exercised_state(OptimizerKind::Lbfgs).to_bytes();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        let e = State::from_bytes(&bytes, Path::new("mem"), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        let e = State::from_bytes(&bytes[..bytes.len() / 2], Path::new("mem"), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }
}
