//! Powering the VM off: the end of PID 1.
//!
//! Order: sync, SIGTERM to every process and a short grace, SIGKILL to the
//! rest, unmount and sync again, then the platform port's power-off with the
//! exit code. If that write does not stop the VM (not msbvm), reboot(2)
//! powers off; PID 1 then waits forever, because it must never exit.
//!
//! When the agent is not PID 1 (a developer running it on a host) it only
//! syncs and exits with the code: `kill(-1)` there would hit every process
//! of the user.

use std::time::{Duration, Instant};

use super::mounts;

/// How long processes get to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for SIGKILL-ed processes to disappear.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// True when no process but the caller (PID 1) is left.
fn all_gone() -> bool {
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(-1, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

fn signal_all_and_wait(signal: i32, grace: Duration) {
    // SAFETY: as PID 1, kill(-1) reaches every process except ourselves.
    unsafe { libc::kill(-1, signal) };
    let start = Instant::now();
    // The reaper thread collects the zombies meanwhile.
    while !all_gone() && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends the VM with `code`; never returns.
pub fn power_off(code: u32) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if std::process::id() != 1 {
        std::process::exit(code as i32);
    }
    signal_all_and_wait(libc::SIGTERM, TERM_GRACE);
    signal_all_and_wait(libc::SIGKILL, KILL_GRACE);
    mounts::unmount_all();
    // SAFETY: as above.
    unsafe { libc::sync() };
    // Let the console finish printing our last words before the VM ends.
    // SAFETY: tcdrain on our own stderr descriptor.
    unsafe { libc::tcdrain(libc::STDERR_FILENO) };
    if crate::platform::detect() {
        crate::platform::power_off(code);
    }
    // SAFETY: reboot with a valid command; PID 1 has CAP_SYS_BOOT.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
