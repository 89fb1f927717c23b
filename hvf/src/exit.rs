//! Turning one Hypervisor.framework exit into what the VMM core must do.
//!
//! Hypervisor.framework stops a vCPU for every data abort, HVC, SMC, WFI and
//! trapped system register, where KVM would have finished most of them in the
//! kernel. [`ExitHandler::handle`] does that work over two small traits: the
//! framework calls it needs ([`VcpuOps`], implemented over `applevisor` on
//! macOS and by an in-memory fake in the tests) and the VMM's device bus
//! ([`Mmio`], the MMIO half of `msbvm_vmm::hypervisor::DeviceAccess` with the
//! same signatures). The result, [`Exit`], maps onto
//! `msbvm_vmm::hypervisor::VcpuExit` (see each variant) plus the three things
//! an arm64 guest asks of the VMM that x86 guests ask of KVM's in-kernel APIC
//! (halt, CPU off, start another vCPU).
//!
//! The virtual timer, when Hypervisor.framework's own GIC is not in use:
//! the framework exits with `VTIMER_ACTIVATED` and masks the timer; the VMM
//! raises the timer's PPI (27) in its GIC, and before each later run
//! ([`ExitHandler::before_run`]) checks CNTV_CTL_EL0: once the guest has
//! handled the interrupt (disabled the timer, masked it, or moved the compare
//! value so it no longer fires) the line is lowered and the timer unmasked,
//! which is how a level-triggered timer behaves on hardware.

use std::fmt;
use std::sync::Arc;

use crate::esr::{self, DataAbort, Exception, SysRegAccess};
use crate::gic::cpuif::IccReg;
use crate::gic::Gic;
use crate::mmio;
use crate::psci::{self, Action, PowerState};
use crate::regs::{cntv_ctl, Reg, SysReg};

/// The GIC interrupt id of the EL1 virtual timer (PPI 11), as the device
/// tree's timer node and Linux expect it.
pub const VTIMER_INTID: u32 = 27;

/// The framework calls exit handling needs, on the vCPU's own thread.
pub trait VcpuOps {
    /// The framework's error.
    type Error: fmt::Display;

    /// Reads a general or special register.
    fn reg(&self, reg: Reg) -> Result<u64, Self::Error>;
    /// Writes a general or special register.
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), Self::Error>;
    /// Reads a system register.
    fn sys_reg(&self, reg: SysReg) -> Result<u64, Self::Error>;
    /// Sets or clears the framework's virtual timer mask.
    fn set_vtimer_mask(&mut self, masked: bool) -> Result<(), Self::Error>;
    /// Raises or lowers the virtual timer's PPI ([`VTIMER_INTID`]) for this
    /// vCPU in the VMM's interrupt controller.
    fn set_vtimer_irq(&mut self, asserted: bool) -> Result<(), Self::Error>;
}

/// The VMM's MMIO bus, as in `msbvm_vmm::hypervisor::DeviceAccess`.
pub trait Mmio {
    /// What a device write may ask of the VMM beyond the access itself.
    type Event;
    /// An MMIO read: fill `data`.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    /// An MMIO write.
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<Self::Event>;
}

/// What the framework reported when `hv_vcpu_run` returned (`hv_vcpu_exit_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvExit {
    /// `HV_EXIT_REASON_CANCELED`: `hv_vcpus_exit` from another thread.
    Canceled,
    /// `HV_EXIT_REASON_EXCEPTION`, with the syndrome and fault addresses.
    Exception {
        /// ESR_EL2.
        syndrome: u64,
        /// The faulting virtual address (FAR_EL2).
        virtual_address: u64,
        /// The faulting intermediate physical address: the guest-physical MMIO address.
        physical_address: u64,
    },
    /// `HV_EXIT_REASON_VTIMER_ACTIVATED` (the framework has masked the timer).
    VtimerActivated,
    /// `HV_EXIT_REASON_UNKNOWN` or a value this code does not know.
    Unknown(u32),
}

/// How the VM stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// PSCI SYSTEM_OFF (`VmExit::PowerOff { code: 0 }`).
    PowerOff,
    /// PSCI SYSTEM_RESET (`VmExit::Reboot`).
    Reset,
    /// PSCI SYSTEM_RESET2 as a warm reset: the guest kernel panicked (`VmExit::Panic`).
    Panic,
}

/// What the VMM core does after one exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit<E> {
    /// Handled (a device access was answered, a timer raised): run again
    /// (`VcpuExit::Io`).
    Continue,
    /// A device write asked for something (`VcpuExit::Event`).
    Event(E),
    /// The run was cancelled from another thread (`VcpuExit::Interrupted`).
    Interrupted,
    /// WFI or PSCI CPU_SUSPEND: run again once an interrupt is pending for
    /// this vCPU, or once the guest's virtual counter reaches
    /// `vtimer_deadline` (the timer's compare value, when it is armed).
    Halt {
        /// CNTV_CVAL_EL0 if the virtual timer is enabled and unmasked.
        vtimer_deadline: Option<u64>,
    },
    /// PSCI CPU_OFF: this vCPU sleeps until a CPU_ON names it.
    CpuOff,
    /// PSCI CPU_ON succeeded: start vCPU `index` with
    /// [`crate::regs::cpu_on_entry`]`(entry, context)`.
    StartCpu {
        /// The vCPU to start.
        index: u8,
        /// Its entry point.
        entry: u64,
        /// Its x0.
        context: u64,
    },
    /// The guest stopped the VM (`VcpuExit::Stop`).
    Stop(Stop),
    /// The vCPU cannot continue (`VcpuExit::Fault` with
    /// `FaultKind::Unexpected(fault.to_string())`).
    Fault(Fault),
}

/// Why a vCPU cannot continue, in words for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// An exception class this VMM does not handle.
    #[error("unhandled guest exception class {ec:#04x} (ESR_EL2 {esr:#x}) at PC {pc:#x}")]
    UnhandledException {
        /// The class.
        ec: u8,
        /// The raw syndrome.
        esr: u64,
        /// The guest PC (0 if unreadable).
        pc: u64,
    },
    /// An MMIO access the hardware gave no syndrome for.
    #[error(
        "guest MMIO access at {ipa:#x} cannot be emulated (ESR_EL2 {esr:#x}: no instruction \
         syndrome, e.g. a load/store pair or writeback) at PC {pc:#x}"
    )]
    DataAbortWithoutSyndrome {
        /// The raw syndrome.
        esr: u64,
        /// The guest-physical address accessed.
        ipa: u64,
        /// The guest PC.
        pc: u64,
    },
    /// A trapped system register this VMM does not emulate.
    #[error(
        "guest {dir} of system register S{}_{}_C{}_C{}_{} is not emulated, at PC {pc:#x}",
        access.op0, access.op1, access.crn, access.crm, access.op2,
        dir = if access.read { "read" } else { "write" }
    )]
    UnhandledSysReg {
        /// The access.
        access: SysRegAccess,
        /// The guest PC.
        pc: u64,
    },
    /// An exit reason the framework is not documented to give.
    #[error("Hypervisor.framework returned exit reason {0}")]
    UnknownExitReason(u32),
    /// A framework call failed.
    #[error("Hypervisor.framework call failed while {what}: {message}")]
    Framework {
        /// What the handler was doing.
        what: &'static str,
        /// The framework's error.
        message: String,
    },
}

/// Per-vCPU exit handling state.
#[derive(Debug)]
pub struct ExitHandler {
    /// This vCPU's index (PSCI's caller).
    index: u8,
    /// Whether this handler raised the timer PPI and the framework's mask is set.
    vtimer_asserted: bool,
    /// The GIC in user space, when the framework has none (macOS 11 to 14): its MMIO frames
    /// and `ICC_*` registers are served here, and the timer PPI is raised in it.
    gic: Option<Arc<Gic>>,
}

/// Shorthand for a failed framework call as a [`Fault`].
fn fw<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Fault {
    move |e| Fault::Framework {
        what,
        message: e.to_string(),
    }
}

/// Reads Xn of an instruction encoding (31 is the zero register).
fn read_x<O: VcpuOps>(ops: &O, n: u8) -> Result<u64, Fault> {
    match Reg::x(n) {
        Some(r) => ops.reg(r).map_err(fw("reading a register")),
        None => Ok(0),
    }
}

/// Writes Xn of an instruction encoding (a write to 31 is discarded).
fn write_x<O: VcpuOps>(ops: &mut O, n: u8, value: u64) -> Result<(), Fault> {
    match Reg::x(n) {
        Some(r) => ops.set_reg(r, value).map_err(fw("writing a register")),
        None => Ok(()),
    }
}

/// Moves PC past the trapped instruction (every A64 instruction is 4 bytes).
fn advance_pc<O: VcpuOps>(ops: &mut O) -> Result<(), Fault> {
    let pc = ops.reg(Reg::Pc).map_err(fw("reading PC"))?;
    ops.set_reg(Reg::Pc, pc.wrapping_add(4))
        .map_err(fw("advancing PC"))
}

impl ExitHandler {
    /// The handler for vCPU `index`.
    pub fn new(index: u8) -> ExitHandler {
        ExitHandler {
            index,
            vtimer_asserted: false,
            gic: None,
        }
    }

    /// The handler for vCPU `index` of a VM whose GIC is `gic`, in user space.
    pub fn with_gic(index: u8, gic: Arc<Gic>) -> ExitHandler {
        ExitHandler {
            gic: Some(gic),
            ..ExitHandler::new(index)
        }
    }

    /// The GIC in user space, if this VM has one.
    pub fn gic(&self) -> Option<&Arc<Gic>> {
        self.gic.as_ref()
    }

    /// Raises or lowers the timer PPI: in the user-space GIC if there is one, else through
    /// the framework.
    fn vtimer_irq<O: VcpuOps>(&self, ops: &mut O, asserted: bool) -> Result<(), Fault> {
        match &self.gic {
            Some(gic) => {
                gic.set_ppi(usize::from(self.index), VTIMER_INTID, asserted);
                Ok(())
            }
            None => ops
                .set_vtimer_irq(asserted)
                .map_err(fw("setting the timer interrupt")),
        }
    }

    /// The vCPU this handler serves.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Called before every `hv_vcpu_run`: lowers the timer PPI and unmasks
    /// the timer once the guest no longer has it firing.
    pub fn before_run<O: VcpuOps>(&mut self, ops: &mut O) -> Result<(), Fault> {
        if !self.vtimer_asserted {
            return Ok(());
        }
        let ctl = ops
            .sys_reg(SysReg::CNTV_CTL_EL0)
            .map_err(fw("reading CNTV_CTL_EL0"))?;
        let firing = ctl & (cntv_ctl::ENABLE | cntv_ctl::IMASK | cntv_ctl::ISTATUS)
            == cntv_ctl::ENABLE | cntv_ctl::ISTATUS;
        if !firing {
            self.vtimer_irq(ops, false)?;
            ops.set_vtimer_mask(false)
                .map_err(fw("unmasking the virtual timer"))?;
            self.vtimer_asserted = false;
        }
        Ok(())
    }

    /// Handles one exit: emulates the access or call, updates registers and
    /// PC, and says what the core does next. `power` holds every vCPU's PSCI
    /// state (see [`psci::handle`] on locking).
    pub fn handle<O: VcpuOps, M: Mmio>(
        &mut self,
        ops: &mut O,
        io: &mut M,
        exit: HvExit,
        power: &[PowerState],
    ) -> Exit<M::Event> {
        self.try_handle(ops, io, exit, power)
            .unwrap_or_else(Exit::Fault)
    }

    fn try_handle<O: VcpuOps, M: Mmio>(
        &mut self,
        ops: &mut O,
        io: &mut M,
        exit: HvExit,
        power: &[PowerState],
    ) -> Result<Exit<M::Event>, Fault> {
        let (syndrome, ipa) = match exit {
            HvExit::Canceled => return Ok(Exit::Interrupted),
            HvExit::VtimerActivated => {
                self.vtimer_irq(ops, true)?;
                self.vtimer_asserted = true;
                return Ok(Exit::Continue);
            }
            HvExit::Unknown(reason) => return Err(Fault::UnknownExitReason(reason)),
            HvExit::Exception {
                syndrome,
                physical_address,
                ..
            } => (syndrome, physical_address),
        };
        // Only for error messages: a PC that cannot be read is reported as 0.
        let pc = |ops: &O| ops.reg(Reg::Pc).unwrap_or(0);
        match esr::decode(syndrome) {
            Exception::DataAbort(access) => {
                if let Some(gic) = &self.gic {
                    if let Some(frame) = GicFrame::at(ipa) {
                        let cpu = usize::from(self.index);
                        let mut gic_io = GicMmio { gic, frame, cpu };
                        mmio_access(ops, &mut gic_io, &access, ipa)?;
                        advance_pc(ops)?;
                        return Ok(Exit::Continue);
                    }
                }
                let event = mmio_access(ops, io, &access, ipa)?;
                advance_pc(ops)?;
                Ok(event.map_or(Exit::Continue, Exit::Event))
            }
            Exception::CacheMaintenance => {
                advance_pc(ops)?;
                Ok(Exit::Continue)
            }
            Exception::DataAbortNoSyndrome { esr } => Err(Fault::DataAbortWithoutSyndrome {
                esr,
                ipa,
                pc: pc(ops),
            }),
            // HVC returns to the next instruction by itself; a trapped SMC
            // returns to the SMC, so PC moves on explicitly.
            Exception::Hvc { imm } => self.smccc(ops, imm, power),
            Exception::Smc { imm } => {
                advance_pc(ops)?;
                self.smccc(ops, imm, power)
            }
            Exception::Wfx { wfe } => {
                advance_pc(ops)?;
                // No event register is modelled: WFE is a yield.
                if wfe {
                    Ok(Exit::Continue)
                } else {
                    self.halt(ops)
                }
            }
            Exception::SysReg(access) => {
                if let Some((gic, reg)) = self.icc(&access) {
                    let cpu = usize::from(self.index);
                    if access.read {
                        write_x(ops, access.rt, gic.icc_read(cpu, reg))?;
                    } else {
                        let value = read_x(ops, access.rt)?;
                        gic.icc_write(cpu, reg, value);
                    }
                    advance_pc(ops)?;
                    return Ok(Exit::Continue);
                }
                // Debug, trace and OS-lock registers (op0 = 2) read as zero and
                // ignore writes: the guest gets no hardware debug, which Linux
                // handles; anything else is not emulated and stops the vCPU.
                if access.op0 != 2 {
                    return Err(Fault::UnhandledSysReg {
                        access,
                        pc: pc(ops),
                    });
                }
                if access.read {
                    write_x(ops, access.rt, 0)?;
                }
                advance_pc(ops)?;
                Ok(Exit::Continue)
            }
            Exception::Unknown { ec, esr } => Err(Fault::UnhandledException {
                ec,
                esr,
                pc: pc(ops),
            }),
        }
    }

    /// The user-space GIC and the CPU interface register a trapped access names, when
    /// there is such a GIC and the access is to one of its registers.
    fn icc(&self, access: &SysRegAccess) -> Option<(&Arc<Gic>, IccReg)> {
        let gic = self.gic.as_ref()?;
        let reg = IccReg::decode(access.op0, access.op1, access.crn, access.crm, access.op2)?;
        Some((gic, reg))
    }

    /// An HVC or SMC: PSCI when the immediate is 0 (SMCCC), else "unknown function".
    fn smccc<O: VcpuOps, E>(
        &mut self,
        ops: &mut O,
        imm: u16,
        power: &[PowerState],
    ) -> Result<Exit<E>, Fault> {
        if imm != 0 {
            write_x(ops, 0, psci::ret::NOT_SUPPORTED as u64)?;
            return Ok(Exit::Continue);
        }
        let mut x = [0u64; 4];
        for (n, value) in x.iter_mut().enumerate() {
            *value = read_x(ops, n as u8)?;
        }
        let outcome = psci::handle(x, power);
        if let Some(x0) = outcome.x0 {
            write_x(ops, 0, x0)?;
        }
        match outcome.action {
            Action::None => Ok(Exit::Continue),
            Action::WaitForInterrupt => self.halt(ops),
            Action::CpuOff => Ok(Exit::CpuOff),
            Action::StartCpu {
                index,
                entry,
                context,
            } => Ok(Exit::StartCpu {
                index,
                entry,
                context,
            }),
            Action::SystemOff => Ok(Exit::Stop(Stop::PowerOff)),
            Action::SystemReset => Ok(Exit::Stop(Stop::Reset)),
            Action::SystemWarmReset => Ok(Exit::Stop(Stop::Panic)),
        }
    }

    /// A halt, with the timer deadline that ends it if no interrupt comes first.
    fn halt<O: VcpuOps, E>(&self, ops: &O) -> Result<Exit<E>, Fault> {
        let ctl = ops
            .sys_reg(SysReg::CNTV_CTL_EL0)
            .map_err(fw("reading CNTV_CTL_EL0"))?;
        let armed = ctl & (cntv_ctl::ENABLE | cntv_ctl::IMASK) == cntv_ctl::ENABLE;
        let vtimer_deadline = if armed {
            Some(
                ops.sys_reg(SysReg::CNTV_CVAL_EL0)
                    .map_err(fw("reading CNTV_CVAL_EL0"))?,
            )
        } else {
            None
        };
        Ok(Exit::Halt { vtimer_deadline })
    }
}

/// Performs a decoded load or store at `ipa` on the bus.
/// Which of the user-space GIC's MMIO windows an address falls in (the arm64 layout's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GicFrame {
    /// The distributor, at this offset.
    Dist(u64),
    /// The redistributor region, at this offset.
    Redist(u64),
}

impl GicFrame {
    fn at(ipa: u64) -> Option<GicFrame> {
        use msbvm_vmm::arch::aarch64::layout::{
            GIC_DIST_SIZE, GIC_DIST_START, GIC_REDIST_END, GIC_REDIST_START,
        };
        if (GIC_DIST_START..GIC_DIST_START + GIC_DIST_SIZE).contains(&ipa) {
            Some(GicFrame::Dist(ipa - GIC_DIST_START))
        } else if (GIC_REDIST_START..GIC_REDIST_END).contains(&ipa) {
            Some(GicFrame::Redist(ipa - GIC_REDIST_START))
        } else {
            None
        }
    }
}

/// The user-space GIC as the bus of one access (which [`GicFrame::at`] placed in `frame`).
struct GicMmio<'a> {
    gic: &'a Gic,
    frame: GicFrame,
    /// The vCPU making the access.
    cpu: usize,
}

impl Mmio for GicMmio<'_> {
    type Event = ();

    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        match self.frame {
            GicFrame::Dist(offset) => self.gic.dist_read(offset, data),
            GicFrame::Redist(offset) => self.gic.redist_read(offset, data),
        }
    }

    fn mmio_write(&mut self, _addr: u64, data: &[u8]) -> Option<()> {
        match self.frame {
            GicFrame::Dist(offset) => self.gic.dist_write(self.cpu, offset, data),
            GicFrame::Redist(offset) => self.gic.redist_write(self.cpu, offset, data),
        };
        None
    }
}

fn mmio_access<O: VcpuOps, M: Mmio>(
    ops: &mut O,
    io: &mut M,
    access: &DataAbort,
    ipa: u64,
) -> Result<Option<M::Event>, Fault> {
    if access.write {
        let value = read_x(ops, access.reg)?;
        let (bytes, n) = mmio::store_bytes(access, value);
        Ok(io.mmio_write(ipa, &bytes[..n]))
    } else {
        let mut bytes = [0u8; 8];
        let n = usize::from(access.size).min(8);
        io.mmio_read(ipa, &mut bytes[..n]);
        write_x(ops, access.reg, mmio::load_value(access, &bytes[..n]))?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esr::tests::dabt;
    use crate::fake::{FakeBus, FakeVcpu};
    use crate::psci::fid;
    use crate::regs::mpidr_for;
    use PowerState::{Off, On};

    fn exception(syndrome: u64, ipa: u64) -> HvExit {
        HvExit::Exception {
            syndrome,
            virtual_address: 0xffff_0000_0000_0000 | ipa,
            physical_address: ipa,
        }
    }

    const HVC0: u64 = 0x5a00_0000;
    const SMC0: u64 = 0x5e00_0000;
    const WFI: u64 = 0x0600_0000 | (1 << 25);

    #[test]
    fn mmio_read_lands_in_the_register_and_advances_pc() {
        let mut vcpu = FakeVcpu::at(0x4000_1000);
        vcpu.set(Reg::X(5), 0xdead_beef_dead_beef);
        let mut bus = FakeBus::with_read(0x0900_0000, &[0x78, 0x56, 0x34, 0x12]);
        let mut h = ExitHandler::new(0);
        // ldr w5, [x?]: 4 bytes, W register.
        let exit = h.handle(
            &mut vcpu,
            &mut bus,
            exception(dabt(2, false, 5, false, false), 0x0900_0000),
            &[On],
        );
        assert_eq!(exit, Exit::Continue);
        assert_eq!(vcpu.get(Reg::X(5)), 0x1234_5678);
        assert_eq!(vcpu.get(Reg::Pc), 0x4000_1004);
        assert_eq!(bus.reads, vec![(0x0900_0000, 4)]);
    }

    #[test]
    fn sign_extending_mmio_read_fills_the_x_register() {
        let mut vcpu = FakeVcpu::at(0x1000);
        let mut bus = FakeBus::with_read(0x100, &[0xfe]);
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut bus,
            exception(dabt(0, true, 2, true, false), 0x100),
            &[On],
        );
        assert_eq!(exit, Exit::Continue);
        assert_eq!(vcpu.get(Reg::X(2)), u64::MAX - 1);
    }

    #[test]
    fn mmio_store_writes_the_register_bytes_and_passes_the_event_on() {
        let mut vcpu = FakeVcpu::at(0x2000);
        vcpu.set(Reg::X(7), 0x1122_3344_5566_7788);
        let mut bus = FakeBus::default();
        bus.event_on_write = Some(9);
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut bus,
            exception(dabt(1, false, 7, false, true), 0x0a00_0050),
            &[On],
        );
        assert_eq!(exit, Exit::Event(9));
        assert_eq!(bus.writes, vec![(0x0a00_0050, vec![0x88, 0x77])]);
        assert_eq!(vcpu.get(Reg::Pc), 0x2004);
    }

    #[test]
    fn a_64_bit_mmio_read_fills_the_whole_register() {
        let mut vcpu = FakeVcpu::at(0x1000);
        let mut bus = FakeBus::with_read(0x200, &0x0123_4567_89ab_cdefu64.to_le_bytes());
        ExitHandler::new(0).handle(
            &mut vcpu,
            &mut bus,
            exception(dabt(3, false, 30, true, false), 0x200),
            &[On],
        );
        assert_eq!(vcpu.get(Reg::X(30)), 0x0123_4567_89ab_cdef);
    }

    #[test]
    fn cache_maintenance_on_mmio_is_skipped_without_a_bus_access() {
        let mut vcpu = FakeVcpu::at(0x1000);
        let mut bus = FakeBus::default();
        let dc = (dabt(0, false, 0, false, true) & !(1 << 24)) | (1 << 8);
        let exit = ExitHandler::new(0).handle(&mut vcpu, &mut bus, exception(dc, 0x300), &[On]);
        assert_eq!(exit, Exit::Continue);
        assert!(bus.writes.is_empty() && bus.reads.is_empty());
        assert_eq!(vcpu.get(Reg::Pc), 0x1004);
    }

    #[test]
    fn register_31_stores_zero_and_discards_loads() {
        let mut vcpu = FakeVcpu::at(0);
        let mut bus = FakeBus::with_read(0x10, &[0xff; 8]);
        let mut h = ExitHandler::new(0);
        h.handle(
            &mut vcpu,
            &mut bus,
            exception(dabt(3, false, 31, true, true), 0x10),
            &[On],
        );
        assert_eq!(bus.writes, vec![(0x10, vec![0; 8])]);
        h.handle(
            &mut vcpu,
            &mut bus,
            exception(dabt(3, false, 31, true, false), 0x10),
            &[On],
        );
        assert!(vcpu.writes_to_x().is_empty(), "{:?}", vcpu.writes_to_x());
        assert_eq!(vcpu.get(Reg::Pc), 8);
    }

    #[test]
    fn psci_system_off_over_hvc_powers_off_without_moving_pc() {
        let mut vcpu = FakeVcpu::at(0x5000);
        vcpu.set(Reg::X(0), u64::from(fid::SYSTEM_OFF));
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception(HVC0, 0),
            &[On],
        );
        assert_eq!(exit, Exit::Stop(Stop::PowerOff));
        assert_eq!(vcpu.get(Reg::Pc), 0x5000);
    }

    #[test]
    fn psci_over_smc_moves_pc_past_the_smc() {
        let mut vcpu = FakeVcpu::at(0x5000);
        vcpu.set(Reg::X(0), u64::from(fid::PSCI_VERSION));
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception(SMC0, 0),
            &[On],
        );
        assert_eq!(exit, Exit::Continue);
        assert_eq!(vcpu.get(Reg::X(0)), 0x1_0000);
        assert_eq!(vcpu.get(Reg::Pc), 0x5004);
    }

    #[test]
    fn cpu_on_starts_another_vcpu_and_returns_success() {
        let mut vcpu = FakeVcpu::at(0x5000);
        vcpu.set(Reg::X(0), u64::from(fid::CPU_ON | fid::SMC64));
        vcpu.set(Reg::X(1), mpidr_for(1));
        vcpu.set(Reg::X(2), 0x4020_1000);
        vcpu.set(Reg::X(3), 0x42);
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception(HVC0, 0),
            &[On, Off],
        );
        assert_eq!(
            exit,
            Exit::StartCpu {
                index: 1,
                entry: 0x4020_1000,
                context: 0x42
            }
        );
        assert_eq!(vcpu.get(Reg::X(0)), 0);
    }

    #[test]
    fn hvc_with_an_immediate_is_an_unknown_function() {
        let mut vcpu = FakeVcpu::at(0);
        vcpu.set(Reg::X(0), u64::from(fid::SYSTEM_OFF));
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception(HVC0 | 1, 0),
            &[On],
        );
        assert_eq!(exit, Exit::Continue);
        assert_eq!(vcpu.get(Reg::X(0)), u64::MAX);
    }

    #[test]
    fn wfi_halts_until_the_armed_timer_and_moves_pc() {
        let mut vcpu = FakeVcpu::at(0x100);
        let mut h = ExitHandler::new(0);
        let exit = h.handle(&mut vcpu, &mut FakeBus::default(), exception(WFI, 0), &[On]);
        assert_eq!(
            exit,
            Exit::Halt {
                vtimer_deadline: None
            }
        );
        assert_eq!(vcpu.get(Reg::Pc), 0x104);
        vcpu.set_sys(SysReg::CNTV_CTL_EL0, cntv_ctl::ENABLE);
        vcpu.set_sys(SysReg::CNTV_CVAL_EL0, 123_456);
        let exit = h.handle(&mut vcpu, &mut FakeBus::default(), exception(WFI, 0), &[On]);
        assert_eq!(
            exit,
            Exit::Halt {
                vtimer_deadline: Some(123_456)
            }
        );
        // A masked timer does not end the halt.
        vcpu.set_sys(SysReg::CNTV_CTL_EL0, cntv_ctl::ENABLE | cntv_ctl::IMASK);
        let exit = h.handle(&mut vcpu, &mut FakeBus::default(), exception(WFI, 0), &[On]);
        assert_eq!(
            exit,
            Exit::Halt {
                vtimer_deadline: None
            }
        );
    }

    /// A vtimer exit of a firing timer, which the framework masked when it reported it.
    fn timer_fires(h: &mut ExitHandler, vcpu: &mut FakeVcpu) -> Exit<u32> {
        vcpu.vtimer_masked = true;
        vcpu.set_sys(SysReg::CNTV_CTL_EL0, cntv_ctl::ENABLE | cntv_ctl::ISTATUS);
        h.handle(
            vcpu,
            &mut FakeBus::default(),
            HvExit::VtimerActivated,
            &[On],
        )
    }

    #[test]
    fn vtimer_is_raised_then_unmasked_once_the_guest_handles_it() {
        let mut vcpu = FakeVcpu::at(0);
        let mut h = ExitHandler::new(0);
        let exit = timer_fires(&mut h, &mut vcpu);
        assert_eq!(exit, Exit::Continue);
        assert!(vcpu.vtimer_irq);
        // Still firing: stays raised and masked.
        h.before_run(&mut vcpu).unwrap();
        assert!(vcpu.vtimer_irq && vcpu.vtimer_masked);
        // The guest's handler masks the timer: lowered and unmasked.
        vcpu.set_sys(
            SysReg::CNTV_CTL_EL0,
            cntv_ctl::ENABLE | cntv_ctl::IMASK | cntv_ctl::ISTATUS,
        );
        h.before_run(&mut vcpu).unwrap();
        assert!(!vcpu.vtimer_irq && !vcpu.vtimer_masked);
    }

    #[test]
    fn debug_registers_read_as_zero_and_ignore_writes() {
        let mut vcpu = FakeVcpu::at(0x300);
        vcpu.set(Reg::X(4), 99);
        // MRS x4, OSLSR_EL1.
        let iss = (2 << 20) | (4 << 17) | (1 << 10) | (1 << 1) | (4 << 5) | 1;
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception((0x18 << 26) | iss, 0),
            &[On],
        );
        assert_eq!(exit, Exit::Continue);
        assert_eq!(vcpu.get(Reg::X(4)), 0);
        assert_eq!(vcpu.get(Reg::Pc), 0x304);
    }

    #[test]
    fn other_system_registers_fault_with_their_name() {
        let mut vcpu = FakeVcpu::at(0x300);
        // MSR ICC_SGI1R_EL1 (S3_0_C12_C11_5), x1.
        let iss = (3 << 20) | (5 << 17) | (12 << 10) | (1 << 5) | (11 << 1);
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception((0x18 << 26) | iss, 0),
            &[On],
        );
        let Exit::Fault(fault) = exit else {
            panic!("{exit:?}")
        };
        let text = fault.to_string();
        assert!(
            text.contains("write of system register S3_0_C12_C11_5"),
            "{text}"
        );
        assert!(text.contains("0x300"), "{text}");
        assert_eq!(vcpu.get(Reg::Pc), 0x300);
    }

    /// MRS (`read`) or MSR of the ICC register (CRn, CRm, op2) with Xrt.
    fn icc_trap(crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> HvExit {
        let iss = (3 << 20) | (op2 << 17) | (crn << 10) | (rt << 5) | (crm << 1) | u64::from(read);
        exception((0x18 << 26) | iss, 0)
    }

    #[test]
    fn a_user_space_gic_serves_its_frames_and_the_cpu_interface() {
        use msbvm_vmm::arch::aarch64::layout::{GIC_DIST_START, GIC_REDIST_START};
        let gic = Arc::new(Gic::new(1, 32));
        let mut h = ExitHandler::with_gic(0, gic.clone());
        let mut vcpu = FakeVcpu::at(0x1000);
        let bus = std::cell::RefCell::new(FakeBus::default());
        let mut run =
            |vcpu: &mut FakeVcpu, exit| h.handle(vcpu, &mut *bus.borrow_mut(), exit, &[On]);
        // str w1, [GICD_CTLR]: EnableGrp1.
        vcpu.set(Reg::X(1), 0x2);
        let store = |ipa| exception(dabt(2, false, 1, false, true), ipa);
        assert_eq!(run(&mut vcpu, store(GIC_DIST_START)), Exit::Continue);
        // GICD_ISENABLER1 bit 1 (SPI 33), GICD_ICFGR2 edge for it, GICD_IGROUPR1 all.
        vcpu.set(Reg::X(1), 0x2);
        run(&mut vcpu, store(GIC_DIST_START + 0x104));
        vcpu.set(Reg::X(1), 0x8);
        run(&mut vcpu, store(GIC_DIST_START + 0xc08));
        vcpu.set(Reg::X(1), 0xffff_ffff);
        run(&mut vcpu, store(GIC_DIST_START + 0x084));
        // str w1, [GICR_WAKER]: awake.
        vcpu.set(Reg::X(1), 0);
        run(&mut vcpu, store(GIC_REDIST_START + 0x14));
        // msr ICC_PMR_EL1, x2; msr ICC_IGRPEN1_EL1, x2.
        vcpu.set(Reg::X(2), 0xf0);
        assert_eq!(run(&mut vcpu, icc_trap(4, 6, 0, 2, false)), Exit::Continue);
        vcpu.set(Reg::X(2), 1);
        run(&mut vcpu, icc_trap(12, 12, 7, 2, false));
        assert!(
            bus.borrow().writes.is_empty(),
            "nothing reached the device bus"
        );
        assert_eq!(
            vcpu.get(Reg::Pc),
            0x1000 + 4 * 7,
            "seven instructions emulated"
        );

        gic.set_spi(1, true);
        assert!(gic.irq_line(0));
        // ldr w3, [GICD_CTLR]; mrs x5, ICC_IAR1_EL1.
        run(
            &mut vcpu,
            exception(dabt(2, false, 3, false, false), GIC_DIST_START),
        );
        assert_eq!(vcpu.get(Reg::X(3)), 0x52, "ARE, DS and EnableGrp1");
        run(&mut vcpu, icc_trap(12, 12, 0, 5, true));
        assert_eq!(vcpu.get(Reg::X(5)), 33);
        assert!(!gic.irq_line(0));
        // msr ICC_EOIR1_EL1, x5.
        run(&mut vcpu, icc_trap(12, 12, 1, 5, false));
        assert!(!gic.lock().irq(0, 33).unwrap().active);
        assert!(bus.borrow().reads.is_empty());
    }

    #[test]
    fn with_a_user_space_gic_the_timer_raises_its_ppi_there() {
        let gic = Arc::new(Gic::new(1, 32));
        let mut h = ExitHandler::with_gic(0, gic.clone());
        let mut vcpu = FakeVcpu::at(0x100);
        assert_eq!(timer_fires(&mut h, &mut vcpu), Exit::Continue);
        assert!(gic.lock().irq(0, VTIMER_INTID).unwrap().level);
        assert!(!vcpu.vtimer_irq, "not through the framework");
        vcpu.set_sys(SysReg::CNTV_CTL_EL0, cntv_ctl::ENABLE | cntv_ctl::IMASK);
        h.before_run(&mut vcpu).unwrap();
        assert!(!gic.lock().irq(0, VTIMER_INTID).unwrap().level);
        assert!(!vcpu.vtimer_masked);
    }

    #[test]
    fn unknown_exceptions_and_reasons_fault_never_panic() {
        let mut vcpu = FakeVcpu::at(0x700);
        let brk = (0x3c << 26) | (1 << 25);
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception(brk, 0),
            &[On],
        );
        assert_eq!(
            exit,
            Exit::Fault(Fault::UnhandledException {
                ec: 0x3c,
                esr: brk,
                pc: 0x700
            })
        );
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            HvExit::Unknown(3),
            &[On],
        );
        assert_eq!(exit, Exit::Fault(Fault::UnknownExitReason(3)));
        let no_isv = dabt(2, false, 1, false, false) & !(1 << 24);
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::default(),
            exception(no_isv, 0x0900_0000),
            &[On],
        );
        let Exit::Fault(fault) = exit else {
            panic!("{exit:?}")
        };
        assert!(fault.to_string().contains("0x9000000"), "{fault}");
    }

    #[test]
    fn a_failing_framework_call_is_a_fault() {
        let mut vcpu = FakeVcpu::at(0);
        vcpu.fail = true;
        let exit = ExitHandler::new(0).handle(
            &mut vcpu,
            &mut FakeBus::with_read(0, &[1]),
            exception(dabt(0, false, 1, false, false), 0),
            &[On],
        );
        assert!(
            matches!(exit, Exit::Fault(Fault::Framework { .. })),
            "{exit:?}"
        );
    }

    #[test]
    fn canceled_runs_are_interruptions() {
        let exit = ExitHandler::new(0).handle(
            &mut FakeVcpu::at(0),
            &mut FakeBus::default(),
            HvExit::Canceled,
            &[On],
        );
        assert_eq!(exit, Exit::Interrupted);
    }

    proptest::proptest! {
        #[test]
        fn no_exception_panics(syndrome in proptest::prelude::any::<u64>(),
                               ipa in proptest::prelude::any::<u64>(),
                               x0 in proptest::prelude::any::<u64>()) {
            let mut vcpu = FakeVcpu::at(0x1000);
            vcpu.set(Reg::X(0), x0);
            let mut bus = FakeBus::with_read(ipa, &[0xaa; 8]);
            let _ = ExitHandler::new(0).handle(&mut vcpu, &mut bus, exception(syndrome, ipa), &[On, Off]);
        }
    }
}
