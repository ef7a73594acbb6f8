//! A movie's style images as the command line names them: the positional STYLE (or the
//! built-in wheat field) for a movie of one style, or `--style NAME=PATH` once per style for a
//! movie that blends several (`--blend` says how, over time). A bare `--style PATH` is named by
//! its file stem.

use crate::commands::render::RenderFlags;
use engine::style::Style;
use engine::ParamError;
use proto::schedule::{check_style_name, Blend};
use std::path::{Path, PathBuf};

/// One style image's file as a submit uploads it.
pub struct Upload {
    /// Its file name, for messages and the job's label.
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// `NAME=PATH`, or a bare PATH named by its file stem.
pub fn parse_named(spec: &str) -> Result<(String, PathBuf), ParamError> {
    if let Some((name, path)) = spec.split_once('=') {
        if check_style_name(name).is_ok() && !path.is_empty() {
            return Ok((name.to_string(), PathBuf::from(path)));
        }
    }
    let path = PathBuf::from(spec);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    check_style_name(&stem).map_err(|_| {
        ParamError::new(
            "--style",
            format!(
                "{spec:?} has no name and its file stem {stem:?} is not one: write NAME=PATH, a name being a letter, then letters, digits, '_' or '-'"
            ),
        )
    })?;
    Ok((stem, path))
}

/// The movie's blend from `--style` and `--blend`: `None` for a movie of one style.
pub fn blend(flags: &RenderFlags) -> Result<Option<Blend>, ParamError> {
    if flags.styles.is_empty() {
        if flags.blend.is_some() {
            return Err(ParamError::new("--blend", "blends named styles: give them as --style NAME=PATH"));
        }
        return Ok(None);
    }
    let names = flags.styles.iter().map(|s| parse_named(s).map(|(name, _)| name)).collect::<Result<Vec<_>, _>>()?;
    proto::params::check_style_names(&names)?;
    Ok(Some(match flags.blend.as_deref() {
        None => Blend::equal(&names),
        Some(text) => Blend::parse(&names, text)?,
    }))
}

/// Reads and decodes every style a command names, in the order of the movie's style names:
/// the decoded styles (bad input fails before any work) and the files as read, to submit.
pub fn read(positional: Option<&Path>, flags: &RenderFlags) -> anyhow::Result<(Vec<Style>, Vec<Upload>)> {
    if !flags.styles.is_empty() {
        if let Some(path) = positional {
            anyhow::bail!("--style: give the style as STYLE ({}) or as --style NAME=PATH, not both", path.display());
        }
        let mut out = (Vec::new(), Vec::new());
        for spec in &flags.styles {
            let (_, path) = parse_named(spec)?;
            let (style, bytes) = Style::open_with_bytes(&path)?;
            out.0.push(style);
            out.1.push(Upload { file_name: file_name(&path), bytes });
        }
        return Ok(out);
    }
    Ok(match positional {
        Some(path) => {
            let (style, bytes) = Style::open_with_bytes(path)?;
            (vec![style], vec![Upload { file_name: file_name(path), bytes }])
        }
        None => (
            vec![Style::embedded()],
            vec![Upload { file_name: "wheatfield.jpg".into(), bytes: engine::style::EMBEDDED.to_vec() }],
        ),
    })
}

/// A soundtrack to send: its file, read for its size and checksum here and streamed from the
/// file in pieces at submit, never held whole (it may be hundreds of MiB).
#[derive(Debug, Clone)]
pub struct AudioFile {
    pub path: PathBuf,
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
}

/// The soundtrack `--audio` names, checked for size and hashed (FFmpeg checks its content where
/// it is muxed: the coordinator).
pub fn read_audio(flags: &RenderFlags) -> anyhow::Result<Option<AudioFile>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let Some(path) = &flags.audio else { return Ok(None) };
    let fail = |e: std::io::Error| anyhow::anyhow!("--audio: {}: {}", path.display(), e.to_string().to_lowercase());
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let limit = proto::limits::MAX_AUDIO_BYTES;
    let (mut hasher, mut size, mut piece) = (Sha256::new(), 0u64, vec![0u8; proto::BLOB_PIECE]);
    loop {
        let n = file.read(&mut piece).map_err(fail)?;
        if n == 0 {
            break;
        }
        hasher.update(&piece[..n]);
        size += n as u64;
        if size > limit {
            anyhow::bail!("--audio: {} is more than {} MiB, the most a soundtrack may be", path.display(), limit >> 20);
        }
    }
    let sha256 = proto::params::hex(&hasher.finalize());
    Ok(Some(AudioFile { path: path.clone(), file_name: file_name(path), size, sha256 }))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_are_named_or_take_their_file_stem() {
        assert_eq!(parse_named("a=x/first.jpg").unwrap(), ("a".into(), PathBuf::from("x/first.jpg")));
        assert_eq!(parse_named("x/autumn-2.png").unwrap(), ("autumn-2".into(), PathBuf::from("x/autumn-2.png")));
        // A path holding '=' whose left part is no name stays a path.
        assert_eq!(parse_named("x=y/ok.png").unwrap().0, "x");
        assert_eq!(parse_named("dir/a b=c.png").unwrap_err().field, "--style");
        let err = parse_named("x/2020 trip.jpg").unwrap_err();
        assert!(err.message.contains("write NAME=PATH"), "{}", err.message);
    }
}
