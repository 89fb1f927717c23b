//! Everything that depends on the guest architecture but not on the hypervisor:
//! the address map, the boot protocols and their tables, the devices the VMM
//! answers itself and their placement, and the register state a vCPU starts in
//! and faults with.
//!
//! The core uses the architecture only through the names re-exported here,
//! which each architecture provides: `boot` (`load`, `Error`), `layout`
//! (`create_memory`, the virtio-mmio window and interrupt lines),
//! `attach_legacy_devices`, `EntryMode`, `VcpuRegisters`, `FaultRegs` and
//! `IP_NAME`. [`aarch64`] is plain data and logic, so it is built (and its
//! unit tests run) on every host; [`x86_64`] uses x86-only loader code and is
//! built on x86_64 hosts only.

pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{
    boot, layout,
    legacy::attach_legacy_devices,
    regs::{EntryMode, FaultRegs, VcpuRegisters, IP_NAME},
};

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
pub use self::aarch64::{boot, devices::attach_legacy_devices};
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{
    layout,
    regs::{EntryMode, FaultRegs, VcpuRegisters, IP_NAME},
};
