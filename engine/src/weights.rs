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

/// One of torchvision's published files: where it is, its whole SHA-256 and its size.
#[derive(Debug, Clone, Copy)]
pub struct Official {
    pub url: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

/// torchvision's official files. The 8 hex digits in the name are the start of the file's
/// SHA-256 (how torchvision itself verifies them); the whole digest is checked here.
pub fn official(network: Network) -> Option<Official> {
    match network {
        Network::Vgg16 => Some(Official {
            url: "https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256: "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            bytes: 553_433_881,
        }),
        Network::Vgg19 => Some(Official {
            url: "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            sha256: "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
            bytes: 574_673_361,
        }),
        Network::Multiscale => None,
    }
}

pub fn official_url(network: Network) -> Option<&'static str> {
    official(network).map(|o| o.url)
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
    #[error("{var}: {reason}")]
    Mirror { var: String, reason: String },
}

/// How long a first-use fetch waits to resolve and connect, and for the response to begin:
/// where the network is unreachable the render goes on with the built-in network after a few
/// seconds, not after the operating system's minute-long TCP timeout.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);
/// A download whose bytes stop coming for this long is abandoned (and leaves nothing behind).
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a first use fetches `network`'s weights from: torchvision's file, or a mirror (an
/// in-house server, an air-gapped farm's store, the tests' local server) named by
/// `GRAMZOOM_<NETWORK>_URL`, whose whole SHA-256 must then be in `GRAMZOOM_<NETWORK>_SHA256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSource {
    pub url: String,
    pub sha256: String,
}

impl FetchSource {
    pub fn for_network(network: Network) -> std::result::Result<Option<Self>, DownloadError> {
        let upper = network.name().to_ascii_uppercase();
        let (url_var, sha_var) = (format!("GRAMZOOM_{upper}_URL"), format!("GRAMZOOM_{upper}_SHA256"));
        let Some(url) = std::env::var(&url_var).ok().filter(|u| !u.is_empty()) else {
            return Ok(official(network).map(|o| Self { url: o.url.into(), sha256: o.sha256.into() }));
        };
        let sha256 = std::env::var(&sha_var).unwrap_or_default().trim().to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DownloadError::Mirror {
                var: sha_var,
                reason: format!("{url_var} is set, so this must be the file's whole sha256 (64 hex digits)"),
            });
        }
        Ok(Some(Self { url, sha256 }))
    }

    /// The cache's name for the file: `<network>-<first 8 hex digits>.<pth|safetensors>`, which
    /// `cached` finds (for torchvision's file, its own name).
    fn file_name(&self, network: Network) -> String {
        let ext = if self.url.to_ascii_lowercase().ends_with(".safetensors") { "safetensors" } else { "pth" };
        format!("{}-{}.{ext}", network.name(), &self.sha256[..8])
    }
}

/// The weights a render of `network` uses when no `--weights` is given: the cached file, or,
/// on first use, the file fetched from `source` into the cache and verified. `Ok(None)` for a
/// network without pretrained weights. `progress(done, total)` is called as bytes arrive.
pub fn fetch_on_first_use(
    network: Network,
    source: &FetchSource,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> std::result::Result<Option<PathBuf>, DownloadError> {
    if !network.pretrainable() {
        return Ok(None);
    }
    if let Some(path) = cached(network) {
        return Ok(Some(path));
    }
    let name = source.file_name(network);
    download_as(&source.url, &cache_dir(), Some(&source.sha256), Some(&name), progress).map(Some)
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
    download_as(url, dir, sha256, None, progress)
}

/// `download`, saving under `name` rather than the URL's last segment.
fn download_as(
    url: &str,
    dir: &Path,
    sha256: Option<&str>,
    name: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> std::result::Result<PathBuf, DownloadError> {
    use std::io::{Read, Write};
    let name = match name {
        Some(n) => n.to_string(),
        None => url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("weights.pth").to_string(),
    };
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(CONNECT_TIMEOUT * 2))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| http(e.to_string()))?;
    let total = resp.body().content_length();
    let mut reader = resp.body_mut().with_config().limit(2 << 30).reader();
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut hasher = Sha256::new();
        let (mut buf, mut done) = (vec![0u8; 1 << 16], 0u64);
        loop {
            let n = reader.read(&mut buf).map_err(|e| match total {
                Some(t) => http(format!("connection closed after {done} of {t} bytes ({e})")),
                None => http(format!("connection closed after {done} bytes ({e})")),
            })?;
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
