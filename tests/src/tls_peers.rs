//! The upstream HTTPS servers of the secrets suite, on L1's loopback: a test CA made with rcgen
//! for each run (fresh keys, so nothing in a check can be precomputed), the certificates of
//! the servers, and the shell lines that start `msbvm-e2e-peer` (see its source) in L1.
//!
//! One server on L1's 127.0.0.1:443 (the netstack intercepts TLS on port 443 only) plays
//! three personas, chosen by the SNI of each connection:
//!
//! | persona | ALPN          | names (certificate SANs)               | issuer                |
//! |---------|---------------|----------------------------------------|-----------------------|
//! | `h1`    | http/1.1      | api.test, other.test, bypass.test      | the test CA           |
//! | `h2`    | h2            | grpc.test                              | the test CA           |
//! | `bad`   | h2, http/1.1  | bad.test                               | a rogue CA nobody trusts |
//!
//! The guest reaches them by name: dnsmasq answers every name with the host alias 10.0.2.254,
//! which the netstack maps to L1's 127.0.0.1. Every request received is logged, one line
//! each, to [`L1_UPSTREAM_LOG`].

use std::path::PathBuf;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};

use crate::artifacts::{build_static_bins, STATIC_DIR_ENV};
use crate::error::{Error, Result};
use crate::nested::NestedVmBuilder;

/// Where the peer binary goes in L1.
pub const L1_PEER: &str = "/bin/msbvm-e2e-peer";
/// The L1 directory with the test CA and the servers' certificates (also mounted read-only
/// at the same path in guests that need the test CA).
pub const L1_PKI_DIR: &str = "/e2e";
/// The test CA's certificate in L1 (and in a guest that mounts [`L1_PKI_DIR`]).
pub const L1_TEST_CA: &str = "/e2e/ca.pem";
/// Where every upstream logs the requests it received.
pub const L1_UPSTREAM_LOG: &str = "/tmp/upstream.log";
/// The dnsmasq answers for the suite's names (`name=address`, see [`crate::e2e::net_host`]).
pub const DNS_ANSWERS: &str = "api.test=10.0.2.254 other.test=10.0.2.254 \
    bypass.test=10.0.2.254 grpc.test=10.0.2.254 bad.test=10.0.2.254";

/// Where the server listens in L1.
pub const L1_PEER_ADDR: &str = "127.0.0.1:443";

/// One persona of the upstream server.
struct Upstream {
    name: &'static str,
    alpn: &'static str,
    names: &'static [&'static str],
    rogue: bool,
}

const UPSTREAMS: [Upstream; 3] = [
    Upstream {
        name: "h1",
        alpn: "h1",
        names: &["api.test", "other.test", "bypass.test"],
        rogue: false,
    },
    Upstream {
        name: "h2",
        alpn: "h2",
        names: &["grpc.test"],
        rogue: false,
    },
    Upstream {
        name: "bad",
        alpn: "both",
        names: &["bad.test"],
        rogue: true,
    },
];

/// The certificates of one run.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// `(file name in L1_PKI_DIR, PEM)`: ca.pem, and NAME.crt / NAME.key per server.
    pub files: Vec<(String, String)>,
    /// `curl --pinnedpubkey` of the `h1` server's key: `sha256//BASE64`.
    pub h1_pin: String,
}

fn pki_err(e: rcgen::Error) -> Error {
    Error::Harness(format!("making the test certificates: {e}"))
}

fn ca(common_name: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = params.self_signed(&key).map_err(pki_err)?;
    Ok((cert, key))
}

impl TestPki {
    /// A fresh test CA ("msbvm e2e test CA"), a rogue CA, and a certificate per server.
    pub fn generate() -> Result<Self> {
        let (ca_cert, ca_key) = ca("msbvm e2e test CA")?;
        let (rogue_cert, rogue_key) = ca("msbvm e2e rogue CA")?;
        let mut files = vec![("ca.pem".to_string(), ca_cert.pem())];
        let mut h1_pin = String::new();
        for up in &UPSTREAMS {
            let names: Vec<String> = up.names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).map_err(pki_err)?;
            params
                .distinguished_name
                .push(DnType::CommonName, up.names[0]);
            let key = KeyPair::generate().map_err(pki_err)?;
            let (issuer, issuer_key) = if up.rogue {
                (&rogue_cert, &rogue_key)
            } else {
                (&ca_cert, &ca_key)
            };
            let cert = params
                .signed_by(&key, issuer, issuer_key)
                .map_err(pki_err)?;
            if up.name == "h1" {
                let spki = Sha256::digest(key.public_key_der());
                h1_pin = format!(
                    "sha256//{}",
                    base64::engine::general_purpose::STANDARD.encode(spki)
                );
            }
            files.push((format!("{}.crt", up.name), cert.pem()));
            files.push((format!("{}.key", up.name), key.serialize_pem()));
        }
        Ok(Self { files, h1_pin })
    }

    /// Puts the certificates into L1 at [`L1_PKI_DIR`] and the peer binary at [`L1_PEER`].
    pub fn add_to(&self, vm: NestedVmBuilder, peer: &std::path::Path) -> NestedVmBuilder {
        let vm = vm.add_file(peer, L1_PEER);
        self.files.iter().fold(vm, |vm, (name, pem)| {
            vm.add_bytes(
                &format!("{L1_PKI_DIR}/{name}"),
                pem.as_bytes().to_vec(),
                0o644,
            )
        })
    }
}

/// The `serve` arguments of the personas, with certificates in `dir`.
pub fn persona_args(dir: &str) -> Vec<String> {
    UPSTREAMS
        .iter()
        .map(|up| {
            format!(
                "{name}:{alpn}:{dir}/{name}.crt:{dir}/{name}.key:{snis}",
                name = up.name,
                alpn = up.alpn,
                snis = up.names.join(",")
            )
        })
        .collect()
}

/// Shell lines (for L1) that start the server and wait until it listens.
pub fn start_script() -> String {
    format!(
        "{L1_PEER} serve {L1_PEER_ADDR} {L1_UPSTREAM_LOG} {} >/tmp/peer.log 2>&1 &
         n=0; while [ $n -lt 100 ] && ! netstat -ltn | grep -q '{L1_PEER_ADDR} '; do sleep 0.2; n=$((n+1)); done
",
        persona_args(L1_PKI_DIR).join(" ")
    )
}

/// The static `msbvm-e2e-peer` (built once; taken from `MSBVM_STATIC_DIR` when it has one).
pub fn peer_binary() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(STATIC_DIR_ENV).filter(|v| !v.is_empty()) {
        let given = PathBuf::from(dir).join("msbvm-e2e-peer");
        if given.is_file() {
            return Ok(given);
        }
    }
    let mut built = build_static_bins(&[("msbvm-tests", "msbvm-e2e-peer")])?;
    built
        .remove("msbvm-e2e-peer")
        .ok_or_else(|| Error::Harness("the static build made no msbvm-e2e-peer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_has_a_ca_and_three_servers_with_a_pin() {
        let pki = TestPki::generate().unwrap();
        let names: Vec<&str> = pki.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ca.pem", "h1.crt", "h1.key", "h2.crt", "h2.key", "bad.crt", "bad.key"]
        );
        assert!(pki.h1_pin.starts_with("sha256//") && pki.h1_pin.len() == 8 + 44);
        let other = TestPki::generate().unwrap();
        assert_ne!(pki.files[0].1, other.files[0].1, "fresh keys every run");
    }
}
