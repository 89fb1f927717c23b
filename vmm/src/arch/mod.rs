//! Everything that depends on the guest architecture but not on the hypervisor:
//! the address map, the boot protocols and their tables, the legacy devices and
//! their placement, and the register state a vCPU starts in and faults with.
//!
//! The core uses the architecture through the names re-exported here, so an
//! `aarch64` sibling of [`x86_64`] can provide the same names without the core
//! changing.

pub mod aarch64;
pub mod x86_64;

pub use self::x86_64::boot;
pub use self::x86_64::layout;
pub use self::x86_64::legacy::attach_legacy_devices;
pub use self::x86_64::regs::{EntryMode, VcpuRegisters};
