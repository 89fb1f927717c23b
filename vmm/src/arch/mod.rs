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

/// Where a virtio-mmio device was put: what the guest must be told to find it (the device
/// tree's nodes on arm64, the command line on x86).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPlacement {
    /// Guest-physical base of its MMIO window (one page).
    pub base: u64,
    /// Its interrupt line (the irqfd GSI: an IOAPIC pin on x86, an SPI on arm64).
    pub line: u32,
}
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{
    boot, layout,
    legacy::attach_legacy_devices,
    regs::{EntryMode, FaultRegs, VcpuRegisters, IP_NAME},
};

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
pub use self::aarch64::devices::attach_legacy_devices;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{
    boot, layout,
    regs::{EntryMode, FaultRegs, VcpuRegisters, IP_NAME},
};
