//! The hand-off state between segments: everything frame `next_frame` needs, and nothing else.
//!
//! It is one safetensors file: the image in optimisation space (float, not 8-bit), the
//! optimiser's tensors, and metadata holding the frame index, the render fingerprint (so a state
//! only resumes the render that made it) and the optimiser's scalars. A SHA-256 over the tensor
//! payload detects truncation or corruption in transit or storage. Per-frame randomness is a
//! function of (seed, frame), so no RNG state is carried.

use crate::error::{EngineError, Result};
use crate::optim::OptimState;
use crate::params::hex;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const FORMAT: &str = "gramzoom-handoff-v1";

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

fn payload_digest(entries: &[(String, Vec<usize>, &[u8])]) -> String {
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, shape, bytes) in sorted {
        h.update(name.as_bytes());
        h.update(format!("{shape:?}").as_bytes());
        h.update(bytes);
    }
    hex(&h.finalize())
}

impl State {
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut tensors, scalars) = self.optim.to_parts();
        tensors.push(("image".into(), self.image.shallow_clone()));
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.size().iter().map(|&d| d as usize).collect(), tensor_bytes(t)))
            .collect();
        let entries: Vec<(String, Vec<usize>, &[u8])> =
            owned.iter().map(|(n, s, b)| (n.clone(), s.clone(), b.as_slice())).collect();
        let mut meta: HashMap<String, String> = scalars.into_iter().collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("next_frame".into(), self.next_frame.to_string());
        meta.insert("fingerprint".into(), self.fingerprint.clone());
        meta.insert("made_by".into(), self.made_by.clone());
        meta.insert("sha256".into(), payload_digest(&entries));
        let views =
            owned.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match")));
        safetensors::tensor::serialize(views, &Some(meta)).expect("serialising in memory cannot fail")
    }

    /// Parses and verifies a state; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path, device: Device) -> Result<Self> {
        let err = |reason: String| EngineError::State { path: origin.to_path_buf(), reason };
        let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a safetensors file: {e:?}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("unreadable header: {e:?}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(err(format!("format is {:?}, expected {FORMAT}", meta.get("format"))));
        }
        let mut entries = Vec::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(err(format!("tensor {name} is {:?}, expected F32", view.dtype())));
            }
            entries.push((name, view.shape().to_vec(), view.data()));
        }
        let digest = payload_digest(&entries);
        if meta.get("sha256") != Some(&digest) {
            return Err(err("checksum mismatch: the file is corrupt or truncated".into()));
        }
        let mut tensors = HashMap::new();
        for (name, shape, data) in entries {
            let floats: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            tensors.insert(name, Tensor::from_slice(&floats).reshape(shape.as_slice()).to_device(device));
        }
        let image = tensors.remove("image").ok_or_else(|| err("missing tensor image".into()))?;
        let next_frame = meta
            .get("next_frame")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("missing or invalid next_frame".into()))?;
        let fingerprint = meta.get("fingerprint").cloned().ok_or_else(|| err("missing fingerprint".into()))?;
        let optim = OptimState::from_parts(tensors, &meta).map_err(err)?;
        let made_by = meta.get("made_by").cloned().unwrap_or_default();
        if made_by.len() > 512 {
            return Err(err("made_by is over 512 bytes".into()));
        }
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
