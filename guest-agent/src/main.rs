//! `msbvm-init`: the guest's PID 1.
//!
//! For now it does what the foundation needs: mount the kernel filesystems,
//! signal the VMM's boot timer, report what the guest sees (CPU count and
//! memory) on the console, and power the VM off. The full agent (exec, files,
//! events over vsock) grows from here.
//!
//! Power-off: Linux on x86 without ACPI cannot power a machine off, so the init
//! writes its exit code to msbvm's platform port, which ends the VM at once.
//! Under another VMM (QEMU, Firecracker) that write goes nowhere and the init
//! falls back to a reboot, which those VMMs treat as the end of the VM.

use msbvm_guest_agent::platform;

use std::ffi::CString;
use std::io::Write;

/// The marker line the tests and benchmarks look for.
const MARKER: &str = "MSBVM-INIT-OK";

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f) = (
        CString::new(source).unwrap(),
        CString::new(target).unwrap(),
        CString::new(fstype).unwrap(),
    );
    // SAFETY: plain C strings that live across the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // EBUSY: already mounted (devtmpfs with DEVTMPFS_MOUNT).
        if err.raw_os_error() != Some(libc::EBUSY) {
            eprintln!("msbvm-init: mount {fstype} on {target}: {err}");
        }
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as usize
}

fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    mount("tmpfs", "/run", "tmpfs");

    let on_msbvm = platform::detect();
    if on_msbvm {
        platform::signal_boot_complete();
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{MARKER} cpus={} mem_total_kib={} vmm={}",
        online_cpus(),
        mem_total_kib(),
        if on_msbvm { "msbvm" } else { "other" }
    );
    let _ = out.flush();
    drop(out);
    // The console's tty sends bytes to the UART from its interrupt handler,
    // possibly on another CPU; wait until the line is out before the VM ends.
    // SAFETY: tcdrain on our own stdout descriptor.
    unsafe { libc::tcdrain(libc::STDOUT_FILENO) };

    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if on_msbvm {
        platform::power_off(0);
    }
    // Not on msbvm, or the write did not stop us: restart, which QEMU with
    // -no-reboot and Firecracker treat as the VM's end.
    // SAFETY: reboot(2) with a valid command; as PID 1 we have CAP_SYS_BOOT.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // PID 1 must never exit (the kernel would panic); wait to be stopped.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
