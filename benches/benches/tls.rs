//! TLS interception benchmark: HTTPS through msbvm's netstack spliced (`direct`), intercepted
//! by the netstack (`intercepted`), and intercepted by mitmproxy, the reference interception
//! proxy (`mitmproxy`), without a VM, in the same run with the same client and server.
//!
//! ```text
//! scripts/bench-deps                      # once: mitmproxy from PyPI into the bench cache
//! cargo bench -p msbvm-benches --bench tls
//! ```
//!
//! The guest is a network namespace with a TAP served by the netstack (see
//! `msbvm_benches::tls_bench` and `msbvm_benches::net_bench`); its client (hyper over rustls,
//! HTTP/1.1, no session resumption) runs on a thread inside the namespace and talks to a hyper
//! over rustls HTTP/1.1 server on the host's 127.0.0.1 (port 443 when free) whose certificate
//! is issued by a test CA made with rcgen. The name `upstream.tls-bench.test` resolves through
//! the netstack's DNS, which forwards to a one-name DNS server in the bench process that
//! answers with the host alias 10.0.2.254. Per run and mode, on a fresh link: a warm-up
//! request (which also puts the name's leaf into an interceptor's cache), then `REQUESTS`
//! GETs of 100 B on one keep-alive connection (requests/s and per-request latency p50/p99),
//! `HANDSHAKES` new connections each with a full handshake and one GET (ms per connection,
//! leaf cache warm), and one download of `BULK_MIB` MiB (MiB/s, and CPU ms per MiB: this
//! process, which holds client, netstack, pumps and upstream for every mode, plus mitmproxy's
//! process in its mode; a steadier figure than MiB/s on a busy host). Runs interleave the modes
//! (direct, intercepted, mitmproxy, direct, ...). The report shows medians over runs with the
//! range [min..max], the added latency of `intercepted` over `direct` (paired per run; target
//! p50 <= 1 ms) and the ratios of `intercepted` to `mitmproxy` (target bulk >= 5x).
//!
//! In the `intercepted` mode the guest trusts only the sandbox CA. When the handshake fails
//! on the certificate (the guest saw the upstream's own one: the stack spliced), a WARNING
//! says so and the run goes on trusting the upstream's CA, so that row then measures splicing.
//!
//! Environment: `MSBVM_BENCH_RUNS` (default 3), `MSBVM_BENCH_REQUESTS` (default 2000),
//! `MSBVM_BENCH_HANDSHAKES` (default 200), `MSBVM_BENCH_BULK_MIB` (default 100),
//! `MSBVM_BENCH_MTU` (default 1500), `MSBVM_BENCH_MODES` (comma-separated subset of direct,
//! intercepted, mitmproxy), `MSBVM_MITMDUMP` (the `mitmdump` to run; default the one
//! `scripts/bench-deps` installs, then `PATH`). Needs root, /dev/net/tun and iproute2; without
//! mitmproxy its row is skipped with one line. Under `cargo test` the target does nothing.

use std::process::ExitCode;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::net_bench::{missing_privilege, BenchResult};
use msbvm_benches::tls_bench::client::{Plan, Samples};
use msbvm_benches::tls_bench::mitm::find_mitmdump;
use msbvm_benches::tls_bench::{
    paired, percentile, signed_spread, spread, Bench, Mode, RunResult, MODES, UPSTREAM_NAME,
};
use msbvm_benches::{bench_mode, exit, median, ratio};

/// One number per run of one mode.
#[derive(Default)]
struct Series {
    requests_per_s: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    connection_ms: Vec<f64>,
    bulk_mib_s: Vec<f64>,
    bulk_cpu: Vec<f64>,
    /// Runs of `intercepted` in which the guest saw the upstream's own certificate.
    spliced_runs: u32,
}

impl Series {
    fn push(&mut self, run: &RunResult) {
        let s: &Samples = &run.samples;
        self.requests_per_s.push(s.requests_per_s);
        self.p50_ms
            .push(percentile(&s.latencies_ms, 50.0).unwrap_or(f64::NAN));
        self.p99_ms
            .push(percentile(&s.latencies_ms, 99.0).unwrap_or(f64::NAN));
        self.connection_ms
            .push(median(s.connection_ms.clone()).unwrap_or(f64::NAN));
        self.bulk_mib_s.push(s.bulk_mib_s);
        self.bulk_cpu.push(s.bulk_cpu_ms_per_mib);
        if run.intercepted == Some(false) {
            self.spliced_runs += 1;
        }
    }
}

fn selected_modes() -> Vec<Mode> {
    let wanted = std::env::var("MSBVM_BENCH_MODES").unwrap_or_default();
    MODES
        .into_iter()
        .filter(|m| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == m.name()))
        .collect()
}

fn bench() -> BenchResult<()> {
    if let Some(why) = missing_privilege() {
        println!("skipped: {why}");
        return Ok(());
    }
    let runs = env_count("MSBVM_BENCH_RUNS", 3);
    let plan = Plan {
        requests: env_count("MSBVM_BENCH_REQUESTS", 2000),
        handshakes: env_count("MSBVM_BENCH_HANDSHAKES", 200),
        bulk_bytes: u64::from(env_count("MSBVM_BENCH_BULK_MIB", 100)) * 1024 * 1024,
    };
    let mtu = env_count("MSBVM_BENCH_MTU", 1500) as usize;
    let mut modes = selected_modes();
    let mitmdump = if modes.contains(&Mode::Mitmproxy) {
        find_mitmdump()
            .map_err(|why| println!("mitmproxy: skipped: {why}"))
            .ok()
    } else {
        None
    };
    let (bench, mitm_failed) = Bench::start(mtu, mitmdump.as_deref())?;
    if let Some(why) = mitm_failed {
        println!("mitmproxy: skipped: {why}");
    }
    if bench.mitm.is_none() {
        modes.retain(|m| *m != Mode::Mitmproxy);
    }

    let mut series: Vec<(Mode, Series)> = modes.iter().map(|m| (*m, Series::default())).collect();
    for run in 1..=runs {
        for (mode, s) in &mut series {
            let result = bench
                .run(*mode, plan)
                .map_err(|e| format!("{} run {run}: {e}", mode.name()))?;
            if result.intercepted == Some(false) {
                eprintln!(
                    "tls bench: WARNING: intercepted run {run}: the guest saw the upstream's own certificate, not a sandbox-CA leaf: the netstack did not intercept {UPSTREAM_NAME}; this run measured splicing"
                );
            }
            s.push(&result);
            eprintln!(
                "tls bench: {} run {run}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, new conn {:.2} ms, bulk {:.0} MiB/s",
                mode.name(),
                s.requests_per_s.last().copied().unwrap_or(0.0),
                s.p50_ms.last().copied().unwrap_or(0.0),
                s.p99_ms.last().copied().unwrap_or(0.0),
                s.connection_ms.last().copied().unwrap_or(0.0),
                s.bulk_mib_s.last().copied().unwrap_or(0.0),
            );
        }
    }
    report(&series, runs, plan, mtu, bench.host.https.port());
    Ok(())
}

fn report(series: &[(Mode, Series)], runs: u32, plan: Plan, mtu: usize, port: u16) {
    println!();
    println!(
        "tls: HTTPS from a netns (the guest, no VM) through msbvm's netstack (mtu {mtu}) to a hyper+rustls HTTP/1.1 server on the host's 127.0.0.1:{port}; per run: {} keep-alive GETs of 100 B, {} new connections (full handshake, no resumption, + 1 GET), {} MiB download; modes interleaved; medians of {runs} runs [min..max]",
        plan.requests,
        plan.handshakes,
        plan.bulk_bytes / (1024 * 1024),
    );
    println!(
        "{:<13} {:>22} {:>22} {:>22} {:>22} {:>22} {:>22}",
        "mode",
        "keep-alive req/s",
        "p50 ms",
        "p99 ms",
        "new conn ms",
        "bulk MiB/s",
        "bulk CPU ms/MiB"
    );
    for (mode, s) in series {
        let mark = if s.spliced_runs > 0 { "*" } else { "" };
        println!(
            "{:<13} {:>22} {:>22} {:>22} {:>22} {:>22} {:>22}",
            format!("{}{mark}", mode.name()),
            spread(&s.requests_per_s, 0),
            spread(&s.p50_ms, 3),
            spread(&s.p99_ms, 3),
            spread(&s.connection_ms, 2),
            spread(&s.bulk_mib_s, 0),
            spread(&s.bulk_cpu, 1),
        );
    }
    let find = |m: Mode| series.iter().find(|(mode, _)| *mode == m).map(|(_, s)| s);
    if let (Some(i), Some(d)) = (find(Mode::Intercepted), find(Mode::Direct)) {
        let added_p50 = paired(&i.p50_ms, &d.p50_ms);
        let met = median(added_p50.clone()).is_some_and(|v| v <= 1.0);
        println!(
            "intercepted-direct (paired per run): p50 {} ms, p99 {} ms, new conn {} ms; target added p50 <= 1 ms: {}",
            signed_spread(&added_p50, 3),
            signed_spread(&paired(&i.p99_ms, &d.p99_ms), 3),
            signed_spread(&paired(&i.connection_ms, &d.connection_ms), 2),
            if met { "met" } else { "NOT met" },
        );
    }
    for (ours, peer) in [
        (Mode::Intercepted, Mode::Mitmproxy),
        (Mode::Direct, Mode::Mitmproxy),
    ] {
        let (Some(o), Some(p)) = (find(ours), find(peer)) else {
            continue;
        };
        let med = |v: &Vec<f64>| median(v.clone());
        let cell = |r: Option<f64>| r.map_or_else(|| "-".into(), |r| format!("{r:.2}"));
        let bulk = ratio(med(&o.bulk_mib_s), med(&p.bulk_mib_s));
        let target = if ours == Mode::Intercepted {
            let met = bulk.is_some_and(|r| r >= 5.0);
            format!(
                "; target bulk >= 5x: {}",
                if met { "met" } else { "NOT met" }
            )
        } else {
            String::new()
        };
        println!(
            "{}/{}: req/s x{}, new conn/s x{}, bulk x{}, bulk CPU/MiB x{}{target}",
            ours.name(),
            peer.name(),
            cell(ratio(med(&o.requests_per_s), med(&p.requests_per_s))),
            cell(ratio(med(&p.connection_ms), med(&o.connection_ms))),
            cell(bulk),
            cell(ratio(med(&o.bulk_cpu), med(&p.bulk_cpu))),
        );
    }
    if let Some(i) = find(Mode::Intercepted).filter(|s| s.spliced_runs > 0) {
        println!(
            "* WARNING: not intercepted in {} of {runs} runs: the guest saw the upstream's own certificate instead of a sandbox-CA leaf, so this row measured splicing, and the comparisons with it are not of interception",
            i.spliced_runs
        );
    }
}

fn main() -> ExitCode {
    if !bench_mode("tls") {
        return ExitCode::SUCCESS;
    }
    exit("tls", bench())
}
