//! Boot benchmark: msbvm side by side with QEMU (`-M microvm`) and, when available, Firecracker,
//! on the same guest kernel, initramfs and command line, in one L1 machine with nested KVM.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench boot
//! ```
//!
//! Every run is timed from outside the VMM by the static `msbvm-boot-timing` helper: spawn to
//! the guest's `MSBVM-INIT-OK` line, and spawn to exit. msbvm also reports its own boot-timer
//! and memory overhead (`--stats`). Medians go to a table on stdout and, with every sample, to
//! `target/bench-boot.json`.
//!
//! The VMMs take turns (run 1 of each, then run 2 of each, ...), so the emulated L1's drift
//! falls on all of them alike; below the table of medians come each VMM's spread and msbvm's
//! ratio to each peer run by run.
//!
//! Environment: `MSBVM_BENCH_RUNS` (msbvm and Firecracker runs, default 9; 3 with `--quick`),
//! `MSBVM_BENCH_QEMU_RUNS` (default 2, 1 with `--quick`: QEMU's own start-up takes tens of
//! seconds under the emulated L1), `MSBVM_BENCH_FIRECRACKER` (path to a firecracker binary),
//! `MSBVM_BENCH_CMDLINE` (guest command line), `MSBVM_SKIP_NESTED=1` (skip on hosts that cannot
//! run L1).
//!
//! Numbers are from inside an emulated L1 machine: compare VMMs with each other, not with
//! numbers taken on hardware.

use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::{self, RunCounts, CPUS, MEMORY_MIB, RUN_TIMEOUT_SECS, TIMING_BIN};
use msbvm_benches::{
    bench_mode, error_exit, finish_boot_bench, parse_samples, summarize, table, BootSetup,
};
use msbvm_tests::artifacts::{GuestArtifacts, Progress, StaticBuild};
use msbvm_tests::report::shell_quote;
use msbvm_tests::{nested, Error, NestedVm, Stream};

/// Builds everything, runs the benchmark in L1, prints and records the results; returns the
/// number of msbvm runs that did not boot and power off cleanly.
fn bench() -> Result<usize, Error> {
    let counts = RunCounts::from_env();
    let cmdline = boot_runs::cmdline();
    nested::preflight()?;

    let build = StaticBuild::new().bin("msbvm-benches", TIMING_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let vm = artifacts.add_to(NestedVm::builder()).stream(Stream::Stderr);
    let (vm, plan) = boot_runs::plan(vm, &artifacts.binaries.extra[TIMING_BIN], &cmdline, counts);
    for (vmm, why) in &plan.skipped {
        println!("{vmm}: skipped: {why}");
    }
    let script = format!("{}exit 0\n", plan.script);
    let total_runs = plan.total_runs;
    let skipped = plan.skipped;

    // Generous: only a guard against a hung L1 (each run has its own limit inside).
    let timeout = Duration::from_secs(300 + u64::from(total_runs) * RUN_TIMEOUT_SECS);
    eprintln!(
        "boot bench: {total_runs} runs in one L1 machine; guest cmdline {}",
        shell_quote(&cmdline)
    );
    let out = vm.timeout(timeout).run_script(&script)?;
    eprintln!("boot bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());

    let samples = parse_samples(&out.console);
    let summaries = summarize(&samples);
    println!();
    println!(
        "boot: {CPUS} vCPU, {MEMORY_MIB} MiB, same kernel/initramfs/cmdline; medians (to init: runs that got there; to exit, memory: clean runs); nested KVM, L1 under emulation"
    );
    print!("{}", table(&summaries));
    print!("{}", msbvm_benches::spread_lines(&samples));
    print!("{}", msbvm_benches::exit_table(&out.console));

    let setup = BootSetup {
        cmdline,
        cpus: CPUS,
        memory_mib: MEMORY_MIB,
        skipped,
    };
    finish_boot_bench(
        "bench-boot.json",
        &setup,
        &samples,
        &summaries,
        &out.console,
    )
}

fn main() -> ExitCode {
    if !bench_mode("boot") {
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!(
                "boot bench: {failed} msbvm run(s) did not boot and power off cleanly (output above)"
            );
            ExitCode::FAILURE
        }
        Err(e) => error_exit("boot", &e),
    }
}
