//! Pretrained VGG weights: torchvision's published state dicts (`.pth`) or `.safetensors`, an
//! explicit file or the one `gramzoom weights download` cached; without either, deterministic
//! random features.

use crate::error::{EngineError, Result};
use crate::params::hex;
use crate::vgg::{Network, Vgg};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// torchvision's official files. The 8 hex digits in the name are the start of the file's
/// SHA-256, which is how torchvision itself verifies them.
pub fn official_url(network: Network) -> Option<&'static str> {
    match network {
        Network::Vgg16 => Some("https://download.pytorch.org/models/vgg16-397923af.pth"),
        Network::Vgg19 => Some("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
        Network::Multiscale => None,
    }
}

/// `$GRAMZOOM_CACHE`, else `$XDG_CACHE_HOME/gramzoom`, else `~/.cache/gramzoom`; weights live in
/// its `weights/` folder.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("GRAMZOOM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("gramzoom")
    });
    base.join("weights")
}

/// The downloaded weights for `network`: the official file if present, else any
/// `<network>-<hash>.pth|.safetensors` that `download` verified into the cache (from a mirror).
pub fn cached(network: Network) -> Option<PathBuf> {
    let dir = cache_dir();
    let official = dir.join(official_url(network)?.rsplit('/').next()?);
    if official.is_file() {
        return Some(official);
    }
    let prefix = format!("{}-", network.name());
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            name.starts_with(&prefix)
                && hash_in_name(name).is_some()
                && matches!(ext, "pth" | "safetensors")
                && p.is_file()
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Reads a weights file into named float tensors on the CPU.
pub fn read(path: &Path) -> Result<(HashMap<String, Tensor>, String)> {
    let err = |reason: String| EngineError::Weights { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string().to_lowercase()))?;
    let digest = hex(&Sha256::digest(&bytes));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let tensors = match ext.as_str() {
        "safetensors" => read_safetensors(&bytes).map_err(err)?,
        "pth" | "pt" | "bin" => crate::pth::read(&bytes).map_err(|e| err(e.to_string()))?,
        _ => return Err(err(format!("unknown weights format {ext:?}; use a torchvision .pth or a .safetensors file"))),
    };
    Ok((tensors, digest))
}

fn read_safetensors(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    use safetensors::tensor::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e:?}"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::from_slice(
                &data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
            ),
            Dtype::F16 => Tensor::from_slice(
                &data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i16).collect::<Vec<_>>(),
            )
            .view_dtype(Kind::Half)
            .to_kind(Kind::Float),
            Dtype::BF16 => Tensor::from_slice(
                &data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i16).collect::<Vec<_>>(),
            )
            .view_dtype(Kind::BFloat16)
            .to_kind(Kind::Float),
            other => return Err(format!("tensor {name} has dtype {other:?}; F32, F16 or BF16 expected")),
        };
        out.insert(name, t.reshape(shape.as_slice()));
    }
    Ok(out)
}

/// The weights digest a render of each network would carry (see `WeightsOrigin::digest`),
/// without loading them: the SHA-256 of the file `resolve` would read, streamed, or the random
/// design's name. A file both networks would read (an explicit `--weights`) is hashed once. A
/// worker reports these when it registers, so that a job's later segments only go to workers
/// whose states its own can resume.
pub fn digests(explicit: Option<&Path>) -> Result<Vec<(Network, String)>> {
    let mut hashed: Vec<(PathBuf, String)> = Vec::new();
    let mut out = Vec::new();
    for network in Network::ALL {
        let path = match network.pretrainable() {
            true => explicit.map(Path::to_path_buf).or_else(|| cached(network)),
            false => None,
        };
        let digest = match path {
            None => crate::vgg::WeightsOrigin::Random(crate::vgg::RandomDesign::DEFAULT).digest(),
            Some(p) => match hashed.iter().find(|(q, _)| *q == p) {
                Some((_, d)) => d.clone(),
                None => {
                    let d = file_sha256(&p)?;
                    hashed.push((p, d.clone()));
                    d
                }
            },
        };
        out.push((network, digest));
    }
    Ok(out)
}

/// The SHA-256 of a file, read in pieces.
pub fn file_sha256(path: &Path) -> Result<String> {
    let err =
        |e: std::io::Error| EngineError::Weights { path: path.to_path_buf(), reason: e.to_string().to_lowercase() };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(err)?;
    Ok(hex(&hasher.finalize()))
}

/// The network to render with, and whether it is random (the caller tells the user).
/// A network without pretrained weights (multi-scale) is random whatever `explicit` says: a
/// worker's `--weights` is the VGG file for the jobs that ask for one.
pub fn resolve(network: Network, explicit: Option<&Path>, device: Device) -> Result<Vgg> {
    let path = match explicit {
        _ if !network.pretrainable() => None,
        Some(p) => Some(p.to_path_buf()),
        None => cached(network),
    };
    match path {
        Some(path) => {
            let (tensors, digest) = read(&path)?;
            Vgg::from_tensors(network, tensors, &path, digest, device)
        }
        None => Ok(Vgg::random(network, device)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{url}: sha256 {got} does not start with {want}; the download is corrupt and was discarded")]
    Hash { url: String, want: String, got: String },
    #[error("{url}: the file name carries no hash (name-<hex>.pth); pass --sha256 to verify it")]
    NoHash { url: String },
}

/// The hash prefix torchvision puts in its file names: `vgg16-397923af.pth` -> `397923af`.
pub fn hash_in_name(file_name: &str) -> Option<String> {
    let stem = file_name.rsplit_once('.').map_or(file_name, |(s, _)| s);
    let (_, h) = stem.rsplit_once('-')?;
    (h.len() >= 8 && h.chars().all(|c| c.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

/// Downloads `url` into `dir`, verifying its SHA-256 against `sha256` (a prefix is enough) or
/// the hash in the file name. The file appears under its name only once verified; a corrupt or
/// interrupted download leaves nothing behind. `progress(done, total)` is called as bytes arrive.
pub fn download(
    url: &str,
    dir: &Path,
    sha256: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> std::result::Result<PathBuf, DownloadError> {
    use std::io::{Read, Write};
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("weights.pth").to_string();
    let want = sha256
        .map(str::to_ascii_lowercase)
        .or_else(|| hash_in_name(&name))
        .ok_or_else(|| DownloadError::NoHash { url: url.into() })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path: path.clone(), source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dest = dir.join(&name);
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let http = |reason: String| DownloadError::Http { url: url.into(), reason };
    let mut resp = ureq::get(url).call().map_err(|e| http(e.to_string()))?;
    let total = resp.body().content_length();
    let mut reader = resp.body_mut().with_config().limit(2 << 30).reader();
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut hasher = Sha256::new();
        let (mut buf, mut done) = (vec![0u8; 1 << 16], 0u64);
        loop {
            let n = reader.read(&mut buf).map_err(|e| http(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(&tmp))?;
            done += n as u64;
            progress(done, total);
        }
        if let Some(t) = total.filter(|&t| t != done) {
            return Err(http(format!("connection closed after {done} of {t} bytes")));
        }
        file.sync_all().map_err(io(&tmp))?;
        let got = hex(&hasher.finalize());
        if !got.starts_with(&want) {
            return Err(DownloadError::Hash { url: url.into(), want: want.clone(), got });
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}
