//! Flags of `gramzoom serve` and `gramzoom-coordinator` (one definition for both binaries).

use crate::auth::Tokens;
use crate::error::{Error, Result};
use crate::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:50051 (port 0 picks a free port). Without --auth
    /// only a loopback address is accepted, unless --insecure.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Principals, one per line: ROLE NAME TOKEN, ROLE one of user, admin, worker, metrics.
    /// Every call must then carry a token; users see and act on their own jobs only; a metrics
    /// token may only scrape /metrics.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Also serve HTTP here: GET /metrics (Prometheus). With --auth a scrape needs a metrics or
    /// admin token; without it, loopback only unless --insecure, as for --listen.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Serve without --auth on a non-loopback address: anyone who reaches the port can submit,
    /// cancel and delete any job, and complete segments with garbage.
    #[arg(long)]
    pub insecure: bool,
    /// Serve TLS with this certificate (PEM; with --tls-key). Clients then use https:// URLs
    /// and --ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS, e.g. for workers.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Directory for the database and artifacts; created if missing, reused after a restart.
    #[arg(long)]
    pub data: PathBuf,
    /// Seconds a lease lasts without a heartbeat before the segment is requeued.
    #[arg(long, default_value_t = 30.0)]
    pub lease_secs: f64,
    /// Attempts per segment before its job fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds an attempt's render may make no progress (no optimiser iteration) before it is
    /// expired although its worker still heartbeats, e.g. on a hung GPU; more when the render
    /// is slow (see --stall-factor).
    #[arg(long, default_value_t = 120.0)]
    pub stall_secs: f64,
    /// An attempt may also stay quiet for this many times its slowest pace so far.
    #[arg(long, default_value_t = 10.0)]
    pub stall_factor: f64,
    /// A worker whose last N attempts all failed or ran out of lease, across jobs, is offered no
    /// work for --quarantine-secs (a bad GPU or a broken install would otherwise spend every
    /// job's retries); 0 never quarantines. `gramzoom workers` shows who is quarantined.
    #[arg(long, default_value_t = 3)]
    pub quarantine_after: u32,
    /// How long a quarantine lasts. After it, one more failure quarantines the worker again.
    #[arg(long, default_value_t = 600.0)]
    pub quarantine_secs: f64,
    /// MiB kept back under --data so that cancel and delete still work on a full disk.
    #[arg(long, default_value_t = 64)]
    pub disk_reserve_mib: u64,
    /// Frames per segment for jobs that do not choose (their first segment, with --segment-secs).
    #[arg(long, default_value_t = crate::DEFAULT_SEGMENT_FRAMES)]
    pub segment_frames: u32,
    /// For jobs that do not choose their segment length: after the first segment, cut the rest
    /// into segments of about this many seconds of work at its measured pace (0: keep
    /// --segment-frames). `gramzoom status` shows the length chosen.
    #[arg(long, default_value_t = crate::config::DEFAULT_SEGMENT_SECS)]
    pub segment_secs: f64,
    /// The highest --priority a user may submit at; admins are not limited.
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_USER_PRIORITY)]
    pub max_user_priority: i32,
    /// MiB of style uploads the coordinator holds in memory at once (each is checked whole);
    /// a submit beyond it waits a while for room, then is refused. At least one style (64).
    #[arg(long, default_value_t = crate::budget::DEFAULT_UPLOAD_BUDGET >> 20)]
    pub upload_budget_mib: u64,
    /// Worker registrations one token may hold at once (counted while heard from in the last
    /// minute); registrations never used are deleted after an hour.
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_WORKERS_PER_TOKEN)]
    pub max_workers_per_token: u32,
}

impl ServeArgs {
    /// The coordinator's configuration; reads `--auth`, and refuses to expose an open
    /// coordinator beyond loopback unless `--insecure`.
    pub fn config(&self) -> Result<Config> {
        let mut config = Config::new(self.data.clone());
        config.auth = match &self.auth {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Startup(format!("--auth {}: {e}", path.display())))?;
                let tokens =
                    Tokens::parse(&text).map_err(|e| Error::Startup(format!("--auth {}: {e}", path.display())))?;
                for name in tokens.weak() {
                    tracing::warn!(file = %path.display(), principal = %name, "this token is guessable (few distinct characters); make a new one with `openssl rand -hex 32`");
                }
                if let Ok(meta) = std::fs::metadata(path) {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o044 != 0 {
                        tracing::warn!(file = %path.display(), mode = %format!("{mode:o}"), "the tokens file is readable by other users of this machine; chmod 600 it");
                    }
                }
                Some(Arc::new(tokens))
            }
            None => None,
        };
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::Startup(format!("{flag} {}: {e}", path.display())))
        };
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::ServerTls {
                cert: read("--tls-cert", cert)?,
                key: read("--tls-key", key)?,
                client_ca: self.tls_client_ca.as_ref().map(|ca| read("--tls-client-ca", ca)).transpose()?,
            }),
            _ => None,
        };
        if let Some(http) = self.http.as_deref().filter(|h| config.auth.is_none() && !self.insecure && !is_loopback(h))
        {
            return Err(Error::invalid(
                "http",
                format!("{http} is not a loopback address: without --auth anyone who reaches it reads the farm's metrics; add --auth, or --insecure"),
            ));
        }
        if config.auth.is_none() && !self.insecure && !is_loopback(&self.listen) {
            return Err(Error::invalid(
                "--listen",
                format!(
                    "{} is reachable from other machines, and without --auth anyone there could submit, cancel or \
                     delete any job and complete segments with garbage; give --auth FILE, listen on 127.0.0.1, \
                     or pass --insecure on a network you trust",
                    crate::error::quoted_prefix(&self.listen)
                ),
            ));
        }
        config.lease = Duration::from_secs_f64(self.lease_secs.clamp(0.2, 3600.0));
        // Several heartbeats per lease, so one lost packet never costs a segment.
        config.heartbeat = (config.lease / 6).clamp(Duration::from_millis(50), Duration::from_secs(2));
        config.affinity_grace = (config.lease / 4).min(Duration::from_secs(2));
        config.max_attempts = self.max_attempts.max(1);
        config.segment_frames = self.segment_frames.max(1);
        config.segment_secs = self.segment_secs.clamp(0.0, 86_400.0);
        config.stall_floor = Duration::from_secs_f64(self.stall_secs.clamp(0.5, 86_400.0));
        config.stall_factor = self.stall_factor.clamp(1.0, 1000.0);
        config.quarantine_after = self.quarantine_after;
        config.max_user_priority = self.max_user_priority;
        config.max_workers_per_token = self.max_workers_per_token.max(1);
        config.upload_budget = self.upload_budget_mib.clamp(proto::limits::MAX_STYLE_BYTES >> 20, 1 << 20) << 20;
        config.quarantine = Duration::from_secs_f64(self.quarantine_secs.clamp(0.0, 7.0 * 86_400.0));
        config.reserve_bytes = self.disk_reserve_mib.min(1 << 20) << 20;
        Ok(config)
    }
}

/// Whether `listen` is a loopback address (`127.0.0.1:P`, `[::1]:P`, `localhost:P`).
fn is_loopback(listen: &str) -> bool {
    match listen.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen.rsplit_once(':').is_some_and(|(host, _)| host == "localhost"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a sigterm handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Binds `--listen` (and `--http`) and serves until Ctrl-C or SIGTERM: both binaries' `main`.
/// The bound addresses go to stderr (`listening on ADDR`, `http listening on ADDR`) for scripts
/// and tests that ask for port 0.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    // Before binding: a refused configuration must not hold the port even briefly.
    let config = args.config()?;
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::Startup(format!("binding {addr}: {e}")))
    };
    let listener = bind(args.listen.clone()).await?;
    let http = match &args.http {
        Some(addr) => Some(bind(addr.clone()).await?),
        None => None,
    };
    let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(Error::io("reading the listener's address"));
    eprintln!("listening on {}", addr(&listener)?);
    if let Some(h) = &http {
        eprintln!("http listening on {}", addr(h)?);
    }
    crate::run_with_http(listener, http, config, shutdown_signal()).await
}
