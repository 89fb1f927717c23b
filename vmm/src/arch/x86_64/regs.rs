//! The x86_64 register state at the hypervisor boundary: the state the boot
//! vCPU enters the guest in ([`EntryMode`]), and what the core reads back from a
//! vCPU to report a fault and fetch the code at it ([`VcpuRegisters`]).

use super::gdt::{self, Segment};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START};
use super::paging::{self, PagingMode};
use crate::memory::GuestMemory;

/// CR0.PE: protected mode.
const CR0_PE: u64 = 1;
/// CR0.ET: extension type (always 1 on modern CPUs).
const CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging enabled.
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enabled.
const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, which is always set.
const RFLAGS_RESERVED: u64 = 0x2;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MISC_ENABLE: fast string operations enabled, as firmware leaves it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled with write-back as the default memory type, so guest RAM is
/// cacheable without the kernel having to program any MTRR.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with, as (index, value); every entry is
/// architectural.
pub const BOOT_MSRS: [(u32, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
];

/// The x87 control word at reset.
pub const FPU_CONTROL_WORD: u16 = 0x37f;
/// The SSE control/status register at reset.
pub const MXCSR_RESET: u32 = 0x1f80;
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

/// The registers the boot vCPU enters the guest with, as any x86 hypervisor
/// can load them. General registers not named are zero; the rest of the
/// special registers keep their reset values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Frame pointer.
    pub rbp: u64,
    /// RBX (PVH: the start-info address).
    pub rbx: u64,
    /// RSI (64-bit boot protocol: the zero page).
    pub rsi: u64,
    /// Flags.
    pub rflags: u64,
    /// GDT base and limit.
    pub gdt: (u64, u16),
    /// IDT base and limit.
    pub idt: (u64, u16),
    /// The code segment.
    pub cs: Segment,
    /// DS, ES, FS, GS and SS.
    pub data: Segment,
    /// The task register.
    pub tr: Segment,
    /// Control register 0.
    pub cr0: u64,
    /// Page-table base.
    pub cr3: u64,
    /// Control register 4.
    pub cr4: u64,
    /// Extended feature enable register.
    pub efer: u64,
}

impl EntryMode {
    /// The registers this entry needs.
    pub fn state(self) -> EntryState {
        let mut s = EntryState {
            rip: 0,
            rsp: 0,
            rbp: 0,
            rbx: 0,
            rsi: 0,
            rflags: RFLAGS_RESERVED,
            gdt: (BOOT_GDT_START, (gdt::TABLE.len() * 8 - 1) as u16),
            idt: (BOOT_IDT_START, 7),
            cs: gdt::segment(gdt::CODE64_SELECTOR),
            data: gdt::segment(gdt::DATA_SELECTOR),
            tr: gdt::segment(gdt::TSS_SELECTOR),
            // Long mode with the identity page tables; PVH overrides below.
            cr0: CR0_PE | CR0_ET | CR0_PG,
            cr3: PML4_START,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
        };
        match self {
            EntryMode::Pvh { entry, start_info } => {
                // PVH ABI: 32-bit protected mode, paging off, flat segments,
                // %ebx = physical address of hvm_start_info.
                s.cs = gdt::segment(gdt::CODE32_SELECTOR);
                s.cr0 = CR0_PE | CR0_ET;
                s.cr3 = 0;
                s.cr4 = 0;
                s.efer = 0;
                s.rip = entry;
                s.rbx = start_info;
            }
            EntryMode::Linux64 { entry, zero_page } => {
                s.rip = entry;
                s.rsi = zero_page;
                s.rsp = BOOT_STACK_POINTER;
                s.rbp = BOOT_STACK_POINTER;
            }
            EntryMode::RawLongMode { entry } => {
                s.rip = entry;
                s.rsp = BOOT_STACK_POINTER;
                s.rbp = BOOT_STACK_POINTER;
            }
        }
        s
    }
}

/// What the instruction pointer is called in fault reports.
pub const IP_NAME: &str = "RIP";

/// The registers that say where an x86 vCPU was and in what mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRegs {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// Control register 0 (PE, PG, ...).
    pub cr0: u64,
    /// Page-table base.
    pub cr3: u64,
    /// Control register 4 (PAE, OSXSAVE, ...).
    pub cr4: u64,
    /// Extended feature enable register (LME, LMA, NXE, SVME).
    pub efer: u64,
    /// Base of the code segment.
    pub cs_base: u64,
}

impl FaultRegs {
    /// The instruction pointer.
    pub fn pc(&self) -> u64 {
        self.rip
    }

    /// True if these are a vCPU's power-on state (CS base 0xffff0000, RIP
    /// 0xfff0): after a triple fault, KVM on AMD (SVM) resets the vCPU before
    /// reporting the shutdown, so the registers no longer say where it failed.
    pub fn is_reset_state(&self) -> bool {
        self.rip == 0xfff0 && self.cs_base == 0xffff_0000
    }
}

impl std::fmt::Display for FaultRegs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSP {:#x} RFLAGS {:#x} CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
            self.rsp, self.rflags, self.cr0, self.cr3, self.cr4, self.efer
        )?;
        if self.is_reset_state() {
            write!(
                f,
                " (the hypervisor reset this vCPU when it reported the failure, as KVM on AMD \
                 does after a triple fault: these registers are the power-on state, not where \
                 the guest failed; see the kernel log or console tail)"
            )?;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let s = EntryMode::Pvh {
            entry: 0x100_0000,
            start_info: 0x6000,
        }
        .state();
        assert_eq!(
            (s.rip, s.rbx, s.cr0 & CR0_PG, s.efer),
            (0x100_0000, 0x6000, 0, 0)
        );
        assert!(s.cs.db && !s.cs.l);
    }

    #[test]
    fn long_mode_entries_use_the_identity_tables_and_boot_stack() {
        let s = EntryMode::Linux64 {
            entry: 0x100_0200,
            zero_page: 0x7000,
        }
        .state();
        assert_eq!(
            (s.rsi, s.rsp, s.cr3),
            (0x7000, BOOT_STACK_POINTER, PML4_START)
        );
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert!(s.cs.l);
        assert_eq!(s.rflags, 0x2);
    }
}
