//! The arm64 guest architecture: the address map, the Linux `Image` boot
//! protocol, the flattened device tree and the register values a vCPU enters
//! the kernel with.
//!
//! Everything here is plain data and logic, so it compiles (and its unit tests
//! run) on every host; only the KVM calls that need aarch64-only kvm-bindings
//! items will be `#[cfg(target_arch = "aarch64")]`. The core does not use this
//! module yet: `arch/mod.rs` still re-exports only x86_64 names (see the
//! branch report for what remains to wire).

pub mod fdt;
pub mod image;
pub mod layout;
pub mod regs;
