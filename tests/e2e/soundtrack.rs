//! Soundtracks: muxed into the MP4 as AAC, started at the offset, cut or padded with silence to
//! the movie's length; a file that is not audio is refused before anything renders.

use crate::helpers::{decode_video, example, gramzoom, stderr, tempdir, SHALLOW, SMALL};
use ffmpeg_next as ffmpeg;
use std::path::Path;

/// A mono 16-bit WAV of `seconds` of a 440 Hz tone at 44.1 kHz (a rate the output is not in).
fn tone(path: &Path, seconds: f64) {
    wav(path, seconds, |t| 0.5 * (std::f64::consts::TAU * 440.0 * t).sin());
}

/// A drum at `bpm` from second `first`: a 60 Hz thump with a burst of noise on each beat and a
/// quieter one between, over a hiss at -40 dB as any recording has (aubio drops beats that fall
/// in blocks quieter than -90 dB, which only a synthetic signal has between its beats).
fn drum(path: &Path, seconds: f64, bpm: f64, first: f64) {
    let period = 60.0 / bpm;
    // Noise in [-1, 1) from the time alone: the same file every run.
    let noise = |t: f64| {
        let mut x = (t * 48_000.0) as u64 ^ 0x9e37_79b9_7f4a_7c15;
        x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    wav(path, seconds, |t| {
        let hiss = 0.01 * noise(t + 1000.0);
        if t < first {
            return hiss;
        }
        let since = (t - first).rem_euclid(period);
        let half = (t - first).rem_euclid(period / 2.0);
        let thump = 0.6 * (std::f64::consts::TAU * 60.0 * since).sin() * (-25.0 * since).exp();
        hiss + thump + 0.4 * noise(t) * (-60.0 * since).exp() + 0.1 * noise(t + 500.0) * (-200.0 * half).exp()
    });
}

/// A mono 16-bit WAV at 44.1 kHz of `sample(t)`, t in seconds.
fn wav(path: &Path, seconds: f64, sample: impl Fn(f64) -> f64) {
    let rate = 44_100u32;
    let n = (seconds * f64::from(rate)) as u32;
    let mut wav = Vec::new();
    wav.extend(b"RIFF");
    wav.extend((36 + 2 * n).to_le_bytes());
    wav.extend(b"WAVEfmt ");
    wav.extend(16u32.to_le_bytes());
    wav.extend(1u16.to_le_bytes()); // PCM
    wav.extend(1u16.to_le_bytes()); // mono
    wav.extend(rate.to_le_bytes());
    wav.extend((2 * rate).to_le_bytes());
    wav.extend(2u16.to_le_bytes());
    wav.extend(16u16.to_le_bytes());
    wav.extend(b"data");
    wav.extend((2 * n).to_le_bytes());
    for i in 0..n {
        let v = (sample(f64::from(i) / f64::from(rate)) * 32767.0) as i16;
        wav.extend(v.to_le_bytes());
    }
    std::fs::write(path, wav).unwrap();
}

/// The output's audio: its codec, sample rate and first channel's samples, as a player decodes
/// them (priming samples dropped).
fn decode_audio(path: &Path) -> (String, u32, Vec<f32>) {
    ffmpeg::init().unwrap();
    let mut input = ffmpeg::format::input(path).unwrap();
    let stream = input.streams().best(ffmpeg::media::Type::Audio).expect("an audio stream");
    let index = stream.index();
    let mut decoder =
        ffmpeg::codec::context::Context::from_parameters(stream.parameters()).unwrap().decoder().audio().unwrap();
    let codec = decoder.id().name().to_string();
    let mut samples = Vec::new();
    let mut frame = ffmpeg::frame::Audio::empty();
    let take = |frame: &ffmpeg::frame::Audio, samples: &mut Vec<f32>| {
        assert_eq!(frame.format(), ffmpeg::format::Sample::F32(ffmpeg::format::sample::Type::Planar));
        samples.extend_from_slice(&frame.plane::<f32>(0)[..frame.samples()]);
    };
    for (s, packet) in input.packets() {
        if s.index() == index {
            decoder.send_packet(&packet).unwrap();
            while decoder.receive_frame(&mut frame).is_ok() {
                take(&frame, &mut samples);
            }
        }
    }
    decoder.send_eof().unwrap();
    while decoder.receive_frame(&mut frame).is_ok() {
        take(&frame, &mut samples);
    }
    (codec, decoder.rate(), samples)
}

/// The audio stream's duration as the container lists it.
fn stream_seconds(path: &Path) -> f64 {
    let input = ffmpeg::format::input(path).unwrap();
    let stream = input.streams().best(ffmpeg::media::Type::Audio).unwrap();
    stream.duration() as f64 * f64::from(stream.time_base())
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// A 1-second tone played from its quarter second under a 1.5-second movie: AAC of the
/// movie's length within a frame, the tone where it belongs, silence after it ends; and the
/// same movie in segments through the store keeps its frames and its sound.
#[test]
fn a_soundtrack_is_muxed_at_its_offset_and_cut_or_padded_to_the_movie() {
    let dir = tempdir();
    let d = dir.path();
    tone(&d.join("tone.wav"), 1.0);
    let wheat = example("wheatfield.jpg");
    let out = d.join("movie.mp4");
    let mut args = vec!["render", wheat.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend(SMALL.iter().chain(SHALLOW));
    args.extend(["--frames", "15", "--fps", "10", "--segment-frames", "6"]);
    let tone_wav = d.join("tone.wav");
    args.extend(["--audio", tone_wav.to_str().unwrap(), "--audio-offset", "0.25"]);
    let r = gramzoom(&args, d);
    assert!(r.status.success(), "{}", stderr(&r));
    let video = decode_video(&out);
    assert_eq!(video.frames, 15);
    let (codec, rate, samples) = decode_audio(&out);
    assert_eq!((codec.as_str(), rate), ("aac", 48_000));
    // Decoded, the last AAC frame comes whole (1024 samples, 21 ms at most past the end).
    let seconds = samples.len() as f64 / f64::from(rate);
    let listed = stream_seconds(&out);
    eprintln!("audio {seconds:.4} s decoded, {listed:.4} s listed, for a 1.5 s movie ({} samples)", samples.len());
    for s in [seconds, listed] {
        assert!((s - 1.5).abs() < 0.1, "the soundtrack lasts {s} s, the movie 1.5 s: more than a frame apart");
    }
    // The tone for its last 0.75 s (amplitude 0.5, RMS 0.35; mono goes to both channels at
    // -3 dB, 0.25), then silence to the end.
    let at = |s: f64| (s * f64::from(rate)) as usize;
    let (sound, quiet) = (rms(&samples[at(0.05)..at(0.7)]), rms(&samples[at(0.8)..]));
    eprintln!("rms while the tone plays {sound:.3}, after it {quiet:.4}");
    assert!((sound - 0.25).abs() < 0.03, "the tone's rms is {sound}");
    assert!(quiet < 0.01, "after the tone ends: rms {quiet}");

    // A silence first (a negative offset): the tone starts half a second in.
    let late = d.join("late.mp4");
    args[3] = late.to_str().unwrap();
    let n = args.len();
    args[n - 1] = "-0.5";
    let r = gramzoom(&args, d);
    assert!(r.status.success(), "{}", stderr(&r));
    let (_, _, samples) = decode_audio(&late);
    assert!(rms(&samples[..at(0.45)]) < 0.01 && rms(&samples[at(0.6)..at(1.4)]) > 0.2, "the tone starts at 0.5 s");
}

/// A file that is not audio, or audio for a GIF: refused, naming the flag, nothing written.
#[test]
fn a_soundtrack_that_is_not_audio_is_refused() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "not a song").unwrap();
    // Past the limit: refused by the client before a byte is sent (a sparse file: no disk).
    std::fs::File::create(d.join("huge.wav")).unwrap().set_len((512 << 20) + 1).unwrap();
    tone(&d.join("tone.wav"), 0.2);
    let wheat = example("wheatfield.jpg");
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    for (audio, output, want) in [
        (p("notes.txt"), "out.mp4", "audio: \"notes.txt\" is not a file FFmpeg reads"),
        (wheat.to_str().unwrap().to_string(), "out.mp4", "audio: \"wheatfield.jpg\" has no audio stream"),
        (p("tone.wav"), "out.gif", "--audio: a soundtrack needs an .mp4 output"),
        (p("missing.wav"), "out.mp4", "missing.wav: no such file"),
        (p("huge.wav"), "out.mp4", "huge.wav is more than 512 MiB, the most a soundtrack may be"),
    ] {
        let out = p(output);
        let mut args = vec!["render", wheat.to_str().unwrap(), "-o", &out, "--audio", &audio];
        args.extend(SMALL.iter().chain(SHALLOW));
        let r = gramzoom(&args, d);
        assert!(!r.status.success(), "{audio} {output}");
        assert!(stderr(&r).contains(want), "{audio}: {}", stderr(&r));
        assert!(!d.join(output).exists(), "{output} was written");
    }
}

/// `--beats`: aubio's tracker hears a drum at 120 beats per minute from a quarter second, and
/// beat keys land on its beats: every beat of the movie within 30 ms, the tempo within a beat
/// per minute, the grid moved by the offset, a render with a beat-keyed zoom; and the errors.
#[test]
fn beat_keys_follow_the_soundtrack_beats() {
    let dir = tempdir();
    let d = dir.path();
    drum(&d.join("drum.wav"), 10.0, 120.0, 0.25);
    wav(&d.join("silence.wav"), 10.0, |_| 0.0);
    let drum_wav = d.join("drum.wav");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--no-estimate", "--size", "64x48", "--fps", "10", "--seconds", "8"];
        args.extend(["--audio", drum_wav.to_str().unwrap()]);
        args.extend(extra);
        gramzoom(&args, d)
    };
    let beats_of = |out: &std::process::Output| -> (usize, f64, Vec<f64>) {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with("tempo: ")).unwrap_or_else(|| panic!("no tempo in {text}"));
        // "tempo: 16 beats of the soundtrack (120.0 beats per minute), at 0.25, 0.75, ..., s"
        let count: usize = line["tempo: ".len()..].split(' ').next().unwrap().parse().unwrap();
        let bpm: f64 = line.split('(').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        let times = line.split(", at ").nth(1).unwrap().trim_end_matches(" s").split(", ");
        (count, bpm, times.filter_map(|t| t.parse().ok()).collect())
    };
    let r = plan(&["--beats", "--zoom", "0:(1.5), 4b:(3)"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let (count, bpm, times) = beats_of(&r);
    eprintln!("{count} beats at {bpm} bpm: {times:?}");
    assert_eq!(count, 16, "0.25 s to 7.75 s");
    assert!((bpm - 120.0).abs() < 1.0, "{bpm} beats per minute");
    let on_the_drum = |times: &[f64], first: f64| {
        assert!(times.len() >= 8, "{times:?}");
        for (i, t) in times.iter().enumerate() {
            let truth = first + 0.5 * i as f64;
            assert!((t - truth).abs() < 0.03, "beat {i} at {t} s, played at {truth} s");
        }
    };
    on_the_drum(&times, 0.25);
    // The movie starting 0.1 s into the song: every beat 0.1 s earlier.
    let r = plan(&["--beats", "--audio-offset", "0.1"]);
    assert!(r.status.success(), "{}", stderr(&r));
    on_the_drum(&beats_of(&r).2, 0.15);

    // Through the job API, segments and all: the render takes the grid.
    let out = d.join("beats.mp4");
    let wheat = example("wheatfield.jpg");
    let mut args = vec!["render", wheat.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend(SMALL.iter().chain(SHALLOW));
    args.extend(["--fps", "10", "--frames", "16", "--segment-frames", "5", "--audio", drum_wav.to_str().unwrap()]);
    args.extend(["--beats", "--zoom", "0:(1.5), 2b:(3)"]);
    let r = gramzoom(&args, d);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(decode_video(&out).frames, 16);

    let silence = d.join("silence.wav");
    for (extra, want) in [
        (vec!["--beats", "--bpm", "120"], "cannot be used with"),
        (vec!["--beats", "--audio", silence.to_str().unwrap()], "--beats: the beat tracker found 0 beats"),
    ] {
        let mut args = vec!["plan", "--no-estimate", "--size", "64x48", "--seconds", "4"];
        if !extra.contains(&"--audio") {
            args.extend(["--audio", drum_wav.to_str().unwrap()]);
        }
        args.extend(extra.iter().copied());
        let r = gramzoom(&args, d);
        assert!(!r.status.success() && stderr(&r).contains(want), "{extra:?}: {}", stderr(&r));
    }
    // No tracker on PATH: said, with what to install.
    let mut args = vec!["plan", "--no-estimate", "--size", "64x48", "--seconds", "4", "--beats"];
    args.extend(["--audio", drum_wav.to_str().unwrap()]);
    let r = crate::helpers::command(d).env("PATH", "/nonexistent").args(&args).output().unwrap();
    assert!(stderr(&r).contains("needs aubio's beat tracker, aubiotrack"), "{}", stderr(&r));
}

/// The audio stream's packets, as bytes.
fn audio_packets(path: &Path) -> Vec<Vec<u8>> {
    ffmpeg::init().unwrap();
    let mut input = ffmpeg::format::input(path).unwrap();
    let index = input.streams().best(ffmpeg::media::Type::Audio).expect("an audio stream").index();
    input.packets().filter(|(s, _)| s.index() == index).map(|(_, p)| p.data().unwrap_or(&[]).to_vec()).collect()
}

/// A soundtrack already in AAC that covers the movie is copied packet for packet from its
/// offset, lasting the movie's length within half a packet; one that needs silence first is
/// transcoded.
#[test]
fn a_soundtrack_in_aac_is_copied_as_it_is() {
    let dir = tempdir();
    let d = dir.path();
    tone(&d.join("tone.wav"), 3.0);
    let wheat = example("wheatfield.jpg");
    let render = |out: &str, frames: &str, audio: &Path, offset: &str| {
        let out = d.join(out);
        let mut args = vec!["render", wheat.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend(SMALL.iter().chain(SHALLOW));
        args.extend(["--frames", frames, "--fps", "10", "--audio", audio.to_str().unwrap()]);
        args.extend(["--audio-offset", offset]);
        let r = gramzoom(&args, d);
        assert!(r.status.success(), "{}", stderr(&r));
        out
    };
    // A 3-second movie with the tone transcoded to AAC: the source of the next.
    let source = render("source.mp4", "30", &d.join("tone.wav"), "0");
    let copied = render("copied.mp4", "10", &source, "0.5");
    let (all, part) = (audio_packets(&source), audio_packets(&copied));
    let start = all.iter().position(|p| *p == part[0]).expect("the first packet is one of the source's");
    assert_eq!(&all[start..start + part.len()], &part[..], "the packets follow the source's from there");
    // 1024 samples a packet at 48 kHz: the offset's packet is the 24th (its priming one first).
    let at = start as f64 * 1024.0 / 48_000.0;
    let listed = stream_seconds(&copied);
    eprintln!("copied {} packets from {at:.3} s; the audio lasts {listed:.4} s for a 1 s movie", part.len());
    assert!((at - 0.5).abs() <= 0.05, "copied from {at} s, not 0.5 s");
    assert!((listed - 1.0).abs() <= 0.012, "the copied soundtrack lasts {listed} s, the movie 1 s");
    assert_eq!(decode_audio(&copied).0, "aac");
    // Silence first cannot be copied: transcoded, and still the movie's length.
    let late = render("late.mp4", "10", &source, "-0.2");
    let late_packets = audio_packets(&late);
    // (Silence encodes to the same few bytes whoever encodes it: only packets of sound count.)
    let shared = late_packets.iter().filter(|p| p.len() > 64 && all.contains(p)).count();
    assert!(shared == 0, "{shared} packets of a soundtrack to pad were copied");
    assert!((stream_seconds(&late) - 1.0).abs() < 0.03);
}
