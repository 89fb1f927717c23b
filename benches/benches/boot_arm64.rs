//! arm64 boot benchmark: msbvm side by side with QEMU (`-M virt -enable-kvm -cpu host`) and,
//! when given, Firecracker on the same arm64 guest kernel, initramfs and command line, in one
//! arm64 L1 machine (QEMU `virt` with EL2, nested KVM).
//!
//! ```text
//! cargo bench -p msbvm-benches --bench boot_arm64
//! MSBVM_BENCH_ARM64_QEMU_ONLY=1 cargo bench -p msbvm-benches --bench boot_arm64
//! ```
//!
//! Every run is timed from outside the VMM by the aarch64 build of `msbvm-boot-timing`, as in
//! the x86 `boot` bench: spawn to the guest's `MSBVM-INIT-OK` line, and spawn to exit. The VMMs
//! take turns run by run; the table of medians, each VMM's spread, msbvm's ratio to QEMU run by
//! run and KVM's counters follow, and everything goes to `target/bench-boot-arm64.json`.
//!
//! QEMU is the distribution's arm64 build with only the libraries it needs
//! (`msbvm_benches::qemu_arm64`). Firecracker takes part when
//! `MSBVM_BENCH_ARM64_FIRECRACKER` names a static aarch64 build of it (built for the
//! measurement only, never kept in the repository; the README says how): right after msbvm in
//! each round, with msbvm's console and command line (both have a 16550 UART).
//!
//! Environment: `MSBVM_BENCH_RUNS` (runs of each VMM, default 5, 2 with `--quick`),
//! `MSBVM_BENCH_ARM64_QEMU_ONLY=1` (QEMU alone, on `MSBVM_BENCH_ARM64_KERNEL` or the
//! distribution's arm64 kernel),
//! `MSBVM_BENCH_ARM64_KERNEL` (a guest kernel instead of the harness's),
//! `MSBVM_BENCH_ARM64_FIRECRACKER` (a static aarch64 firecracker to include),
//! `MSBVM_BENCH_ARM64_CMDLINE` (the command line after `console=`, default `panic=-1 quiet`),
//! `MSBVM_SKIP_NESTED=1` (skip on hosts that cannot run L1).
//!
//! Numbers are from inside an emulated arm64 L1 machine: compare the VMMs with each other,
//! not with numbers taken on hardware, nor with the x86 bench's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_arm64::{self, check_arm64_kernel, QEMU_ONLY_ENV};
use msbvm_benches::boot_runs::{env_count, CPUS, MEMORY_MIB, RUN_TIMEOUT_SECS, TIMING_BIN};
use msbvm_benches::qemu_arm64::QemuSysroot;
use msbvm_benches::{
    bench_mode, by_mode, error_exit, finish_boot_bench, parse_samples, summarize, table, BootSetup,
};
use msbvm_tests::artifacts::{
    build_static_bins_for, l2_initramfs, GuestArtifacts, Progress, StaticBuild, L1_INITRD,
    L1_KERNEL,
};
use msbvm_tests::report::shell_quote;
use msbvm_tests::{nested, Error, L1Arch, NestedVm, Stream};

/// L1's memory: two 256 MiB guests never run at once, but the initramfs (QEMU's sysroot, the
/// kernel, msbvm) lives in it too.
const L1_MEMORY_MIB: u32 = 2048;

/// What the runs boot, and with what.
struct Prepared {
    timing: PathBuf,
    msbvm: Option<PathBuf>,
    kernel: PathBuf,
    kernel_source: String,
    initrd: Vec<u8>,
}

/// The binaries, kernel and initramfs: msbvm's arm64 artifacts from the harness, or for QEMU
/// alone just the timing helper and msbvm-init (cross-built) and a kernel that QEMU boots.
fn prepare() -> Result<Prepared, Error> {
    if boot_arm64::qemu_only() {
        let mut bins = build_static_bins_for(
            &[
                ("msbvm-benches", TIMING_BIN),
                ("msbvm-guest-agent", "msbvm-init"),
            ],
            L1Arch::Aarch64,
        )?;
        let init = bins.remove("msbvm-init").expect("built");
        let (kernel, kernel_source) = boot_arm64::qemu_only_kernel()?;
        return Ok(Prepared {
            timing: bins.remove(TIMING_BIN).expect("built"),
            msbvm: None,
            kernel,
            kernel_source,
            initrd: l2_initramfs(Some(&init))?,
        });
    }
    let build = StaticBuild::new()
        .arch(L1Arch::Aarch64)
        .bin("msbvm-benches", TIMING_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let kernel_override = std::env::var_os(boot_arm64::KERNEL_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let (kernel, kernel_source) = match kernel_override {
        Some(k) => (k, boot_arm64::KERNEL_ENV.to_string()),
        None => (
            artifacts.kernel.clone(),
            "msbvm's arm64 guest kernel".into(),
        ),
    };
    Ok(Prepared {
        timing: artifacts.binaries.extra[TIMING_BIN].clone(),
        msbvm: Some(artifacts.binaries.msbvm.clone()),
        kernel,
        kernel_source,
        initrd: artifacts.initrd,
    })
}

/// Builds everything, runs the benchmark in L1, prints and records the results; returns the
/// number of msbvm runs that did not boot and power off cleanly.
fn bench() -> Result<usize, Error> {
    let runs = env_count("MSBVM_BENCH_RUNS", by_mode(5, 2));
    let common = boot_arm64::common_cmdline();
    let arch = L1Arch::Aarch64;
    // The cheap checks first: minutes of cross-building are no use on a host without L1.
    nested::preflight_for(arch)?;
    let qemu = QemuSysroot::prepare()?;
    let firecracker = boot_arm64::firecracker_from_env();
    println!("{}", qemu.describe());
    let prepared = prepare()?;
    let kind = check_arm64_kernel(&prepared.kernel)?;
    println!(
        "guest kernel: {} ({kind}, {})",
        prepared.kernel_source,
        prepared.kernel.display()
    );

    let vm = NestedVm::builder()
        .arch(arch)
        .memory_mib(L1_MEMORY_MIB)
        .add_file(&prepared.kernel, L1_KERNEL)
        .add_bytes(L1_INITRD, prepared.initrd, 0o644)
        .stream(Stream::Stderr);
    let (vm, plan) = boot_arm64::plan(
        vm,
        &prepared.timing,
        prepared.msbvm.as_deref(),
        firecracker.as_deref().map_err(Clone::clone),
        &qemu,
        runs,
        &common,
    );
    for (vmm, why) in &plan.skipped {
        println!("{vmm}: skipped: {why}");
    }
    let script = format!("{}exit 0\n", plan.script);
    // Generous: only a guard against a hung L1 (each run has its own limit inside).
    let timeout = Duration::from_secs(300 + u64::from(plan.total_runs) * RUN_TIMEOUT_SECS);
    eprintln!(
        "boot_arm64 bench: {} runs in one arm64 L1 machine; guest cmdline console=<the VMM's UART> {}",
        plan.total_runs,
        shell_quote(&common)
    );
    let out = vm.timeout(timeout).run_script(&script)?;
    eprintln!(
        "boot_arm64 bench: L1 ran {:.1} s",
        out.elapsed.as_secs_f64()
    );

    let samples = parse_samples(&out.console);
    let summaries = summarize(&samples);
    println!();
    println!(
        "boot (arm64): {CPUS} vCPU, {MEMORY_MIB} MiB, same kernel/initramfs/cmdline but the console; medians (to init: runs that got there; to exit, memory: clean runs); nested KVM, arm64 L1 under emulation"
    );
    print!("{}", table(&summaries));
    print!("{}", msbvm_benches::spread_lines(&samples));
    print!("{}", msbvm_benches::exit_table(&out.console));

    let setup = BootSetup {
        cmdline: format!("console=<ttyS0 for msbvm, ttyAMA0 for qemu> {common}"),
        cpus: CPUS,
        memory_mib: MEMORY_MIB,
        skipped: plan.skipped,
    };
    finish_boot_bench(
        "bench-boot-arm64.json",
        &setup,
        &samples,
        &summaries,
        &out.console,
    )
}

fn main() -> ExitCode {
    if !bench_mode("boot_arm64") {
        return ExitCode::SUCCESS;
    }
    if boot_arm64::qemu_only() {
        println!("boot_arm64 bench: {QEMU_ONLY_ENV}=1: QEMU runs only, msbvm not built or run");
    }
    match bench() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!(
                "boot_arm64 bench: {failed} msbvm run(s) did not boot and power off cleanly (output above)"
            );
            ExitCode::FAILURE
        }
        Err(e) => error_exit("boot_arm64", &e),
    }
}
