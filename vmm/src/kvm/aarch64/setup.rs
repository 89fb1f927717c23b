//! The arm64 set-up calls of the KVM backend: the in-kernel GICv3, vCPU
//! initialisation and registers through `KVM_{GET,SET}_ONE_REG`.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_regs,
    kvm_vcpu_init, user_pt_regs, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
    KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VcpuFd, VmFd};
use vmm_sys_util::errno::Result;

use crate::arch::aarch64::layout::{self, GIC_DIST_START, NR_SPIS};
use crate::arch::aarch64::regs::EntryRegisters;

/// The id `KVM_{GET,SET}_ONE_REG` uses for the 64-bit core register at byte
/// `offset` of `struct kvm_regs` (the id encodes the offset in 32-bit words).
const fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 as u64 | KVM_REG_SIZE_U64 as u64 | KVM_REG_ARM_CORE as u64 | (offset / 4) as u64
}

/// `x<n>` of the vCPU.
pub fn reg_x(n: usize) -> u64 {
    core_reg(
        std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, regs) + 8 * n,
    )
}
/// The program counter.
pub const REG_PC: u64 =
    core_reg(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, pc));
/// PSTATE.
pub const REG_PSTATE: u64 =
    core_reg(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, pstate));
/// SP_EL1, the kernel's stack pointer.
pub const REG_SP_EL1: u64 = core_reg(std::mem::offset_of!(kvm_regs, sp_el1));
/// SP_EL0 (the `sp` of `user_pt_regs`).
pub const REG_SP_EL0: u64 =
    core_reg(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, sp));

/// Creates the GICv3 and places its distributor and redistributors; it must
/// be finished with [`finish_vgic`] once every vCPU exists, because KVM sizes
/// the redistributors by the vCPUs present at `CTRL_INIT`.
pub fn create_vgic(vm: &VmFd) -> Result<DeviceFd> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm.create_device(&mut dev)?;
    let dist = GIC_DIST_START;
    // KVM sizes the region from the vCPUs present at CTRL_INIT.
    let redist = layout::GIC_REDIST_START;
    set_attr_u64(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_DIST.into(),
        &dist,
    )?;
    set_attr_u64(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_REDIST.into(),
        &redist,
    )?;
    // The count includes the 32 private interrupts.
    let nr_irqs: u32 = 32 + NR_SPIS;
    let attr = kvm_device_attr {
        group: KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        attr: 0,
        addr: &nr_irqs as *const u32 as u64,
        flags: 0,
    };
    gic.set_device_attr(&attr)?;
    Ok(gic)
}

/// Initialises the vGIC; call after all vCPUs are created and initialised.
pub fn finish_vgic(gic: &DeviceFd) -> Result<()> {
    let attr = kvm_device_attr {
        group: KVM_DEV_ARM_VGIC_GRP_CTRL,
        attr: KVM_DEV_ARM_VGIC_CTRL_INIT.into(),
        addr: 0,
        flags: 0,
    };
    gic.set_device_attr(&attr)
}

fn set_attr_u64(gic: &DeviceFd, group: u32, attr: u64, value: &u64) -> Result<()> {
    gic.set_device_attr(&kvm_device_attr {
        group,
        attr,
        addr: value as *const u64 as u64,
        flags: 0,
    })
}

/// `KVM_ARM_VCPU_INIT` with the host's preferred target and PSCI 0.2 (so KVM
/// answers CPU_ON, SYSTEM_OFF and SYSTEM_RESET itself); every vCPU but the
/// first starts powered off until the guest brings it up with PSCI CPU_ON.
pub fn init_vcpu(vm: &VmFd, vcpu: &VcpuFd, index: u64) -> Result<()> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&kvi)
}

/// Sets the boot vCPU's entry registers (x1..x3 stay at their reset zero).
pub fn set_entry_registers(vcpu: &VcpuFd, regs: &EntryRegisters) -> Result<()> {
    vcpu.set_one_reg(REG_PSTATE, &regs.pstate.to_le_bytes())?;
    vcpu.set_one_reg(reg_x(0), &regs.x0.to_le_bytes())?;
    vcpu.set_one_reg(REG_PC, &regs.pc.to_le_bytes())?;
    Ok(())
}

/// Reads one 64-bit register, for fault reports.
pub fn get_reg(vcpu: &VcpuFd, id: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    vcpu.get_one_reg(id, &mut b)?;
    Ok(u64::from_le_bytes(b))
}
