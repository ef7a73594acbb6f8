//! Reads PyTorch `torch.save` state dicts without Python: both the zip format (torch >= 1.6) and
//! the legacy format torchvision's VGG files were saved in. A small pickle machine understands
//! the opcodes `torch.save` emits; tensors are rebuilt from their storages with their offsets and
//! strides. Anything else in the pickle is kept as an opaque object and ignored.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("not a PyTorch file: {0}")]
    Format(String),
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    #[error("truncated pickle")]
    Truncated,
}

type R<T> = Result<T, PthError>;

#[derive(Debug, Clone)]
enum V {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String, String),
    Storage { key: String, kind: Kind },
    Tensor { key: String, kind: Kind, offset: i64, size: Vec<i64>, stride: Vec<i64> },
    Mark,
    Object,
}

impl V {
    fn ints(&self) -> R<Vec<i64>> {
        match self {
            V::Tuple(v) | V::List(v) => v
                .iter()
                .map(|x| if let V::Int(i) = x { Ok(*i) } else { Err(PthError::Format("expected an int tuple".into())) })
                .collect(),
            _ => Err(PthError::Format("expected a tuple".into())),
        }
    }
}

fn storage_kind(name: &str) -> R<Kind> {
    Ok(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => return Err(PthError::Format(format!("unsupported storage type {other}"))),
    })
}

fn elem_size(kind: Kind) -> usize {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 => 2,
        _ => 1,
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    memo: HashMap<u32, V>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos + n).ok_or(PthError::Truncated)?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn line(&mut self) -> R<String> {
        let end = self.data[self.pos..].iter().position(|&b| b == b'\n').ok_or(PthError::Truncated)?;
        let s = String::from_utf8_lossy(&self.data[self.pos..self.pos + end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn pop(&mut self) -> R<V> {
        self.stack.pop().ok_or_else(|| PthError::Format("pickle stack underflow".into()))
    }
    fn pop_mark(&mut self) -> R<Vec<V>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, V::Mark))
            .ok_or_else(|| PthError::Format("pickle mark missing".into()))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> R<&mut V> {
        self.stack.last_mut().ok_or_else(|| PthError::Format("pickle stack underflow".into()))
    }

    /// Runs one pickle to its STOP and returns its value.
    fn run(&mut self) -> R<V> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => drop(self.u8()?),         // PROTO
                0x95 => drop(self.take(8)?),      // FRAME
                b'.' => return self.pop(),        // STOP
                b'(' => self.stack.push(V::Mark), // MARK
                b'}' => self.stack.push(V::Dict(vec![])),
                b']' => self.stack.push(V::List(vec![])),
                b')' => self.stack.push(V::Tuple(vec![])),
                b'N' => self.stack.push(V::None),
                0x88 => self.stack.push(V::Bool),
                0x89 => self.stack.push(V::Bool),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(V::Int(v))
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack.push(V::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(V::Int(v))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        // Too wide for i64 (the legacy magic number): keep the raw bytes.
                        self.stack.push(V::Bytes(b.to_vec()));
                        continue;
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate().take(8) {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(V::Int(v))
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(V::Float)
                }
                b'X' | b'T' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(V::Str(s))
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(V::Str(s))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(V::Bytes(b))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(V::Bytes(b))
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or_else(|| PthError::Format(format!("pickle memo {k} missing")))?;
                    self.stack.push(v)
                }
                b'c' => {
                    let (m, n) = (self.line()?, self.line()?);
                    self.stack.push(V::Global(m, n))
                }
                0x93 => {
                    let (n, m) = (self.pop()?, self.pop()?);
                    match (m, n) {
                        (V::Str(m), V::Str(n)) => self.stack.push(V::Global(m, n)),
                        _ => return Err(PthError::Format("STACK_GLOBAL needs two strings".into())),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(V::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .ok_or_else(|| PthError::Format("pickle stack underflow".into()))?;
                    let items = self.stack.split_off(at);
                    self.stack.push(V::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(V::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect();
                    self.stack.push(V::Dict(pairs))
                }
                b'a' => {
                    let v = self.pop()?;
                    if let V::List(l) = self.top()? {
                        l.push(v)
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let V::List(l) = self.top()? {
                        l.extend(items)
                    }
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    if let V::Dict(d) = self.top()? {
                        d.push((k, v))
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let V::Dict(d) = self.top()? {
                        d.extend(items.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())))
                    }
                }
                b'b' => drop(self.pop()?), // BUILD: state (e.g. a state dict's _metadata) is not needed
                b'R' | 0x81 => {
                    let (args, f) = (self.pop()?, self.pop()?);
                    let v = reduce(f, args)?;
                    self.stack.push(v)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent(pid)?)
                }
                _ => return Err(PthError::Opcode(op, at)),
            }
        }
    }
}

fn persistent(pid: V) -> R<V> {
    let V::Tuple(t) = pid else { return Err(PthError::Format("persistent id is not a tuple".into())) };
    match (t.first(), t.get(1), t.get(2)) {
        (Some(V::Str(tag)), Some(V::Global(_, ty)), Some(V::Str(key))) if tag == "storage" => {
            Ok(V::Storage { key: key.clone(), kind: storage_kind(ty)? })
        }
        _ => Err(PthError::Format("unsupported persistent id".into())),
    }
}

fn reduce(f: V, args: V) -> R<V> {
    let V::Global(module, name) = f else { return Ok(V::Object) };
    let V::Tuple(a) = args else { return Ok(V::Object) };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => match a.first() {
            Some(V::Storage { key, kind }) => {
                let offset = match a.get(1) {
                    Some(V::Int(o)) => *o,
                    _ => return Err(PthError::Format("tensor offset missing".into())),
                };
                let size = a.get(2).ok_or_else(|| PthError::Format("tensor size missing".into()))?.ints()?;
                let stride = a.get(3).ok_or_else(|| PthError::Format("tensor stride missing".into()))?.ints()?;
                Ok(V::Tensor { key: key.clone(), kind: *kind, offset, size, stride })
            }
            _ => Err(PthError::Format("tensor without storage".into())),
        },
        ("torch._utils", "_rebuild_parameter") => Ok(a.into_iter().next().unwrap_or(V::None)),
        ("collections", "OrderedDict") => Ok(V::Dict(vec![])),
        _ => Ok(V::Object),
    }
}

/// The named tensors of a state dict (possibly nested under "state_dict"), as float tensors.
pub fn read(bytes: &[u8]) -> Result<HashMap<String, Tensor>, PthError> {
    let (root, storages) = if bytes.starts_with(b"PK\x03\x04") { read_zip(bytes)? } else { read_legacy(bytes)? };
    let dict = match root {
        V::Dict(d) => d,
        _ => return Err(PthError::Format("the file does not hold a dict of tensors".into())),
    };
    let dict = match dict.iter().find(|(k, _)| matches!(k, V::Str(s) if s == "state_dict")) {
        Some((_, V::Dict(inner))) => inner.clone(),
        _ => dict,
    };
    let mut out = HashMap::new();
    for (k, v) in dict {
        if let (V::Str(name), V::Tensor { key, kind, offset, size, stride }) = (k, v) {
            let raw = storages.get(&key).ok_or_else(|| PthError::Format(format!("storage {key} of {name} missing")))?;
            let numel = (raw.len() / elem_size(kind)) as i64;
            let needed = offset + size.iter().zip(&stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>() + 1;
            if size.iter().all(|&s| s > 0) && needed > numel {
                return Err(PthError::Format(format!("tensor {name} reaches past its storage")));
            }
            let storage = Tensor::from_slice(raw).view_dtype(kind);
            out.insert(
                name,
                storage.as_strided(size.as_slice(), stride.as_slice(), offset).to_kind(Kind::Float).contiguous(),
            );
        }
    }
    Ok(out)
}

fn read_zip(bytes: &[u8]) -> R<(V, HashMap<String, Vec<u8>>)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| PthError::Format(e.to_string()))?;
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| PthError::Format("zip without data.pkl".into()))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> R<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| PthError::Format(format!("{name}: {e}")))?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(|e| PthError::Format(e.to_string()))?;
        Ok(v)
    };
    let pickle = read_entry(&pkl)?;
    let root = Machine { data: &pickle, pos: 0, stack: vec![], memo: HashMap::new() }.run()?;
    let mut storages = HashMap::new();
    for name in &names {
        if let Some(key) = name.strip_prefix(&format!("{prefix}data/")) {
            storages.insert(key.to_string(), read_entry(name)?);
        }
    }
    Ok((root, storages))
}

/// Legacy layout: pickles of the magic number, protocol version and system info, then the
/// object, then the list of storage keys, then each storage as an 8-byte element count and raw
/// little-endian data.
fn read_legacy(bytes: &[u8]) -> R<(V, HashMap<String, Vec<u8>>)> {
    let mut m = Machine { data: bytes, pos: 0, stack: vec![], memo: HashMap::new() };
    const MAGIC: u128 = 0x1950a86a20f9469cfc6c;
    match m.run() {
        Ok(V::Bytes(b)) if b.len() == 10 && b[..] == MAGIC.to_le_bytes()[..10] => {}
        _ => return Err(PthError::Format("neither a zip archive nor a legacy torch.save file".into())),
    }
    m.memo.clear();
    m.run()?; // protocol version
    m.memo.clear();
    m.run()?; // sys info
    m.memo.clear();
    let root = m.run()?;
    let kinds = collect_storages(&root);
    m.memo.clear();
    let keys = match m.run()? {
        V::List(k) => k,
        _ => return Err(PthError::Format("storage key list missing".into())),
    };
    let mut storages = HashMap::new();
    for k in keys {
        let V::Str(key) = k else { return Err(PthError::Format("storage key is not a string".into())) };
        let kind =
            *kinds.get(&key).ok_or_else(|| PthError::Format(format!("storage {key} is not used by any tensor")))?;
        let n = u64::from_le_bytes(m.take(8)?.try_into().expect("8 bytes")) as usize;
        let data = m.take(n * elem_size(kind))?.to_vec();
        storages.insert(key, data);
    }
    Ok((root, storages))
}

fn collect_storages(v: &V) -> HashMap<String, Kind> {
    let mut out = HashMap::new();
    let mut walk = vec![v];
    while let Some(v) = walk.pop() {
        match v {
            V::Tensor { key, kind, .. } | V::Storage { key, kind } => {
                out.insert(key.clone(), *kind);
            }
            V::Dict(d) => d.iter().for_each(|(a, b)| walk.extend([a, b])),
            V::List(l) | V::Tuple(l) => walk.extend(l.iter()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixtures written by PyTorch 2.11's torch.save (tests/fixtures/README.md), in both layouts:
    /// strided and offset views, shared storage, half and double precision.
    #[test]
    fn reads_real_torch_save_files() {
        let files: [&[u8]; 2] = [
            include_bytes!("../../tests/fixtures/tiny_zip.pth"),
            include_bytes!("../../tests/fixtures/tiny_legacy.pth"),
        ];
        for bytes in files {
            let t = read(bytes).unwrap();
            let get = |k: &str| Vec::<f32>::try_from(t[k].flatten(0, -1)).unwrap();
            assert_eq!(t["features.0.weight"].size(), [2, 3, 2, 2]);
            assert_eq!(get("features.0.weight")[23], 23.0 / 8.0);
            assert_eq!(get("features.0.bias"), [0.5, -1.25]);
            assert_eq!(get("transposed"), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
            assert_eq!(get("offset"), [4., 5., 6., 7.]);
            assert_eq!(get("half"), [1.5, -2.0, 0.25]);
            assert_eq!((t["double"].size(), get("double")), (vec![2, 1], vec![3.0, 4.0]));
        }
        assert!(read(b"definitely not a pickle").is_err());
    }
}
