//! KVM on arm64: the VM with its in-kernel GICv3 ([`setup`]) and its vCPUs
//! ([`vcpu`]), initialised with PSCI 0.2 so that KVM itself answers the
//! guest's CPU_ON, SYSTEM_OFF and SYSTEM_RESET calls.
//!
//! Snapshots are not implemented on arm64 (the GIC's and the vCPUs' system
//! registers would have to be saved); asking for one is an error that says so.

pub mod setup;
pub mod vcpu;

use std::sync::Mutex;

use kvm_ioctls::{Cap, DeviceFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{failed, Kvm};
use crate::hypervisor::{self, Hypervisor, IoEventAddress, Vm};
use crate::memory::GuestMemory;

/// The capabilities msbvm needs of KVM on arm64 beyond the common ones.
pub(super) const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::ArmPsci02, "KVM_CAP_ARM_PSCI_0_2"),
    (Cap::OneReg, "KVM_CAP_ONE_REG"),
    (Cap::DeviceCtrl, "KVM_CAP_DEVICE_CTRL"),
];

/// Why snapshots fail on arm64.
#[derive(Debug, thiserror::Error)]
#[error("snapshots are not implemented for arm64 guests yet")]
pub struct SnapshotUnsupported;

impl Hypervisor for Kvm {
    type Vm = KvmVm;

    fn create_vm(&self) -> Result<KvmVm, hypervisor::Error> {
        // kvm-ioctls asks for the host's largest guest-physical address size.
        let fd = self.kvm.create_vm().map_err(failed("KVM_CREATE_VM"))?;
        Ok(KvmVm {
            fd,
            memory: Mutex::new(Vec::new()),
            gic: Mutex::new(None),
            pending_irqfds: Mutex::new(Some(Vec::new())),
        })
    }
}

/// A KVM VM on arm64.
pub struct KvmVm {
    fd: VmFd,
    /// The guest memory mapped into the slots, held so the mappings outlive the VM.
    memory: Mutex<Vec<GuestMemory>>,
    /// The vGICv3, from [`Vm::create_irqchip`] until the VM goes.
    gic: Mutex<Option<DeviceFd>>,
    /// Interrupt lines asked for before the vGIC was initialised (KVM refuses
    /// an irqfd until then, with EAGAIN), each with its own handle on the
    /// eventfd; `None` once they were registered.
    pending_irqfds: Mutex<Option<Vec<(EventFd, u32)>>>,
}

impl Vm for KvmVm {
    type Vcpu = vcpu::KvmVcpu;

    fn map_memory(&self, mem: &GuestMemory) -> Result<(), hypervisor::Error> {
        super::map_memory(&self.fd, &self.memory, mem)
    }

    fn create_irqchip(&self) -> Result<(), hypervisor::Error> {
        let gic = setup::create_vgic(&self.fd).map_err(failed("creating the vGICv3"))?;
        *self.gic.lock().unwrap_or_else(|p| p.into_inner()) = Some(gic);
        Ok(())
    }

    fn finish_irqchip(&self) -> Result<(), hypervisor::Error> {
        let gic = self.gic.lock().unwrap_or_else(|p| p.into_inner());
        let gic = gic.as_ref().ok_or_else(|| {
            failed("KVM_DEV_ARM_VGIC_CTRL_INIT")(kvm_ioctls::Error::new(libc::ENODEV))
        })?;
        setup::finish_vgic(gic).map_err(failed("KVM_DEV_ARM_VGIC_CTRL_INIT"))?;
        let pending = self
            .pending_irqfds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for (event, line) in pending.into_iter().flatten() {
            self.fd
                .register_irqfd(&event, line)
                .map_err(failed("KVM_IRQFD"))?;
        }
        Ok(())
    }

    fn register_irqfd(&self, event: &EventFd, line: u32) -> Result<(), hypervisor::Error> {
        // KVM takes irqfds only once the vGIC is initialised, which needs
        // every vCPU: until then the line is kept and registered by
        // `finish_irqchip`. With the in-kernel vGIC, GSI n is SPI n.
        let mut pending = self
            .pending_irqfds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match pending.as_mut() {
            Some(list) => {
                let event = event.try_clone().map_err(|e| {
                    failed("duplicating an interrupt eventfd")(kvm_ioctls::Error::new(
                        e.raw_os_error().unwrap_or(libc::EBADF),
                    ))
                })?;
                list.push((event, line));
                Ok(())
            }
            None => self
                .fd
                .register_irqfd(event, line)
                .map_err(failed("KVM_IRQFD")),
        }
    }

    fn register_ioevent(
        &self,
        event: &EventFd,
        addr: IoEventAddress,
        datamatch: u32,
    ) -> Result<(), hypervisor::Error> {
        super::register_ioevent(&self.fd, event, addr, datamatch)
    }

    fn create_vcpu(&self, index: u8, _count: u8) -> Result<vcpu::KvmVcpu, hypervisor::Error> {
        vcpu::KvmVcpu::new(&self.fd, index)
    }

    fn save_state(&self) -> Result<Vec<u8>, hypervisor::Error> {
        Err(hypervisor::Error::Failed(Box::new(SnapshotUnsupported)))
    }

    fn restore_state(&self, _state: &[u8]) -> Result<(), hypervisor::Error> {
        Err(hypervisor::Error::Failed(Box::new(SnapshotUnsupported)))
    }

    fn host_cpu(&self) -> String {
        describe_cpu(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }
}

/// The host CPU in words, from the first processor of `/proc/cpuinfo`'s text:
/// "arm64 implementer 0x41 part 0xd0c".
fn describe_cpu(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "arm64 implementer {} part {}",
        field("CPU implementer"),
        field("CPU part")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn describes_the_cpu_from_cpuinfo() {
        let info = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n";
        assert_eq!(
            super::describe_cpu(info),
            "arm64 implementer 0x41 part 0xd0c"
        );
        assert_eq!(super::describe_cpu(""), "arm64 implementer ? part ?");
    }
}
