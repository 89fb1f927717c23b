//! One vCPU's run as `msbvm_vmm::hypervisor::Vcpu::run` must present it, and the two
//! notification paths KVM provides in the kernel (irqfd, ioeventfd), all over a small
//! [`Framework`] trait so the whole of it is tested on Linux against a fake.
//!
//! [`VcpuRunner::run`] enters the guest once and answers what came back: device accesses
//! through the core's `DeviceAccess` (a write matching a registered ioevent signals it
//! instead, as KVM's ioeventfd does), PSCI and WFI as [`crate::exit::ExitHandler`] decides,
//! halts and CPU_OFF by sleeping in [`Cpus`] the way `KVM_RUN` sleeps in the kernel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use msbvm_vmm::event::EventFd;
use msbvm_vmm::hypervisor::{DeviceAccess, VcpuExit};
use msbvm_vmm::{FaultKind, VmExit};

use crate::cpus::{ticks_to_duration, Cpus, Wake};
use crate::exit::{Exit, ExitHandler, Fault, HvExit, Mmio, Stop, VcpuOps};
use crate::gic::Gic;
use crate::psci::{ret, PowerState};
use crate::regs::{cpu_on_entry, EntryState, Reg};

/// The framework calls a run needs beyond exit handling's, on the vCPU's own thread.
pub trait Framework: VcpuOps {
    /// Enters the guest until the next exit (`hv_vcpu_run` and its exit information).
    fn run_once(&mut self) -> Result<HvExit, Self::Error>;
    /// The guest's virtual counter (CNTVCT_EL0) now, in the timer's ticks.
    fn virtual_counter(&self) -> Result<u64, Self::Error>;
    /// Sets the registers of `state`, in order.
    fn set_entry_state(&mut self, state: &EntryState) -> Result<(), Self::Error> {
        for &(reg, value) in &state.regs {
            self.set_reg(reg, value)?;
        }
        for &(reg, value) in &state.sys_regs {
            self.set_sys_reg(reg, value)?;
        }
        Ok(())
    }
    /// Writes a system register.
    fn set_sys_reg(&mut self, reg: crate::regs::SysReg, value: u64) -> Result<(), Self::Error>;
    /// Asserts or clears the vCPU's IRQ line (`hv_vcpu_set_pending_interrupt`): how a GIC in
    /// user space ([`crate::gic`]) interrupts the guest. With the framework's own GIC there
    /// is no such line to drive, so by default it does nothing.
    fn set_irq_line(&mut self, asserted: bool) -> Result<(), Self::Error> {
        let _ = asserted;
        Ok(())
    }
}

/// Device registers whose guest writes signal an event instead of reaching the bus
/// (KVM's ioeventfd): virtio's queue notifications, so a device thread wakes without the
/// vCPU thread calling into the device.
#[derive(Debug, Default)]
pub struct IoEvents {
    entries: RwLock<Vec<(u64, u32, EventFd)>>,
}

impl IoEvents {
    /// Makes a 4-byte write of `datamatch` to `addr` signal `event`.
    pub fn register(&self, addr: u64, datamatch: u32, event: EventFd) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(a, d, _)| (*a, *d) != (addr, datamatch));
        entries.push((addr, datamatch, event));
    }

    /// Signals the event registered for this write, if any; true when one took it.
    fn signal(&self, addr: u64, data: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        let value = u32::from_le_bytes(bytes);
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries.iter().find(|(a, d, _)| (*a, *d) == (addr, value)) {
            Some((_, _, event)) => {
                if let Err(e) = event.write(1) {
                    // The device is gone or its event broken: the bus answers instead.
                    tracing::warn!("ioevent at {addr:#x}: {e}");
                    return false;
                }
                true
            }
            None => false,
        }
    }
}

/// The core's bus as exit handling sees it, with ioevents in front.
struct Bus<'a, A: DeviceAccess> {
    io: &'a mut A,
    ioevents: &'a IoEvents,
}

impl<A: DeviceAccess> Mmio for Bus<'_, A> {
    type Event = A::Event;

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.io.mmio_read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<A::Event> {
        if self.ioevents.signal(addr, data) {
            return None;
        }
        self.io.mmio_write(addr, data)
    }
}

/// One vCPU's state between runs.
#[derive(Debug)]
pub struct VcpuRunner {
    handler: ExitHandler,
    cpus: Arc<Cpus>,
    ioevents: Arc<IoEvents>,
    /// The virtual timer's frequency (CNTFRQ_EL0).
    counter_hz: u64,
}

fn fault<E>(f: Fault) -> VcpuExit<E> {
    VcpuExit::Fault(FaultKind::Unexpected(f.to_string()))
}

fn framework_fault<E: std::fmt::Display>(what: &'static str, e: E) -> FaultKind {
    FaultKind::Unexpected(
        Fault::Framework {
            what,
            message: e.to_string(),
        }
        .to_string(),
    )
}

impl VcpuRunner {
    /// vCPU `index` of the VM whose vCPUs share `cpus` and `ioevents`, with a virtual
    /// timer counting at `counter_hz`.
    pub fn new(index: u8, cpus: Arc<Cpus>, ioevents: Arc<IoEvents>, counter_hz: u64) -> Self {
        VcpuRunner {
            handler: ExitHandler::new(index),
            cpus,
            ioevents,
            counter_hz,
        }
    }

    /// The same vCPU in a VM whose GIC is `gic`, in user space: its IRQ line is set from the
    /// GIC before every run, and a halt with an interrupt signalled does not sleep. The GIC's
    /// notifier must wake the vCPUs it names ([`Cpus::interrupt_raised`]) and make a running
    /// one leave the guest (`hv_vcpus_exit`).
    pub fn with_gic(self, gic: Arc<Gic>) -> Self {
        VcpuRunner {
            handler: ExitHandler::with_gic(self.index(), gic),
            ..self
        }
    }

    /// This vCPU's index.
    pub fn index(&self) -> u8 {
        self.handler.index()
    }

    /// Runs the guest once and says what the core must see. A vCPU that is off sleeps
    /// here until a CPU_ON starts it (entering with the caller's entry point) or a kick;
    /// a halt sleeps here too and returns [`VcpuExit::Io`] (run again) once woken.
    pub fn run<F: Framework, A: DeviceAccess>(
        &mut self,
        fw: &mut F,
        io: &mut A,
    ) -> VcpuExit<A::Event> {
        let index = self.index();
        match self.cpus.wait_until_on(index) {
            Wake::Kicked => return VcpuExit::Interrupted,
            Wake::Started(Some(entry)) => {
                if let Err(e) = fw.set_entry_state(&entry) {
                    return VcpuExit::Fault(framework_fault("entering after CPU_ON", e));
                }
            }
            Wake::Started(None) | Wake::Run => {}
        }
        if self.cpus.take_kick(index) {
            return VcpuExit::Interrupted;
        }
        if let Err(f) = self.handler.before_run(fw) {
            return fault(f);
        }
        if let Some(gic) = self.handler.gic() {
            if let Err(e) = fw.set_irq_line(gic.irq_line(usize::from(index))) {
                return VcpuExit::Fault(framework_fault("setting the IRQ line", e));
            }
        }
        // Stale by the time a PSCI call is answered against it, whenever it is taken: a
        // CPU_ON it allows is checked again when applied ([`Cpus::start`]).
        let power = self.cpus.power();
        let exit = match fw.run_once() {
            Ok(exit) => exit,
            Err(e) => return VcpuExit::Fault(framework_fault("running the vCPU", e)),
        };
        let mut bus = Bus {
            io,
            ioevents: &self.ioevents,
        };
        match self.handler.handle(fw, &mut bus, exit, &power) {
            Exit::Continue => VcpuExit::Io,
            Exit::Event(e) => VcpuExit::Event(e),
            Exit::Interrupted => {
                self.cpus.take_kick(index);
                VcpuExit::Interrupted
            }
            Exit::Halt { .. }
                if self
                    .handler
                    .gic()
                    .is_some_and(|gic| gic.irq_line(usize::from(index))) =>
            {
                // WFI completes at once with an interrupt pending, masked or not.
                VcpuExit::Io
            }
            Exit::Halt { vtimer_deadline } => {
                let timeout = match vtimer_deadline {
                    None => None,
                    Some(deadline) => match fw.virtual_counter() {
                        Ok(now) => Some(ticks_to_duration(
                            deadline.saturating_sub(now),
                            self.counter_hz,
                        )),
                        Err(e) => {
                            return VcpuExit::Fault(framework_fault("reading the counter", e))
                        }
                    },
                };
                match self.cpus.halt(index, timeout) {
                    Wake::Kicked => VcpuExit::Interrupted,
                    _ => VcpuExit::Io,
                }
            }
            Exit::CpuOff => {
                self.cpus.stop(index);
                VcpuExit::Io
            }
            Exit::StartCpu {
                index: target,
                entry,
                context,
            } => match self.cpus.start(target, cpu_on_entry(entry, context)) {
                Ok(()) => VcpuExit::Io,
                // Another vCPU started it between the answer and now: say so instead.
                Err(state) => {
                    let code = match state {
                        PowerState::OnPending => ret::ON_PENDING,
                        _ => ret::ALREADY_ON,
                    };
                    match fw.set_reg(Reg::X(0), code as u64) {
                        Ok(()) => VcpuExit::Io,
                        Err(e) => VcpuExit::Fault(framework_fault("answering CPU_ON", e)),
                    }
                }
            },
            Exit::Stop(Stop::PowerOff) => VcpuExit::Stop(VmExit::PowerOff { code: 0 }),
            Exit::Stop(Stop::Reset) => VcpuExit::Stop(VmExit::Reboot),
            Exit::Stop(Stop::Panic) => VcpuExit::Stop(VmExit::Panic),
            Exit::Fault(f) => fault(f),
        }
    }
}

/// Threads that turn writes to an event into an interrupt (KVM's irqfd): each waits on its
/// event, raises the line through the framework's GIC and wakes halted vCPUs. Stopped
/// and joined when dropped.
#[derive(Debug, Default)]
pub struct IrqForwarders {
    stop: Arc<AtomicBool>,
    threads: Vec<(EventFd, JoinHandle<()>)>,
}

impl IrqForwarders {
    /// Makes a write to `event` call `raise(intid)` and then `woken()` (which wakes the
    /// halted vCPUs: [`Cpus::interrupt_raised`], looked up when called, since devices are
    /// wired before the vCPUs, and so their table, exist). `raise` failing is logged and the
    /// forwarder goes on: a lost interrupt is recovered by the next one, a dead thread would
    /// lose them all.
    pub fn add(
        &mut self,
        event: &EventFd,
        intid: u32,
        raise: impl Fn(u32) -> Result<(), String> + Send + 'static,
        woken: impl Fn() + Send + 'static,
    ) -> std::io::Result<()> {
        let waiter = event.try_clone()?;
        let waker = event.try_clone()?;
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("msbvm-irq-{intid}"))
            .spawn(move || loop {
                let read = waiter.read();
                if stop.load(Ordering::Acquire) {
                    return;
                }
                match read {
                    Ok(_) => {
                        if let Err(e) = raise(intid) {
                            tracing::warn!("raising interrupt {intid}: {e}");
                        }
                        woken();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("interrupt {intid}'s event failed ({e}); no longer raised");
                        return;
                    }
                }
            })?;
        self.threads.push((waker, thread));
        Ok(())
    }
}

impl Drop for IrqForwarders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for (waker, thread) in self.threads.drain(..) {
            let _ = waker.write(1);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
