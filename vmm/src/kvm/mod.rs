//! The KVM backend: opening /dev/kvm ([`Kvm`]), and the KVM implementations
//! of the [`crate::hypervisor`] traits: the VM with its in-kernel interrupt
//! controller and memory slots ([`KvmVm`]) and its vCPUs ([`vcpu::KvmVcpu`]).
//! What differs between architectures is in `x86_64` (CPUID, MSRs, the
//! PIT, snapshots of KVM's state) and `aarch64` (the vGICv3, vCPU init with
//! PSCI, registers through `KVM_SET_ONE_REG`); this module holds what both
//! share.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{setup, vcpu, KvmVm};
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{cpuid, regs, vcpu, Incompatible, KvmVm};

use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::hypervisor::{self, IoEventAddress};
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
    let common = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    ];
    #[cfg(target_arch = "aarch64")]
    let arch = aarch64::REQUIRED_CAPS;
    #[cfg(target_arch = "x86_64")]
    let arch = x86_64::REQUIRED_CAPS;
    for &(cap, name) in common.iter().chain(arch) {
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

/// Maps every region of `mem` into memory slots of `fd` after those already
/// used by `held`, and keeps a clone of `mem` in `held` so the mappings
/// outlive the VM.
fn map_memory(
    fd: &VmFd,
    held: &std::sync::Mutex<Vec<GuestMemory>>,
    mem: &GuestMemory,
) -> Result<(), hypervisor::Error> {
    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
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
        // (which shares its mappings) is held in `held` for as long as the VM
        // exists, so the guest never sees the mapping go away.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(failed("KVM_SET_USER_MEMORY_REGION"))?;
    }
    held.push(mem.clone());
    Ok(())
}

/// Makes a guest write of `datamatch` to `addr` signal `event` (KVM_IOEVENTFD).
fn register_ioevent(
    fd: &VmFd,
    event: &EventFd,
    addr: IoEventAddress,
    datamatch: u32,
) -> Result<(), hypervisor::Error> {
    let addr = match addr {
        IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
        IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
    };
    fd.register_ioevent(event, &addr, datamatch)
        .map_err(failed("KVM_IOEVENTFD"))
}

/// What kind of KVM this host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKvm {
    /// No /dev/kvm.
    Missing,
    /// KVM on hardware virtualization (VT-x or AMD-V, or arm64's EL2): runs stock guests.
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
    // arm64 KVM runs on the CPU's EL2, which /proc/cpuinfo does not show:
    // a /dev/kvm there is hardware virtualization.
    if cfg!(target_arch = "aarch64") {
        return HostKvm::Hardware;
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

// The probe reads x86 CPU flags; on arm64 a /dev/kvm is hardware virtualization.
#[cfg(all(test, target_arch = "x86_64"))]
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
