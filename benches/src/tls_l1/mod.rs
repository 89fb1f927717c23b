//! The in-L1 TLS benchmark's parts (`benches/benches/tls_l1.rs` runs them): the shell that
//! runs in L1 (upstream, dnsmasq, one sandbox per mode, interleaved runs), the guest's
//! measuring script (curl from the Debian-package test image), and the result lines they
//! print on the console, parsed back into [`RunSamples`].
//!
//! Each result line is `tls-l1: mode=MODE run=N KIND ...` (see [`RunSamples::absorb`]).

pub mod script;

use std::fmt::Write as _;

use crate::tls_bench::percentile;
use crate::{json_num, json_string, median};

/// Prefix of every result line on the L1 console.
pub const PREFIX: &str = "tls-l1:";

/// The paths the in-L1 benchmark measures (mitmproxy has no row: L1 cannot run it, see the
/// bench's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L1Mode {
    /// No interception configured: the netstack splices; the guest trusts the upstream's CA.
    Direct,
    /// `--tls-intercept NAME --tls-upstream-ca CA`: the guest trusts the sandbox CA only.
    Intercepted,
}

/// Both modes, in the order each run measures them.
pub const L1_MODES: [L1Mode; 2] = [L1Mode::Direct, L1Mode::Intercepted];

impl L1Mode {
    /// Its name in the report (and the sandbox's name in L1).
    pub fn name(self) -> &'static str {
        match self {
            L1Mode::Direct => "direct",
            L1Mode::Intercepted => "intercepted",
        }
    }

    fn from_name(name: &str) -> Option<L1Mode> {
        L1_MODES.into_iter().find(|m| m.name() == name)
    }
}

/// What one run asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1Plan {
    /// Runs per mode, interleaved.
    pub runs: u32,
    /// GETs of 100 B on one keep-alive connection (one curl, globbed URL).
    pub requests: u32,
    /// New connections (a curl process each: a full handshake, no session to resume).
    pub handshakes: u32,
    /// Bytes of the bulk download.
    pub bulk_bytes: u64,
}

/// Everything one run of one mode printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSamples {
    /// 1-based run number.
    pub run: u32,
    /// Issuer of the certificate the guest saw (curl -v), after a warm-up request.
    pub issuer: Option<String>,
    /// curl's `time_total` of each keep-alive request, ms (the first includes the handshake).
    pub keepalive_ms: Vec<f64>,
    /// Connections curl opened for the keep-alive requests (1 when all were kept alive).
    pub keepalive_connects: Option<u32>,
    /// Guest wall clock of the whole keep-alive curl (process start included), s.
    pub keepalive_wall_s: Option<f64>,
    /// curl's `time_total` of each new connection (connect, full handshake, one GET), ms.
    pub connection_ms: Vec<f64>,
    /// Connections curl opened for them (one per request when none was reused).
    pub connection_connects: Option<u32>,
    /// Bytes the bulk download received.
    pub bulk_bytes: Option<u64>,
    /// curl's `time_total` of the bulk download, s.
    pub bulk_s: Option<f64>,
    /// What went wrong, as the guest script said.
    pub errors: Vec<String>,
}

/// The value of `key=` among the words of `rest`.
fn word<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// A comma-separated list of seconds, in ms (`None` when any item does not parse).
fn seconds_list_ms(list: &str) -> Option<Vec<f64>> {
    list.split(',')
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<f64>().ok().map(|s| s * 1e3))
        .collect()
}

impl RunSamples {
    /// Takes in one result line's `KIND ...` part:
    /// - `issuer TEXT`
    /// - `keepalive wall_s=S connects=N s=T1,T2,...`
    /// - `connections connects=N s=T1,T2,...`
    /// - `bulk bytes=N s=T`
    /// - `error TEXT`
    ///
    /// A line that does not parse becomes an error of the run.
    pub fn absorb(&mut self, kind_and_rest: &str) {
        let (kind, rest) = kind_and_rest.split_once(' ').unwrap_or((kind_and_rest, ""));
        let ok = match kind {
            "issuer" => {
                self.issuer = Some(rest.trim().to_string());
                true
            }
            "keepalive" => {
                self.keepalive_wall_s = word(rest, "wall_s").and_then(|v| v.parse().ok());
                self.keepalive_connects = word(rest, "connects").and_then(|v| v.parse().ok());
                word(rest, "s")
                    .and_then(seconds_list_ms)
                    .map(|v| self.keepalive_ms = v)
                    .is_some()
            }
            "connections" => {
                self.connection_connects = word(rest, "connects").and_then(|v| v.parse().ok());
                word(rest, "s")
                    .and_then(seconds_list_ms)
                    .map(|v| self.connection_ms = v)
                    .is_some()
            }
            "bulk" => {
                self.bulk_bytes = word(rest, "bytes").and_then(|v| v.parse().ok());
                self.bulk_s = word(rest, "s").and_then(|v| v.parse().ok());
                self.bulk_bytes.is_some() && self.bulk_s.is_some()
            }
            "error" => {
                self.errors.push(rest.trim().to_string());
                true
            }
            _ => false,
        };
        if !ok {
            self.errors
                .push(format!("unreadable result: {kind_and_rest:?}"));
        }
    }

    /// Keep-alive requests after the first (whose time includes the handshake), ms.
    fn warm_requests(&self) -> &[f64] {
        self.keepalive_ms.get(1..).unwrap_or_default()
    }

    /// Requests per second on the kept-alive connection: requests after the first over the
    /// sum of their times (curl's own work between requests not counted; see
    /// [`RunSamples::curl_gap_ms`]).
    pub fn requests_per_s(&self) -> Option<f64> {
        let v = self.warm_requests();
        let total: f64 = v.iter().sum();
        (total > 0.0).then(|| v.len() as f64 / (total / 1e3))
    }

    /// Median latency of the kept-alive requests, ms.
    pub fn p50_ms(&self) -> Option<f64> {
        percentile(self.warm_requests(), 50.0)
    }

    /// 99th percentile of the kept-alive requests, ms.
    pub fn p99_ms(&self) -> Option<f64> {
        percentile(self.warm_requests(), 99.0)
    }

    /// Median new-connection time, ms.
    pub fn connection_p50_ms(&self) -> Option<f64> {
        median(self.connection_ms.clone())
    }

    /// Bulk download rate, MiB/s.
    pub fn bulk_mib_s(&self) -> Option<f64> {
        match (self.bulk_bytes, self.bulk_s) {
            (Some(b), Some(s)) if s > 0.0 => Some(b as f64 / (1024.0 * 1024.0) / s),
            _ => None,
        }
    }

    /// Guest time per keep-alive request outside curl's `time_total` (process start, TLS
    /// set-up, curl's bookkeeping between URLs), ms: what the curl client adds on its own.
    pub fn curl_gap_ms(&self) -> Option<f64> {
        let wall = self.keepalive_wall_s?;
        let n = self.keepalive_ms.len();
        let timed: f64 = self.keepalive_ms.iter().sum();
        (n > 0).then(|| (wall * 1e3 - timed) / n as f64)
    }

    /// Whether every phase produced what `plan` asked, with the connection counts that prove
    /// reuse (keep-alive) and no reuse (new connections).
    pub fn complete(&self, plan: &L1Plan) -> bool {
        self.errors.is_empty()
            && self.issuer.is_some()
            && self.keepalive_ms.len() == plan.requests as usize
            && self.keepalive_connects == Some(1)
            && self.connection_ms.len() == plan.handshakes as usize
            && self.connection_connects == Some(plan.handshakes)
            && self.bulk_bytes == Some(plan.bulk_bytes)
    }
}

/// The runs of each mode found on `console`, in run order; lines of other modes are ignored.
pub fn parse_console(console: &str) -> Vec<(L1Mode, Vec<RunSamples>)> {
    let mut out: Vec<(L1Mode, Vec<RunSamples>)> =
        L1_MODES.iter().map(|m| (*m, Vec::new())).collect();
    for line in console.lines() {
        let Some(at) = line.find(PREFIX) else {
            continue;
        };
        let rest = line[at + PREFIX.len()..].trim_start();
        let mut words = rest.splitn(3, ' ');
        let (Some(mode), Some(run), Some(tail)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some(mode) = mode.strip_prefix("mode=").and_then(L1Mode::from_name) else {
            continue;
        };
        let Some(run) = run.strip_prefix("run=").and_then(|r| r.parse::<u32>().ok()) else {
            continue;
        };
        let Some((_, runs)) = out.iter_mut().find(|(m, _)| *m == mode) else {
            continue;
        };
        let index = match runs.iter().position(|r| r.run == run) {
            Some(i) => i,
            None => {
                runs.push(RunSamples {
                    run,
                    ..RunSamples::default()
                });
                runs.len() - 1
            }
        };
        runs[index].absorb(tail);
    }
    for (_, runs) in &mut out {
        runs.sort_by_key(|r| r.run);
    }
    out
}

/// The record of every sample, for `target/bench-tls-l1.json`.
pub fn to_json(
    plan: &L1Plan,
    results: &[(L1Mode, Vec<RunSamples>)],
    skipped: &[(&str, String)],
) -> String {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| json_num(Some(*x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let opt_int = |v: Option<u64>| v.map_or_else(|| "null".into(), |v| v.to_string());
    let mut j = String::from("{\n  \"benchmark\": \"tls_l1\",\n");
    let _ = writeln!(
        j,
        "  \"runs\": {}, \"requests\": {}, \"handshakes\": {}, \"bulk_bytes\": {},",
        plan.runs, plan.requests, plan.handshakes, plan.bulk_bytes
    );
    let skipped: Vec<String> = skipped
        .iter()
        .map(|(m, why)| {
            format!(
                "{{\"mode\": {}, \"reason\": {}}}",
                json_string(m),
                json_string(why)
            )
        })
        .collect();
    let _ = writeln!(j, "  \"skipped\": [{}],", skipped.join(", "));
    let mut rows = Vec::new();
    for (mode, runs) in results {
        for r in runs {
            rows.push(format!(
                "    {{\"mode\": {}, \"run\": {}, \"complete\": {}, \"issuer\": {}, \"errors\": [{}], \"requests_per_s\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"connection_p50_ms\": {}, \"bulk_mib_s\": {}, \"curl_gap_ms\": {}, \"keepalive_wall_s\": {}, \"keepalive_connects\": {}, \"connection_connects\": {}, \"bulk_bytes\": {}, \"bulk_s\": {}, \"keepalive_ms\": [{}], \"connection_ms\": [{}]}}",
                json_string(mode.name()),
                r.run,
                r.complete(plan),
                r.issuer.as_deref().map_or_else(|| "null".into(), json_string),
                r.errors.iter().map(|e| json_string(e)).collect::<Vec<_>>().join(", "),
                json_num(r.requests_per_s()),
                json_num(r.p50_ms()),
                json_num(r.p99_ms()),
                json_num(r.connection_p50_ms()),
                json_num(r.bulk_mib_s()),
                json_num(r.curl_gap_ms()),
                json_num(r.keepalive_wall_s),
                opt_int(r.keepalive_connects.map(u64::from)),
                opt_int(r.connection_connects.map(u64::from)),
                opt_int(r.bulk_bytes),
                json_num(r.bulk_s),
                list(&r.keepalive_ms),
                list(&r.connection_ms),
            ));
        }
    }
    let _ = writeln!(j, "  \"samples\": [\n{}\n  ]", rows.join(",\n"));
    j.push_str("}\n");
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: L1Plan = L1Plan {
        runs: 2,
        requests: 3,
        handshakes: 2,
        bulk_bytes: 2_097_152,
    };

    #[test]
    fn console_lines_become_runs_per_mode() {
        let console = "noise\n\
            [ 1.0] tls-l1: mode=intercepted run=1 issuer CN=msbvm sandbox CA\n\
            tls-l1: mode=direct run=2 issuer CN=msbvm tls bench upstream CA\n\
            tls-l1: mode=direct run=1 issuer CN=msbvm tls bench upstream CA\n\
            tls-l1: mode=direct run=1 keepalive wall_s=1.50 connects=1 s=0.100,0.002,0.004,\n\
            tls-l1: mode=direct run=1 connections connects=2 s=0.050,0.070\n\
            tls-l1: mode=direct run=1 bulk bytes=2097152 s=0.5\n\
            tls-l1: mode=mitmproxy run=1 issuer x\n\
            tls-l1: mode=direct run=2 keepalive wall_s=1 connects=2 s=0.1,0.2,0.3\n\
            tls-l1: mode=direct run=2 error curl exited 7\n\
            tls-l1: mode=direct run=2 bulk bytes=oops\n";
        let parsed = parse_console(console);
        let (mode, direct) = &parsed[0];
        assert_eq!(*mode, L1Mode::Direct);
        assert_eq!(direct.iter().map(|r| r.run).collect::<Vec<_>>(), [1, 2]);
        let r1 = &direct[0];
        assert!(r1.complete(&PLAN), "{r1:?}");
        assert_eq!(r1.keepalive_ms, [100.0, 2.0, 4.0]);
        assert_eq!(r1.p50_ms(), Some(2.0));
        assert_eq!(r1.p99_ms(), Some(4.0));
        assert_eq!(r1.requests_per_s(), Some(2.0 / 0.006));
        assert_eq!(r1.connection_p50_ms(), Some(60.0));
        assert_eq!(r1.bulk_mib_s(), Some(4.0));
        // (1500 ms - 106 ms timed) / 3 requests
        assert!((r1.curl_gap_ms().unwrap() - 1394.0 / 3.0).abs() < 1e-9);
        let r2 = &direct[1];
        assert!(
            !r2.complete(&PLAN),
            "two connections, an error, a bad bulk line"
        );
        assert_eq!(r2.errors.len(), 2, "{:?}", r2.errors);
        let (_, intercepted) = &parsed[1];
        assert_eq!(
            intercepted[0].issuer.as_deref(),
            Some("CN=msbvm sandbox CA")
        );
        assert!(!intercepted[0].complete(&PLAN));
        let j = to_json(&PLAN, &parsed, &[("mitmproxy", "no \"python\"".into())]);
        assert!(j.contains("\"reason\": \"no \\\"python\\\"\""), "{j}");
        assert!(
            j.contains("\"keepalive_ms\": [100.000, 2.000, 4.000]"),
            "{j}"
        );
    }
}
