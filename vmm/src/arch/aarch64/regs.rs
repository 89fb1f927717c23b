//! The arm64 register state at the hypervisor boundary: what the boot vCPU
//! enters the kernel with ([`EntryMode`]), and what the core reads back from a
//! vCPU to report a fault ([`VcpuRegisters`]).

use crate::memory::GuestMemory;

/// PSTATE mode field for EL1 using SP_EL1 ("EL1h").
pub const PSTATE_MODE_EL1H: u64 = 0b0101;
/// PSTATE D, A, I and F mask bits: the boot protocol wants all exceptions
/// masked at entry.
pub const PSTATE_DAIF: u64 = 0b1111 << 6;

/// The registers the arm64 boot protocol defines at kernel entry; all others
/// are left as KVM resets them (zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRegisters {
    /// Program counter: the load address of the `Image`.
    pub pc: u64,
    /// x0: the device tree's guest-physical address (x1..x3 are zero).
    pub x0: u64,
    /// PSTATE: EL1h with D, A, I, F masked.
    pub pstate: u64,
}

impl EntryRegisters {
    /// The boot vCPU's entry state for a kernel at `kernel_load` with its
    /// device tree at `fdt`.
    pub fn linux(kernel_load: u64, fdt: u64) -> Self {
        Self {
            pc: kernel_load,
            x0: fdt,
            pstate: PSTATE_MODE_EL1H | PSTATE_DAIF,
        }
    }
}

/// How the boot vCPU enters the guest: on arm64 there is one way, the
/// `Image` boot protocol's registers.
pub type EntryMode = EntryRegisters;

/// What the instruction pointer is called in fault reports.
pub const IP_NAME: &str = "PC";

/// The registers that say where an arm64 vCPU was and in what mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRegs {
    /// Program counter.
    pub pc: u64,
    /// The stack pointer of the current exception level (SP_EL1 in the kernel).
    pub sp: u64,
    /// PSTATE (exception level, masks, condition flags).
    pub pstate: u64,
}

impl FaultRegs {
    /// The instruction pointer.
    pub fn pc(&self) -> u64 {
        self.pc
    }
}

impl std::fmt::Display for FaultRegs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SP {:#x} PSTATE {:#x} (EL{})",
            self.sp,
            self.pstate,
            (self.pstate >> 2) & 3
        )
    }
}

/// A vCPU's control state, as any arm64 hypervisor can read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegisters {
    /// The registers a fault report shows.
    pub regs: FaultRegs,
}

impl VcpuRegisters {
    /// The guest code at the PC. Not read on arm64: the PC is a virtual
    /// address and walking the guest's stage-1 tables is not implemented, so
    /// the report says the bytes are unavailable rather than show wrong ones.
    pub fn code_at_rip(&self, _mem: &GuestMemory, _len: usize) -> Vec<u8> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_el1h_with_everything_masked() {
        let r = EntryRegisters::linux(0x8000_0000, 0x8020_0000);
        assert_eq!(r.pstate, 0x3c5);
        assert_eq!((r.pc, r.x0), (0x8000_0000, 0x8020_0000));
    }

    #[test]
    fn fault_registers_name_the_exception_level() {
        let r = FaultRegs {
            pc: 0xffff_8000_1000_0000,
            sp: 0x10,
            pstate: 0x3c5,
        };
        assert_eq!(r.to_string(), "SP 0x10 PSTATE 0x3c5 (EL1)");
    }
}
