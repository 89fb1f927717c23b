//! The thin layer over the `applevisor` crate (Hypervisor.framework): the
//! VM with the framework's GICv3, guest memory, vCPUs, and
//! [`VcpuOps`] over them. Everything that is not a framework call lives in the
//! platform-neutral modules.
//!
//! NOT COMPILED: this project builds on Linux only, where no Darwin standard
//! library or SDK exists; `scripts/check-macos` type-checks it where the
//! `aarch64-apple-darwin` target is installed. Written against applevisor
//! 1.0's documented API.
//!
//! The GIC comes from `hv_gic_create`, which exists from macOS 15: built with
//! applevisor's `macos-15-0` feature the binary links that symbol strongly and
//! does not start on macOS 11-14. Those versions would need a userspace
//! GICv3 (distributor and redistributor MMIO, ICC system register traps, the
//! vtimer PPI through [`VcpuOps::set_vtimer_irq`]), which does not exist yet.
//! With the framework's GIC the virtual timer is wired to it directly, so
//! `VTIMER_ACTIVATED` exits are not expected.

use applevisor::prelude as hv;

use crate::exit::Exit;
use crate::exit::{ExitHandler, Fault, HvExit, Mmio, VcpuOps};
use crate::psci::PowerState;
use crate::regs::{self, EntryState, Reg, SysReg};

// The neutral register numbers must be the framework's.
const _: () = {
    assert!(hv::Reg::X0 as u32 == 0);
    assert!(hv::Reg::X30 as u32 == 30);
    assert!(hv::Reg::PC as u32 == regs::HV_REG_PC);
    assert!(hv::Reg::FPCR as u32 == regs::HV_REG_PC + 1);
    assert!(hv::Reg::FPSR as u32 == regs::HV_REG_PC + 2);
    assert!(hv::Reg::CPSR as u32 == regs::HV_REG_CPSR);
    let mut i = 0;
    while i < SYS_REGS.len() {
        assert!(SYS_REGS[i].0 as u32 == SYS_REGS[i].1.raw() as u32);
        i += 1;
    }
};

/// The system registers this layer can name, with their neutral twins.
const SYS_REGS: [(hv::SysReg, SysReg); 6] = [
    (hv::SysReg::SCTLR_EL1, SysReg::SCTLR_EL1),
    (hv::SysReg::MPIDR_EL1, SysReg::MPIDR_EL1),
    (hv::SysReg::CNTV_CTL_EL0, SysReg::CNTV_CTL_EL0),
    (hv::SysReg::CNTV_CVAL_EL0, SysReg::CNTV_CVAL_EL0),
    (hv::SysReg::SP_EL1, SysReg::SP_EL1),
    (hv::SysReg::VBAR_EL1, SysReg::VBAR_EL1),
];

/// X0..X30 in the framework's enum.
const X_REGS: [hv::Reg; 31] = [
    hv::Reg::X0,
    hv::Reg::X1,
    hv::Reg::X2,
    hv::Reg::X3,
    hv::Reg::X4,
    hv::Reg::X5,
    hv::Reg::X6,
    hv::Reg::X7,
    hv::Reg::X8,
    hv::Reg::X9,
    hv::Reg::X10,
    hv::Reg::X11,
    hv::Reg::X12,
    hv::Reg::X13,
    hv::Reg::X14,
    hv::Reg::X15,
    hv::Reg::X16,
    hv::Reg::X17,
    hv::Reg::X18,
    hv::Reg::X19,
    hv::Reg::X20,
    hv::Reg::X21,
    hv::Reg::X22,
    hv::Reg::X23,
    hv::Reg::X24,
    hv::Reg::X25,
    hv::Reg::X26,
    hv::Reg::X27,
    hv::Reg::X28,
    hv::Reg::X29,
    hv::Reg::X30,
];

/// Failures of the framework layer, naming the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `hv_vm_create` failed.
    #[error(
        "Hypervisor.framework cannot create a VM ({0}): msbvm needs an Apple Silicon Mac and the \
         com.apple.security.hypervisor entitlement (sign the binary with scripts/macos-sign)"
    )]
    CreateVm(hv::HypervisorError),
    /// Another framework call failed.
    #[error("Hypervisor.framework {what} failed: {source}")]
    Call {
        /// The call.
        what: &'static str,
        /// The framework's error.
        source: hv::HypervisorError,
    },
    /// A system register the neutral code named is not in this layer's table.
    #[error("system register {0:#06x} is not mapped to Hypervisor.framework")]
    UnmappedSysReg(u16),
    /// A vtimer exit arrived although the framework's GIC should take the timer.
    #[error("the virtual timer fired into user space, which has no GIC emulation")]
    NoUserspaceGic,
}

fn call(what: &'static str) -> impl FnOnce(hv::HypervisorError) -> Error {
    move |source| Error::Call { what, source }
}

/// Where the framework's GIC sits in the guest-physical map (the device
/// tree's `interrupt-controller` node must say the same).
#[derive(Clone, Copy, Debug)]
pub struct GicLayout {
    /// GICD base.
    pub distributor: u64,
    /// Base of the redistributor region (one frame pair per vCPU).
    pub redistributors: u64,
}

/// The sizes the device tree needs: (distributor, whole redistributor region).
pub fn gic_sizes() -> Result<(usize, usize), Error> {
    Ok((
        hv::GicConfig::get_distributor_size().map_err(call("hv_gic_get_distributor_size"))?,
        hv::GicConfig::get_redistributor_region_size()
            .map_err(call("hv_gic_get_redistributor_region_size"))?,
    ))
}

/// The process's VM (the framework allows one per process) with its GIC.
pub struct HvfVm {
    vm: hv::VirtualMachineInstance<hv::GicEnabled>,
}

impl HvfVm {
    /// Creates the VM and its GICv3 at `gic`.
    pub fn new(gic: GicLayout) -> Result<HvfVm, Error> {
        let mut config = hv::GicConfig::new();
        config
            .set_distributor_base(gic.distributor)
            .map_err(call("hv_gic_config_set_distributor_base"))?;
        config
            .set_redistributor_base(gic.redistributors)
            .map_err(call("hv_gic_config_set_redistributor_base"))?;
        let vm = hv::VirtualMachine::with_gic(hv::VirtualMachineConfig::new(), config)
            .map_err(Error::CreateVm)?;
        Ok(HvfVm { vm })
    }

    /// Allocates `size` bytes of guest RAM and maps it at `guest_addr`
    /// (read, write, execute). The VMM reads and writes it through
    /// [`hv::Memory::host_addr`] and keeps the value alive as long as the VM.
    pub fn create_memory(&self, guest_addr: u64, size: usize) -> Result<hv::Memory, Error> {
        let mut memory = self
            .vm
            .memory_create(size)
            .map_err(call("hv_vm_allocate"))?;
        memory
            .map(guest_addr, hv::MemPerms::RWX)
            .map_err(call("hv_vm_map"))?;
        Ok(memory)
    }

    /// Sets the level of shared peripheral interrupt `intid` (32 and up).
    pub fn set_spi(&self, intid: u32, level: bool) -> Result<(), Error> {
        self.vm
            .gic_set_spi(intid, level)
            .map_err(call("hv_gic_set_spi"))
    }

    /// Makes the given vCPUs' `hv_vcpu_run` return with a cancelled exit.
    pub fn kick(&self, vcpus: &[hv::VcpuHandle]) -> Result<(), Error> {
        self.vm.vcpus_exit(vcpus).map_err(call("hv_vcpus_exit"))
    }

    /// Creates vCPU `index` on the calling thread, which is the only thread
    /// that may use it, with its MPIDR from [`regs::mpidr_for`].
    pub fn create_vcpu(&self, index: u8) -> Result<HvfVcpu, Error> {
        let vcpu = self.vm.vcpu_create().map_err(call("hv_vcpu_create"))?;
        let vcpu = HvfVcpu {
            vcpu,
            handler: ExitHandler::new(index),
        };
        vcpu.vcpu
            .set_sys_reg(hv::SysReg::MPIDR_EL1, regs::mpidr_for(index))
            .map_err(call("hv_vcpu_set_sys_reg(MPIDR_EL1)"))?;
        Ok(vcpu)
    }
}

/// One vCPU, bound to the thread that created it.
pub struct HvfVcpu {
    vcpu: hv::Vcpu,
    handler: ExitHandler,
}

impl HvfVcpu {
    /// A handle other threads use to kick this vCPU ([`HvfVm::kick`]).
    pub fn kick_handle(&self) -> hv::VcpuHandle {
        self.vcpu.get_handle()
    }

    /// Sets the registers it starts with ([`regs::linux_entry`], [`regs::cpu_on_entry`]).
    pub fn set_entry(&mut self, state: &EntryState) -> Result<(), Error> {
        for &(reg, value) in &state.regs {
            self.set_reg(reg, value)?;
        }
        for &(reg, value) in &state.sys_regs {
            self.vcpu
                .set_sys_reg(hv_sys_reg(reg)?, value)
                .map_err(call("hv_vcpu_set_sys_reg"))?;
        }
        Ok(())
    }

    /// Runs the guest until one exit and handles it (see [`ExitHandler::handle`]).
    pub fn run<M: Mmio>(&mut self, io: &mut M, power: &[PowerState]) -> Exit<M::Event> {
        let mut handler = std::mem::replace(&mut self.handler, ExitHandler::new(0));
        let exit = match handler.before_run(self) {
            Err(fault) => Exit::Fault(fault),
            Ok(()) => match self.run_once() {
                Ok(exit) => handler.handle(self, io, exit, power),
                Err(e) => Exit::Fault(Fault::Framework {
                    what: "running the vCPU",
                    message: e.to_string(),
                }),
            },
        };
        self.handler = handler;
        exit
    }

    fn run_once(&mut self) -> Result<HvExit, Error> {
        self.vcpu.run().map_err(call("hv_vcpu_run"))?;
        let info = self.vcpu.get_exit_info();
        Ok(match info.reason {
            hv::ExitReason::CANCELED => HvExit::Canceled,
            hv::ExitReason::EXCEPTION => HvExit::Exception {
                syndrome: info.exception.syndrome,
                virtual_address: info.exception.virtual_address,
                physical_address: info.exception.physical_address,
            },
            hv::ExitReason::VTIMER_ACTIVATED => HvExit::VtimerActivated,
            hv::ExitReason::UNKNOWN => HvExit::Unknown(hv::ExitReason::UNKNOWN as u32),
        })
    }
}

fn hv_reg(reg: Reg) -> hv::Reg {
    match reg {
        Reg::X(n) => X_REGS[usize::from(n.min(30))],
        Reg::Pc => hv::Reg::PC,
        Reg::Fpcr => hv::Reg::FPCR,
        Reg::Fpsr => hv::Reg::FPSR,
        Reg::Cpsr => hv::Reg::CPSR,
    }
}

fn hv_sys_reg(reg: SysReg) -> Result<hv::SysReg, Error> {
    SYS_REGS
        .iter()
        .find(|(_, neutral)| *neutral == reg)
        .map(|(hv_reg, _)| *hv_reg)
        .ok_or(Error::UnmappedSysReg(reg.raw()))
}

impl VcpuOps for HvfVcpu {
    type Error = Error;

    fn reg(&self, reg: Reg) -> Result<u64, Error> {
        self.vcpu
            .get_reg(hv_reg(reg))
            .map_err(call("hv_vcpu_get_reg"))
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), Error> {
        self.vcpu
            .set_reg(hv_reg(reg), value)
            .map_err(call("hv_vcpu_set_reg"))
    }

    fn sys_reg(&self, reg: SysReg) -> Result<u64, Error> {
        self.vcpu
            .get_sys_reg(hv_sys_reg(reg)?)
            .map_err(call("hv_vcpu_get_sys_reg"))
    }

    fn set_vtimer_mask(&mut self, masked: bool) -> Result<(), Error> {
        self.vcpu
            .set_vtimer_mask(masked)
            .map_err(call("hv_vcpu_set_vtimer_mask"))
    }

    fn set_vtimer_irq(&mut self, _asserted: bool) -> Result<(), Error> {
        Err(Error::NoUserspaceGic)
    }
}
