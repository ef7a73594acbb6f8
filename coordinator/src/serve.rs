//! Serving a coordinator: on TCP listeners (`gramzoom serve`, tests on port 0), or in this
//! process over in-memory pipes (`gramzoom render`), until a shutdown future resolves.

use crate::{http, service, web, Config, Coordinator, Error, Result};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the coordinator on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    run_with_http(listener, None, config, shutdown).await
}

/// Like `run`, with `/metrics` served on `http` too.
pub async fn run_with_http(
    listener: TcpListener,
    http: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr = |l: &TcpListener| l.local_addr().map_err(Error::io("reading the listener's address"));
    tracing::info!(addr = %addr(&listener)?, "coordinator listening");
    if let Some(h) = &http {
        tracing::info!(addr = %addr(h)?, "http listening (the dashboard, /metrics)");
    }
    // Replies go out at once: with Nagle's algorithm on, a small reply that follows another
    // still unacknowledged waits for the client's delayed ACK, 40 ms on Linux (`bench --farm`
    // showed it: heartbeats of 0.7 ms at the median took 44 ms at p99 with the database idle).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
        let s = s?;
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!(error = %e, "could not turn Nagle's algorithm off");
        }
        Ok(s)
    });
    run_with_incoming(incoming, http, config, shutdown).await
}

/// Serves the coordinator on any stream of connections (TCP, or in-memory pipes for an
/// in-process coordinator) until `shutdown` resolves.
pub async fn run_with_incoming<S, IO>(
    incoming: S,
    http: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()>
where
    S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    <IO as tonic::transport::server::Connected>::ConnectInfo: Clone + Send + Sync + 'static,
{
    // Opening takes a file lock, migrates, vacuums, empties scratch and writes a fsynced reserve:
    // blocking work, kept off the async runtime.
    let coordinator = tokio::task::spawn_blocking(move || Coordinator::open(config))
        .await
        .map_err(|e| Error::Startup(format!("opening the coordinator panicked: {e}")))??;
    let sweeper = tokio::spawn(coordinator.clone().sweep());
    let http = http.map(|listener| {
        let mut closed = coordinator.closing.subscribe();
        let app = http::router(coordinator.clone()).merge(web::router(coordinator.clone()));
        let tls = coordinator.config.tls.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = closed.wait_for(|c| *c).await;
            };
            let served = match tls {
                Some(tls) => web::tls::serve(listener, app, &tls, stop).await,
                None => {
                    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                    axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(|e| e.to_string())
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "the http listener failed");
            }
        })
    });
    let closing = coordinator.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("coordinator shutting down: ending watches and long polls");
        closing.closing.send_replace(true);
    };
    let result = service::serve(coordinator, incoming, shutdown).await;
    // Awaited after the abort: each task holds the coordinator, and with it the database, until
    // it is dropped, so returning earlier would let a caller remove the data directory under a
    // database still open (a local render's scratch directory: "checkpointing the database
    // failed error=disk I/O error" after every render).
    sweeper.abort();
    let _ = sweeper.await;
    if let Some(h) = http {
        h.abort();
        let _ = h.await;
    }
    result
}

/// A coordinator inside this process, reached through in-memory pipes: `gramzoom render` uses
/// it, so a local render needs no network at all and still speaks the real gRPC protocol.
pub struct InProcess {
    pub channel: tonic::transport::Channel,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<()>>,
}

impl InProcess {
    pub async fn start(config: Config) -> Result<Self> {
        let (connections, accepted) = tokio::sync::mpsc::unbounded_channel::<tokio::io::DuplexStream>();
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::UnboundedReceiverStream::new(accepted), Ok);
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(run_with_incoming(incoming, None, config, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let connections = connections.clone();
            async move {
                let (client, server) = tokio::io::duplex(1 << 20);
                connections.send(server).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the in-process coordinator stopped")
                })?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        });
        let channel = tonic::transport::Endpoint::from_static("http://in-process.invalid")
            .connect_with_connector(connector)
            .await?;
        Ok(Self { channel, stop, server })
    }

    /// Stops serving and waits for the coordinator to finish.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.server.await.unwrap_or_else(|e| Err(Error::Startup(format!("coordinator task: {e}"))))
    }
}
