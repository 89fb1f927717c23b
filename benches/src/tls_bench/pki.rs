//! The bench's certificates, made fresh with rcgen on every run: the upstream's private test
//! CA and its leaf, and the sandbox CA the netstack mints its leaves from.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

use crate::image_bench::BenchResult;

/// A certificate authority (ECDSA P-256) and its PEM forms.
pub struct Authority {
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8), as [`msbvm_netstack::tls::TlsConfig::ca_key_pem`] wants.
    pub key_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate with its private key, ready for a rustls server.
pub struct Leaf {
    /// The leaf alone (the client trusts its issuer directly).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Authority {
    /// A new authority named `common_name`.
    pub fn new(common_name: &str) -> BenchResult<Authority> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_error("generating a CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA parameters"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("self-signing the CA"))?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert,
            key,
        })
    }

    /// A leaf for `names` (DNS names or IP addresses) signed by this authority.
    pub fn issue(&self, names: &[&str]) -> BenchResult<Leaf> {
        let (cert, key) = self.sign(names)?;
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Like [`Authority::issue`], as PEM texts `(certificate, PKCS#8 key)`: for a server in
    /// another machine (the in-L1 bench's upstream).
    pub fn issue_pem(&self, names: &[&str]) -> BenchResult<(String, String)> {
        let (cert, key) = self.sign(names)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn sign(&self, names: &[&str]) -> BenchResult<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_error("generating a leaf key"))?;
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(rcgen_error("leaf parameters"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen_error("signing the leaf"))?;
        Ok((cert, key))
    }
}

/// The certificates of a PEM text as a root store (at least one must parse).
pub fn roots_from_pem(pem: &str) -> BenchResult<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("reading a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("adding a trust root: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(Arc::new(roots))
}

/// The rustls provider every side of the bench uses (the tree's choice: ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_pems_round_trip_into_a_root_store() {
        let ca = Authority::new("bench test CA").unwrap();
        assert!(ca.key_pem.contains("BEGIN PRIVATE KEY"));
        assert_eq!(roots_from_pem(&ca.cert_pem).unwrap().len(), 1);
        let leaf = ca.issue(&["a.example.test", "127.0.0.1"]).unwrap();
        assert_eq!(leaf.chain.len(), 1);
        assert!(roots_from_pem("not a certificate").is_err());
    }
}
