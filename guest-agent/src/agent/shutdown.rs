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

/// True when no user process but the caller (PID 1) is left.
///
/// `kill(-1, 0)` cannot tell: kernel threads count as signalable processes, so
/// it never fails and every shutdown would wait out both graces. /proc can:
/// kernel threads are kthreadd (PID 2) and its children, and zombies are
/// already dead (the reaper collects them).
fn all_gone() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    !entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        if pid <= 2 {
            return false;
        }
        std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| stat_state_and_ppid(&stat))
            .is_some_and(|(state, ppid)| state != 'Z' && ppid != 2)
    })
}

/// The state letter and parent pid from a /proc/PID/stat line. The command
/// name (in parentheses) may itself contain spaces and parentheses, so the
/// fields are read after its last ')'.
fn stat_state_and_ppid(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_parent_even_with_odd_names() {
        assert_eq!(
            stat_state_and_ppid("42 (sleep) S 1 42 42 0 -1"),
            Some(('S', 1))
        );
        assert_eq!(stat_state_and_ppid("7 (a) b) (c) Z 2 0 0"), Some(('Z', 2)));
        assert_eq!(stat_state_and_ppid("garbage"), None);
    }
}
