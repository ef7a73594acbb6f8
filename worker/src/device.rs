//! `--device auto|cpu|cuda|cuda:N`.

use crate::error::{EngineError, ParamError};
use tch::Device;

pub fn parse(spec: &str) -> Result<Device, EngineError> {
    let unavailable = |reason: String| EngineError::Device { device: spec.to_string(), reason };
    let cuda_count = || if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match spec {
        "auto" => Ok(if cuda_count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match spec.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => n.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| {
                    ParamError::new("--device", format!("expected auto, cpu, cuda or cuda:N, got {spec:?}"))
                })?,
                None => {
                    return Err(ParamError::new(
                        "--device",
                        format!("expected auto, cpu, cuda or cuda:N, got {spec:?}"),
                    )
                    .into())
                }
            };
            match cuda_count() {
                0 => Err(unavailable(
                    "no CUDA device is visible (no driver, or gramzoom was built without the cuda feature)".into(),
                )),
                n if index >= n => {
                    Err(unavailable(format!("only {n} CUDA device(s) visible, cuda:0 to cuda:{}", n - 1)))
                }
                _ => Ok(Device::Cuda(index)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        assert_eq!(super::parse("cpu").unwrap(), tch::Device::Cpu);
        assert!(super::parse("gpu").unwrap_err().to_string().starts_with("--device: expected auto"));
        assert!(super::parse("cuda:x").unwrap_err().to_string().starts_with("--device: expected auto"));
    }
}
