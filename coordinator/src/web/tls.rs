//! The HTTP listener over TLS. When `serve` has a certificate (`--tls-cert`, `--tls-key`) the
//! dashboard and `/metrics` are served with it too: a sign-in sends a token, and a session
//! cookie is as good as one, so neither may cross the network in the clear while gRPC is
//! encrypted. Client certificates are not asked for here: the dashboard's callers are browsers,
//! and they sign in with a token.

use crate::ServerTls;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// Marks a request that arrived over this TLS listener (cookies are then `Secure`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Secure;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The server's rustls configuration from PEM certificate chain and key.
fn server_config(tls: &ServerTls) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert: {e}"))?;
    if certs.is_empty() {
        return Err("--tls-cert holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| format!("--tls-key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert and --tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` over TLS on `listener` until `stop` resolves. Each request carries the peer's
/// address (`ConnectInfo`, for the sign-in limit) and [`Secure`].
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: &ServerTls,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(tls)?));
    tokio::pin!(stop);
    loop {
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting an https connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => return tracing::debug!(%peer, "tls handshake timed out"),
            };
            let service = tower::ServiceExt::map_request(app, move |mut request: axum::http::Request<_>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                request.extensions_mut().insert(Secure);
                request
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "https connection ended with an error");
            }
        });
    }
}
