//! The style images of a submit: they follow the header one after the other, in the order of
//! the job's style names, each declared (size, hash) by its first piece. Each is held in memory
//! against the upload budget only until it is checked (it decodes, its size is in bounds) and
//! stored once by its content, so a movie of eight styles needs no more room than one. A
//! soundtrack may follow them: written to scratch as it arrives (never held in memory), checked
//! by FFmpeg (`soundtrack::probe`) and stored once by content too. A submit that fails part-way
//! removes what it stored that no job uses: bad input leaves nothing.

use super::transfer::unique_name;
use super::Api;
use crate::error::{Error, Result};
use crate::store::{keys, ArtifactStore};
use crate::{db, sha256_hex, MAX_STYLE_BYTES};
use proto::v1::{self, submit_job_request};
use std::sync::Arc;
use tonic::{Status, Streaming};

/// What a submit brought besides its header, stored.
#[derive(Default)]
pub(super) struct Received {
    /// The styles' SHA-256s in order.
    pub styles: Vec<String>,
    pub audio: Option<String>,
}

/// Receives, checks and stores `names.len()` styles (`names`: each image's file name, for
/// messages), then the soundtrack `audio` names, if any.
pub(super) async fn receive(
    api: &Api,
    stream: &mut Streaming<v1::SubmitJobRequest>,
    names: &[String],
    audio: Option<&str>,
) -> Result<Received, Status> {
    let mut stored = Received::default();
    for (i, name) in names.iter().enumerate() {
        match receive_one(api, stream, name, i).await {
            Ok(sha) => stored.styles.push(sha),
            Err(status) => {
                forget(api, stored).await;
                return Err(status);
            }
        }
    }
    if let Some(name) = audio {
        match receive_audio(api, stream, name).await {
            Ok(sha) => stored.audio = Some(sha),
            Err(status) => {
                forget(api, stored).await;
                return Err(status);
            }
        }
    }
    // Nothing may follow.
    if let Some(message) = stream.message().await.transpose() {
        forget(api, stored).await;
        let what = match message? {
            v1::SubmitJobRequest { part: Some(submit_job_request::Part::Header(_)) } => {
                "only the first message may carry the header".to_string()
            }
            v1::SubmitJobRequest { part: Some(submit_job_request::Part::Audio(_)) } if audio.is_none() => {
                "a soundtrack arrived, but the header names none (audio_name)".to_string()
            }
            _ => format!("more style images arrived than the {} the job names", names.len()),
        };
        return Err(Error::invalid("style", what).into());
    }
    Ok(stored)
}

/// The field a message about style `i` names: `style` for the first (or only) one.
fn field(i: usize) -> &'static str {
    if i == 0 {
        "style"
    } else {
        "styles"
    }
}

async fn receive_one(
    api: &Api,
    stream: &mut Streaming<v1::SubmitJobRequest>,
    name: &str,
    i: usize,
) -> Result<String, Status> {
    let which = if i == 0 { String::new() } else { format!("style {} ({name:?}): ", i + 1) };
    let mut style = Vec::new();
    let mut declared: Option<(u64, String)> = None;
    // Held until the style is checked and stored: its bytes are in memory until then.
    let mut _room = None;
    loop {
        if let Some((size, _)) = &declared {
            if style.len() as u64 == *size {
                break;
            }
        }
        let Some(message) = stream.message().await? else {
            if declared.is_none() && i == 0 {
                // A submit with no style bytes at all: the image check below says what is wrong.
                break;
            }
            let got = declared.as_ref().map_or(0, |_| style.len());
            let message = match &declared {
                Some((size, _)) => format!("{which}the upload ended after {got} of the {size} bytes declared"),
                None => format!("{which}the upload ended before this style's bytes"),
            };
            return Err(Error::invalid(field(i), message).into());
        };
        let blob = match message.part {
            Some(submit_job_request::Part::Style(blob)) => blob,
            Some(submit_job_request::Part::Audio(_)) => {
                let message = format!("{which}a soundtrack arrived before the style's bytes were all there");
                return Err(Error::invalid(field(i), message).into());
            }
            _ => return Err(Error::invalid("header", "only the first message may carry the header").into()),
        };
        if declared.is_none() {
            let size = blob.total_size;
            if size > MAX_STYLE_BYTES {
                let message = format!("{which}style image is larger than {} MiB", MAX_STYLE_BYTES >> 20);
                return Err(Error::invalid(field(i), message).into());
            }
            _room = Some(api.0.uploads.reserve(size).await.map_err(Error::from)?);
            declared = Some((size, blob.sha256));
        }
        let size = declared.as_ref().map_or(0, |d| d.0);
        if (style.len() + blob.data.len()) as u64 > size {
            let message = format!("{which}more bytes arrived than the {size} the first piece declared");
            return Err(Error::invalid(field(i), message).into());
        }
        style.extend_from_slice(&blob.data);
    }
    let sha = sha256_hex(&style);
    if let Some((size, declared_sha)) = declared {
        if size != style.len() as u64 || (!declared_sha.is_empty() && declared_sha != sha) {
            return Err(Error::invalid(
                field(i),
                format!(
                    "{which}checksum mismatch: declared {size} bytes, received {} bytes with sha256 {sha}",
                    style.len()
                ),
            )
            .into());
        }
    }
    let (store, name, out) = (api.0.store.clone(), name.to_string(), sha.clone());
    tokio::task::spawn_blocking(move || check_and_store(&store, &name, i, &style, &sha))
        .await
        .expect("style check panicked")?;
    Ok(out)
}

/// Checks that `style` is an image a render can use, and stores it under its hash.
fn check_and_store(store: &Arc<dyn ArtifactStore>, name: &str, i: usize, style: &[u8], sha: &str) -> Result<()> {
    let field = field(i);
    let unreadable = |e: image::ImageError| {
        Error::invalid(field, format!("{name:?} is not a PNG or JPEG image: {}", e.to_string().to_lowercase()))
    };
    // The header first: a small file may declare a huge image, and decoding allocates what it
    // declares.
    let reader = image::ImageReader::new(std::io::Cursor::new(style))
        .with_guessed_format()
        .map_err(|e| Error::invalid(field, format!("{name:?}: {e}")))?;
    let (w, h) = reader.into_dimensions().map_err(unreadable)?;
    if u64::from(w) * u64::from(h) > proto::limits::MAX_STYLE_IMAGE_PIXELS {
        return Err(Error::invalid(
            field,
            format!(
                "{name:?} is {w}x{h}, more than the {} megapixels a style image may have",
                proto::limits::MAX_STYLE_IMAGE_PIXELS / 1_000_000
            ),
        ));
    }
    let img = image::load_from_memory(style).map_err(unreadable)?;
    if img.width() < 32 || img.height() < 32 {
        return Err(Error::invalid(
            field,
            format!("{name:?} is {}x{}; a style image needs at least 32x32 pixels", img.width(), img.height()),
        ));
    }
    let key = keys::style(sha);
    if !store.exists(&key) {
        // A scratch name of its own: submits of the same new style run at once, and a shared
        // name let one rename the other's file away (ENOENT). The key is the content's hash, so
        // whichever lands first is the same bytes.
        let tmp = store.scratch_dir().join(unique_name(&format!("style-{sha}")));
        // Whatever happens (a full disk), nothing stays behind in scratch.
        let placed =
            std::fs::write(&tmp, style).and_then(
                |()| {
                    if store.exists(&key) {
                        Ok(())
                    } else {
                        store.put_file(&key, &tmp)
                    }
                },
            );
        let _ = std::fs::remove_file(&tmp);
        placed.map_err(Error::store(format!("storing the style {key}")))?;
    }
    Ok(())
}

/// Removes what this submit stored that no job uses (a later part of the same submit was
/// refused, or the job could not be recorded).
pub(super) async fn forget(api: &Api, stored: Received) {
    let Received { styles, audio } = stored;
    let unused = api
        .0
        .db(move |c| {
            let mut keys: Vec<String> = db::unused_styles(c, styles)?.iter().map(|s| keys::style(s)).collect();
            if let Some(sha) = audio.filter(|sha| db::unused_audio(c, sha).unwrap_or(false)) {
                keys.push(keys::audio(&sha));
            }
            Ok(keys)
        })
        .await
        .unwrap_or_default();
    let store = api.0.store.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for key in unused {
            let _ = store.delete(&key);
        }
    })
    .await;
}

/// Receives a soundtrack into a scratch file (hashing it as it comes), checks it with FFmpeg
/// and stores it; returns its SHA-256.
async fn receive_audio(api: &Api, stream: &mut Streaming<v1::SubmitJobRequest>, name: &str) -> Result<String, Status> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;
    let store = api.0.store.clone();
    let tmp = store.scratch_dir().join(unique_name("audio"));
    // Removed on every way out; a crash leaves it to the scratch sweep at start.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let scratch = Scratch(tmp.clone());
    let mut file =
        tokio::fs::File::create(&tmp).await.map_err(Error::io("creating a scratch file")).map_err(Status::from)?;
    let mut hasher = Sha256::new();
    let (mut got, mut declared): (u64, Option<(u64, String)>) = (0, None);
    let most = proto::limits::MAX_AUDIO_BYTES;
    loop {
        if let Some((size, _)) = &declared {
            if got == *size {
                break;
            }
        }
        let Some(message) = stream.message().await? else {
            let message = match &declared {
                Some((size, _)) => format!("{name:?}: the upload ended after {got} of the {size} bytes declared"),
                None => format!("{name:?}: the upload ended before the soundtrack's bytes"),
            };
            return Err(Error::invalid("audio", message).into());
        };
        let Some(submit_job_request::Part::Audio(blob)) = message.part else {
            return Err(Error::invalid("audio", "only the soundtrack's bytes may follow the styles").into());
        };
        if declared.is_none() {
            if blob.total_size > most {
                let message = format!("{name:?} is {} bytes, at most {most} allowed", blob.total_size);
                return Err(Error::invalid("audio", message).into());
            }
            declared = Some((blob.total_size, blob.sha256.clone()));
        }
        let size = declared.as_ref().map_or(0, |d| d.0);
        if got + blob.data.len() as u64 > size {
            let message = format!("{name:?}: more bytes arrived than the {size} the first piece declared");
            return Err(Error::invalid("audio", message).into());
        }
        hasher.update(&blob.data);
        got += blob.data.len() as u64;
        file.write_all(&blob.data)
            .await
            .map_err(Error::io("writing the soundtrack to scratch"))
            .map_err(Status::from)?;
    }
    file.flush().await.map_err(Error::io("writing the soundtrack to scratch")).map_err(Status::from)?;
    drop(file);
    let sha = proto::params::hex(&hasher.finalize());
    let (size, declared_sha) = declared.unwrap_or_default();
    if !declared_sha.is_empty() && declared_sha != sha {
        let message =
            format!("{name:?}: checksum mismatch: declared {size} bytes, received {got} bytes with sha256 {sha}");
        return Err(Error::invalid("audio", message).into());
    }
    let (name, out) = (name.to_string(), sha.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let probe = crate::soundtrack::probe(&scratch.0, &name)?;
        tracing::debug!(codec = %probe.codec, seconds = probe.seconds, "soundtrack checked");
        let key = keys::audio(&sha);
        if !store.exists(&key) {
            store.put_file(&key, &scratch.0).map_err(Error::store(format!("storing the soundtrack {key}")))?;
        }
        Ok(())
    })
    .await
    .expect("soundtrack check panicked")?;
    Ok(out)
}
