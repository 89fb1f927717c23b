//! The KVM backend: opening /dev/kvm, creating the VM with its in-kernel
//! irqchip and guest memory, and running vCPU threads ([`vcpu`]).

pub mod cpuid;
pub mod halt;
pub mod regs;
pub mod vcpu;

use std::path::Path;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
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

/// Wraps an ioctl error with the name of the operation.
pub fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { what, source }
}

/// Opens /dev/kvm with errors that name the fix.
pub fn open() -> Result<Kvm, Error> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
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

/// A VM with its memory registered and its interrupt controllers created.
pub struct KvmVm {
    /// The system handle.
    pub kvm: Kvm,
    /// The VM handle.
    pub fd: VmFd,
    /// The CPUID table KVM supports on this host.
    pub supported_cpuid: CpuId,
}

/// Creates a VM over `mem`: memory slots, TSS and identity-map pages, the
/// in-kernel PIC + IO-APIC + local APICs, and the PIT.
pub fn create_vm(kvm: Kvm, mem: &GuestMemory) -> Result<KvmVm, Error> {
    let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| Error::Ioctl {
                what: "guest memory lookup",
                source: kvm_ioctls::Error::new(libc::EFAULT),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the caller
        // keeps alive for as long as the VM runs (it outlives every vCPU thread).
        unsafe { fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    fd.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    if kvm.check_extension(Cap::Pit2) {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    }
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(KvmVm {
        kvm,
        fd,
        supported_cpuid,
    })
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
