//! KVM on x86_64: the VM with its in-kernel irqchip (local APICs, IOAPIC,
//! PIC) and PIT, the CPUID table in KVM's form ([`cpuid`]), the initial
//! registers and MSRs ([`regs`]), the vCPUs ([`vcpu`]) and the state a
//! snapshot saves.

pub mod cpuid;
pub mod regs;
mod state;
pub mod vcpu;

pub use state::Incompatible;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{failed, Error, Kvm};
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::arch::x86_64::cpuid::HostFeatures;
use crate::hypervisor::{self, Hypervisor, IoEventAddress, Vm};
use crate::memory::GuestMemory;

/// The capabilities msbvm needs of KVM on x86 beyond the common ones.
pub(super) const REQUIRED_CAPS: &[(Cap, &str)] = &[(Cap::ExtCpuid, "KVM_CAP_EXT_CPUID")];

impl Hypervisor for Kvm {
    type Vm = KvmVm;

    fn create_vm(&self) -> Result<KvmVm, hypervisor::Error> {
        let fd = self.kvm.create_vm().map_err(failed("KVM_CREATE_VM"))?;
        let supported_cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(failed("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(KvmVm {
            fd,
            supported_cpuid,
            host: HostFeatures {
                tsc_deadline_timer: self.kvm.check_extension(Cap::TscDeadlineTimer),
            },
            has_pit2: self.kvm.check_extension(Cap::Pit2),
            memory: std::sync::Mutex::new(Vec::new()),
            msr_list: std::sync::Arc::new(state::msr_list(&self.kvm)?),
        })
    }
}

/// A KVM VM.
pub struct KvmVm {
    fd: VmFd,
    /// The CPUID table KVM supports on this host.
    supported_cpuid: CpuId,
    /// Host features the guest CPUID depends on.
    host: HostFeatures,
    /// Whether KVM can emulate the PIT.
    has_pit2: bool,
    /// The guest memory mapped into the slots, held so the mappings outlive the VM.
    memory: std::sync::Mutex<Vec<GuestMemory>>,
    /// The MSRs a snapshot saves (KVM's index list).
    msr_list: std::sync::Arc<Vec<u32>>,
}

impl Vm for KvmVm {
    type Vcpu = vcpu::KvmVcpu;

    fn map_memory(&self, mem: &GuestMemory) -> Result<(), hypervisor::Error> {
        super::map_memory(&self.fd, &self.memory, mem)
    }

    fn create_irqchip(&self) -> Result<(), hypervisor::Error> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(failed("KVM_SET_TSS_ADDR"))?;
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(failed("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(failed("KVM_CREATE_IRQCHIP"))?;
        if self.has_pit2 {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            self.fd
                .create_pit2(pit)
                .map_err(failed("KVM_CREATE_PIT2"))?;
        }
        Ok(())
    }

    fn register_irqfd(&self, event: &EventFd, line: u32) -> Result<(), hypervisor::Error> {
        self.fd
            .register_irqfd(event, line)
            .map_err(failed("KVM_IRQFD"))
    }

    fn register_ioevent(
        &self,
        event: &EventFd,
        addr: IoEventAddress,
        datamatch: u32,
    ) -> Result<(), hypervisor::Error> {
        super::register_ioevent(&self.fd, event, addr, datamatch)
    }

    fn create_vcpu(&self, index: u8, count: u8) -> Result<vcpu::KvmVcpu, hypervisor::Error> {
        vcpu::KvmVcpu::new(self, index, count)
    }

    fn save_state(&self) -> Result<Vec<u8>, hypervisor::Error> {
        state::save_vm(&self.fd, self.has_pit2)
    }

    fn restore_state(&self, bytes: &[u8]) -> Result<(), hypervisor::Error> {
        state::restore_vm(&self.fd, self.has_pit2, bytes)
    }

    fn host_cpu(&self) -> String {
        state::describe_cpu(&self.supported_cpuid)
    }
}
