//! One thread per vCPU: the KVM_RUN loop and what each exit means.
//!
//! A vCPU thread reports to the VMM's main thread through a channel: the
//! guest's boot-complete marker, a request to stop the VM (power-off, reboot,
//! panic, fault), and whether it sits halted with interrupts disabled. The main
//! thread stops vCPUs by raising a flag and kicking each thread with a signal,
//! which makes KVM_RUN return EINTR.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::time::Instant;

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::paging::{self, PagingMode};
use crate::devices::{Bus, BusEvent};
use crate::exit::{FaultKind, FaultRegs, VcpuFault, VmExit};
use crate::memory::GuestMemory;

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the (empty) handler for [`kick_signal`]; its only job is to
/// interrupt KVM_RUN, which a blocked or ignored signal would not do.
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
}

/// State shared between the main thread and the vCPU threads.
pub struct Shared {
    /// Set when the VM is stopping; vCPU threads leave their loop.
    pub stop: AtomicBool,
    /// Per vCPU: when it last entered KVM_RUN (nanoseconds since `epoch`), or
    /// 0 while it is outside.
    pub in_guest_since: Vec<AtomicU64>,
    /// Reference point for `in_guest_since`.
    pub epoch: Instant,
    /// Per vCPU: the host thread id of its thread (0 until it started), so
    /// the supervisor can ask the scheduler about it without disturbing it.
    pub tids: Vec<AtomicI32>,
    /// Exits to user space for device I/O, all vCPUs together: a sign of life.
    pub io_exits: AtomicU64,
}

impl Shared {
    /// State for `vcpus` vCPUs.
    pub fn new(vcpus: u8) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            in_guest_since: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            tids: (0..vcpus).map(|_| AtomicI32::new(0)).collect(),
            io_exits: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// How long vCPU `index` has been inside KVM_RUN without an exit, if it is.
    pub fn in_guest_for(&self, index: usize) -> Option<std::time::Duration> {
        let since = self.in_guest_since[index].load(Ordering::Acquire);
        (since != 0).then(|| std::time::Duration::from_nanos(self.now_ns().saturating_sub(since)))
    }
}

/// Everything a vCPU thread owns.
pub struct Vcpu {
    /// Index (and APIC ID).
    pub index: u8,
    /// The KVM handle.
    pub fd: VcpuFd,
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Guest memory, to read code at a fault.
    pub mem: GuestMemory,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Channel to the main thread.
    pub reports: Sender<Report>,
}

/// What to do after an exit, decided while the exit borrows the vCPU.
enum Next {
    Continue,
    Event(BusEvent),
    Fault(FaultKind),
    Interrupted,
    InternalError,
}

impl Vcpu {
    /// Runs the vCPU until the VM stops. Never panics on guest behaviour: every
    /// outcome becomes a [`Report`].
    pub fn run(mut self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.shared.tids[self.index as usize].store(tid, Ordering::Release);
        let mut reported_halted = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            let slot = &self.shared.in_guest_since[self.index as usize];
            slot.store(self.shared.now_ns(), Ordering::Release);
            let next = match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoOut(port, data) => match self.pio.write(port.into(), data) {
                        Some(ev) => Next::Event(ev),
                        None => Next::Continue,
                    },
                    VcpuExit::IoIn(port, data) => {
                        self.pio.read(port.into(), data);
                        Next::Continue
                    }
                    VcpuExit::MmioWrite(addr, data) => match self.mmio.write(addr, data) {
                        Some(ev) => Next::Event(ev),
                        None => Next::Continue,
                    },
                    VcpuExit::MmioRead(addr, data) => {
                        self.mmio.read(addr, data);
                        Next::Continue
                    }
                    // Only reachable without an in-kernel local APIC.
                    VcpuExit::Hlt => Next::Event(BusEvent::Stop(VmExit::Halted)),
                    VcpuExit::Shutdown => Next::Fault(FaultKind::TripleFault),
                    VcpuExit::FailEntry(reason, _) => Next::Fault(FaultKind::FailEntry { reason }),
                    VcpuExit::InternalError => Next::InternalError,
                    VcpuExit::SystemEvent(kind, _) => match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => {
                            Next::Event(BusEvent::Stop(VmExit::PowerOff { code: 0 }))
                        }
                        KVM_SYSTEM_EVENT_RESET => Next::Event(BusEvent::Stop(VmExit::Reboot)),
                        KVM_SYSTEM_EVENT_CRASH => Next::Event(BusEvent::Stop(VmExit::Panic)),
                        other => Next::Fault(FaultKind::Unexpected(format!(
                            "KVM_EXIT_SYSTEM_EVENT of type {other}"
                        ))),
                    },
                    VcpuExit::Intr => Next::Interrupted,
                    other => Next::Fault(FaultKind::Unexpected(format!("{other:?}"))),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Next::Interrupted
                }
                Err(e) => Next::Fault(FaultKind::Host(format!("KVM_RUN failed: {e}"))),
            };
            slot.store(0, Ordering::Release);

            let halted_now = matches!(next, Next::Interrupted) && self.halted_with_irqs_off();
            if halted_now != reported_halted {
                reported_halted = halted_now;
                let _ = self.reports.send(Report::Halted(self.index, halted_now));
            }
            if matches!(next, Next::Continue | Next::Event(_)) {
                self.shared.io_exits.fetch_add(1, Ordering::Relaxed);
            }
            match next {
                Next::Continue | Next::Interrupted => {}
                Next::Event(BusEvent::BootComplete) => {
                    let _ = self.reports.send(Report::BootComplete(Instant::now()));
                }
                Next::Event(BusEvent::Stop(exit)) => {
                    let _ = self.reports.send(Report::Stop(exit));
                    return;
                }
                Next::Fault(kind) => {
                    let fault = self.fault(kind);
                    let _ = self.reports.send(Report::Stop(VmExit::Fault(fault)));
                    return;
                }
                Next::InternalError => {
                    let kind = self.internal_error();
                    let fault = self.fault(kind);
                    let _ = self.reports.send(Report::Stop(VmExit::Fault(fault)));
                    return;
                }
            }
        }
    }

    /// True if the vCPU can never run again by itself: halted with interrupts
    /// disabled (only an NMI, which nobody sends, could wake it), or an
    /// application processor still waiting for the start-up IPI that only
    /// another, running vCPU could send.
    fn halted_with_irqs_off(&self) -> bool {
        match self.fd.get_mp_state().map(|s| s.mp_state) {
            Ok(KVM_MP_STATE_HALTED) => self
                .fd
                .get_regs()
                .map(|r| r.rflags & (1 << 9) == 0)
                .unwrap_or(false),
            // Never started (no INIT yet) or waiting for the SIPI after one.
            Ok(KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED) => self.index != 0,
            _ => false,
        }
    }

    fn internal_error(&mut self) -> FaultKind {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is
        // the active member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
            FaultKind::EmulationFailure
        } else {
            let n = (internal.ndata as usize).min(internal.data.len());
            FaultKind::InternalError {
                suberror: internal.suberror,
                data: internal.data[..n].to_vec(),
            }
        }
    }

    /// Captures RIP and the code there for a fault report.
    fn fault(&self, kind: FaultKind) -> VcpuFault {
        let mut fault = VcpuFault {
            vcpu: self.index,
            kind,
            rip: 0,
            insn_bytes: Vec::new(),
            regs: None,
        };
        let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return fault;
        };
        fault.rip = regs.rip;
        fault.regs = Some(FaultRegs {
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            cs_base: sregs.cs.base,
        });
        let mode = PagingMode {
            paging: sregs.cr0 & (1 << 31) != 0,
            long_mode: sregs.efer & (1 << 10) != 0,
            pae: sregs.cr4 & (1 << 5) != 0,
            cr3: sregs.cr3,
        };
        // Outside 64-bit mode the code segment's base applies.
        let linear = if sregs.cs.l != 0 {
            regs.rip
        } else {
            sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
        };
        fault.insn_bytes = paging::read_code(&self.mem, mode, linear, 15);
        fault
    }
}
