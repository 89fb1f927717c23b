//! The stack's side of an intercepted connection towards the real server: verified against the
//! host's trust roots plus the configured private CAs, never passed through when that fails.

use std::io;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ca::{pem_certs, ALPN};
use super::TlsError;

/// The host's trust roots, read once per process (before any netstack thread confines itself).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the host's trust roots");
        }
        found.certs
    })
}

/// The client configuration for upstream servers: host roots plus `extra_pems`, ALPN `h2`
/// and `http/1.1`. An extra PEM that does not parse is an error (it was asked for).
pub fn client_config(extra_pems: &[String]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // A host root rustls cannot use is skipped, as every TLS client does.
    roots.add_parsable_certificates(native_roots().iter().cloned());
    for pem in extra_pems {
        let certs = pem_certs(pem)?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        for cert in certs {
            roots.add(cert).map_err(TlsError::Rustls)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Why an upstream handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The server's certificate did not verify for the name: refused, never passed through.
    #[error("upstream certificate rejected: {0}")]
    Rejected(String),
    /// The name is not usable as a TLS server name.
    #[error("invalid server name {0:?}")]
    Name(String),
    /// Another handshake or I/O failure.
    #[error("upstream TLS handshake failed: {0}")]
    Io(#[source] io::Error),
}

/// Runs the TLS handshake with the server behind `tcp` for `sni`. Returns the stream and
/// whether `h2` was negotiated.
pub async fn handshake(
    config: Arc<ClientConfig>,
    tcp: TcpStream,
    sni: &str,
) -> Result<(TlsStream<TcpStream>, bool), UpstreamError> {
    let name =
        ServerName::try_from(sni.to_owned()).map_err(|_| UpstreamError::Name(sni.to_owned()))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(classify)?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((stream, h2))
}

/// Certificate problems are rejections; the rest are plain failures.
fn classify(e: io::Error) -> UpstreamError {
    let rejected = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if rejected {
        UpstreamError::Rejected(e.to_string())
    } else {
        UpstreamError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::{server_config, CertAuthority, LeafResolver};
    use crate::tls::generate_ca;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    /// A TLS server on loopback with leaves from a fresh CA; returns its address and CA PEM.
    async fn server() -> (std::net::SocketAddr, String) {
        let (cert, key) = generate_ca("upstream test CA").expect("CA");
        let ca = CertAuthority::from_pem(&cert, &key).expect("CA");
        let config = server_config(Arc::new(LeafResolver::new(ca, 8))).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = TlsAcceptor::from(config.clone());
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"hello").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (addr, cert)
    }

    #[tokio::test]
    async fn a_trusted_upstream_verifies_and_negotiates_h2() {
        let (addr, ca) = server().await;
        let config = client_config(&[ca]).expect("config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut tls, h2) = handshake(config, tcp, "svc.test").await.expect("verified");
        assert!(h2);
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn an_untrusted_upstream_is_rejected() {
        let (addr, _) = server().await;
        let (other, _) = generate_ca("other").expect("CA");
        let config = client_config(&[other]).expect("config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let err = handshake(config, tcp, "svc.test")
            .await
            .expect_err("refused");
        assert!(matches!(err, UpstreamError::Rejected(_)), "{err}");
    }

    #[test]
    fn a_bad_extra_ca_is_an_error() {
        assert!(client_config(&["nothing here".into()]).is_err());
    }
}
