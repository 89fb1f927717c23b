//! The sandbox's certificate authority: leaf certificates minted per SNI on the fly, signed by
//! the CA the guest trusts, and cached so that a warm handshake does not mint again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// How far back a leaf's validity starts: guests whose clock runs behind must still accept it.
const LEAF_BACKDATE: Duration = Duration::days(1);
/// How long a leaf is valid after it was minted.
const LEAF_LIFETIME: Duration = Duration::days(7);
/// A cached leaf older than this is minted again (well before it expires).
const LEAF_REFRESH: StdDuration = StdDuration::from_secs(3 * 24 * 3600);
/// Most leaves kept; the least recently used goes first.
pub const LEAF_CACHE_SIZE: usize = 1024;
/// Longest SNI a leaf is minted for (a DNS name is at most 253 characters).
const MAX_NAME: usize = 253;
/// The ALPN protocols offered to the guest, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Creates a certificate authority (ECDSA P-256, `CA:true`, `keyCertSign`) named
/// `common_name`, valid for ten years from yesterday. Returns `(cert_pem, key_pem)`; the key
/// is PKCS#8 PEM, to be stored readable by its owner only.
pub fn generate_ca(common_name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Mint)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "msbvm sandbox");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - LEAF_BACKDATE;
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key).map_err(TlsError::Mint)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA that signs the leaves.
pub struct CertAuthority {
    /// The CA re-made from its parameters and key (rcgen signs with a `Certificate` issuer; the
    /// issuer name and key identifier it carries are those of the real CA).
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The real CA certificate, sent after the leaf.
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// The CA of `cert_pem`, signing with `key_pem` (PKCS#8). Errors when either does not
    /// parse or the key does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertAuthority, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(TlsError::CaKey)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(TlsError::CaCert)?;
        let ca_der = pem_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or(TlsError::NoCertificate)?;
        let issuer = params.self_signed(&key).map_err(TlsError::CaCert)?;
        // The re-made CA must carry the real CA's public key, or nothing it signs verifies.
        if issuer.params().is_ca == IsCa::NoCa || !contains(&ca_der, key.public_key_raw()) {
            return Err(TlsError::CaMismatch);
        }
        Ok(CertAuthority {
            issuer,
            key,
            ca_der,
        })
    }

    /// A fresh leaf for `name`, with the chain [leaf, CA].
    pub fn mint(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let leaf_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Mint)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(TlsError::Mint)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&leaf_key, &self.issuer, &self.key)
            .map_err(TlsError::Mint)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer =
            rustls::crypto::ring::sign::any_ecdsa_type(&key_der).map_err(TlsError::Rustls)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signer,
        ))
    }
}

/// Whether `needle` occurs in `haystack` (the CA's public key inside its certificate).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The certificates of a PEM text, in order.
pub(crate) fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

/// One cached leaf.
struct Cached {
    key: Arc<CertifiedKey>,
    minted: Instant,
    /// A use counter value; the smallest is the least recently used.
    used: u64,
}

/// The leaves minted so far, by name.
#[derive(Default)]
struct LeafCache {
    leaves: HashMap<String, Cached>,
    clock: u64,
}

/// Mints (or takes from its cache) the leaf for each handshake's SNI.
pub struct LeafResolver {
    ca: CertAuthority,
    cache: Mutex<LeafCache>,
    capacity: usize,
}

impl std::fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafResolver")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl LeafResolver {
    /// A resolver signing with `ca`, caching up to `capacity` leaves.
    pub fn new(ca: CertAuthority, capacity: usize) -> LeafResolver {
        LeafResolver {
            ca,
            cache: Mutex::new(LeafCache::default()),
            capacity: capacity.max(1),
        }
    }

    /// The leaf for `name` (lower-cased), minted unless a fresh one is cached.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(TlsError::BadName);
        }
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.cached(&name) {
            return Ok(key);
        }
        // Minted outside the lock: a slow mint must not stall other handshakes.
        let key = Arc::new(self.ca.mint(&name)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.leaves.len() >= self.capacity && !cache.leaves.contains_key(&name) {
            let oldest = cache
                .leaves
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                cache.leaves.remove(&oldest);
            }
        }
        cache.clock += 1;
        let used = cache.clock;
        cache.leaves.insert(
            name,
            Cached {
                key: key.clone(),
                minted: Instant::now(),
                used,
            },
        );
        Ok(key)
    }

    fn cached(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let clock = cache.clock;
        let entry = cache.leaves.get_mut(name)?;
        if entry.minted.elapsed() > LEAF_REFRESH {
            return None;
        }
        entry.used = clock;
        Some(entry.key.clone())
    }

    /// How many leaves are cached.
    pub fn cached_len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leaves
            .len()
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.leaf(hello.server_name()?) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, "minting a leaf certificate failed");
                None
            }
        }
    }
}

/// The server side the guest's intercepted handshakes meet: leaves from `resolver`, ALPN
/// `h2` and `http/1.1`.
pub fn server_config(resolver: Arc<LeafResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    fn resolver() -> (Arc<LeafResolver>, String) {
        let (cert, key) = generate_ca("test CA").expect("a CA");
        let ca = CertAuthority::from_pem(&cert, &key).expect("the CA parses");
        (Arc::new(LeafResolver::new(ca, 4)), cert)
    }

    fn client(ca_pem: &str) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(ca_pem).expect("pem") {
            roots.add(cert).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// Runs a handshake in memory; returns the server's certificate chain and ALPN.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, Option<Vec<u8>>), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let mut c = ClientConnection::new(client, name)?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).expect("read");
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("read");
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let certs = c.peer_certificates().expect("certs").to_vec();
                let alpn = c.alpn_protocol().map(<[u8]>::to_vec);
                return Ok((certs.into_iter().map(|c| c.into_owned()).collect(), alpn));
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn a_client_trusting_the_ca_accepts_minted_leaves() {
        let (resolver, ca) = resolver();
        let server = server_config(resolver.clone()).expect("config");
        let client = client(&ca);
        let (first, alpn) = handshake(server.clone(), client.clone(), "api.example.com")
            .expect("handshake with a minted leaf");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        handshake(server.clone(), client.clone(), "other.example.org").expect("second name");
        assert_eq!(resolver.cached_len(), 2);
        // A warm handshake gets the cached leaf, not a new one.
        let (again, _) = handshake(server, client, "API.example.com").expect("again");
        assert_eq!(first[0], again[0]);
        assert_eq!(resolver.cached_len(), 2);
    }

    #[test]
    fn a_client_trusting_another_ca_refuses() {
        let (resolver, _) = resolver();
        let (other, _) = generate_ca("other").expect("a CA");
        let server = server_config(resolver).expect("config");
        assert!(handshake(server, client(&other), "api.example.com").is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let (resolver, _) = resolver();
        let keep = resolver.leaf("keep.example").expect("leaf");
        for i in 0..10 {
            resolver.leaf(&format!("n{i}.example")).expect("leaf");
            // Used again each time, so it stays while others go.
            resolver.leaf("keep.example").expect("leaf");
        }
        assert_eq!(resolver.cached_len(), 4);
        let again = resolver.leaf("keep.example").expect("leaf");
        assert!(Arc::ptr_eq(&keep, &again));
    }

    #[test]
    fn bad_ca_input_gives_clear_errors() {
        let (cert, key) = generate_ca("test CA").expect("a CA");
        let (_, other_key) = generate_ca("other").expect("a CA");
        let err = CertAuthority::from_pem("not a pem", &key).expect_err("bad cert");
        assert!(err.to_string().contains("CA certificate"), "{err}");
        let err = CertAuthority::from_pem(&cert, "garbage").expect_err("bad key");
        assert!(err.to_string().contains("CA key"), "{err}");
        let err = CertAuthority::from_pem(&cert, &other_key).expect_err("mismatch");
        assert!(matches!(err, TlsError::CaMismatch), "{err}");
        let (resolver, _) = resolver();
        assert!(resolver.leaf("").is_err());
        assert!(resolver.leaf(&"a".repeat(300)).is_err());
    }
}
