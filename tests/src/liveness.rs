//! Telling a busy L1 from a frozen one.
//!
//! Under QEMU's emulated SVM the whole L1 machine now and then stops making progress while L2
//! guests run: no console output, not even from a shell loop, and no soft-lockup report
//! (L1 has one CPU, so nothing is left to report it). Waiting out the run's timeout then costs
//! up to 25 minutes and says nothing. Instead the L1 init starts a heartbeat that writes a
//! line to a second serial port every [`BEAT_EVERY_SECS`] seconds; QEMU appends it to a host
//! file, and the harness calls L1 frozen when that file stops growing for [`FROZEN_AFTER`]
//! while its command still runs. Keeping the heartbeat off the main console means it can
//! never split a line the command prints.
//!
//! On a freeze the QEMU monitor (a Unix socket) is asked for the vCPU registers, so the error
//! shows where L1 stopped.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Seconds between two heartbeat lines in L1.
pub const BEAT_EVERY_SECS: u32 = 15;
/// How long the heartbeat may stay silent before L1 counts as frozen. Generous: a loaded L1
/// (one emulated CPU shared with L2 guests) still runs a shell loop at least every few
/// seconds; the freezes seen lasted until the run's timeout (over 20 minutes).
pub const FROZEN_AFTER: Duration = Duration::from_secs(240);

/// The L1 shell line that starts the heartbeat on the second serial port (`/dev/ttyS1`). The
/// port is opened once: if it cannot be, the heartbeat never starts and the harness, which
/// only watches a heartbeat it has seen, falls back to the run's timeout.
pub fn heartbeat_line() -> String {
    format!(
        "(exec 3>/dev/ttyS1 || exit 0; while :; do echo beat >&3; sleep {BEAT_EVERY_SECS}; done) 2>/dev/null &\n"
    )
}

/// The QEMU arguments for the serial ports (the console on stdio, then the heartbeat port
/// appended to `heartbeat`) and the monitor socket. Both ports are named: any serial device
/// on the command line turns off QEMU's default console port.
pub fn qemu_args(heartbeat: &Path, monitor: &Path) -> Vec<String> {
    vec![
        "-serial".into(),
        "stdio".into(),
        "-serial".into(),
        format!("file:{}", heartbeat.display()),
        "-monitor".into(),
        format!("unix:{},server=on,wait=off", monitor.display()),
    ]
}

/// The QEMU arguments for a machine with a single serial port (the console on stdio, no
/// heartbeat) and the monitor socket.
pub fn qemu_args_without_heartbeat(monitor: &Path) -> Vec<String> {
    vec![
        "-serial".into(),
        "stdio".into(),
        "-monitor".into(),
        format!("unix:{},server=on,wait=off", monitor.display()),
    ]
}

/// Watches the heartbeat file of one L1 run.
pub struct Heartbeat {
    path: PathBuf,
    len: u64,
    last: Option<Instant>,
    longest_gap: Option<Duration>,
}

impl Heartbeat {
    /// Watches `path` (QEMU creates it).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            len: 0,
            last: None,
            longest_gap: None,
        }
    }

    /// The longest time seen between two heartbeats (to the watcher's polling precision), or
    /// `None` before two were seen. A gap far above [`BEAT_EVERY_SECS`] means L1 itself
    /// stalled (the emulator got no CPU), which explains guest timeouts in that run.
    pub fn longest_gap(&self) -> Option<Duration> {
        self.longest_gap
    }

    /// Notes whether the file grew; `true` once a heartbeat has been seen and none came for
    /// [`FROZEN_AFTER`].
    pub fn frozen(&mut self, now: Instant) -> bool {
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > self.len {
            if let Some(last) = self.last {
                let gap = now.saturating_duration_since(last);
                self.longest_gap = Some(self.longest_gap.map_or(gap, |g| g.max(gap)));
            }
            self.len = len;
            self.last = Some(now);
        }
        self.last
            .is_some_and(|last| now.saturating_duration_since(last) > FROZEN_AFTER)
    }
}

/// What the QEMU monitor at `socket` says about the vCPUs: the `info registers` lines that
/// locate them (instruction pointer, flags, mode), or why it could not be asked. Bounded in
/// time: a wedged QEMU does not hang the harness.
pub fn registers(socket: &Path) -> String {
    let ask = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"info registers -a\n")?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && out.len() < 256 * 1024 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match ask() {
        Ok(text) => {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.starts_with("CPU#")
                        || l.starts_with("RAX=")
                        || l.starts_with("RIP=")
                        || l.starts_with("CS =")
                        || l.starts_with("CR0=")
                })
                .collect();
            if lines.is_empty() {
                "the QEMU monitor gave no registers".to_string()
            } else {
                lines.join("\n")
            }
        }
        Err(e) => format!("the QEMU monitor could not be asked: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_never_seen_never_freezes() {
        let dir = tempfile::tempdir().unwrap();
        let mut hb = Heartbeat::new(&dir.path().join("none"));
        let t = Instant::now();
        assert!(!hb.frozen(t + FROZEN_AFTER * 10));
    }

    #[test]
    fn a_heartbeat_that_stops_freezes_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat");
        let mut hb = Heartbeat::new(&path);
        let t = Instant::now();
        std::fs::write(&path, "beat\n").unwrap();
        assert!(!hb.frozen(t));
        assert!(!hb.frozen(t + FROZEN_AFTER));
        std::fs::write(&path, "beat\nbeat\n").unwrap();
        assert!(!hb.frozen(t + FROZEN_AFTER + Duration::from_secs(1)));
        assert!(!hb.frozen(t + FROZEN_AFTER * 2));
        assert!(hb.frozen(t + FROZEN_AFTER * 2 + Duration::from_secs(2)));
        assert_eq!(
            hb.longest_gap(),
            Some(FROZEN_AFTER + Duration::from_secs(1))
        );
    }

    #[test]
    fn the_heartbeat_line_is_backgrounded_and_opens_its_port_once() {
        let l = heartbeat_line();
        assert!(l.trim_end().ends_with('&'));
        assert_eq!(l.matches("/dev/ttyS1").count(), 1);
    }

    #[test]
    fn an_absent_monitor_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let r = registers(&dir.path().join("no.sock"));
        assert!(r.contains("could not be asked"), "{r}");
    }
}
