//! TLS interception: which guest TLS connections the stack terminates itself (with a leaf
//! certificate minted per SNI from the sandbox's certificate authority) so that HTTP policy and
//! secret substitution can see inside them, and how the upstream side is verified.

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
