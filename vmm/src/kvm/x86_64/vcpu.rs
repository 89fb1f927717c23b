//! A KVM vCPU: its x86 set-up (CPUID, MSRs, FPU, local APIC pins, entry
//! registers) and `KVM_RUN`, with KVM's exits translated into the
//! hypervisor-neutral [`VcpuExit`].

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use super::{cpuid, failed, regs, state, KvmVm};
use crate::arch::x86_64::regs::RFLAGS_IF;
use crate::arch::{EntryMode, VcpuRegisters};
use crate::exit::{FaultKind, FaultRegs, VmExit};
use crate::hypervisor::{self, DeviceAccess, RunState, Vcpu, VcpuExit};

/// A vCPU of a [`KvmVm`].
pub struct KvmVcpu {
    fd: VcpuFd,
    /// What a snapshot needs of the VM: the XSAVE area's size and the MSRs to save.
    xsave_size: i32,
    msr_list: std::sync::Arc<Vec<u32>>,
}

impl KvmVcpu {
    /// Creates vCPU `index` of `count` with its CPUID, MSRs, FPU and LINT pins set.
    pub(super) fn new(vm: &KvmVm, index: u8, count: u8) -> Result<Self, hypervisor::Error> {
        let fd = vm
            .fd
            .create_vcpu(index as u64)
            .map_err(failed("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&cpuid::for_vcpu(&vm.supported_cpuid, index, count, vm.host))
            .map_err(failed("KVM_SET_CPUID2"))?;
        let (set, wanted) = regs::setup_msrs(&fd).map_err(failed("KVM_SET_MSRS"))?;
        if set != wanted {
            tracing::warn!(
                vcpu = index,
                set,
                wanted,
                "KVM accepted only some boot MSRs"
            );
        }
        regs::setup_fpu(&fd).map_err(failed("KVM_SET_FPU"))?;
        regs::setup_lint(&fd).map_err(failed("KVM_SET_LAPIC"))?;
        Ok(KvmVcpu {
            fd,
            xsave_size: state::xsave_size(&vm.fd),
            msr_list: vm.msr_list.clone(),
        })
    }

    /// What KVM_EXIT_INTERNAL_ERROR carried, read from the run area.
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
}

/// Translates one KVM exit, answering device accesses through `io`; `None`
/// for KVM_EXIT_INTERNAL_ERROR, whose details are read once the exit is gone.
fn translate<A: DeviceAccess>(exit: KvmExit<'_>, io: &mut A) -> Option<VcpuExit<A::Event>> {
    let event = |e: Option<A::Event>| e.map_or(VcpuExit::Io, VcpuExit::Event);
    Some(match exit {
        KvmExit::IoOut(port, data) => event(io.pio_write(port, data)),
        KvmExit::IoIn(port, data) => {
            io.pio_read(port, data);
            VcpuExit::Io
        }
        KvmExit::MmioWrite(addr, data) => event(io.mmio_write(addr, data)),
        KvmExit::MmioRead(addr, data) => {
            io.mmio_read(addr, data);
            VcpuExit::Io
        }
        // Only reachable without an in-kernel local APIC.
        KvmExit::Hlt => VcpuExit::Stop(VmExit::Halted),
        KvmExit::Shutdown => VcpuExit::Fault(FaultKind::TripleFault),
        KvmExit::FailEntry(reason, _) => VcpuExit::Fault(FaultKind::FailEntry { reason }),
        KvmExit::InternalError => return None,
        KvmExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::Stop(VmExit::PowerOff { code: 0 }),
            KVM_SYSTEM_EVENT_RESET => VcpuExit::Stop(VmExit::Reboot),
            KVM_SYSTEM_EVENT_CRASH => VcpuExit::Stop(VmExit::Panic),
            other => VcpuExit::Fault(FaultKind::Unexpected(format!(
                "KVM_EXIT_SYSTEM_EVENT of type {other}"
            ))),
        },
        KvmExit::Intr => VcpuExit::Interrupted,
        other => VcpuExit::Fault(FaultKind::Unexpected(format!("{other:?}"))),
    })
}

impl Vcpu for KvmVcpu {
    fn set_entry(&mut self, entry: EntryMode) -> Result<(), hypervisor::Error> {
        regs::set_entry_state(&self.fd, &entry.state()).map_err(failed("KVM_SET_REGS"))
    }

    fn run<A: DeviceAccess>(&mut self, io: &mut A) -> VcpuExit<A::Event> {
        let exit = match self.fd.run() {
            Ok(exit) => translate(exit, io),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Some(VcpuExit::Interrupted)
            }
            Err(e) => Some(VcpuExit::Fault(FaultKind::Host(format!(
                "KVM_RUN failed: {e}"
            )))),
        };
        exit.unwrap_or_else(|| VcpuExit::Fault(self.internal_error()))
    }

    fn run_state(&self) -> Result<RunState, hypervisor::Error> {
        let state = self.fd.get_mp_state().map_err(failed("KVM_GET_MP_STATE"))?;
        Ok(match state.mp_state {
            KVM_MP_STATE_HALTED => {
                let regs = self.fd.get_regs().map_err(failed("KVM_GET_REGS"))?;
                RunState::Halted {
                    interrupts_enabled: regs.rflags & RFLAGS_IF != 0,
                }
            }
            // Never started (no INIT yet) or waiting for the SIPI after one.
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => RunState::WaitingForStartup,
            _ => RunState::Runnable,
        })
    }

    fn registers(&self) -> Result<VcpuRegisters, hypervisor::Error> {
        let regs = self.fd.get_regs().map_err(failed("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(failed("KVM_GET_SREGS"))?;
        Ok(VcpuRegisters {
            regs: FaultRegs {
                rip: regs.rip,
                rsp: regs.rsp,
                rflags: regs.rflags,
                cr0: sregs.cr0,
                cr3: sregs.cr3,
                cr4: sregs.cr4,
                efer: sregs.efer,
                cs_base: sregs.cs.base,
            },
            cs_long: sregs.cs.l != 0,
        })
    }

    fn save_state(&mut self) -> Result<Vec<u8>, hypervisor::Error> {
        state::save_vcpu(&mut self.fd, self.xsave_size, &self.msr_list)
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), hypervisor::Error> {
        state::restore_vcpu(&self.fd, self.xsave_size, bytes)
    }
}
