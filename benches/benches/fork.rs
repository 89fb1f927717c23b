//! Fork benchmark (issue 13 §4): forks of a snapshot against cold boots, in the same L1
//! machine with nested KVM, interleaved run by run.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench fork                                  # 1 and 10 forks
//! MSBVM_BENCH_FORKS=1,10,100 MSBVM_BENCH_L1_MIB=12288 cargo bench -p msbvm-benches --bench fork
//! ```
//!
//! The static `msbvm-fork-bench` helper drives the SDK in L1 (see its docs): cold is create to
//! the first exec round trip; N forks is the fork call to the last fork's first exec round
//! trip. The table gives medians with the range and the ratio fork/cold, computed run by run
//! (each run's fork over the same run's cold boot) with its range; PSS is per idle fork of the
//! largest N. Every sample goes to `target/bench-fork.json`.
//!
//! Environment: `MSBVM_BENCH_RUNS` (default 3), `MSBVM_BENCH_FORKS` (default `1,10`),
//! `MSBVM_BENCH_MIB` (guest memory, default 256), `MSBVM_BENCH_L1_MIB` (L1 memory, default
//! 4096), `MSBVM_BENCH_FIRECRACKER` (a firecracker binary; its snapshot restore is not driven
//! yet, which the run says), `MSBVM_STATIC_DIR`, `MSBVM_SKIP_NESTED=1`.
//!
//! Numbers are from inside an emulated L1 machine: compare with each other, not with numbers
//! taken on hardware.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::{env_count, FIRECRACKER_ENV};
use msbvm_benches::{l1_bench_main, l1_samples, median, spread, write_record, L1Sample};
use msbvm_tests::artifacts::{GuestArtifacts, Progress, StaticBuild, L1_KERNEL};
use msbvm_tests::{nested, Error, NestedVm, Stream};

const HELPER_BIN: &str = "msbvm-fork-bench";
const L1_HELPER: &str = "/bin/msbvm-fork-bench";
const AGENT_BIN: &str = "msbvm-agent";
const L1_AGENT: &str = "/bin/msbvm-agent";
const RESULT: &str = "msbvm-fork-bench: result";

/// The fork count of a sample (its label); samples without one were left out when read.
fn forks(s: &L1Sample) -> u32 {
    s.label.parse().unwrap_or(0)
}

fn bench() -> Result<bool, Error> {
    let runs = env_count("MSBVM_BENCH_RUNS", 3);
    let counts = std::env::var("MSBVM_BENCH_FORKS").unwrap_or_else(|_| "1,10".into());
    let guest_mib = env_count("MSBVM_BENCH_MIB", 256);
    let l1_mib = env_count("MSBVM_BENCH_L1_MIB", 4096);
    nested::preflight()?;
    let build = StaticBuild::new()
        .bin("msbvm-guest-agent", AGENT_BIN)
        .bin("msbvm-benches", HELPER_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let extra = &artifacts.binaries.extra;
    let vm = artifacts
        .add_to(NestedVm::builder())
        .memory_mib(l1_mib)
        .add_file(&extra[AGENT_BIN], L1_AGENT)
        .add_file(&extra[HELPER_BIN], L1_HELPER)
        .stream(Stream::Stderr);
    match std::env::var_os(FIRECRACKER_ENV) {
        Some(_) => println!(
            "firecracker: skipped: driving Firecracker's snapshot restore is not implemented yet"
        ),
        None => println!("firecracker: skipped: no binary given ({FIRECRACKER_ENV})"),
    }
    let script = format!(
        "export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL={L1_KERNEL} HOME=/root\n\
         # A hundred forks at once in a one-CPU emulated machine take minutes to be ready.\n\
         export MSBVM_READY_TIMEOUT_SECS=900\n\
         mkdir -p /root\n\
         timeout 3000 {L1_HELPER} --runs {runs} --counts {counts} --memory {guest_mib}\n\
         echo \"bench: fork helper status=$?\"\n\
         exit 0\n"
    );
    eprintln!("fork bench: {runs} runs of a cold boot and {counts} forks, in one L1 machine");
    let out = vm.timeout(Duration::from_secs(3600)).run_script(&script)?;
    eprintln!("fork bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());
    let samples: Vec<L1Sample> = l1_samples(&out.console, RESULT, "n")
        .into_iter()
        .filter(|s| s.label.parse::<u32>().is_ok())
        .collect();
    let ok = out.console.contains("fork helper status=0");
    for line in out.console.lines().filter(|l| l.contains("FAILED")) {
        println!("{line}");
    }

    let cold: BTreeMap<u32, f64> = samples
        .iter()
        .filter(|s| s.kind == "cold")
        .map(|s| (s.run, s.value))
        .collect();
    let mut by_n: BTreeMap<u32, Vec<&L1Sample>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.kind == "fork") {
        by_n.entry(forks(s)).or_default().push(s);
    }
    println!();
    println!("Forks vs cold boot, create/fork call to first exec round trip ({runs} interleaved runs, guest {guest_mib} MiB, nested L1)");
    println!(
        "{:<14} {:>28} {:>26}",
        "", "ms: median [min-max]", "ratio to cold: median [range]"
    );
    let cold_values: Vec<f64> = cold.values().copied().collect();
    println!(
        "{:<14} {:>28} {:>26}",
        "cold boot",
        spread(&cold_values, 1),
        "1"
    );
    for (n, list) in &by_n {
        let values: Vec<f64> = list.iter().map(|s| s.value).collect();
        let ratios: Vec<f64> = list
            .iter()
            .filter_map(|s| cold.get(&s.run).map(|c| s.value / c))
            .collect();
        println!(
            "{:<14} {:>28} {:>26}",
            format!("{n} fork(s)"),
            spread(&values, 1),
            spread(&ratios, 3)
        );
    }
    let pss: Vec<f64> = samples
        .iter()
        .filter(|s| s.kind == "pss")
        .map(|s| s.value / 1024.0)
        .collect();
    if !pss.is_empty() {
        let n = samples.iter().find(|s| s.kind == "pss").map_or(0, forks);
        let m = median(pss.clone()).unwrap_or(0.0);
        println!(
            "PSS per idle fork ({n} forks): {} MiB = {:.1} % of the guest's {guest_mib} MiB",
            spread(&pss, 1),
            m / guest_mib as f64 * 100.0
        );
    }

    let json = serde_json::json!({
        "runs": runs,
        "guest_mib": guest_mib,
        "samples": samples.iter().map(|s| serde_json::json!({
            "kind": s.kind, "n": forks(s), "run": s.run, "value": s.value,
        })).collect::<Vec<_>>(),
    });
    write_record("bench-fork.json", &json)?;
    Ok(ok && !cold.is_empty() && !by_n.is_empty())
}

fn main() -> ExitCode {
    l1_bench_main(
        "fork",
        "some measurements failed (FAILED lines above)",
        bench,
    )
}
