//! One thread per vCPU: the run loop and what each exit means.
//!
//! A vCPU thread reports to the VMM's main thread through a channel: the
//! guest's boot-complete marker, a request to stop the VM (power-off, reboot,
//! panic, fault), and whether it sits halted with interrupts disabled. The main
//! thread stops vCPUs by raising a flag and kicking each thread with a signal,
//! which makes the hypervisor's run call return ([`VcpuExit::Interrupted`]).
//! The loop knows the vCPU only through the [`crate::hypervisor::Vcpu`] trait.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Instant;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::{BusEvent, Buses};
use crate::exit::{FaultKind, FaultRegs, Position, VcpuFault, VmExit};
use crate::hypervisor::{RunState, Vcpu, VcpuExit};
use crate::memory::GuestMemory;

/// The signal used to kick a vCPU thread out of the hypervisor's run call.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the (empty) handler for [`kick_signal`]; its only job is to
/// interrupt the run call, which a blocked or ignored signal would not do.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        // Failure leaves the default action (terminate) in place, which would
        // be worse than any error; there is no sane way to continue.
        register_signal_handler(kick_signal(), noop)
            .expect("installing the vCPU kick signal handler");
    });
}

/// What a vCPU thread tells the main thread.
#[derive(Debug)]
pub enum Report {
    /// The guest wrote the boot-complete marker at this instant.
    BootComplete(Instant),
    /// Stop the VM.
    Stop(VmExit),
    /// vCPU `0` is (true) or is no longer (false) halted with interrupts off.
    Halted(u8, bool),
    /// vCPU `0` paused (see [`Shared::pause`]) with this state saved.
    Paused(u8, Result<Vec<u8>, crate::hypervisor::Error>),
    /// Another thread asks for a snapshot (see [`crate::vm::VmControl`]).
    Snapshot(crate::vm::SnapshotRequest),
}

/// State shared between the main thread and the vCPU threads.
pub struct Shared {
    /// Set when the VM is stopping; vCPU threads leave their loop.
    pub stop: AtomicBool,
    /// Per vCPU: when it last entered the guest (nanoseconds since `epoch`), or
    /// 0 while it is outside.
    pub in_guest_since: Vec<AtomicU64>,
    /// Reference point for `in_guest_since`.
    pub epoch: Instant,
    /// Per vCPU: the host thread id of its thread (0 until it started), so
    /// the supervisor can ask the scheduler about it without disturbing it.
    pub tids: Vec<AtomicI32>,
    /// Exits to user space for device I/O, all vCPUs together: a sign of life.
    pub io_exits: AtomicU64,
    /// Set to pause every vCPU: each saves its state, reports
    /// [`Report::Paused`] and waits until the flag is cleared (or the VM stops).
    pub pause: AtomicBool,
    /// Where paused vCPUs wait: the count of resumes so far, notified when
    /// it or `stop` changes. A count rather than the flag, so that a vCPU
    /// slow to wake from one pause is not caught by the next.
    resume: (Mutex<u64>, Condvar),
    /// Set before a stop that should say where the guest was: each vCPU
    /// leaving its loop then records its registers in `stopped_at`.
    pub describe_on_stop: AtomicBool,
    /// Per vCPU: where it was when it left its loop (see `describe_on_stop`).
    pub stopped_at: Mutex<Vec<Option<String>>>,
    /// The backend's own way to end a vCPU's run, for runs a signal does not end.
    pub kicker: Option<crate::hypervisor::Kicker>,
}

impl Shared {
    /// State for `vcpus` vCPUs, kicked with the thread signal and `kicker` when there is one.
    pub fn new(vcpus: u8, kicker: Option<crate::hypervisor::Kicker>) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            in_guest_since: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            tids: (0..vcpus).map(|_| AtomicI32::new(0)).collect(),
            io_exits: AtomicU64::new(0),
            pause: AtomicBool::new(false),
            resume: (Mutex::new(0), Condvar::new()),
            describe_on_stop: AtomicBool::new(false),
            stopped_at: Mutex::new(vec![None; usize::from(vcpus)]),
            kicker,
        }
    }

    /// Clears the pause flag (or, after `stop` was raised, just wakes) and
    /// wakes every paused vCPU.
    pub fn resume(&self) {
        let mut resumes = self.resume.0.lock().unwrap_or_else(|p| p.into_inner());
        self.pause.store(false, Ordering::Release);
        *resumes += 1;
        self.resume.1.notify_all();
    }

    /// Wakes paused vCPUs so they see the stop flag.
    pub fn wake_for_stop(&self) {
        let _guard = self.resume.0.lock().unwrap_or_else(|p| p.into_inner());
        self.resume.1.notify_all();
    }

    /// The resume count that ends the current pause's wait.
    fn pause_generation(&self) -> u64 {
        *self.resume.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the VM is resumed after pause `generation`, or stops.
    fn wait_for_resume(&self, generation: u64) {
        let mut resumes = self.resume.0.lock().unwrap_or_else(|p| p.into_inner());
        while *resumes == generation && !self.stop.load(Ordering::Acquire) {
            resumes = self
                .resume
                .1
                .wait(resumes)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// How long vCPU `index` has been inside the guest without an exit, if it is.
    pub fn in_guest_for(&self, index: usize) -> Option<std::time::Duration> {
        let since = self.in_guest_since[index].load(Ordering::Acquire);
        (since != 0).then(|| std::time::Duration::from_nanos(self.now_ns().saturating_sub(since)))
    }
}

/// Everything a vCPU thread owns.
pub struct VcpuThread<V> {
    /// Index (and APIC ID).
    pub index: u8,
    /// The hypervisor's vCPU.
    pub vcpu: V,
    /// The port-I/O and MMIO buses.
    pub buses: Buses,
    /// Guest memory, to read code at a fault.
    pub mem: GuestMemory,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Channel to the main thread.
    pub reports: Sender<Report>,
}

impl<V: Vcpu> VcpuThread<V> {
    /// Runs the vCPU until the VM stops. Never panics on guest behaviour: every
    /// outcome becomes a [`Report`].
    pub fn run(mut self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.shared.tids[self.index as usize].store(tid, Ordering::Release);
        let mut reported_halted = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.shared.pause.load(Ordering::Acquire) {
                // Read before reporting: the resume can only come after it.
                let pause = self.shared.pause_generation();
                let state = self.vcpu.save_state();
                let _ = self.reports.send(Report::Paused(self.index, state));
                self.shared.wait_for_resume(pause);
                continue;
            }
            let slot = &self.shared.in_guest_since[self.index as usize];
            slot.store(self.shared.now_ns(), Ordering::Release);
            let exit = self.vcpu.run(&mut self.buses);
            slot.store(0, Ordering::Release);

            let halted_now = matches!(exit, VcpuExit::Interrupted) && self.halted_with_irqs_off();
            if halted_now != reported_halted {
                reported_halted = halted_now;
                let _ = self.reports.send(Report::Halted(self.index, halted_now));
            }
            if matches!(exit, VcpuExit::Io | VcpuExit::Event(_) | VcpuExit::Stop(_)) {
                self.shared.io_exits.fetch_add(1, Ordering::Relaxed);
            }
            let stop = match exit {
                VcpuExit::Io | VcpuExit::Interrupted => continue,
                VcpuExit::Event(BusEvent::BootComplete) => {
                    let _ = self.reports.send(Report::BootComplete(Instant::now()));
                    continue;
                }
                VcpuExit::Event(BusEvent::Stop(exit)) | VcpuExit::Stop(exit) => exit,
                VcpuExit::Fault(kind) => VmExit::Fault(self.fault(kind)),
            };
            let _ = self.reports.send(Report::Stop(stop));
            return;
        }
        if self.shared.describe_on_stop.load(Ordering::Acquire) {
            let here = self.describe();
            let mut all = self
                .shared
                .stopped_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = all.get_mut(usize::from(self.index)) {
                *slot = Some(here);
            }
        }
    }

    /// Where this vCPU is, in one line: run state, instruction pointer, the
    /// code there and the control registers (for a guest that looks stuck).
    fn describe(&self) -> String {
        let run_state = match self.vcpu.run_state() {
            Ok(RunState::Runnable) => "runnable".to_string(),
            Ok(RunState::Halted { interrupts_enabled }) => {
                format!(
                    "halted, interrupts {}",
                    if interrupts_enabled {
                        "enabled"
                    } else {
                        "disabled"
                    }
                )
            }
            Ok(RunState::WaitingForStartup) => "waiting for start-up".to_string(),
            Err(e) => format!("run state unavailable: {e}"),
        };
        let (regs, code) = self.position().unzip();
        let position = Position {
            ip: regs.as_ref().map_or(0, |r| r.pc()),
            code: code.as_deref().unwrap_or_default(),
            regs: regs.as_ref(),
        };
        format!("vCPU {} ({run_state}) {position}", self.index)
    }

    /// The control registers and up to 15 code bytes at the instruction
    /// pointer, if the registers can be read.
    fn position(&self) -> Option<(FaultRegs, Vec<u8>)> {
        let state = self.vcpu.registers().ok()?;
        let code = state.code_at_rip(&self.mem, 15);
        Some((state.regs, code))
    }

    /// True if the vCPU can never run again by itself: halted with interrupts
    /// disabled (only an NMI, which nobody sends, could wake it), or an
    /// application processor still waiting for the start-up IPI that only
    /// another, running vCPU could send.
    fn halted_with_irqs_off(&self) -> bool {
        match self.vcpu.run_state() {
            Ok(RunState::Halted { interrupts_enabled }) => !interrupts_enabled,
            Ok(RunState::WaitingForStartup) => self.index != 0,
            Ok(RunState::Runnable) | Err(_) => false,
        }
    }

    /// Captures the registers and the code at the instruction pointer for a fault report.
    fn fault(&self, kind: FaultKind) -> VcpuFault {
        let (regs, code) = self.position().unzip();
        VcpuFault {
            vcpu: self.index,
            kind,
            rip: regs.as_ref().map_or(0, |r| r.pc()),
            insn_bytes: code.unwrap_or_default(),
            regs,
        }
    }
}
