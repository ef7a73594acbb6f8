//! One render spread over several devices (`--device cuda:0,cuda:1`): a thread per extra
//! device, each with its own copy of the network, computes the blocks (`block`) the render
//! thread hands it, while the render thread computes its own share on the first device. The
//! image, the optimiser and the zoom stay on the first device.
//!
//! Results come back to the first device and are reduced there in block order, whichever device
//! computed them, so the sums are the same operations in the same order as on one device: with
//! the same thread count per device, a render spread over `cpu,cpu` is bit-identical to one on
//! `cpu` with the same blocks. What crosses between devices per iteration is small: each
//! block's image crop and gradient, the layers' Gram sums (a few MB), or the sliced distance's
//! projections.

use crate::vgg::Vgg;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tch::Device;

type Job = Box<dyn FnOnce(&Vgg) + Send>;

struct Helper {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// The extra devices of a render and their threads.
pub struct Spread {
    helpers: Vec<Helper>,
    devices: Vec<Device>,
}

impl Spread {
    /// Threads for `extra` devices, each with `net` copied to it.
    pub fn new(net: &Vgg, extra: &[Device]) -> Self {
        let helpers = extra
            .iter()
            .enumerate()
            .map(|(i, &device)| {
                let (tx, rx) = mpsc::channel::<Job>();
                let copy = net.to_device(device);
                let thread = std::thread::Builder::new()
                    .name(format!("gramzoom-device-{}", i + 1))
                    .spawn(move || {
                        for job in rx {
                            job(&copy);
                        }
                    })
                    .expect("spawning a device thread");
                Helper { jobs: Some(tx), thread: Some(thread) }
            })
            .collect();
        Self { helpers, devices: extra.to_vec() }
    }

    /// Every device, the first (the render thread's) included.
    pub fn count(&self) -> usize {
        self.helpers.len() + 1
    }

    pub fn extra_devices(&self) -> &[Device] {
        &self.devices
    }
}

impl Drop for Spread {
    fn drop(&mut self) {
        for h in &mut self.helpers {
            h.jobs = None;
        }
        for h in &mut self.helpers {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A block's work: runs with the network of the device it was given to and returns what the
/// first device reduces (already moved there).
pub(crate) type Work<R> = Box<dyn FnOnce(&Vgg) -> R + Send>;

/// Runs `make(b)` for blocks 0..`count` and hands each result to `reduce` in block order. On one
/// device each block runs and is reduced in turn (a block's memory at a time); spread, block b
/// runs on device b mod the count, all at once, and the results are reduced when all are in.
pub(crate) fn run<R: Send + 'static>(
    spread: Option<&Spread>,
    primary: &Vgg,
    count: usize,
    mut make: impl FnMut(usize) -> Work<R>,
    mut reduce: impl FnMut(usize, R),
) {
    let Some(spread) = spread.filter(|s| !s.helpers.is_empty()) else {
        for b in 0..count {
            let r = make(b)(primary);
            reduce(b, r);
        }
        return;
    };
    let devices = spread.count();
    // Each device thread computes with the render thread's thread count (CPU kernels' last bits
    // follow it).
    let threads = tch::get_num_threads();
    let (tx, rx) = mpsc::channel::<(usize, R)>();
    let mut mine = Vec::new();
    for b in 0..count {
        let work = make(b);
        match b % devices {
            0 => mine.push((b, work)),
            d => {
                let tx = tx.clone();
                let job: Job = Box::new(move |net: &Vgg| {
                    tch::set_num_threads(threads);
                    let _ = tx.send((b, work(net)));
                });
                let sent = spread.helpers[d - 1].jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
                assert!(sent, "device thread {d} is gone");
            }
        }
    }
    drop(tx);
    let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
    for (b, work) in mine {
        results[b] = Some(work(primary));
    }
    for (b, r) in rx {
        results[b] = Some(r);
    }
    for (b, r) in results.into_iter().enumerate() {
        reduce(b, r.unwrap_or_else(|| panic!("block {b}: its device thread failed")));
    }
}
