//! The register values an arm64 vCPU enters the kernel with.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_el1h_with_everything_masked() {
        let r = EntryRegisters::linux(0x8000_0000, 0x8020_0000);
        assert_eq!(r.pstate, 0x3c5);
        assert_eq!((r.pc, r.x0), (0x8000_0000, 0x8020_0000));
    }
}
