//! The KVM backend: opening /dev/kvm ([`Kvm`]), and the KVM implementations
//! of the [`crate::hypervisor`] traits: the VM with its in-kernel irqchip and
//! memory slots ([`KvmVm`]) and its vCPUs ([`vcpu::KvmVcpu`]). The CPUID table
//! in KVM's form ([`cpuid`]) and the initial registers ([`regs`]) are KVM's
//! x86 set-up.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod cpuid;
pub mod regs;
mod state;
pub mod vcpu;

pub use state::Incompatible;

use std::path::Path;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::arch::x86_64::cpuid::HostFeatures;
use crate::hypervisor::{self, Hypervisor, IoEventAddress, Vm};
use crate::memory::GuestMemory;

/// Errors from setting up KVM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is missing.
    #[error("/dev/kvm does not exist: this machine has no KVM. Enable virtualization in the firmware (or nested virtualization for a VM) and load the kvm module (`modprobe kvm_intel` or `modprobe kvm_amd`)")]
    NoKvmDevice,
    /// /dev/kvm cannot be opened by this user.
    #[error("no permission to open /dev/kvm: add your user to its group (`sudo usermod -aG kvm $USER`, then log in again) or run as root")]
    KvmPermission,
    /// Any other failure opening /dev/kvm.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// The KVM API version is not the stable one.
    #[error("unsupported KVM API version {0} (msbvm needs 12)")]
    ApiVersion(i32),
    /// A capability msbvm needs is missing.
    #[error("this KVM lacks {0}, which msbvm needs")]
    MissingCapability(&'static str),
    /// An ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// Opens /dev/kvm with errors that name the fix.
pub fn open() -> Result<Kvm, Error> {
    open_kvm().map(|kvm| Kvm { kvm })
}

fn open_kvm() -> Result<kvm_ioctls::Kvm, Error> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => Error::NoKvmDevice,
        libc::EACCES | libc::EPERM => Error::KvmPermission,
        _ => Error::OpenKvm(e),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::ApiVersion(version));
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(kvm)
}

impl From<Error> for hypervisor::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::NoKvmDevice | Error::KvmPermission | Error::OpenKvm(_) => {
                hypervisor::Error::Unavailable(Box::new(e))
            }
            Error::ApiVersion(_) | Error::MissingCapability(_) | Error::Ioctl { .. } => {
                hypervisor::Error::Failed(Box::new(e))
            }
        }
    }
}

/// Shorthand for a failed ioctl as a hypervisor error.
fn failed(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> hypervisor::Error {
    move |source| Error::Ioctl { what, source }.into()
}

/// An open /dev/kvm.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

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
        let mut held = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let first_slot = held.iter().map(|m| m.num_regions()).sum::<usize>();
        for (i, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| failed("guest memory lookup")(kvm_ioctls::Error::new(libc::EFAULT)))?;
            let region = kvm_userspace_memory_region {
                slot: (first_slot + i) as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `mem`, and a clone of `mem`
            // (which shares its mappings) is held in `self.memory` for as long as
            // the VM exists, so the guest never sees the mapping go away.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(failed("KVM_SET_USER_MEMORY_REGION"))?;
        }
        held.push(mem.clone());
        Ok(())
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
        let addr = match addr {
            IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
        };
        self.fd
            .register_ioevent(event, &addr, datamatch)
            .map_err(failed("KVM_IOEVENTFD"))
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

/// What kind of KVM this host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKvm {
    /// No /dev/kvm.
    Missing,
    /// KVM on hardware virtualization (VT-x or AMD-V): runs stock guests.
    Hardware,
    /// PVM, the paravirtual "pagetable-based" KVM found inside some cloud VMs:
    /// it runs only PVM-enabled guest kernels, so a stock kernel stops at its
    /// first system call.
    Pvm,
    /// /dev/kvm exists but the CPU shows no virtualization extension.
    Unknown,
}

/// Looks at /dev/kvm, the loaded modules and the CPU flags.
pub fn probe_host() -> HostKvm {
    probe_host_at(Path::new("/"))
}

fn probe_host_at(root: &Path) -> HostKvm {
    if !root.join("dev/kvm").exists() {
        return HostKvm::Missing;
    }
    if root.join("sys/module/kvm_pvm").exists() {
        return HostKvm::Pvm;
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let has_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_virt {
        HostKvm::Hardware
    } else {
        HostKvm::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_modules_and_flags() {
        let root = std::env::temp_dir().join(format!("msbvm-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        assert_eq!(probe_host_at(&root), HostKvm::Missing);
        std::fs::write(root.join("dev/kvm"), "").unwrap();
        std::fs::write(root.join("proc/cpuinfo"), "flags\t: fpu sse2\n").unwrap();
        assert_eq!(probe_host_at(&root), HostKvm::Unknown);
        std::fs::write(root.join("proc/cpuinfo"), "flags\t: fpu svm sse2\n").unwrap();
        assert_eq!(probe_host_at(&root), HostKvm::Hardware);
        std::fs::create_dir_all(root.join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(probe_host_at(&root), HostKvm::Pvm);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
