//! A KVM vCPU on arm64: `KVM_ARM_VCPU_INIT` with PSCI 0.2, the entry
//! registers, and `KVM_RUN` with KVM's exits translated into the
//! hypervisor-neutral [`VcpuExit`].

use kvm_bindings::{
    KVM_MP_STATE_STOPPED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd, VmFd};

use super::setup::{self, REG_PC, REG_PSTATE, REG_SP_EL1};
use super::{failed, SnapshotUnsupported};
use crate::arch::{EntryMode, FaultRegs, VcpuRegisters};
use crate::exit::{FaultKind, VmExit};
use crate::hypervisor::{self, DeviceAccess, RunState, Vcpu, VcpuExit};

/// A vCPU of an arm64 [`super::KvmVm`].
pub struct KvmVcpu {
    fd: VcpuFd,
}

impl KvmVcpu {
    /// Creates and initialises vCPU `index`; all but the first start powered
    /// off, waiting for the guest's PSCI CPU_ON.
    pub(super) fn new(vm: &VmFd, index: u8) -> Result<Self, hypervisor::Error> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(failed("KVM_CREATE_VCPU"))?;
        setup::init_vcpu(vm, &fd, u64::from(index)).map_err(failed("KVM_ARM_VCPU_INIT"))?;
        Ok(KvmVcpu { fd })
    }
}

/// Translates one KVM exit, answering device accesses through `io`.
fn translate<A: DeviceAccess>(exit: KvmExit<'_>, io: &mut A) -> VcpuExit<A::Event> {
    match exit {
        KvmExit::MmioWrite(addr, data) => io
            .mmio_write(addr, data)
            .map_or(VcpuExit::Io, VcpuExit::Event),
        KvmExit::MmioRead(addr, data) => {
            io.mmio_read(addr, data);
            VcpuExit::Io
        }
        // PSCI SYSTEM_OFF, SYSTEM_RESET and SYSTEM_RESET2, answered by KVM.
        KvmExit::SystemEvent(kind, data) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::Stop(VmExit::PowerOff { code: 0 }),
            KVM_SYSTEM_EVENT_RESET => VcpuExit::Stop(reset_exit(data)),
            KVM_SYSTEM_EVENT_CRASH => VcpuExit::Stop(VmExit::Panic),
            other => VcpuExit::Fault(FaultKind::Unexpected(format!(
                "KVM_EXIT_SYSTEM_EVENT of type {other}"
            ))),
        },
        KvmExit::Intr => VcpuExit::Interrupted,
        KvmExit::FailEntry(reason, _) => VcpuExit::Fault(FaultKind::FailEntry { reason }),
        KvmExit::InternalError => VcpuExit::Fault(FaultKind::InternalError {
            suberror: 0,
            data: Vec::new(),
        }),
        other => VcpuExit::Fault(FaultKind::Unexpected(format!("{other:?}"))),
    }
}

/// What a reset means. The default command line's `reboot=panic_w` makes a
/// panicking kernel restart warm, which Linux asks of PSCI as SYSTEM_RESET2
/// (KVM flags that in the exit's data); every other restart is a cold
/// SYSTEM_RESET. So the former is the guest's panic, the latter a reboot.
fn reset_exit(data: &[u64]) -> VmExit {
    let reset2 = u64::from(KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2);
    if data.first().is_some_and(|flags| flags & reset2 != 0) {
        VmExit::Panic
    } else {
        VmExit::Reboot
    }
}

impl Vcpu for KvmVcpu {
    fn set_entry(&mut self, entry: EntryMode) -> Result<(), hypervisor::Error> {
        setup::set_entry_registers(&self.fd, &entry).map_err(failed("KVM_SET_ONE_REG"))
    }

    fn run<A: DeviceAccess>(&mut self, io: &mut A) -> VcpuExit<A::Event> {
        match self.fd.run() {
            Ok(exit) => translate(exit, io),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                VcpuExit::Interrupted
            }
            // A data abort KVM cannot decode (no valid syndrome: a load or
            // store with writeback to device memory) ends KVM_RUN with ENOSYS.
            Err(e) if e.errno() == libc::ENOSYS => VcpuExit::Fault(FaultKind::Host(
                "KVM_RUN failed with ENOSYS: the guest accessed device memory with an \
                 instruction KVM cannot emulate (no valid syndrome)"
                    .into(),
            )),
            Err(e) => VcpuExit::Fault(FaultKind::Host(format!("KVM_RUN failed: {e}"))),
        }
    }

    fn run_state(&self) -> Result<RunState, hypervisor::Error> {
        let state = self.fd.get_mp_state().map_err(failed("KVM_GET_MP_STATE"))?;
        // Halts (WFI) are handled inside KVM and never seen here; a stopped
        // vCPU waits for another one's PSCI CPU_ON.
        Ok(match state.mp_state {
            KVM_MP_STATE_STOPPED => RunState::WaitingForStartup,
            _ => RunState::Runnable,
        })
    }

    fn registers(&self) -> Result<VcpuRegisters, hypervisor::Error> {
        let get = |id| setup::get_reg(&self.fd, id).map_err(failed("KVM_GET_ONE_REG"));
        Ok(VcpuRegisters {
            regs: FaultRegs {
                pc: get(REG_PC)?,
                sp: get(REG_SP_EL1)?,
                pstate: get(REG_PSTATE)?,
            },
        })
    }

    fn save_state(&mut self) -> Result<Vec<u8>, hypervisor::Error> {
        Err(hypervisor::Error::Failed(Box::new(SnapshotUnsupported)))
    }

    fn restore_state(&mut self, _state: &[u8]) -> Result<(), hypervisor::Error> {
        Err(hypervisor::Error::Failed(Box::new(SnapshotUnsupported)))
    }
}
