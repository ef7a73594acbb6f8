//! `Threaded`: a frame sink on a thread of its own, so that encoding overlaps rendering.

use super::{EncodeError, FrameSink};
use crate::segment::Frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A sink on a thread of its own: colour conversion, H.264 or GIF encoding and PNG dumps run
/// there while the caller's thread (the torch thread) renders the next frame. At most `depth`
/// frames wait in between, so a slow disk or encoder holds the render back instead of growing
/// memory without limit (a 1080p frame is 6 MB).
pub struct Threaded {
    frames: Option<std::sync::mpsc::SyncSender<Msg>>,
    thread: Option<std::thread::JoinHandle<Result<(), EncodeError>>>,
    /// Set when the render is abandoned (cancelled or failed): frames still queued are dropped
    /// rather than encoded into an output nobody keeps.
    abandoned: Arc<AtomicBool>,
}

impl Threaded {
    /// Builds the sink with `open` on a new thread (sinks hold FFmpeg contexts that stay on the
    /// thread that made them) and returns once it is open, with `open`'s error if it failed.
    pub fn spawn(
        open: impl FnOnce() -> Result<Box<dyn FrameSink>, EncodeError> + Send + 'static,
        depth: usize,
    ) -> Result<Self, EncodeError> {
        let (frames, queue) = std::sync::mpsc::sync_channel::<Msg>(depth);
        let (opened_tx, opened) = std::sync::mpsc::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let thread = std::thread::Builder::new()
            .name("gramzoom-encode".into())
            .spawn(move || {
                let mut sink = match open() {
                    Ok(s) => {
                        let _ = opened_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return Ok(());
                    }
                };
                for msg in queue.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match msg {
                        Msg::Frame(frame) => sink.push_owned(frame)?,
                        Msg::Finish => return sink.finish(),
                    }
                }
                // The render failed or was cancelled: the sink is dropped, and with it the
                // partial output, never committed.
                Ok(())
            })
            .map_err(|e| EncodeError::Ffmpeg(format!("starting the encoder thread: {e}")))?;
        match opened.recv() {
            Ok(Ok(())) => Ok(Self { frames: Some(frames), thread: Some(thread), abandoned }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(EncodeError::Ffmpeg("the encoder thread ended while opening".into())),
        }
    }

    /// The encoder thread's outcome, once it has ended.
    fn outcome(&mut self) -> Result<(), EncodeError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(EncodeError::Ffmpeg("the encoder thread panicked".into())),
            None => Err(EncodeError::Ffmpeg("the encoder thread has already ended".into())),
        }
    }
}

impl FrameSink for Threaded {
    fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        self.push_owned(frame.clone())
    }

    fn push_owned(&mut self, frame: Frame) -> Result<(), EncodeError> {
        let sent = self.frames.as_ref().map(|tx| tx.send(Msg::Frame(frame)));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped taking frames: it failed; its error says why.
            _ => {
                self.frames = None;
                self.outcome().and(Err(EncodeError::Ffmpeg("the encoder stopped".into())))
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Result<(), EncodeError> {
        if let Some(tx) = self.frames.take() {
            // A send error means the thread already ended (it failed): its outcome says why.
            let _ = tx.send(Msg::Finish);
        }
        self.outcome()
    }
}

enum Msg {
    Frame(Frame),
    Finish,
}

impl Drop for Threaded {
    fn drop(&mut self) {
        // A render that failed: the thread drops its sink (and the partial file) and ends.
        if self.thread.is_some() {
            self.abandoned.store(true, Ordering::Relaxed);
            drop(self.frames.take());
            let _ = self.outcome();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{encode, frames};
    use super::super::{open, Fps, OutputKind, PartialFile};
    use super::*;

    /// A sink that fails on its third frame.
    struct Failing(u32);

    impl FrameSink for Failing {
        fn push(&mut self, _: &Frame) -> Result<(), EncodeError> {
            self.0 += 1;
            if self.0 == 3 {
                return Err(EncodeError::Ffmpeg("disk full".into()));
            }
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<(), EncodeError> {
            Ok(())
        }
    }

    /// A sink that takes `delay` per frame and records what it was given.
    struct Slow {
        delay: std::time::Duration,
        seen: Arc<std::sync::Mutex<Vec<u32>>>,
        finished: Arc<AtomicBool>,
    }

    impl FrameSink for Slow {
        fn push(&mut self, frame: &Frame) -> Result<(), EncodeError> {
            std::thread::sleep(self.delay);
            self.seen.lock().unwrap().push(frame.index);
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<(), EncodeError> {
            self.finished.store(true, Ordering::Relaxed);
            Ok(())
        }
    }

    fn slow(ms: u64) -> (Threaded, Arc<std::sync::Mutex<Vec<u32>>>, Arc<AtomicBool>) {
        let (seen, finished) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let sink =
            Slow { delay: std::time::Duration::from_millis(ms), seen: Arc::clone(&seen), finished: finished.clone() };
        (Threaded::spawn(move || Ok(Box::new(sink)), 2).unwrap(), seen, finished)
    }

    /// A slow encoder holds the render back (at most 2 frames wait) and gets every frame in
    /// order; a cancelled render stops it without encoding what was still queued.
    #[test]
    fn a_slow_encoder_gets_every_frame_in_order_and_a_cancel_stops_it() {
        let frames = frames(32, 32, 12);
        let (sink, seen, finished) = slow(25);
        let mut sink: Box<dyn FrameSink> = Box::new(sink);
        let t = std::time::Instant::now();
        for f in &frames {
            sink.push(f).unwrap();
        }
        // 12 frames, 3 of them in the queue or in hand when the last push returns.
        assert!(t.elapsed() >= std::time::Duration::from_millis(25 * 9), "pushes did not wait: {:?}", t.elapsed());
        sink.finish().unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..12).collect::<Vec<u32>>());
        assert!(finished.load(Ordering::Relaxed));

        let (mut sink, seen, finished) = slow(300);
        for f in &frames[..3] {
            sink.push(f).unwrap();
        }
        let t = std::time::Instant::now();
        drop(sink);
        assert!(t.elapsed() < std::time::Duration::from_millis(900), "cancel waited {:?}", t.elapsed());
        assert!(seen.lock().unwrap().len() <= 1, "encoded after the cancel: {:?}", seen.lock().unwrap());
        assert!(!finished.load(Ordering::Relaxed), "a cancelled output was finished");
    }

    #[test]
    fn an_encoder_on_its_own_thread_writes_the_same_bytes_and_reports_its_failures() {
        let dir = tempfile::tempdir().unwrap();
        let frames = frames(64, 48, 12);
        let direct = encode(dir.path(), "direct.mp4", &frames, |_| 0);
        let dest = dir.path().join("threaded.mp4");
        let file = PartialFile::create(&dest).unwrap();
        let mut sink: Box<dyn FrameSink> =
            Box::new(Threaded::spawn(move || open(OutputKind::Mp4, file, 64, 48, Fps { num: 30, den: 1 }), 2).unwrap());
        for f in &frames {
            sink.push_owned(f.clone()).unwrap();
        }
        sink.finish().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), direct);

        // Dropped without `finish` (a failed render): nothing appears under the name.
        let dest = dir.path().join("abandoned.mp4");
        let file = PartialFile::create(&dest).unwrap();
        let mut sink =
            Threaded::spawn(move || open(OutputKind::Mp4, file, 64, 48, Fps { num: 30, den: 1 }), 2).unwrap();
        sink.push(&frames[0]).unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "a partial output was left behind");

        // A failure on the thread reaches the renderer at a later push or at finish.
        let mut sink: Box<dyn FrameSink> = Box::new(Threaded::spawn(|| Ok(Box::new(Failing(0))), 1).unwrap());
        let pushed: Vec<_> = frames.iter().map(|f| sink.push(f)).collect();
        let failed = pushed.iter().find_map(|r| r.as_ref().err()).map(|e| e.to_string());
        let failed = failed.or_else(|| sink.finish().err().map(|e| e.to_string()));
        assert_eq!(failed.as_deref(), Some("ffmpeg: disk full"));
        // An open that fails is reported by spawn itself.
        let err = Threaded::spawn(|| Err(EncodeError::Gif("too wide".into())), 1).err().unwrap();
        assert_eq!(err.to_string(), "gif: too wide");
    }
}
