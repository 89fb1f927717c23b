//! The TLS interception benchmark's parts (`benches/benches/tls.rs` runs them): one HTTPS
//! client in a network namespace standing in for the guest, one HTTPS upstream on the host's
//! loopback, and three paths between them through msbvm's netstack (see
//! [`crate::net_bench`] for the namespace, TAP and frame pumps):
//!
//! - `direct`: the netstack with `tls: None`, which splices the TLS connection; the guest
//!   trusts the upstream's own test CA.
//! - `intercepted`: the netstack with [`TlsConfig`] intercepting the upstream's name; the
//!   guest trusts only the sandbox CA, so a finished handshake proves interception.
//! - `mitmproxy`: the netstack splicing to `mitmdump` on the host (a regular proxy the guest
//!   `CONNECT`s through), which intercepts and verifies the upstream against the test CA; the
//!   guest trusts mitmproxy's CA.
//!
//! The upstream's name resolves through the netstack's DNS, as a guest's would: the stack's
//! `dns_upstream` is a one-name DNS server in the bench process that answers it with the host
//! alias (10.0.2.254), so the address is pinned to the name the way interception expects.

pub mod client;
pub mod mitm;
pub mod pki;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use msbvm_netstack::config::{GATEWAY_IP, HOST_ALIAS_IP};
use msbvm_netstack::dns::Upstream;
use msbvm_netstack::policy::{Action, Policy, Rule};
use msbvm_netstack::tls::TlsConfig;
use msbvm_netstack::NetConfig;
use rustls::RootCertStore;

use self::client::{in_netns, resolve, CpuClock, Guest, Plan, Route, Samples};
use self::mitm::Mitmdump;
use self::pki::{roots_from_pem, Authority};
use self::upstream::HostSide;
use crate::image_bench::BenchResult;
use crate::net_bench::{proc_cpu_seconds, MsbvmLink};

/// The upstream's DNS name (SNI and Host of every request).
pub const UPSTREAM_NAME: &str = "upstream.tls-bench.test";

/// A path from the guest to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spliced by the netstack.
    Direct,
    /// Intercepted by the netstack.
    Intercepted,
    /// Spliced by the netstack to mitmproxy, which intercepts.
    Mitmproxy,
}

/// Every mode, in the order each run measures them.
pub const MODES: [Mode; 3] = [Mode::Direct, Mode::Intercepted, Mode::Mitmproxy];

impl Mode {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Intercepted => "intercepted",
            Mode::Mitmproxy => "mitmproxy",
        }
    }
}

/// What one run of one mode measured.
pub struct RunResult {
    /// The client's samples.
    pub samples: Samples,
    /// For [`Mode::Intercepted`]: whether the guest saw a sandbox-CA leaf (`false`: the stack
    /// spliced, and the run measured splicing).
    pub intercepted: Option<bool>,
}

/// Everything the runs share: the certificates, the upstream and DNS servers, mitmproxy.
pub struct Bench {
    upstream_ca: Authority,
    sandbox_ca: Authority,
    /// The upstream HTTPS and DNS servers.
    pub host: HostSide,
    /// mitmproxy, when it could be started.
    pub mitm: Option<Mitmdump>,
    mtu: usize,
    _upstream_ca_file: tempfile::NamedTempFile,
}

impl Bench {
    /// Makes the CAs and starts the servers, and mitmproxy from `mitmdump` when given (its
    /// failure to start is returned as the reason the mitmproxy row is skipped).
    pub fn start(
        mtu: usize,
        mitmdump: Option<&std::path::Path>,
    ) -> BenchResult<(Bench, Option<String>)> {
        let upstream_ca = Authority::new("msbvm tls bench upstream CA")?;
        let sandbox_ca = Authority::new("msbvm tls bench sandbox CA")?;
        let leaf = upstream_ca.issue(&[UPSTREAM_NAME, "127.0.0.1"])?;
        // 443 when free: an interceptor may care about the HTTPS port.
        let host = HostSide::start(leaf, 443, UPSTREAM_NAME, HOST_ALIAS_IP)?;
        let ca_file =
            tempfile::NamedTempFile::new().map_err(|e| format!("upstream CA file: {e}"))?;
        std::fs::write(ca_file.path(), &upstream_ca.cert_pem)
            .map_err(|e| format!("writing the upstream CA: {e}"))?;
        let (mitm, why_not) = match mitmdump.map(|p| Mitmdump::start(p, ca_file.path())) {
            Some(Ok(m)) => (Some(m), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let bench = Bench {
            upstream_ca,
            sandbox_ca,
            host,
            mitm,
            mtu,
            _upstream_ca_file: ca_file,
        };
        Ok((bench, why_not))
    }

    /// The netstack's configuration for `mode`.
    pub fn config(&self, mode: Mode) -> NetConfig {
        let tls = (mode == Mode::Intercepted).then(|| TlsConfig {
            ca_cert_pem: self.sandbox_ca.cert_pem.clone(),
            ca_key_pem: self.sandbox_ca.key_pem.clone(),
            intercept: vec![UPSTREAM_NAME.to_string()],
            bypass: Vec::new(),
            upstream_ca_pems: vec![self.upstream_ca.cert_pem.clone()],
        });
        NetConfig {
            mtu: self.mtu,
            dns_upstream: Upstream::Servers(vec![self.host.dns]),
            tls,
            ..NetConfig::default()
        }
    }

    /// CPU seconds of everything on `mode`'s path so far: this process (client, netstack,
    /// frame pumps, upstream, which every mode shares) plus mitmproxy's process in its mode.
    fn cpu_clock(&self, mode: Mode) -> CpuClock {
        let mitm_stat = self
            .mitm
            .as_ref()
            .filter(|_| mode == Mode::Mitmproxy)
            .map(|m| format!("/proc/{}/stat", m.pid()));
        Arc::new(move || {
            proc_cpu_seconds("/proc/self/stat") + mitm_stat.as_deref().map_or(0.0, proc_cpu_seconds)
        })
    }

    /// What the guest trusts in `mode`.
    fn roots(&self, mode: Mode) -> BenchResult<Arc<RootCertStore>> {
        match mode {
            Mode::Direct => roots_from_pem(&self.upstream_ca.cert_pem),
            Mode::Intercepted => roots_from_pem(&self.sandbox_ca.cert_pem),
            Mode::Mitmproxy => match &self.mitm {
                Some(m) => roots_from_pem(&m.ca_pem),
                None => Err("mitmproxy is not running".into()),
            },
        }
    }

    /// One run of `mode` on a fresh link: resolve the name, warm up, measure `plan`.
    pub fn run(&self, mode: Mode, plan: Plan) -> BenchResult<RunResult> {
        let link = MsbvmLink::start_with(
            &format!("tls-{}", mode.name()),
            self.config(mode),
            policy()?,
        )?;
        let roots = self.roots(mode)?;
        let fallback = roots_from_pem(&self.upstream_ca.cert_pem)?;
        let port = self.host.https.port();
        let proxy = self
            .mitm
            .as_ref()
            .map(|m| SocketAddr::from((HOST_ALIAS_IP, m.port)));
        let cpu = self.cpu_clock(mode);
        in_netns(link.ns.path(), move || async move {
            let ip = resolve(SocketAddr::from((GATEWAY_IP, 53)), UPSTREAM_NAME).await?;
            let route = match (mode, proxy) {
                (Mode::Mitmproxy, Some(proxy)) => Route::Proxy {
                    proxy,
                    // mitmproxy cannot resolve the bench's name; the SNI still carries it.
                    target: format!("127.0.0.1:{port}"),
                },
                _ => Route::Direct(SocketAddr::from((ip, port))),
            };
            let mut guest = Guest::new(route.clone(), UPSTREAM_NAME, roots)?;
            let mut intercepted = None;
            if mode == Mode::Intercepted {
                let seen = guest.certificate_trusted().await?;
                if !seen {
                    // The upstream's own certificate came through: measure the splice.
                    guest = Guest::new(route, UPSTREAM_NAME, fallback)?;
                }
                intercepted = Some(seen);
            }
            guest = guest.with_cpu_clock(cpu);
            guest.warm_up().await?;
            let samples = guest.measure(plan).await?;
            Ok(RunResult {
                samples,
                intercepted,
            })
        })
    }
}

/// The stack's policy: everything allowed, plus the host alias (the upstream and mitmproxy
/// live on the host's loopback) and the upstream's name, whose private answer rebinding
/// protection would otherwise drop.
pub fn policy() -> BenchResult<Policy> {
    let host = Rule::parse("host").map_err(|e| format!("rule host: {e}"))?;
    let name = Rule::parse(UPSTREAM_NAME).map_err(|e| format!("rule {UPSTREAM_NAME}: {e}"))?;
    Ok(Policy::new(Action::Allow).allow(host).allow(name))
}

/// The `p`-th percentile (0..=100, nearest rank) of `values`; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `median [min..max]` of `v`, with `digits` decimals (`-` when empty).
pub fn spread(v: &[f64], digits: usize) -> String {
    let Some(med) = crate::median(v.to_vec()) else {
        return "-".into();
    };
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{med:.digits$} [{min:.digits$}..{max:.digits$}]")
}

/// Like [`spread`] for differences, every number with its sign.
pub fn signed_spread(v: &[f64], digits: usize) -> String {
    let Some(med) = crate::median(v.to_vec()) else {
        return "-".into();
    };
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{med:+.digits$} [{min:+.digits$}..{max:+.digits$}]")
}

/// `a[i] - b[i]` per run (the modes ran interleaved, so run i of each saw the same moment).
pub fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    /// The client and the upstream, face to face on loopback (no namespace, no stack): the
    /// real handshakes, keep-alive requests and a bulk body, and the trust check.
    #[test]
    fn client_measures_the_upstream_over_loopback() {
        let ca = Authority::new("test upstream CA").unwrap();
        let other = Authority::new("test other CA").unwrap();
        let leaf = ca.issue(&[UPSTREAM_NAME]).unwrap();
        let host = HostSide::start(leaf, 0, UPSTREAM_NAME, HOST_ALIAS_IP).unwrap();
        let route = Route::Direct(host.https);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ip = resolve(host.dns, UPSTREAM_NAME).await.unwrap();
            assert_eq!(ip, HOST_ALIAS_IP);
            assert!(resolve(host.dns, "nope.tls-bench.test").await.is_err());
            let roots = roots_from_pem(&ca.cert_pem).unwrap();
            let guest = Guest::new(route.clone(), UPSTREAM_NAME, roots).unwrap();
            assert!(guest.certificate_trusted().await.unwrap());
            guest.warm_up().await.unwrap();
            let plan = Plan {
                requests: 20,
                handshakes: 3,
                bulk_bytes: 3 * 1024 * 1024 + 17,
            };
            let s = guest.measure(plan).await.unwrap();
            assert_eq!(s.latencies_ms.len(), 20);
            assert_eq!(s.connection_ms.len(), 3);
            assert!(s.requests_per_s > 0.0 && s.bulk_mib_s > 0.0);
            let wrong = roots_from_pem(&other.cert_pem).unwrap();
            let stranger = Guest::new(route, UPSTREAM_NAME, wrong).unwrap();
            assert!(!stranger.certificate_trusted().await.unwrap());
        });
    }
}
