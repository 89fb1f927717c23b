//! The arm64 boot runs: msbvm, QEMU (`-M virt -enable-kvm -cpu host`) and optionally
//! Firecracker ([`FIRECRACKER_ENV`]) on the same arm64 guest kernel, initramfs and command
//! line, in one arm64 L1 (QEMU `virt` with EL2, nested KVM), timed by the aarch64 build of
//! `msbvm-boot-timing` the same way as on x86.
//!
//! What differs from [`crate::boot_runs`]: QEMU comes from [`crate::qemu_arm64`] (the arm64
//! package and only the libraries it needs), not from the host; each VMM gets the console of
//! its own UART (`ttyS0`, msbvm's 16550; `ttyAMA0`, the virt board's PL011) in front of an
//! otherwise identical command line; and the runs can be made with QEMU alone
//! ([`QEMU_ONLY_ENV`]), e.g. to time QEMU on another kernel.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use msbvm_tests::artifacts::{L1_INITRD, L1_KERNEL, L1_MSBVM};
use msbvm_tests::{distro, Error, L1Arch, NestedVmBuilder};

use crate::boot_runs::{self, BootPlan, VmmRuns, CPUS, L1_TIMING, MEMORY_MIB};
use crate::qemu_arm64::{QemuSysroot, L1_QEMU};

/// Set to `1` to time QEMU alone: msbvm is neither built nor run, the guest kernel is
/// [`KERNEL_ENV`] or the distribution's arm64 kernel, and the initramfs is the usual one
/// (`msbvm-init`, cross-built).
pub const QEMU_ONLY_ENV: &str = "MSBVM_BENCH_ARM64_QEMU_ONLY";
/// A guest kernel image to boot instead of the one the harness gives.
pub const KERNEL_ENV: &str = "MSBVM_BENCH_ARM64_KERNEL";
/// The guest command line after the console, for every VMM unless [`CMDLINE_ENV`] is set.
/// No `reboot=` (x86 only): msbvm-init ends msbvm through its platform device and any other
/// VMM with a reset (PSCI SYSTEM_RESET), which QEMU with `-no-reboot` takes as its end.
pub const DEFAULT_CMDLINE: &str = "panic=-1 quiet";
/// Environment variable replacing [`DEFAULT_CMDLINE`] (the console stays in front).
pub const CMDLINE_ENV: &str = "MSBVM_BENCH_ARM64_CMDLINE";
/// Environment variable naming an aarch64 Firecracker (a static executable) to include. Not
/// [`crate::boot_runs::FIRECRACKER_ENV`]: that one names the x86 build.
pub const FIRECRACKER_ENV: &str = "MSBVM_BENCH_ARM64_FIRECRACKER";
/// msbvm's console on arm64: its 16550 UART (Firecracker's too).
pub const MSBVM_CONSOLE: &str = "ttyS0";
/// QEMU virt's console: its PL011 UART.
pub const QEMU_CONSOLE: &str = "ttyAMA0";

/// Whether [`QEMU_ONLY_ENV`] asks for QEMU runs only.
pub fn qemu_only() -> bool {
    std::env::var(QEMU_ONLY_ENV).is_ok_and(|v| v == "1")
}

/// The part of the command line every VMM shares: [`CMDLINE_ENV`] or [`DEFAULT_CMDLINE`].
pub fn common_cmdline() -> String {
    std::env::var(CMDLINE_ENV).unwrap_or_else(|_| DEFAULT_CMDLINE.into())
}

/// The command line of a VMM whose console is `console`.
pub fn cmdline_for(console: &str, common: &str) -> String {
    format!("console={console} {common}").trim_end().to_string()
}

/// What kind of image a guest kernel file is, if one for arm64: an `Image` (the arm64 boot
/// header's magic), a gzip-compressed one, or an ELF `vmlinux` for AArch64. Anything else
/// (an x86 `bzImage` or ELF, say) is an error that names it: the harness built x86 guest
/// kernels only until it learned the architecture, and an x86 kernel would only show up as a
/// guest that never prints anything.
pub fn arm64_kernel_kind(image: &[u8]) -> Result<&'static str, String> {
    const ARM64_MAGIC_AT: usize = 0x38;
    let is_image = |b: &[u8]| b.get(ARM64_MAGIC_AT..ARM64_MAGIC_AT + 4) == Some(b"ARMd");
    if is_image(image) {
        return Ok("arm64 Image");
    }
    if image.starts_with(&[0x1f, 0x8b]) {
        let mut head = [0u8; 64];
        let mut gz = flate2::read::GzDecoder::new(image);
        if gz.read_exact(&mut head).is_ok() && is_image(&head) {
            return Ok("gzip-compressed arm64 Image");
        }
        return Err("a gzip file that does not hold an arm64 Image".into());
    }
    if image.starts_with(b"\x7fELF") {
        let machine = image
            .get(0x12..0x14)
            .map(|b| u16::from_le_bytes([b[0], b[1]]));
        return match machine {
            Some(183) => Ok("AArch64 ELF vmlinux"),
            Some(62) => Err("an x86_64 ELF kernel".into()),
            other => Err(format!("an ELF file for machine {other:?}")),
        };
    }
    if image.get(0x202..0x206) == Some(b"HdrS") {
        return Err("an x86 bzImage".into());
    }
    Err("not a kernel image this benchmark knows (arm64 Image, gzip'd Image, AArch64 ELF)".into())
}

/// Fails unless `kernel` is an arm64 kernel image ([`arm64_kernel_kind`]); returns its kind.
pub fn check_arm64_kernel(kernel: &Path) -> Result<&'static str, Error> {
    let bytes = std::fs::read(kernel).map_err(|source| Error::Io {
        context: format!("cannot read the guest kernel {}", kernel.display()),
        source,
    })?;
    arm64_kernel_kind(&bytes).map_err(|why| Error::BadArtifact {
        path: kernel.to_path_buf(),
        reason: format!(
            "not an arm64 guest kernel: {why} (set {KERNEL_ENV} to one, or see whether the harness built the guest kernel for aarch64)"
        ),
    })
}

/// The guest kernel of a QEMU-only run: [`KERNEL_ENV`], or the distribution's arm64 kernel
/// (the L1's own, which boots under QEMU's virt board as well).
pub fn qemu_only_kernel() -> Result<(PathBuf, String), Error> {
    if let Some(k) = std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(k), KERNEL_ENV.to_string()));
    }
    let distro = distro::DistroKernel::locate_or_fetch_for(L1Arch::Aarch64)?;
    Ok((
        distro.vmlinuz,
        format!("the distribution's arm64 kernel {}", distro.release),
    ))
}

/// The aarch64 Firecracker that [`FIRECRACKER_ENV`] names, or why none is included: unset,
/// not a file, or not a static AArch64 executable (the arm64 L1 has none of the host's
/// libraries, and an x86 build would only fail there).
pub fn firecracker_from_env() -> Result<PathBuf, String> {
    let Some(fc) = std::env::var_os(FIRECRACKER_ENV).filter(|v| !v.is_empty()) else {
        return Err(format!(
            "set {FIRECRACKER_ENV} to a static aarch64 firecracker binary to include it"
        ));
    };
    let fc = PathBuf::from(fc);
    let bytes =
        std::fs::read(&fc).map_err(|e| format!("{FIRECRACKER_ENV}={}: {e}", fc.display()))?;
    firecracker_kind(&bytes).map_err(|why| format!("{FIRECRACKER_ENV}={}: {why}", fc.display()))?;
    Ok(fc)
}

/// Whether `elf` is an executable the arm64 L1 can run as it is: AArch64, static.
fn firecracker_kind(elf: &[u8]) -> Result<(), String> {
    if !elf.starts_with(b"\x7fELF") {
        return Err("not an ELF executable".into());
    }
    match elf
        .get(0x12..0x14)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
    {
        Some(183) => {}
        other => {
            return Err(format!(
                "built for ELF machine {other:?}, not AArch64 (183)"
            ))
        }
    }
    match msbvm_tests::artifacts::elf_interpreter(elf) {
        Ok(None) => Ok(()),
        Ok(Some(interp)) => Err(format!(
            "dynamically linked (interpreter {interp}); build it with RUSTFLAGS=\"-C target-feature=+crt-static\""
        )),
        Err(why) => Err(why.into()),
    }
}

/// Words to an argument vector.
fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// QEMU's command line for the guest at the L1 paths.
pub fn qemu_command(cmdline: &str) -> Vec<String> {
    let (c, m) = (CPUS.to_string(), MEMORY_MIB.to_string());
    argv(&[
        L1_QEMU,
        "-M",
        "virt,gic-version=3",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        &c,
        "-m",
        &m,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        L1_KERNEL,
        "-initrd",
        L1_INITRD,
        "-append",
        cmdline,
    ])
}

/// msbvm's command line for the guest at the L1 paths.
pub fn msbvm_command(cmdline: &str) -> Vec<String> {
    let (c, m) = (CPUS.to_string(), MEMORY_MIB.to_string());
    argv(&[
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
    ])
}

/// Adds the timing helper, QEMU's sysroot, msbvm (unless `None`) and Firecracker (unless the
/// reason it is left out) to `vm`, which must already hold the guest kernel and initramfs at
/// [`L1_KERNEL`] and [`L1_INITRD`], and returns the script lines of `runs` boots of each,
/// taking turns (msbvm, Firecracker, QEMU).
pub fn plan(
    mut vm: NestedVmBuilder,
    timing: &Path,
    msbvm: Option<&Path>,
    firecracker: Result<&Path, String>,
    qemu: &QemuSysroot,
    runs: u32,
    common: &str,
) -> (NestedVmBuilder, BootPlan) {
    vm = vm.add_file(timing, L1_TIMING);
    vm = qemu.add_to(vm);
    let mut plan = BootPlan::default();
    let mut vmms = Vec::new();
    match msbvm {
        Some(msbvm) => {
            vm = vm.add_file(msbvm, L1_MSBVM);
            vmms.push(VmmRuns {
                vmm: "msbvm".into(),
                runs,
                command: msbvm_command(&cmdline_for(MSBVM_CONSOLE, common)),
            });
        }
        None => plan
            .skipped
            .push(("msbvm".into(), format!("{QEMU_ONLY_ENV}=1: QEMU runs only"))),
    }
    match firecracker {
        Ok(fc) => {
            // Static, as firecracker_from_env checked. Its aarch64 console is a 16550 as
            // msbvm's: the same command line.
            let cmdline = cmdline_for(MSBVM_CONSOLE, common);
            let (with_fc, fc_runs) = boot_runs::firecracker_runs(vm, fc, &cmdline, runs);
            vm = with_fc;
            vmms.push(fc_runs);
        }
        Err(why) => plan.skipped.push(("firecracker".into(), why)),
    }
    vmms.push(VmmRuns {
        vmm: "qemu".into(),
        runs,
        command: qemu_command(&cmdline_for(QEMU_CONSOLE, common)),
    });
    // QEMU once, untimed, before any run: a sysroot that lacks a library shows here, by name,
    // rather than as a failed run of every round. KVM's debugfs for the exit counters.
    plan.script = format!(
        "uname -m; ls -l /dev/kvm\n\
         {L1_QEMU} --version || echo 'boot_arm64: QEMU does not start in L1 (output above)'\n\
         mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\n{}",
        boot_runs::interleaved_runs(&vmms)
    );
    plan.total_runs = vmms.iter().map(|v| v.runs).sum();
    (vm, plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vmm_gets_its_own_console_and_the_same_rest() {
        let common = "panic=-1 quiet";
        let q = qemu_command(&cmdline_for(QEMU_CONSOLE, common));
        let m = msbvm_command(&cmdline_for(MSBVM_CONSOLE, common));
        assert_eq!(q.last().unwrap(), "console=ttyAMA0 panic=-1 quiet");
        assert_eq!(m[m.len() - 2], "console=ttyS0 panic=-1 quiet");
        let joined = q.join(" ");
        for want in [
            "-enable-kvm",
            "-cpu host",
            "-no-reboot",
            "virt,gic-version=3",
            "-m 256",
        ] {
            assert!(joined.contains(want), "{joined}");
        }
        assert_eq!(cmdline_for("ttyS0", ""), "console=ttyS0");
    }

    #[test]
    fn plan_interleaves_msbvm_and_qemu_or_runs_qemu_alone() {
        let qemu = QemuSysroot {
            root: PathBuf::from("/nonexistent"),
            files: Vec::new(),
            packages: Vec::new(),
        };
        let vm = || msbvm_tests::NestedVm::builder().arch(L1Arch::Aarch64);
        let timing = Path::new("/t");
        let no_fc = || Err("none".to_string());
        let (_, both) = plan(
            vm(),
            timing,
            Some(Path::new("/m")),
            no_fc(),
            &qemu,
            2,
            "quiet",
        );
        let order = crate::boot_runs::tests::turn_order(&both.script);
        assert_eq!(
            order,
            [
                "msbvm run 1/2'",
                "qemu run 1/2'",
                "msbvm run 2/2'",
                "qemu run 2/2'"
            ]
        );
        assert_eq!(both.total_runs, 4);
        assert!(
            both.script.contains("--cmdline 'console=ttyS0 quiet'"),
            "{}",
            both.script
        );
        assert!(
            both.script.contains("-append 'console=ttyAMA0 quiet'"),
            "{}",
            both.script
        );
        let skipped: Vec<&str> = both.skipped.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(skipped, ["firecracker"]);

        let (_, alone) = plan(vm(), timing, None, no_fc(), &qemu, 3, "quiet");
        assert_eq!(alone.total_runs, 3);
        assert!(!alone.script.contains("msbvm run"), "{}", alone.script);
        let skipped: Vec<&str> = alone.skipped.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(skipped, ["msbvm", "firecracker"]);

        // With Firecracker: right after msbvm in each round, on msbvm's console and command line.
        let fc = Path::new("/fc");
        let (_, three) = plan(
            vm(),
            timing,
            Some(Path::new("/m")),
            Ok(fc),
            &qemu,
            2,
            "quiet",
        );
        let order = crate::boot_runs::tests::turn_order(&three.script);
        assert_eq!(
            order,
            [
                "msbvm run 1/2'",
                "firecracker run 1/2'",
                "qemu run 1/2'",
                "msbvm run 2/2'",
                "firecracker run 2/2'",
                "qemu run 2/2'"
            ]
        );
        assert_eq!(three.total_runs, 6);
        assert!(three.skipped.is_empty(), "{:?}", three.skipped);
        assert!(three.script.contains("--no-api"), "{}", three.script);
    }

    #[test]
    fn only_a_static_aarch64_firecracker_is_taken() {
        // A 64-bit ELF header with no program headers: static.
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x12] = 183;
        assert_eq!(firecracker_kind(&elf), Ok(()));
        elf[0x12] = 62;
        assert!(firecracker_kind(&elf).unwrap_err().contains("AArch64"));
        assert!(firecracker_kind(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn arm64_kernels_are_told_from_x86_ones() {
        let mut image = vec![0u8; 0x100];
        image[0x38..0x3c].copy_from_slice(b"ARMd");
        assert_eq!(arm64_kernel_kind(&image), Ok("arm64 Image"));

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &image).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(arm64_kernel_kind(&gz), Ok("gzip-compressed arm64 Image"));

        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x12] = 183;
        assert_eq!(arm64_kernel_kind(&elf), Ok("AArch64 ELF vmlinux"));
        elf[0x12] = 62;
        assert!(arm64_kernel_kind(&elf).unwrap_err().contains("x86_64"));

        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(arm64_kernel_kind(&bz).unwrap_err().contains("bzImage"));
    }
}
