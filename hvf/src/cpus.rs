//! What a VM's vCPU threads share under Hypervisor.framework: each vCPU's PSCI power state,
//! the entry of one started by CPU_ON, and the wake-ups of a vCPU sleeping in user space.
//!
//! KVM keeps a halted (WFI) or stopped (before CPU_ON, after CPU_OFF) vCPU inside `KVM_RUN`
//! and wakes it itself when an interrupt arrives. Hypervisor.framework returns to the VMM
//! for both, so the VMM's vCPU thread must sleep and be woken: by an interrupt a device
//! raised ([`Cpus::interrupt_raised`]), by another vCPU's CPU_ON ([`Cpus::start`]), by the
//! virtual timer's deadline, or by the core wanting the thread back ([`Cpus::kick`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::psci::PowerState;
use crate::regs::EntryState;

/// The longest a halted vCPU sleeps without looking again. An interrupt the VMM raises
/// wakes it at once; one the framework's GIC delivers by itself (an SGI from another vCPU,
/// which never reaches the VMM) is seen at the latest after this long. Linux sends its
/// IPIs (reschedule, TLB shootdown, timer broadcast) so; a guest whose vCPUs wait on each
/// other waits up to this long per IPI, if the framework hands WFI to the VMM at all when its
/// GIC is in use (its documentation suggests it waits at WFI itself then; see `hvf/README.md`).
pub const MAX_HALT: Duration = Duration::from_millis(10);

/// Why a sleeping vCPU woke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// An interrupt was raised, the deadline passed, or the wait was cut short
    /// ([`MAX_HALT`]): run the guest again.
    Run,
    /// The core kicked the vCPU: return to it with `VcpuExit::Interrupted`.
    Kicked,
    /// Started by CPU_ON (or already on): enter with this state first, if any.
    Started(Option<EntryState>),
}

#[derive(Debug)]
struct State {
    power: Vec<PowerState>,
    /// The entry of a vCPU that CPU_ON started, until it takes it.
    entry: Vec<Option<EntryState>>,
    /// An interrupt was raised since the vCPU last went to sleep.
    woken: Vec<bool>,
    /// The core asked for the thread back; cleared when the run returns `Interrupted`.
    kicked: Vec<bool>,
}

impl State {
    /// Takes vCPU `i`'s pending kick, if any.
    fn take_kick(&mut self, i: usize) -> bool {
        self.kicked.get_mut(i).is_some_and(std::mem::take)
    }
}

/// The shared vCPU state of one VM. vCPU 0 starts on, every other one off until CPU_ON.
#[derive(Debug)]
pub struct Cpus {
    state: Mutex<State>,
    changed: Condvar,
}

impl Cpus {
    /// `count` vCPUs (at least one).
    pub fn new(count: u8) -> Cpus {
        let n = usize::from(count.max(1));
        let mut power = vec![PowerState::Off; n];
        power[0] = PowerState::On;
        Cpus {
            state: Mutex::new(State {
                power,
                entry: vec![None; n],
                woken: vec![false; n],
                kicked: vec![false; n],
            }),
            changed: Condvar::new(),
        }
    }

    /// How many vCPUs the VM has.
    pub fn count(&self) -> usize {
        self.lock().power.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A vCPU thread that panicked holding the lock left plain flags behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every vCPU's power state now (what PSCI calls are answered against).
    pub fn power(&self) -> Vec<PowerState> {
        self.lock().power.clone()
    }

    /// Whether vCPU `index` is off (never started, or after CPU_OFF).
    pub fn is_off(&self, index: u8) -> bool {
        self.lock().power.get(usize::from(index)) == Some(&PowerState::Off)
    }

    /// A device raised an interrupt: every sleeping vCPU looks again (the GIC decides
    /// which one takes it).
    pub fn interrupt_raised(&self) {
        let mut s = self.lock();
        s.woken.iter_mut().for_each(|w| *w = true);
        drop(s);
        self.changed.notify_all();
    }

    /// The core wants vCPU `index`'s thread back: a sleep ends, and the next run returns
    /// `Interrupted` before entering the guest. (A vCPU inside the framework's run is
    /// also made to exit by the caller, with `hv_vcpus_exit`.)
    pub fn kick(&self, index: u8) {
        let mut s = self.lock();
        if let Some(k) = s.kicked.get_mut(usize::from(index)) {
            *k = true;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Takes vCPU `index`'s pending kick, if any.
    pub fn take_kick(&self, index: u8) -> bool {
        self.lock().take_kick(usize::from(index))
    }

    /// CPU_ON for vCPU `index`: marks it pending with `entry` and wakes it. Fails with
    /// its state when it is not off (another CPU_ON won the race since the caller's
    /// PSCI answer was computed).
    pub fn start(&self, index: u8, entry: EntryState) -> Result<(), PowerState> {
        let i = usize::from(index);
        let mut s = self.lock();
        match s.power.get(i) {
            Some(PowerState::Off) => {}
            Some(other) => return Err(*other),
            // PSCI validated the index against the same table.
            None => return Err(PowerState::Off),
        }
        s.power[i] = PowerState::OnPending;
        s.entry[i] = Some(entry);
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// CPU_OFF for vCPU `index`: it sleeps from its next run until a CPU_ON.
    pub fn stop(&self, index: u8) {
        let mut s = self.lock();
        if let Some(p) = s.power.get_mut(usize::from(index)) {
            *p = PowerState::Off;
        }
    }

    /// Waits while vCPU `index` is off. Returns [`Wake::Started`] with the CPU_ON entry
    /// (marking it on) or with none when it was on already, or [`Wake::Kicked`].
    pub fn wait_until_on(&self, index: u8) -> Wake {
        let i = usize::from(index);
        let mut s = self.lock();
        loop {
            if s.take_kick(i) {
                return Wake::Kicked;
            }
            match s.power.get(i) {
                Some(PowerState::On) | None => return Wake::Started(None),
                Some(PowerState::OnPending) => {
                    s.power[i] = PowerState::On;
                    return Wake::Started(s.entry[i].take());
                }
                Some(PowerState::Off) => {}
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// WFI: sleeps vCPU `index` until an interrupt is raised, `timeout` passes (none:
    /// [`MAX_HALT`]; it is capped there too), or a kick. An interrupt raised since the
    /// vCPU last slept ends the sleep at once, so one raised just before the guest's WFI
    /// is not missed.
    pub fn halt(&self, index: u8, timeout: Option<Duration>) -> Wake {
        let i = usize::from(index);
        let deadline = Instant::now() + timeout.unwrap_or(MAX_HALT).min(MAX_HALT);
        let mut s = self.lock();
        loop {
            if s.take_kick(i) {
                return Wake::Kicked;
            }
            if s.woken.get(i).copied().unwrap_or(true) {
                s.woken[i] = false;
                return Wake::Run;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Run;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Guest timer ticks at `hz` as a duration (rounded up, so a wait never ends early).
pub fn ticks_to_duration(ticks: u64, hz: u64) -> Duration {
    if hz == 0 {
        return Duration::ZERO;
    }
    let nanos = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(hz));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::cpu_on_entry;
    use std::sync::Arc;

    #[test]
    fn only_the_boot_vcpu_starts_on() {
        let cpus = Cpus::new(3);
        assert_eq!(
            cpus.power(),
            [PowerState::On, PowerState::Off, PowerState::Off]
        );
        assert_eq!(cpus.wait_until_on(0), Wake::Started(None));
        assert!(cpus.is_off(1));
        assert_eq!(Cpus::new(0).count(), 1, "a VM has at least one vCPU");
    }

    #[test]
    fn cpu_on_wakes_the_waiting_vcpu_with_its_entry_once() {
        let cpus = Arc::new(Cpus::new(2));
        let waiter = {
            let cpus = cpus.clone();
            std::thread::spawn(move || cpus.wait_until_on(1))
        };
        std::thread::sleep(Duration::from_millis(20));
        let entry = cpu_on_entry(0x8020_0000, 0x1234);
        cpus.start(1, entry.clone()).unwrap();
        assert_eq!(waiter.join().unwrap(), Wake::Started(Some(entry)));
        assert_eq!(cpus.power(), [PowerState::On, PowerState::On]);
        // A second CPU_ON loses: the vCPU is on.
        assert_eq!(
            cpus.start(1, cpu_on_entry(0, 0)),
            Err(PowerState::On),
            "two CPU_ONs cannot both succeed"
        );
        assert_eq!(cpus.wait_until_on(1), Wake::Started(None));
    }

    #[test]
    fn a_pending_start_refuses_another() {
        let cpus = Cpus::new(2);
        cpus.start(1, cpu_on_entry(1, 2)).unwrap();
        assert_eq!(
            cpus.start(1, cpu_on_entry(3, 4)),
            Err(PowerState::OnPending)
        );
        assert_eq!(cpus.start(9, cpu_on_entry(3, 4)), Err(PowerState::Off));
    }

    #[test]
    fn cpu_off_then_on_again() {
        let cpus = Cpus::new(2);
        cpus.start(1, cpu_on_entry(1, 2)).unwrap();
        assert!(matches!(cpus.wait_until_on(1), Wake::Started(Some(_))));
        cpus.stop(1);
        assert!(cpus.is_off(1));
        cpus.start(1, cpu_on_entry(5, 6)).unwrap();
        assert_eq!(
            cpus.wait_until_on(1),
            Wake::Started(Some(cpu_on_entry(5, 6)))
        );
    }

    #[test]
    fn a_kick_ends_the_wait_of_an_off_vcpu() {
        let cpus = Arc::new(Cpus::new(2));
        let waiter = {
            let cpus = cpus.clone();
            std::thread::spawn(move || cpus.wait_until_on(1))
        };
        std::thread::sleep(Duration::from_millis(20));
        cpus.kick(1);
        assert_eq!(waiter.join().unwrap(), Wake::Kicked);
        assert!(!cpus.take_kick(1), "the wait took the kick");
        assert!(cpus.is_off(1), "still off");
    }

    #[test]
    fn an_interrupt_ends_a_halt_early() {
        let cpus = Arc::new(Cpus::new(1));
        // Stale wake-up from before: the first halt returns at once (a spurious wake,
        // which WFI allows); the next one sleeps.
        cpus.interrupt_raised();
        assert_eq!(cpus.halt(0, Some(Duration::from_secs(5))), Wake::Run);
        let raiser = {
            let cpus = cpus.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                cpus.interrupt_raised();
            })
        };
        let began = Instant::now();
        assert_eq!(cpus.halt(0, None), Wake::Run);
        assert!(began.elapsed() <= MAX_HALT + Duration::from_millis(50));
        raiser.join().unwrap();
    }

    #[test]
    fn a_halt_ends_at_its_deadline_and_never_sleeps_past_the_cap() {
        let cpus = Cpus::new(1);
        let began = Instant::now();
        assert_eq!(cpus.halt(0, Some(Duration::from_millis(2))), Wake::Run);
        assert!(began.elapsed() >= Duration::from_millis(2));
        let began = Instant::now();
        assert_eq!(cpus.halt(0, Some(Duration::from_secs(60))), Wake::Run);
        assert!(began.elapsed() >= MAX_HALT);
        assert!(began.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_kick_wins_over_a_halt_and_is_taken_once() {
        let cpus = Cpus::new(2);
        cpus.kick(1);
        assert_eq!(cpus.halt(1, Some(Duration::from_secs(5))), Wake::Kicked);
        cpus.kick(0);
        assert!(cpus.take_kick(0));
        assert!(!cpus.take_kick(0));
        cpus.kick(200); // no such vCPU: nothing happens
    }

    #[test]
    fn ticks_convert_rounding_up() {
        assert_eq!(
            ticks_to_duration(24_000_000, 24_000_000),
            Duration::from_secs(1)
        );
        assert_eq!(ticks_to_duration(1, 24_000_000), Duration::from_nanos(42));
        assert_eq!(ticks_to_duration(5, 0), Duration::ZERO);
        // Past u64 nanoseconds (584 years): saturates instead of wrapping short.
        assert!(ticks_to_duration(u64::MAX, 1) > Duration::from_secs(1 << 30));
    }
}
