//! TLS interception: which guest TLS connections the stack terminates itself (with a leaf
//! certificate minted per SNI from the sandbox's certificate authority) so that HTTP policy and
//! secret substitution can see inside them, and how the upstream side is verified.
//!
//! - [`ca`]: the CA ([`generate_ca`] makes one), leaves minted per SNI and cached.
//! - [`client_hello`]: SNI and ALPN from the guest's first bytes, read before deciding.
//! - [`policy`]: intercept, splice untouched, or refuse.
//! - [`upstream`]: the verified client side towards the real server.

pub mod ca;
pub mod client_hello;
pub mod policy;
pub mod upstream;

pub use ca::{generate_ca, server_config, CertAuthority, LeafResolver};

use std::sync::Arc;

/// TCP ports whose connections are looked at as TLS when interception is configured (and the
/// UDP ports where QUIC to intercepted hosts is refused).
pub const TLS_PORTS: &[u16] = &[443];

/// One more interception port, for the integration tests (their upstream servers cannot count
/// on binding the host's port 443); 0 for none.
#[cfg(feature = "fuzzing")]
pub(crate) static TEST_TLS_PORT: std::sync::atomic::AtomicU16 =
    std::sync::atomic::AtomicU16::new(0);

/// Whether connections to `port` are looked at as TLS (see [`TLS_PORTS`]).
pub(crate) fn is_tls_port(port: u16) -> bool {
    #[cfg(feature = "fuzzing")]
    if port != 0 && TEST_TLS_PORT.load(std::sync::atomic::Ordering::Relaxed) == port {
        return true;
    }
    TLS_PORTS.contains(&port)
}

/// Everything an intercepting stack needs, built once when it starts (the host's trust roots
/// are read then, before the stack's thread confines itself).
#[derive(Debug)]
pub(crate) struct Interceptor {
    /// Which connections are intercepted.
    pub policy: policy::TlsPolicy,
    /// The guest-facing server side (minted leaves, ALPN h2 and http/1.1).
    pub server: Arc<rustls::ServerConfig>,
    /// The verifying client side towards real servers.
    pub client: Arc<rustls::ClientConfig>,
}

impl Interceptor {
    /// Builds the interceptor of `config`, intercepting the hosts of `secrets` too.
    pub(crate) fn new(
        config: &TlsConfig,
        secrets: &[crate::secrets::Secret],
    ) -> Result<Interceptor, TlsError> {
        let ca = CertAuthority::from_pem(&config.ca_cert_pem, &config.ca_key_pem)?;
        let resolver = Arc::new(LeafResolver::new(ca, ca::LEAF_CACHE_SIZE));
        Ok(Interceptor {
            policy: policy::TlsPolicy::new(config, secrets),
            server: server_config(resolver)?,
            client: upstream::client_config(&config.upstream_ca_pems)?,
        })
    }
}

/// What can go wrong setting up interception. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA certificate PEM did not parse as an X.509 CA certificate.
    #[error("the sandbox CA certificate is not a valid PEM X.509 certificate: {0}")]
    CaCert(#[source] rcgen::Error),
    /// The CA key PEM did not parse.
    #[error("the sandbox CA key is not a valid PEM PKCS#8 key: {0}")]
    CaKey(#[source] rcgen::Error),
    /// The CA key does not belong to the CA certificate, or the certificate is no CA.
    #[error("the sandbox CA key does not match its certificate (or that is not a CA)")]
    CaMismatch,
    /// A PEM text held no certificate.
    #[error("no certificate in the PEM text")]
    NoCertificate,
    /// A PEM text did not parse.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// Minting a certificate failed.
    #[error("minting a certificate failed: {0}")]
    Mint(#[source] rcgen::Error),
    /// A leaf was asked for an empty or overlong name.
    #[error("no certificate for an empty or overlong server name")]
    BadName,
    /// rustls refused a configuration or key.
    #[error("TLS setup failed: {0}")]
    Rustls(#[source] rustls::Error),
}

/// How the stack intercepts the guest's TLS connections. `None` in [`crate::NetConfig::tls`]
/// means no interception at all (TLS is spliced like any TCP flow).
#[derive(Clone)]
pub struct TlsConfig {
    /// PEM of the certificate authority the guest trusts (installed by the agent at boot).
    pub ca_cert_pem: String,
    /// PEM (PKCS#8) of that authority's private key; leaf certificates are signed with it.
    pub ca_key_pem: String,
    /// Hosts whose connections are intercepted: `HOST`, `*.SUFFIX`, or `all`. The hosts of
    /// [`crate::NetConfig::secrets`] are intercepted too.
    pub intercept: Vec<String>,
    /// Hosts never intercepted (certificate-pinning clients), even when `intercept` matches.
    pub bypass: Vec<String>,
    /// Extra trust roots (PEM) for upstream servers, on top of the host's own roots.
    pub upstream_ca_pems: Vec<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs and error messages.
        f.debug_struct("TlsConfig")
            .field("intercept", &self.intercept)
            .field("bypass", &self.bypass)
            .field("upstream_cas", &self.upstream_ca_pems.len())
            .finish_non_exhaustive()
    }
}
