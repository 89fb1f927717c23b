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
//! Environment: `MSBVM_BENCH_RUNS` (msbvm and Firecracker runs, default 5),
//! `MSBVM_BENCH_QEMU_RUNS` (default 2: QEMU's own start-up takes tens of seconds under the
//! emulated L1), `MSBVM_BENCH_FIRECRACKER` (path to a firecracker binary),
//! `MSBVM_BENCH_CMDLINE` (guest command line), `MSBVM_SKIP_NESTED=1` (skip on hosts that cannot
//! run L1).
//!
//! Numbers are from inside an emulated L1 machine: compare VMMs with each other, not with
//! numbers taken on hardware.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::{parse_samples, summarize, table, to_json, BootSetup};
use msbvm_tests::artifacts::{
    check_static, target_dir, GuestArtifacts, Progress, StaticBuild, L1_INITRD, L1_KERNEL, L1_MSBVM,
};
use msbvm_tests::report::{shell_command, shell_quote};
use msbvm_tests::skip::skip_requested;
use msbvm_tests::{nested, Error, NestedVm, Stream};

/// Guest vCPUs for every VMM.
const CPUS: u32 = 1;
/// Guest memory in MiB for every VMM.
const MEMORY_MIB: u32 = 256;
/// The guest command line for every VMM unless `MSBVM_BENCH_CMDLINE` is set: serial console,
/// quiet so that the serial port's speed does not dominate, reboot on panic, and reboot by
/// triple fault, which ends every VMM at once (QEMU through `-no-reboot`, Firecracker on the
/// shutdown exit; msbvm-init powers msbvm off through its own port before that). Not
/// `reboot=k`: QEMU's microvm has no keyboard controller, and the kernel's polling of the
/// missing one costs about 100 s of VM exits under nested emulation before it falls back.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";
/// Per-run limit inside L1; a hang shows up as a failed run rather than a stuck benchmark.
const RUN_TIMEOUT_SECS: u64 = 240;
/// Where the timing helper lives in L1.
const L1_TIMING: &str = "/bin/msbvm-boot-timing";
/// Where QEMU lives in L1: the same path as on the host, because QEMU finds its firmware
/// relative to its own location (`<bin>/../share/qemu`).
const L1_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Firmware QEMU's microvm may load: its BIOS (qboot, behind the bios-microvm.bin link) and
/// the option ROMs for direct kernel boot (PVH for an ELF kernel, linuxboot for a bzImage).
const QEMU_FIRMWARE: [&str; 7] = [
    "bios-microvm.bin",
    "qboot.rom",
    "pvh.bin",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "multiboot_dma.bin",
    "kvmvapic.bin",
];
/// Where Firecracker and its config live in L1.
const L1_FIRECRACKER: &str = "/bin/firecracker";
const L1_FIRECRACKER_CONFIG: &str = "/bench/firecracker.json";

/// A count from the environment, or the default.
fn env_count(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The L1 script lines that time `runs` runs of one VMM.
fn timed_runs(vmm: &str, runs: u32, command: &[String]) -> String {
    let mut s = String::new();
    for run in 1..=runs {
        s.push_str(&format!("echo 'bench: {vmm} run {run}/{runs}'\n"));
        let mut argv = vec![
            L1_TIMING.to_string(),
            "--vmm".into(),
            vmm.into(),
            "--run".into(),
            run.to_string(),
            "--timeout".into(),
            RUN_TIMEOUT_SECS.to_string(),
            "--".into(),
        ];
        argv.extend(command.iter().cloned());
        s.push_str(&shell_command(&argv));
        s.push('\n');
    }
    s
}

/// Firecracker's `--config-file` for the same guest.
fn firecracker_config(cmdline: &str) -> String {
    format!(
        r#"{{
  "boot-source": {{
    "kernel_image_path": "{L1_KERNEL}",
    "initrd_path": "{L1_INITRD}",
    "boot_args": {}
  }},
  "drives": [],
  "machine-config": {{ "vcpu_count": {CPUS}, "mem_size_mib": {MEMORY_MIB}, "smt": false }}
}}
"#,
        msbvm_benches::json_string(cmdline)
    )
}

/// Where QEMU is on the host.
fn host_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(nested::QEMU))
        .find(|p| p.is_file())
}

/// Adds QEMU, its libraries and firmware to L1.
fn add_qemu(mut vm: msbvm_tests::NestedVmBuilder, qemu: &Path) -> msbvm_tests::NestedVmBuilder {
    vm = vm.add_program(qemu, L1_QEMU);
    let firmware = qemu
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("share/qemu"))
        .unwrap_or_else(|| PathBuf::from("/usr/share/qemu"));
    for name in QEMU_FIRMWARE {
        let host = firmware.join(name);
        if host.exists() {
            vm = vm.add_file(host, &format!("/usr/share/qemu/{name}"));
        }
    }
    vm
}

/// Builds everything, runs the benchmark in L1, prints and records the results; returns the
/// number of msbvm runs that did not boot and power off cleanly.
fn bench() -> Result<usize, Error> {
    let runs = env_count("MSBVM_BENCH_RUNS", 5);
    let qemu_runs = env_count("MSBVM_BENCH_QEMU_RUNS", 2);
    let cmdline = std::env::var("MSBVM_BENCH_CMDLINE").unwrap_or_else(|_| DEFAULT_CMDLINE.into());
    nested::preflight()?;

    let build = StaticBuild::new().bin("msbvm-benches", "msbvm-boot-timing");
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let timing = &artifacts.binaries.extra["msbvm-boot-timing"];
    let mut vm = artifacts
        .add_to(NestedVm::builder())
        .add_file(timing, L1_TIMING)
        .stream(Stream::Stderr);

    let (c, m) = (CPUS.to_string(), MEMORY_MIB.to_string());
    let mut script = String::new();
    let mut total_runs = runs;
    let mut skipped = Vec::new();

    let msbvm: Vec<String> = [
        L1_MSBVM,
        "boot",
        "--kernel",
        L1_KERNEL,
        "--initrd",
        L1_INITRD,
        "--cpus",
        &c,
        "--memory",
        &m,
        "--cmdline",
        &cmdline,
        "--stats",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    script.push_str(&timed_runs("msbvm", runs, &msbvm));

    match host_qemu() {
        Some(qemu) => {
            vm = add_qemu(vm, &qemu);
            let argv: Vec<String> = [
                L1_QEMU,
                "-M",
                "microvm",
                "-enable-kvm",
                "-cpu",
                "host",
                "-m",
                &m,
                "-smp",
                &c,
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                "-kernel",
                L1_KERNEL,
                "-initrd",
                L1_INITRD,
                "-append",
                &cmdline,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            script.push_str(&timed_runs("qemu", qemu_runs, &argv));
            total_runs += qemu_runs;
        }
        None => {
            // preflight() found QEMU for L1, so this only happens with an odd PATH.
            let why = format!("{} not found in PATH", nested::QEMU);
            println!("qemu: skipped: {why}");
            skipped.push(("qemu".to_string(), why));
        }
    }

    match std::env::var_os("MSBVM_BENCH_FIRECRACKER").map(PathBuf::from) {
        Some(fc) if fc.is_file() => {
            // Release builds of Firecracker are static; a dynamic one brings its libraries.
            vm = if check_static(&fc).is_ok() {
                vm.add_file(&fc, L1_FIRECRACKER)
            } else {
                vm.add_program(&fc, L1_FIRECRACKER)
            };
            vm = vm.add_bytes(L1_FIRECRACKER_CONFIG, firecracker_config(&cmdline), 0o644);
            let argv: Vec<String> = [
                L1_FIRECRACKER,
                "--no-api",
                "--config-file",
                L1_FIRECRACKER_CONFIG,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            script.push_str(&timed_runs("firecracker", runs, &argv));
            total_runs += runs;
        }
        Some(fc) => {
            let why = format!("MSBVM_BENCH_FIRECRACKER={} is not a file", fc.display());
            println!("firecracker: skipped: {why}");
            skipped.push(("firecracker".to_string(), why));
        }
        None => {
            let why =
                "set MSBVM_BENCH_FIRECRACKER to a firecracker binary to include it".to_string();
            println!("firecracker: skipped: {why}");
            skipped.push(("firecracker".to_string(), why));
        }
    }
    script.push_str("exit 0\n");

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

    let setup = BootSetup {
        cmdline,
        cpus: CPUS,
        memory_mib: MEMORY_MIB,
        skipped,
    };
    let json_path = target_dir().join("bench-boot.json");
    std::fs::write(&json_path, to_json(&setup, &samples, &summaries)).map_err(|source| {
        Error::Io {
            context: format!("cannot write {}", json_path.display()),
            source,
        }
    })?;
    println!("results written to {}", json_path.display());
    if samples.is_empty() {
        return Err(Error::NoExitStatus {
            qemu_status: "the L1 script printed no timing results".into(),
            console_tail: msbvm_tests::console::tail(&out.console, 40),
        });
    }
    // A peer's failures are only reported; ours make the benchmark fail, after the record.
    let failed = samples
        .iter()
        .filter(|s| s.vmm == "msbvm" && !s.ok())
        .count();
    Ok(failed)
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets without `--bench`: a multi-minute nested
    // benchmark has no place there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "boot bench: not run in test mode; use `cargo bench -p msbvm-benches --bench boot`"
        );
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
        Err(e) if e.is_environment() && skip_requested() => {
            println!(
                "skipped: {}",
                e.to_string().lines().next().unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("boot bench: {e}");
            ExitCode::FAILURE
        }
    }
}
