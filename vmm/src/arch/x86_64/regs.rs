//! The x86_64 register state at the hypervisor boundary: the state the boot
//! vCPU enters the guest in ([`EntryMode`]), and what the core reads back from a
//! vCPU to report a fault and fetch the code at it ([`VcpuRegisters`]).

use super::paging::{self, PagingMode};
use crate::exit::FaultRegs;
use crate::memory::GuestMemory;

/// CR0.PG: paging enabled.
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
const CR4_PAE: u64 = 1 << 5;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS.IF: interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;

/// How the boot vCPU must be set up to enter the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `ebx` = start_info address.
    Pvh {
        /// The PVH entry point.
        entry: u64,
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64 {
        /// The 64-bit entry point.
        entry: u64,
        /// Address of `boot_params`.
        zero_page: u64,
    },
    /// Hand-made guest: long mode at CPL0, identity paging.
    RawLongMode {
        /// Where execution starts.
        entry: u64,
    },
}

/// A vCPU's control state, as any x86 hypervisor can read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegisters {
    /// The registers a fault report shows.
    pub regs: FaultRegs,
    /// The code segment is a 64-bit one (CS.L).
    pub cs_long: bool,
}

impl VcpuRegisters {
    /// Up to `len` bytes of guest code at RIP, read through the guest's own
    /// page tables (empty where they do not map it).
    pub fn code_at_rip(&self, mem: &GuestMemory, len: usize) -> Vec<u8> {
        let r = &self.regs;
        let mode = PagingMode {
            paging: r.cr0 & CR0_PG != 0,
            long_mode: r.efer & EFER_LMA != 0,
            pae: r.cr4 & CR4_PAE != 0,
            cr3: r.cr3,
        };
        // Outside 64-bit mode the code segment's base applies.
        let linear = if self.cs_long {
            r.rip
        } else {
            r.cs_base.wrapping_add(r.rip) & 0xffff_ffff
        };
        paging::read_code(mem, mode, linear, len)
    }
}
