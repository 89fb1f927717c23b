//! x86_64: the MP table, the boot GDT and the identity-mapping page tables.

pub mod gdt;
pub mod mptable;
pub mod paging;
