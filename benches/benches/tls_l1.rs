//! TLS interception benchmark in L1: HTTPS from a real sandbox VM (nested KVM in the emulated
//! L1 machine) through msbvm's netstack, spliced (`direct`) and intercepted (`intercepted`),
//! the in-L1 counterpart of the host-side `tls` bench.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench tls_l1
//! MSBVM_BENCH_RUNS=5 MSBVM_BENCH_REQUESTS=1000 cargo bench -p msbvm-benches --bench tls_l1
//! ```
//!
//! One L1 boot: the upstream (`msbvm-tls-l1-upstream`: the host-side bench's hyper+rustls
//! HTTP/1.1 server, static) on L1's 127.0.0.1:443 with a leaf from a fresh test CA; dnsmasq
//! answering `upstream.tls-bench.test` with the host alias 10.0.2.254; the Debian-package test
//! image ([`msbvm_tests::test_image`], curl with OpenSSL) imported; one sandbox per mode,
//! created with `msbvm run -d` before any run: `direct` with no interception (its curl trusts
//! the test CA), `intercepted` with `--tls-intercept upstream.tls-bench.test
//! --tls-upstream-ca` (its curl trusts only the sandbox's default bundle, which holds the
//! sandbox CA, so a finished transfer proves interception; the issuer seen is shown too).
//! Runs interleave the modes (direct, intercepted, direct, ...); in each, from the guest
//! (`msbvm_benches::tls_l1::script::GUEST_SCRIPT`): a warm-up GET (the interceptor's leaf
//! cache is warm after it), `REQUESTS` GETs of 100 B on one keep-alive connection (one curl,
//! per-request `time_total` less name lookup; requests/s over the requests after the first,
//! p50/p99), then `HANDSHAKES` new connections (a curl each: connect + full handshake + one
//! GET, name lookup and process start left out), then one download of `BULK_MIB` MiB. The
//! table shows
//! medians over runs with [min..max], the added latency of `intercepted` over `direct`
//! (paired per run), and what curl itself adds per request outside its timings (process
//! start, TLS set-up, bookkeeping between URLs); every sample goes to
//! `target/bench-tls-l1.json`.
//!
//! The `mitmproxy` row of the host-side bench has no counterpart here: L1's root filesystem is
//! an initramfs of busybox and static binaries (`msbvm_tests::nested`), with no Python for
//! mitmproxy; the row is skipped with that line.
//!
//! Environment: `MSBVM_BENCH_RUNS` (default 3), `MSBVM_BENCH_REQUESTS` (default 500),
//! `MSBVM_BENCH_HANDSHAKES` (default 50), `MSBVM_BENCH_BULK_MIB` (default 16),
//! `MSBVM_STATIC_DIR` (prebuilt static binaries), `MSBVM_SKIP_NESTED=1` (skip on hosts that
//! cannot run L1). Needs dnsmasq (skipped without). Under `cargo test` the target does nothing.
//!
//! Numbers are from inside an emulated L1 machine (one vCPU under QEMU's software emulation,
//! shared by the guest, the netstack, the upstream and everything else): compare the modes with
//! each other, not with the host-side bench or with hardware.

use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::tls_bench::pki::Authority;
use msbvm_benches::tls_bench::{paired, signed_spread, spread, UPSTREAM_NAME};
use msbvm_benches::tls_l1::script::{
    l1_script, GUEST_SCRIPT, L1_CA, L1_GUEST_SCRIPT, L1_IMAGE, L1_KEY, L1_LEAF, L1_UPSTREAM,
    MEASURE_TIMEOUT_SECS,
};
use msbvm_benches::tls_l1::{parse_console, to_json, L1Mode, L1Plan, RunSamples};
use msbvm_benches::{l1_bench_main, median};
use msbvm_tests::artifacts::{
    build_static_bins, target_dir, GuestArtifacts, Progress, StaticBuild,
};
use msbvm_tests::e2e::{dnsmasq_present, DNSMASQ, L1_AGENT};
use msbvm_tests::test_image::TestImage;
use msbvm_tests::{nested, Error, NestedVm, Stream};

/// The upstream's binary name (package msbvm-benches).
const UPSTREAM_BIN: &str = "msbvm-tls-l1-upstream";
/// L1 memory: two sandboxes of 512 MiB, the image and msbvm's state in L1's RAM disk.
const L1_MEMORY_MIB: u32 = 4096;
/// Why the mitmproxy row is empty.
const MITMPROXY_SKIPPED: &str = "L1's root filesystem is an initramfs of busybox and static binaries: it has no Python, and bringing CPython, its stdlib and mitmproxy's venv (with the native libraries of its extensions) into it is not done";

fn harness_error(e: String) -> Error {
    Error::Harness(e)
}

/// Builds everything, runs the benchmark in L1, prints and records the results; returns
/// whether every run of every mode completed.
fn bench() -> Result<bool, Error> {
    let plan = L1Plan {
        runs: env_count("MSBVM_BENCH_RUNS", 3),
        requests: env_count("MSBVM_BENCH_REQUESTS", 500).max(2),
        handshakes: env_count("MSBVM_BENCH_HANDSHAKES", 50),
        bulk_bytes: u64::from(env_count("MSBVM_BENCH_BULK_MIB", 16)) << 20,
    };
    println!("mitmproxy: skipped: {MITMPROXY_SKIPPED}");
    nested::preflight()?;
    if !dnsmasq_present() {
        return Ok(true);
    }
    let artifacts = GuestArtifacts::prepare(
        &StaticBuild::new().bin("msbvm-guest-agent", "msbvm-agent"),
        Progress::Lines,
    )?;
    // Its own cargo invocation, so that msbvm's build (shared with the e2e suites) stays as is.
    let upstream = build_static_bins(&[("msbvm-benches", UPSTREAM_BIN)])?;
    let image = TestImage::prepare()?;
    let ca = Authority::new("msbvm tls bench upstream CA").map_err(harness_error)?;
    let (leaf, key) = ca.issue_pem(&[UPSTREAM_NAME]).map_err(harness_error)?;

    let runs_total = u64::from(plan.runs) * 2;
    let vm = artifacts
        .add_to(NestedVm::builder())
        .add_file(&artifacts.binaries.extra["msbvm-agent"], L1_AGENT)
        .add_file(&upstream[UPSTREAM_BIN], L1_UPSTREAM)
        .add_program(DNSMASQ, DNSMASQ)
        .add_file(&image.layout, L1_IMAGE)
        .add_bytes(L1_CA, ca.cert_pem.clone(), 0o644)
        .add_bytes(L1_LEAF, leaf, 0o644)
        .add_bytes(L1_KEY, key, 0o600)
        .add_bytes(L1_GUEST_SCRIPT, GUEST_SCRIPT, 0o755)
        .memory_mib(L1_MEMORY_MIB)
        .stream(Stream::Stderr)
        .timeout(Duration::from_secs(
            900 + runs_total * MEASURE_TIMEOUT_SECS.min(900),
        ));
    eprintln!(
        "tls_l1 bench: {} runs x 2 modes, {} keep-alive GETs, {} new connections, {} MiB each, in one L1 machine",
        plan.runs,
        plan.requests,
        plan.handshakes,
        plan.bulk_bytes >> 20
    );
    let out = vm.run_script(&l1_script(&plan))?;
    eprintln!("tls_l1 bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());

    let results = parse_console(&out.console);
    report(&plan, &results);
    let json_path = target_dir().join("bench-tls-l1.json");
    std::fs::write(
        &json_path,
        to_json(&plan, &results, &[("mitmproxy", MITMPROXY_SKIPPED.into())]),
    )
    .map_err(|source| Error::Io {
        context: format!("cannot write {}", json_path.display()),
        source,
    })?;
    println!("results written to {}", json_path.display());
    let complete = results.iter().all(|(_, runs)| {
        runs.len() == plan.runs as usize && runs.iter().all(|r| r.complete(&plan))
    });
    Ok(complete)
}

/// One number per complete run of one mode.
#[derive(Default)]
struct Series {
    requests_per_s: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    connection_ms: Vec<f64>,
    bulk_mib_s: Vec<f64>,
    curl_gap_ms: Vec<f64>,
    complete: usize,
    runs: usize,
    issuer: Option<String>,
}

impl Series {
    fn of(plan: &L1Plan, runs: &[RunSamples]) -> Series {
        let mut s = Series {
            runs: runs.len(),
            ..Series::default()
        };
        let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        for r in runs {
            if r.issuer.is_some() {
                s.issuer = r.issuer.clone();
            }
            for e in &r.errors {
                eprintln!("tls_l1 bench: run {}: {e}", r.run);
            }
            if !r.complete(plan) {
                eprintln!(
                    "tls_l1 bench: run {} incomplete: {} of {} keep-alive requests on {:?} connections, {} of {} new connections ({:?} opened), bulk {:?} of {} bytes",
                    r.run,
                    r.keepalive_ms.len(),
                    plan.requests,
                    r.keepalive_connects,
                    r.connection_ms.len(),
                    plan.handshakes,
                    r.connection_connects,
                    r.bulk_bytes,
                    plan.bulk_bytes,
                );
                continue;
            }
            s.complete += 1;
            s.requests_per_s.push(nan(r.requests_per_s()));
            s.p50_ms.push(nan(r.p50_ms()));
            s.p99_ms.push(nan(r.p99_ms()));
            s.connection_ms.push(nan(r.connection_p50_ms()));
            s.bulk_mib_s.push(nan(r.bulk_mib_s()));
            s.curl_gap_ms.push(nan(r.curl_gap_ms()));
        }
        s
    }
}

fn report(plan: &L1Plan, results: &[(L1Mode, Vec<RunSamples>)]) {
    println!();
    println!(
        "tls_l1: HTTPS from a sandbox VM (curl, OpenSSL; nested KVM in L1) through msbvm's netstack to a hyper+rustls HTTP/1.1 server on L1's 127.0.0.1:443; per run: {} keep-alive GETs of 100 B, {} new connections (full handshake, no resumption, + 1 GET), {} MiB download; modes interleaved; medians of complete runs [min..max]",
        plan.requests,
        plan.handshakes,
        plan.bulk_bytes >> 20,
    );
    println!(
        "{:<12} {:>5} {:>22} {:>22} {:>22} {:>22} {:>22} {:>22}",
        "mode",
        "runs",
        "keep-alive req/s",
        "p50 ms",
        "p99 ms",
        "new conn ms",
        "bulk MiB/s",
        "curl gap ms/req"
    );
    let series: Vec<(L1Mode, Series)> = results
        .iter()
        .map(|(m, runs)| (*m, Series::of(plan, runs)))
        .collect();
    for (mode, s) in &series {
        println!(
            "{:<12} {:>5} {:>22} {:>22} {:>22} {:>22} {:>22} {:>22}",
            mode.name(),
            format!("{}/{}", s.complete, s.runs),
            spread(&s.requests_per_s, 0),
            spread(&s.p50_ms, 3),
            spread(&s.p99_ms, 3),
            spread(&s.connection_ms, 2),
            spread(&s.bulk_mib_s, 1),
            spread(&s.curl_gap_ms, 2),
        );
    }
    println!("{:<12} skipped: {MITMPROXY_SKIPPED}", "mitmproxy");
    for (mode, s) in &series {
        println!(
            "{} saw certificates issued by: {}",
            mode.name(),
            s.issuer.as_deref().unwrap_or("-")
        );
    }
    let find = |m: L1Mode| series.iter().find(|(mode, _)| *mode == m).map(|(_, s)| s);
    if let (Some(i), Some(d)) = (find(L1Mode::Intercepted), find(L1Mode::Direct)) {
        if i.complete == d.complete {
            println!(
                "intercepted-direct (paired per run): p50 {} ms, p99 {} ms, new conn {} ms, bulk {} MiB/s",
                signed_spread(&paired(&i.p50_ms, &d.p50_ms), 3),
                signed_spread(&paired(&i.p99_ms, &d.p99_ms), 3),
                signed_spread(&paired(&i.connection_ms, &d.connection_ms), 2),
                signed_spread(&paired(&i.bulk_mib_s, &d.bulk_mib_s), 1),
            );
        } else {
            println!("intercepted-direct: not paired (the modes completed different runs)");
        }
        let med = |v: &Vec<f64>| median(v.clone());
        let x = |a: Option<f64>, b: Option<f64>| {
            msbvm_benches::ratio(a, b).map_or_else(|| "-".into(), |r| format!("{r:.2}"))
        };
        println!(
            "intercepted/direct: req/s x{}, new conn/s x{}, bulk x{}; intercepted/mitmproxy: - (mitmproxy skipped)",
            x(med(&i.requests_per_s), med(&d.requests_per_s)),
            x(med(&d.connection_ms), med(&i.connection_ms)),
            x(med(&i.bulk_mib_s), med(&d.bulk_mib_s)),
        );
    }
}

fn main() -> ExitCode {
    l1_bench_main("tls_l1", "some runs did not complete (lines above)", bench)
}
