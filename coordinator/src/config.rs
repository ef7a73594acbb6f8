//! How a coordinator runs: its data directory, leases and retries, segment length, who may call
//! (`--auth`), TLS, the progress watchdog and the disk reserve. `cli::ServeArgs` builds it from
//! flags; tests and the local render build it directly.

use crate::auth;
use crate::lease::Policy;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Segment length when a job does not choose one. Measured on the CPU at 256x256 a frame takes
/// about 2.2 s, at 512x512 about 9.7 s; 120 frames (4 s of a 30 fps movie) is then 4 to 20
/// minutes of CPU work and well under that on a GPU: a lost segment costs minutes, while the
/// per-segment overhead (a state hand-off, a chunk upload, one IDR frame) stays below 1%.
pub const DEFAULT_SEGMENT_FRAMES: u32 = 120;
/// Seconds of work a segment should hold once the first segment has been measured: a lost
/// segment costs at most a few minutes, while a hand-off and a key frame per segment stay well
/// under 1% of it on a GPU (a 1080p hand-off takes about a second).
pub const DEFAULT_SEGMENT_SECS: f64 = 180.0;
/// Jobs may not be cut into more segments than this.
pub const MAX_SEGMENTS: u32 = 100_000;

#[derive(Debug, Clone)]
pub struct Config {
    pub data: PathBuf,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub max_attempts: u32,
    pub segment_frames: u32,
    pub affinity_grace: Duration,
    /// The principals of `--auth`; `None` is an open coordinator (everyone acts as an admin).
    pub auth: Option<Arc<auth::Tokens>>,
    /// An attempt whose render makes no progress for the larger of `stall_floor` and
    /// `stall_factor` times its slowest pace so far is expired (see `watchdog`).
    pub stall_floor: Duration,
    pub stall_factor: f64,
    /// Serve TLS (and with a client CA, require client certificates); `None` is plaintext.
    pub tls: Option<ServerTls>,
    /// Bytes kept back under `--data` so that cancel and delete work on a full disk.
    pub reserve_bytes: u64,
    /// A worker whose last this-many attempts all failed (or ran out of lease) gets no work for
    /// `quarantine`; 0 never quarantines.
    pub quarantine_after: u32,
    pub quarantine: Duration,
    /// Work per segment, for jobs that leave the segment length to the coordinator: sized from
    /// the first segment's seconds per frame. Zero keeps `segment_frames`.
    pub segment_secs: f64,
    /// The highest priority a user may give a job (admins are not limited): one tenant's
    /// priority 2147483647 would otherwise put every other tenant's work behind its own.
    pub max_user_priority: i32,
    /// Bytes of style uploads held in memory at once (see `budget`).
    pub upload_budget: u64,
    /// Live worker registrations one principal (one token) may hold.
    pub max_workers_per_token: u32,
}

/// Default of `serve --max-workers-per-token`: a farm shares one worker token across its nodes.
pub const DEFAULT_MAX_WORKERS_PER_TOKEN: u32 = 4096;

/// Default of `serve --max-user-priority`.
pub const DEFAULT_MAX_USER_PRIORITY: i32 = 10;

/// The coordinator's certificate and key, and the CA its clients' certificates must chain to
/// when client certificates are required (mTLS); all PEM.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls").field("client_ca", &self.client_ca.is_some()).finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(data: PathBuf) -> Self {
        Self {
            data,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            max_attempts: 3,
            segment_frames: DEFAULT_SEGMENT_FRAMES,
            affinity_grace: Duration::from_secs(2),
            auth: None,
            stall_floor: Duration::from_secs(120),
            stall_factor: 10.0,
            tls: None,
            reserve_bytes: 64 << 20,
            quarantine_after: 3,
            quarantine: Duration::from_secs(600),
            segment_secs: DEFAULT_SEGMENT_SECS,
            max_user_priority: DEFAULT_MAX_USER_PRIORITY,
            upload_budget: crate::budget::DEFAULT_UPLOAD_BUDGET,
            max_workers_per_token: DEFAULT_MAX_WORKERS_PER_TOKEN,
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        Policy {
            lease_ms: self.lease.as_millis() as i64,
            max_attempts: self.max_attempts,
            affinity_grace_ms: self.affinity_grace.as_millis() as i64,
            quarantine_after: self.quarantine_after,
            quarantine_ms: self.quarantine.as_millis() as i64,
            segment_secs: self.segment_secs,
        }
    }
}
