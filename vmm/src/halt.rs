//! Finding a guest that halted for good, without reading its console.
//!
//! With a local APIC in the hypervisor (KVM's in-kernel one) a `hlt` never
//! reaches user space: the vCPU thread sleeps inside the run call until an
//! interrupt arrives. A guest that halts every vCPU with interrupts disabled
//! (Linux's `machine_halt()`, which is what `poweroff` becomes on a kernel
//! without a power-off method) therefore just leaves every vCPU thread asleep
//! forever. Asking the hypervisor whether a vCPU is halted
//! ([`crate::hypervisor::Vcpu::run_state`]; on KVM, KVM_GET_MP_STATE and
//! RFLAGS.IF) needs the vCPU out of the run call, i.e. interrupting its thread
//! with a signal.
//!
//! Interrupting vCPUs blindly and often is not free, and under nested
//! virtualization periodic interruptions were seen to wedge a booting guest,
//! so the watcher only asks when the host's scheduler says that every vCPU
//! thread has been asleep, without a single wake-up, for a while: a halted vCPU
//! with interrupts off is never woken, while a busy or idle-but-ticking guest
//! wakes its threads (timer interrupts, device I/O). The scheduler's view comes
//! from `/proc/self/task/<tid>/status` (state and context-switch counts), which
//! costs the guest nothing. When a check finds a guest that merely idles, the
//! next one waits twice as long (up to [`MAX_QUIET`]), until the guest does
//! device I/O again.

use std::time::{Duration, Instant};

/// How long every vCPU must have slept without a wake-up before the first check.
pub const MIN_QUIET: Duration = Duration::from_secs(1);
/// The longest wait between checks of a guest that keeps idling without I/O.
pub const MAX_QUIET: Duration = Duration::from_secs(32);

/// What the scheduler says about one vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSample {
    /// The thread is sleeping (state `S`).
    pub sleeping: bool,
    /// Voluntary plus involuntary context switches so far; it changes each
    /// time the thread wakes up and sleeps again.
    pub switches: u64,
}

/// Parses the `State:` and `*_ctxt_switches:` lines of a `/proc/.../status` file.
pub fn parse_status(text: &str) -> Option<ThreadSample> {
    let mut sleeping = None;
    let mut switches = 0u64;
    let mut seen = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "State" => sleeping = Some(value.starts_with('S')),
            "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches" => {
                switches = switches.saturating_add(value.parse().ok()?);
                seen += 1;
            }
            _ => {}
        }
    }
    (seen == 2).then_some(ThreadSample {
        sleeping: sleeping?,
        switches,
    })
}

/// Reads the scheduler's view of thread `tid` of this process.
pub fn sample_thread(tid: i32) -> Option<ThreadSample> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    parse_status(&text)
}

/// Per-vCPU memory of the last sample.
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    last: Option<ThreadSample>,
    /// Since when the thread has slept without a wake-up, if it has.
    asleep_since: Option<Instant>,
}

/// Decides when the supervisor should interrupt the vCPUs to look for a halt.
#[derive(Debug)]
pub struct HaltWatch {
    tracks: Vec<Track>,
    quiet_needed: Duration,
    io_exits_seen: u64,
}

impl HaltWatch {
    /// A watcher for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        HaltWatch {
            tracks: vec![Track::default(); vcpus],
            quiet_needed: MIN_QUIET,
            io_exits_seen: 0,
        }
    }

    /// Feeds one round of samples (`None` where a thread could not be read)
    /// taken at `now`, with the VM's running count of device exits. Returns
    /// true when every vCPU has slept without a wake-up for long enough that
    /// the vCPUs should be checked for a halt now.
    pub fn observe(
        &mut self,
        now: Instant,
        samples: &[Option<ThreadSample>],
        io_exits: u64,
    ) -> bool {
        if io_exits != self.io_exits_seen {
            // The guest did I/O since the last look: it is alive, and a halt
            // right after activity (a shutdown) should be found quickly.
            self.io_exits_seen = io_exits;
            self.quiet_needed = MIN_QUIET;
        }
        let mut all_quiet = !samples.is_empty();
        for (track, sample) in self.tracks.iter_mut().zip(samples) {
            let same = match (track.last, sample) {
                (Some(a), Some(b)) => a.sleeping && b.sleeping && a.switches == b.switches,
                _ => false,
            };
            if !same {
                track.asleep_since = sample.filter(|s| s.sleeping).map(|_| now);
            }
            track.last = *sample;
            let quiet_for = track.asleep_since.map(|t| now.saturating_duration_since(t));
            all_quiet &= quiet_for.is_some_and(|d| d >= self.quiet_needed);
        }
        if !all_quiet {
            return false;
        }
        // Checked now; if the guest turns out to be merely idle, the next check
        // waits twice as long. The kick wakes every thread, which restarts
        // their quiet time.
        self.quiet_needed = (self.quiet_needed * 2).min(MAX_QUIET);
        for track in &mut self.tracks {
            track.last = None;
            track.asleep_since = None;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tmsbvm-vcpu0\nState:\tS (sleeping)\nTgid:\t1\n\
        voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t3\n";

    fn asleep(switches: u64) -> Option<ThreadSample> {
        Some(ThreadSample {
            sleeping: true,
            switches,
        })
    }

    #[test]
    fn status_file_is_parsed() {
        assert_eq!(parse_status(STATUS), asleep(13));
        let running = STATUS.replace("S (sleeping)", "R (running)");
        assert_eq!(parse_status(&running).map(|s| s.sleeping), Some(false));
        assert_eq!(parse_status("State:\tS (sleeping)\n"), None);
    }

    #[test]
    fn this_thread_can_be_sampled() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let sample = sample_thread(tid).expect("own status readable");
        assert!(!sample.sleeping, "the calling thread is running");
    }

    #[test]
    fn check_only_after_every_vcpu_slept_without_waking() {
        let t0 = Instant::now();
        let mut w = HaltWatch::new(2);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!w.observe(at(0), &[asleep(5), asleep(7)], 0));
        // vCPU 1 woke up (its switch count moved): its quiet time restarts.
        assert!(!w.observe(at(600), &[asleep(5), asleep(8)], 0));
        assert!(!w.observe(at(1200), &[asleep(5), asleep(8)], 0));
        assert!(w.observe(at(1700), &[asleep(5), asleep(8)], 0));
    }

    #[test]
    fn idle_guest_is_checked_less_and_less_until_it_does_io() {
        let t0 = Instant::now();
        let mut w = HaltWatch::new(1);
        let mut checks = Vec::new();
        for s in 0..40u64 {
            if w.observe(t0 + Duration::from_secs(s), &[asleep(1)], 0) {
                checks.push(s);
            }
        }
        assert_eq!(checks, vec![1, 4, 9, 18, 35], "waits of 1, 2, 4, 8, 16 s");
        // I/O (which woke the thread) brings the wait back to the minimum.
        assert!(!w.observe(t0 + Duration::from_secs(41), &[asleep(2)], 1));
        assert!(w.observe(t0 + Duration::from_secs(42), &[asleep(2)], 1));
    }

    #[test]
    fn running_or_unreadable_vcpu_prevents_a_check() {
        let t0 = Instant::now();
        let mut w = HaltWatch::new(2);
        let running = Some(ThreadSample {
            sleeping: false,
            switches: 1,
        });
        for s in 0..5 {
            let now = t0 + Duration::from_secs(s);
            assert!(!w.observe(now, &[asleep(1), running], 0));
            assert!(!w.observe(now, &[asleep(1), None], 0));
        }
    }
}
