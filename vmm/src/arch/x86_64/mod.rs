//! x86_64: the address map, the guest CPUID, the MP table, the boot GDT and identity-mapping
//! page tables, the PVH and 64-bit Linux boot protocols, the legacy PC devices
//! (i8042, COM1 and msbvm's platform port) and the vCPU register state.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod i8042;
pub mod layout;
pub mod legacy;
pub mod mptable;
pub mod paging;
pub mod regs;
