//! The boot runs both benchmarks make in L1: msbvm (`msbvm boot` with `msbvm-init`), QEMU
//! (`-M microvm`) and, when available, Firecracker, on the same guest kernel, initramfs and
//! command line, each timed from outside by the static `msbvm-boot-timing` helper.
//!
//! [`plan`] adds what the runs need to the L1 machine (the helper, QEMU with its libraries and
//! firmware, Firecracker and its config) and returns the L1 script lines; the helper's result
//! lines are parsed back with [`crate::parse_samples`].

use std::path::{Path, PathBuf};

use msbvm_kernel::Initramfs;
use msbvm_tests::artifacts::{check_static, L1_INITRD, L1_KERNEL, L1_MSBVM};
use msbvm_tests::report::shell_command;
use msbvm_tests::{nested, NestedVmBuilder};

/// Guest vCPUs for every VMM.
pub const CPUS: u32 = 1;
/// Guest memory in MiB for every VMM.
pub const MEMORY_MIB: u32 = 256;
/// The guest command line for every VMM unless `MSBVM_BENCH_CMDLINE` is set: serial console,
/// quiet so that the serial port's speed does not dominate, reboot on panic, and reboot by
/// triple fault, which ends every VMM at once (QEMU through `-no-reboot`, Firecracker on the
/// shutdown exit; msbvm-init powers msbvm off through its own port before that). Not
/// `reboot=k`: QEMU's microvm has no keyboard controller, and the kernel's polling of the
/// missing one costs about 100 s of VM exits under nested emulation before it falls back.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";
/// Per-run limit inside L1; a hang shows up as a failed run rather than a stuck benchmark.
pub const RUN_TIMEOUT_SECS: u64 = 240;
/// The timing helper's binary name (package msbvm-benches).
pub const TIMING_BIN: &str = "msbvm-boot-timing";
/// Where the timing helper lives in L1.
pub const L1_TIMING: &str = "/bin/msbvm-boot-timing";
/// Where QEMU lives in L1: the same path as on the host, because QEMU finds its firmware
/// relative to its own location (`<bin>/../share/qemu`).
pub const L1_QEMU: &str = "/usr/bin/qemu-system-x86_64";
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
/// Environment variable naming a Firecracker binary to include.
pub const FIRECRACKER_ENV: &str = "MSBVM_BENCH_FIRECRACKER";

/// A count from the environment, or the default.
pub fn env_count(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The guest command line: `MSBVM_BENCH_CMDLINE` or [`DEFAULT_CMDLINE`].
pub fn cmdline() -> String {
    std::env::var("MSBVM_BENCH_CMDLINE").unwrap_or_else(|_| DEFAULT_CMDLINE.into())
}

/// How many runs of each VMM.
#[derive(Debug, Clone, Copy)]
pub struct RunCounts {
    /// msbvm and Firecracker runs.
    pub runs: u32,
    /// QEMU runs (its own start-up takes tens of seconds under the emulated L1).
    pub qemu_runs: u32,
}

impl RunCounts {
    /// `MSBVM_BENCH_RUNS` (default 9: with fewer, one slow run of the emulated L1 moves a
    /// median; 3 in quick mode) and `MSBVM_BENCH_QEMU_RUNS` (default 2; 1 in quick mode).
    pub fn from_env() -> Self {
        Self {
            runs: env_count("MSBVM_BENCH_RUNS", crate::by_mode(9, 3)),
            qemu_runs: env_count("MSBVM_BENCH_QEMU_RUNS", crate::by_mode(2, 1)),
        }
    }
}

/// The L1 side of the boot runs.
#[derive(Debug, Clone, Default)]
pub struct BootPlan {
    /// L1 script lines that make every run (no `exit`).
    pub script: String,
    /// The VMMs the script boots, in their turn order.
    pub vmms: Vec<VmmRuns>,
    /// Runs the script makes in all.
    pub total_runs: u32,
    /// Peers that are not measured, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// One VMM's runs: its name, how many, and its command line in L1.
#[derive(Debug, Clone)]
pub struct VmmRuns {
    /// The VMM's name in result lines.
    pub vmm: String,
    /// Runs to make.
    pub runs: u32,
    /// The command that boots it.
    pub command: Vec<String>,
}

/// The L1 script lines of run `run` (of `runs`) of one VMM.
fn timed_run(vmm: &str, run: u32, runs: u32, command: &[String]) -> String {
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
    format!(
        "echo 'bench: {vmm} run {run}/{runs}'\n{}\n",
        shell_command(&argv)
    )
}

/// The L1 script lines that time every VMM's runs taking turns: run 1 of each, then run 2 of
/// each, and so on (a VMM with fewer runs drops out when it has made them), so that the
/// emulated L1's drift over the minutes of a benchmark falls on every VMM alike.
pub fn interleaved_runs(vmms: &[VmmRuns]) -> String {
    interleaved_with(vmms, 0, |_| String::new())
}

/// [`interleaved_runs`] with one more turn in each of the first `extra_runs` rounds, last in
/// the round: the script lines `extra(run)` give (another benchmark's run, such as a
/// sandbox's boot, set beside the references it is compared with).
pub fn interleaved_with(
    vmms: &[VmmRuns],
    extra_runs: u32,
    extra: impl Fn(u32) -> String,
) -> String {
    let rounds = vmms
        .iter()
        .map(|v| v.runs)
        .chain([extra_runs])
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for run in 1..=rounds {
        for v in vmms.iter().filter(|v| v.runs >= run) {
            s.push_str(&timed_run(&v.vmm, run, v.runs, &v.command));
        }
        if run <= extra_runs {
            s.push_str(&extra(run));
        }
    }
    s
}

impl BootPlan {
    /// The script with `extra(run)` as the last turn of each of the first `extra_runs`
    /// rounds (see [`interleaved_with`]).
    pub fn script_with(&self, extra_runs: u32, extra: impl Fn(u32) -> String) -> String {
        format!(
            "{DEBUGFS_MOUNT}{}",
            interleaved_with(&self.vmms, extra_runs, extra)
        )
    }
}

/// Mounts KVM's debugfs, for the exit counters the timing helper reads at the init marker.
const DEBUGFS_MOUNT: &str = "mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\n";

/// Firecracker's `--config-file` for the same guest.
pub fn firecracker_config(cmdline: &str) -> String {
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
        crate::json_string(cmdline)
    )
}

/// Adds the Firecracker binary `fc` (a host path) and its config for `cmdline` to `vm`, and
/// returns `runs` of it. A static build is copied as it is; a dynamic one brings the host's
/// libraries (so only for an L1 of the host's architecture).
pub fn firecracker_runs(
    vm: NestedVmBuilder,
    fc: &Path,
    cmdline: &str,
    runs: u32,
) -> (NestedVmBuilder, VmmRuns) {
    let vm = if check_static(fc).is_ok() {
        vm.add_file(fc, L1_FIRECRACKER)
    } else {
        vm.add_program(fc, L1_FIRECRACKER)
    };
    let vm = vm.add_bytes(L1_FIRECRACKER_CONFIG, firecracker_config(cmdline), 0o644);
    let command = argv(&[
        L1_FIRECRACKER,
        "--no-api",
        // A Firecracker built for the gnu target has no seccomp filter of its own; say so
        // rather than rely on what it does with an empty one.
        "--no-seccomp",
        "--config-file",
        L1_FIRECRACKER_CONFIG,
    ]);
    let runs = VmmRuns {
        vmm: "firecracker".into(),
        runs,
        command,
    };
    (vm, runs)
}

/// Where QEMU is on the host.
pub fn host_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(nested::QEMU))
        .find(|p| p.is_file())
}

/// The start of the `/init` of a QEMU guest booted from [`busybox_initramfs`]: /proc, the
/// busybox applets, /sys, /dev and a tmpfs /tmp.
const BUSYBOX_INIT_MOUNTS: &str = "#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
";

/// The initramfs of a benchmark's QEMU guest, to which the caller adds its own files: the
/// static `busybox` (also `/bin/sh`), the console and null devices, the directories busybox
/// and the mounts need plus `extra_dirs`, and an `/init` that mounts /proc, /sys, /dev and a
/// tmpfs /tmp, installs the applets and goes on with `init_body`.
pub fn busybox_initramfs(
    busybox: &Path,
    extra_dirs: &[&str],
    init_body: &str,
) -> Result<Initramfs, String> {
    let mut cpio = Initramfs::new();
    let dirs = [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
    ];
    for d in dirs.iter().chain(extra_dirs) {
        cpio.dir(d, 0o755);
    }
    cpio.char_dev("/dev/console", 0o600, 5, 1);
    cpio.char_dev("/dev/null", 0o666, 1, 3);
    cpio.host_file("/bin/busybox", busybox)
        .map_err(|e| format!("cannot add {}: {e}", busybox.display()))?;
    cpio.symlink("/bin/sh", "busybox");
    cpio.file("/init", 0o755, format!("{BUSYBOX_INIT_MOUNTS}{init_body}"));
    Ok(cpio)
}

/// Adds QEMU, its libraries and its microvm firmware to L1 (at the host's paths).
pub fn add_qemu(mut vm: NestedVmBuilder, qemu: &Path) -> NestedVmBuilder {
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

/// Words to argument vector.
fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// Adds the timing helper (`timing`, a host path), QEMU and Firecracker (as available) to
/// `vm`, which must already hold the guest artifacts (`GuestArtifacts::add_to`), and returns
/// the script lines of msbvm, QEMU and Firecracker boot runs of `cmdline`.
pub fn plan(
    mut vm: NestedVmBuilder,
    timing: &Path,
    cmdline: &str,
    counts: RunCounts,
) -> (NestedVmBuilder, BootPlan) {
    vm = vm.add_file(timing, L1_TIMING);
    let (c, m) = (CPUS.to_string(), MEMORY_MIB.to_string());
    let mut plan = BootPlan::default();

    let msbvm = argv(&[
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
        cmdline,
        "--stats",
    ]);
    let mut vmms = vec![VmmRuns {
        vmm: "msbvm".into(),
        runs: counts.runs,
        command: msbvm,
    }];

    match host_qemu() {
        Some(qemu) => {
            vm = add_qemu(vm, &qemu);
            let qemu = argv(&[
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
                cmdline,
            ]);
            vmms.push(VmmRuns {
                vmm: "qemu".into(),
                runs: counts.qemu_runs,
                command: qemu,
            });
        }
        // preflight() found QEMU for L1, so this only happens with an odd PATH.
        None => plan
            .skipped
            .push(("qemu".into(), format!("{} not found in PATH", nested::QEMU))),
    }

    match std::env::var_os(FIRECRACKER_ENV).map(PathBuf::from) {
        Some(fc) if fc.is_file() => {
            let (with_fc, runs) = firecracker_runs(vm, &fc, cmdline, counts.runs);
            vm = with_fc;
            // Firecracker right after msbvm in every round: the pair the benchmark compares.
            vmms.insert(1, runs);
        }
        Some(fc) => plan.skipped.push((
            "firecracker".into(),
            format!("{FIRECRACKER_ENV}={} is not a file", fc.display()),
        )),
        None => plan.skipped.push((
            "firecracker".into(),
            format!("set {FIRECRACKER_ENV} to a firecracker binary to include it"),
        )),
    }
    plan.script = format!("{DEBUGFS_MOUNT}{}", interleaved_runs(&vmms));
    plan.total_runs = vmms.iter().map(|v| v.runs).sum();
    plan.vmms = vmms;
    (vm, plan)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The turns a script takes, as its `echo 'bench: ...` lines say them.
    pub(crate) fn turn_order(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter_map(|l| l.strip_prefix("echo 'bench: "))
            .collect()
    }

    fn vmm(name: &str, runs: u32) -> VmmRuns {
        VmmRuns {
            vmm: name.into(),
            runs,
            command: argv(&["/usr/bin/qemu", "-append", "a b"]),
        }
    }

    #[test]
    fn runs_take_turns_and_a_vmm_with_fewer_drops_out() {
        let s = interleaved_runs(&[vmm("msbvm", 3), vmm("firecracker", 3), vmm("qemu", 1)]);
        let order = turn_order(&s);
        assert_eq!(
            order,
            [
                "msbvm run 1/3'",
                "firecracker run 1/3'",
                "qemu run 1/1'",
                "msbvm run 2/3'",
                "firecracker run 2/3'",
                "msbvm run 3/3'",
                "firecracker run 3/3'",
            ]
        );
        assert!(
            s.contains("/bin/msbvm-boot-timing --vmm qemu --run 1 --timeout 240 -- /usr/bin/qemu -append 'a b'"),
            "{s}"
        );
    }

    #[test]
    fn an_extra_turn_ends_each_round_and_may_outlast_the_vmms() {
        let s = interleaved_with(&[vmm("msbvm", 2), vmm("qemu", 1)], 3, |run| {
            format!("echo 'bench: sandbox run {run}'\n")
        });
        let order = turn_order(&s);
        assert_eq!(
            order,
            [
                "msbvm run 1/2'",
                "qemu run 1/1'",
                "sandbox run 1'",
                "msbvm run 2/2'",
                "sandbox run 2'",
                "sandbox run 3'",
            ]
        );
    }

    #[test]
    fn firecracker_config_quotes_the_cmdline() {
        let c = firecracker_config("console=ttyS0 \"x\"");
        assert!(c.contains(r#""boot_args": "console=ttyS0 \"x\"""#), "{c}");
        assert!(c.contains("\"mem_size_mib\": 256"), "{c}");
    }
}
