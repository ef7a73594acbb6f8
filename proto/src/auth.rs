//! Who is calling, on the wire: the metadata both sides agree on, and the client half (a
//! token attached to every call, a worker's session once it has one, and URLs that are never
//! silently downgraded).
//!
//! A principal proves itself with `authorization: Bearer TOKEN` (tokens come from the
//! coordinator's `--auth` file). A worker additionally sends the session its Register returned,
//! so that workers sharing one token (a Kubernetes Secret) still cannot act on each other's
//! attempts.

use std::sync::{Arc, Mutex};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

pub const AUTHORIZATION: &str = "authorization";
pub const SESSION: &str = "gramzoom-session";
/// Longest token accepted from a file or the environment; real ones are 32-64 characters.
pub const MAX_TOKEN_LEN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token: {0}")]
    Token(String),
    #[error("coordinator address {url:?}: {reason}")]
    Url { url: String, reason: String },
}

/// Checks a token read from a file or the environment: printable ASCII without spaces, so it
/// fits in gRPC metadata as it is.
pub fn check_token(token: &str) -> Result<(), AuthError> {
    if token.is_empty() {
        return Err(AuthError::Token("is empty".into()));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Token(format!("is longer than {MAX_TOKEN_LEN} characters")));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Token("may hold only printable ASCII characters, no spaces".into()));
    }
    Ok(())
}

/// The bearer token of a request, if it sent one.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// What a client attaches to every call: its token, and for a worker its session.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<AsciiMetadataValue>,
    session: Arc<Mutex<Option<AsciiMetadataValue>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token or a session.
        f.debug_struct("Credentials").field("bearer", &self.bearer.is_some()).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(token: Option<&str>) -> Result<Self, AuthError> {
        let bearer = match token {
            Some(t) => {
                check_token(t)?;
                let value = format!("Bearer {t}").parse().map_err(|_| AuthError::Token("not valid metadata".into()))?;
                Some(value)
            }
            None => None,
        };
        Ok(Self { bearer, session: Arc::default() })
    }

    /// Sets the session a Register returned; shared by every clone of these credentials.
    pub fn set_session(&self, session: &str) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = session.parse().ok();
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer {
            request.metadata_mut().insert(AUTHORIZATION, b.clone());
        }
        if let Some(s) = self.session.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            request.metadata_mut().insert(SESSION, s.clone());
        }
        Ok(request)
    }
}

/// What a client trusts and shows for an `https://` coordinator: the CA that signed the
/// coordinator's certificate, and for mTLS its own certificate and key (PEM).
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("ca", &self.ca.is_some()).field("identity", &self.identity.is_some()).finish()
    }
}

/// The endpoint for a coordinator URL. `https://` connects with TLS, verified against
/// `tls.ca`, and never falls back to plaintext; `http://` is plaintext, and refuses TLS
/// material (whoever passed `--ca` believes the connection is protected).
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<tonic::transport::Endpoint, AuthError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let bad = |reason: String| AuthError::Url { url: url.chars().take(200).collect(), reason };
    let https = match url.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => false,
        Some(("https", rest)) if !rest.is_empty() => true,
        _ => return Err(bad("expected http://HOST:PORT or https://HOST:PORT".into())),
    };
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW);
    if !https {
        if tls.ca.is_some() || tls.identity.is_some() {
            return Err(bad("TLS files were given for an http:// URL, which is plaintext; use https://".into()));
        }
        return Ok(endpoint);
    }
    let ca = tls.ca.as_ref().ok_or_else(|| {
        bad("https:// needs --ca FILE, the CA that signed the coordinator's certificate; it never falls back to plaintext".into())
    })?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    endpoint.tls_config(config).map_err(|e| bad(format!("tls: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn credentials_attach_the_token_and_the_session_once_known() {
        let mut c = Credentials::new(Some("s3cret-token")).unwrap();
        let r = c.call(tonic::Request::new(())).unwrap();
        assert_eq!(bearer(r.metadata()), Some("s3cret-token"));
        assert!(r.metadata().get(SESSION).is_none());
        c.clone().set_session("abc123");
        let r = c.call(tonic::Request::new(())).unwrap();
        assert_eq!(r.metadata().get(SESSION).unwrap(), "abc123");
        assert!(!format!("{c:?}").contains("s3cret"), "a token in a debug print");
    }

    #[test]
    fn bad_tokens_and_urls_are_refused() {
        for (token, why) in [("", "is empty"), ("a b", "printable"), ("tok\n", "printable")] {
            assert!(Credentials::new(Some(token)).unwrap_err().to_string().contains(why), "{token:?}");
        }
        assert!(Credentials::new(Some(&"x".repeat(MAX_TOKEN_LEN + 1))).is_err());
        let none = ClientTls::default();
        assert!(endpoint("http://coord:50051", &none).is_ok());
        let err = endpoint("https://coord:50051", &none).unwrap_err().to_string();
        assert!(err.contains("https:// needs --ca FILE") && err.contains("never falls back to plaintext"), "{err}");
        let ca = ClientTls { ca: Some(b"pem".to_vec()), identity: None };
        assert!(endpoint("http://coord:50051", &ca).unwrap_err().to_string().contains("plaintext; use https://"));
        assert!(endpoint("coord:50051", &none).is_err());
        assert!(endpoint("ftp://coord", &none).is_err());
    }
}
