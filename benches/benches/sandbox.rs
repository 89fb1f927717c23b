//! Sandbox benchmark: what an SDK user gets (boot to agent-ready, exec round trip, throughput
//! over vsock through exec streams), with the boot references of the boot benchmark (msbvm with
//! `msbvm-init`, QEMU `-M microvm` and, when available, Firecracker, on the same kernel and
//! initramfs) made in the same L1 machine with nested KVM.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench sandbox
//! ```
//!
//! The static `msbvm-sandbox-bench` helper drives the SDK in L1 (see its docs); the references
//! are timed by `msbvm-boot-timing`, spawn to the guest's init marker. The headline ratio is
//! msbvm's create-to-agent-ready (host wall clock, runtime spawn included) over each
//! reference's spawn-to-init: a full sandbox against a bare boot. The table goes to stdout, every
//! sample to `target/bench-sandbox.json`.
//!
//! Environment: `MSBVM_BENCH_RUNS` (sandbox boots, msbvm and Firecracker reference runs,
//! default 9), `MSBVM_BENCH_QEMU_RUNS` (default 2), `MSBVM_BENCH_EXECS` (default 50),
//! `MSBVM_BENCH_MIB` (MiB per transfer, default 64; `--quick`: 3 runs, 1 QEMU run, 20 execs,
//! 8 MiB), `MSBVM_BENCH_FIRECRACKER` (path to a
//! firecracker binary), `MSBVM_BENCH_CMDLINE` (the references' guest command line),
//! `MSBVM_STATIC_DIR` (prebuilt static binaries), `MSBVM_SKIP_NESTED=1` (skip on hosts that
//! cannot run L1).
//!
//! Numbers are from inside an emulated L1 machine: compare with each other, not with numbers
//! taken on hardware.

use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::{
    self, env_count, RunCounts, CPUS, MEMORY_MIB, RUN_TIMEOUT_SECS, TIMING_BIN,
};
use msbvm_benches::sandbox::{self, SandboxResults, SandboxSetup};
use msbvm_benches::{by_mode, l1_bench_main, parse_samples, summarize};
use msbvm_tests::artifacts::{
    target_dir, GuestArtifacts, Progress, StaticBuild, L1_KERNEL, L1_MSBVM,
};
use msbvm_tests::report::shell_command;
use msbvm_tests::{nested, Error, NestedVm, Stream};

/// The helper's binary name (package msbvm-benches) and its place in L1.
const HELPER_BIN: &str = "msbvm-sandbox-bench";
const L1_HELPER: &str = "/bin/msbvm-sandbox-bench";
/// The guest agent: `msbvm` finds it next to itself.
const AGENT_BIN: &str = "msbvm-agent";
const L1_AGENT: &str = "/bin/msbvm-agent";
/// Limit on the helper inside L1: only a guard against a hang.
const HELPER_TIMEOUT_SECS: u64 = 1200;
/// Limit on one sandbox boot's helper call: only a guard against a hang.
const BOOT_TIMEOUT_SECS: u64 = 300;
/// L1 memory: the references, one sandbox at a time and QEMU with its libraries.
const L1_MEMORY_MIB: u32 = 3072;

/// Builds everything, runs the benchmark in L1, prints and records the results; returns
/// whether every sandbox measurement succeeded.
fn bench() -> Result<bool, Error> {
    let counts = RunCounts::from_env();
    let execs = env_count("MSBVM_BENCH_EXECS", by_mode(50, 20));
    let mib = env_count("MSBVM_BENCH_MIB", by_mode(64, 8));
    let cmdline = boot_runs::cmdline();
    nested::preflight()?;

    let build = StaticBuild::new()
        .bin("msbvm-guest-agent", AGENT_BIN)
        .bin("msbvm-benches", TIMING_BIN)
        .bin("msbvm-benches", HELPER_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let extra = &artifacts.binaries.extra;
    let vm = artifacts
        .add_to(NestedVm::builder())
        .memory_mib(L1_MEMORY_MIB)
        .add_file(&extra[AGENT_BIN], L1_AGENT)
        .add_file(&extra[HELPER_BIN], L1_HELPER)
        .stream(Stream::Stderr);
    let (vm, plan) = boot_runs::plan(vm, &extra[TIMING_BIN], &cmdline, counts);
    for (vmm, why) in &plan.skipped {
        println!("{vmm}: skipped: {why}");
    }

    let helper_args = |more: &[String]| {
        let mut argv = vec![
            L1_HELPER.to_string(),
            "--cpus".into(),
            CPUS.to_string(),
            "--memory".into(),
            MEMORY_MIB.to_string(),
        ];
        argv.extend_from_slice(more);
        shell_command(&argv)
    };
    // One sandbox boot per round, after that round's reference boots: create-to-ready and the
    // peers' boots share the L1's drift run by run. Then the exec and stream measurements.
    let boot = |run: u32| {
        let helper = helper_args(&[
            "--runs".into(),
            counts.runs.to_string(),
            "--boot-run".into(),
            run.to_string(),
        ]);
        // The sandbox's stop returns before L1 has finished tearing it down (its memory, the
        // nested VM's structures); on L1's one vCPU that work would land in the next
        // reference boot, so it gets a second to settle.
        format!(
            "timeout {BOOT_TIMEOUT_SECS} {helper}\n\
             echo \"bench: sandbox boot {run} status=$?\"\n\
             sync; sleep 1\n"
        )
    };
    let helper = helper_args(&[
        "--runs".into(),
        "0".into(),
        "--execs".into(),
        execs.to_string(),
        "--mib".into(),
        mib.to_string(),
    ]);
    // `msbvm` (the SDK's runtime) finds the agent next to itself and busybox at /bin/busybox
    // (the L1 harness's own static one).
    let script = format!(
        "export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL={L1_KERNEL} HOME=/root\n\
         mkdir -p /root\n\
         echo 'bench: sandboxes ({L1_MSBVM} via the SDK), one per round of reference boots'\n\
         {rounds}\
         timeout {HELPER_TIMEOUT_SECS} {helper}\n\
         echo \"bench: sandbox helper status=$?\"\n\
         exit 0\n",
        rounds = plan.script_with(counts.runs, boot)
    );
    let timeout = Duration::from_secs(
        300 + u64::from(plan.total_runs) * RUN_TIMEOUT_SECS
            + u64::from(counts.runs) * BOOT_TIMEOUT_SECS
            + HELPER_TIMEOUT_SECS,
    );
    eprintln!(
        "sandbox bench: {} reference boots, {} sandbox boots, {execs} execs, 2 x {mib} MiB, in one L1 machine",
        plan.total_runs, counts.runs
    );
    let out = vm.timeout(timeout).run_script(&script)?;
    eprintln!("sandbox bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());

    let ref_samples = parse_samples(&out.console);
    let refs = summarize(&ref_samples);
    let results = SandboxResults::parse(&out.console);
    let setup = SandboxSetup {
        runs: counts.runs,
        execs,
        mib,
        cpus: CPUS,
        memory_mib: MEMORY_MIB,
        cmdline,
        skipped: plan.skipped,
    };
    println!();
    print!(
        "{}",
        sandbox::table(
            &setup,
            &results,
            &refs,
            &ref_samples,
            &msbvm_benches::table(&refs)
        )
    );

    let json_path = target_dir().join("bench-sandbox.json");
    std::fs::write(
        &json_path,
        sandbox::to_json(&setup, &results, &refs, &ref_samples),
    )
    .map_err(|source| Error::Io {
        context: format!("cannot write {}", json_path.display()),
        source,
    })?;
    println!("results written to {}", json_path.display());
    if results.boots.is_empty() && results.exec.is_empty() {
        return Err(Error::NoExitStatus {
            qemu_status: "the L1 script printed no sandbox results".into(),
            console_tail: msbvm_tests::console::tail(&out.console, 40),
        });
    }
    // A reference's failures are only reported; ours make the benchmark fail, after the record.
    Ok(results.all_ok(counts.runs))
}

fn main() -> ExitCode {
    l1_bench_main(
        "sandbox",
        "some sandbox measurements failed (FAILED lines above)",
        bench,
    )
}
