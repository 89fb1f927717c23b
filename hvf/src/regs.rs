//! The vCPU registers the VMM touches, named by Hypervisor.framework's own
//! numbers, and the state a Linux arm64 `Image` is entered with.
//!
//! The numbers are those of Apple's public `Hypervisor/hv_vcpu_types.h`:
//! `hv_reg_t` counts X0..X30, then PC, FPCR, FPSR, CPSR; `hv_sys_reg_t` is the
//! architectural MRS/MSR encoding packed as op0:op1:CRn:CRm:op2 into 16 bits.
//! Keeping them here (rather than only as `applevisor` enum variants) lets the
//! neutral exit handling and its Linux tests name registers; the macOS layer
//! checks at compile time that the framework agrees.

/// A general-purpose or special register (`hv_reg_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    /// X0..X30 (the index is 0..=30; see [`Reg::x`] for the zero register;
    /// a larger index is out of the type's contract and names X30).
    X(u8),
    /// The program counter.
    Pc,
    /// The floating-point control register.
    Fpcr,
    /// The floating-point status register.
    Fpsr,
    /// PSTATE, as the framework exposes it.
    Cpsr,
}

impl Reg {
    /// Register `n` of an instruction encoding, or `None` for 31, which in a
    /// load/store transfer or MSR/MRS is the zero register (reads as 0, writes
    /// are discarded), not a register the framework holds.
    pub fn x(n: u8) -> Option<Reg> {
        (n < 31).then_some(Reg::X(n))
    }

    /// The `hv_reg_t` value.
    pub fn hv_reg(self) -> u32 {
        match self {
            Reg::X(n) => u32::from(n.min(30)),
            Reg::Pc => HV_REG_PC,
            Reg::Fpcr => HV_REG_PC + 1,
            Reg::Fpsr => HV_REG_PC + 2,
            Reg::Cpsr => HV_REG_CPSR,
        }
    }
}

/// `HV_REG_PC`.
pub const HV_REG_PC: u32 = 31;
/// `HV_REG_CPSR`.
pub const HV_REG_CPSR: u32 = 34;

/// A system register in `hv_sys_reg_t` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysReg(u16);

impl SysReg {
    /// The register with this MRS/MSR encoding (fields wider than the
    /// architecture allows are cut to their width).
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysReg {
        SysReg(
            ((op0 as u16 & 0x3) << 14)
                | ((op1 as u16 & 0x7) << 11)
                | ((crn as u16 & 0xf) << 7)
                | ((crm as u16 & 0xf) << 3)
                | (op2 as u16 & 0x7),
        )
    }

    /// The `hv_sys_reg_t` value.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// System control: MMU and caches off at entry.
    pub const SCTLR_EL1: SysReg = SysReg::new(3, 0, 1, 0, 0);
    /// The vCPU's affinity, which the device tree's `cpu@N` `reg` must match.
    pub const MPIDR_EL1: SysReg = SysReg::new(3, 0, 0, 0, 5);
    /// Virtual timer control (ENABLE, IMASK, ISTATUS).
    pub const CNTV_CTL_EL0: SysReg = SysReg::new(3, 3, 14, 3, 1);
    /// Virtual timer compare value.
    pub const CNTV_CVAL_EL0: SysReg = SysReg::new(3, 3, 14, 3, 2);
    /// EL1 stack pointer.
    pub const SP_EL1: SysReg = SysReg::new(3, 4, 4, 1, 0);
    /// EL1 exception vector base.
    pub const VBAR_EL1: SysReg = SysReg::new(3, 0, 12, 0, 0);
    /// OS lock: written by Linux's debug set-up at boot.
    pub const OSLAR_EL1: SysReg = SysReg::new(2, 0, 1, 0, 4);
    /// OS double lock: written by Linux's debug set-up at boot.
    pub const OSDLR_EL1: SysReg = SysReg::new(2, 0, 1, 3, 4);
    /// OS lock status.
    pub const OSLSR_EL1: SysReg = SysReg::new(2, 0, 1, 1, 4);
}

/// Virtual timer control bits (CNTV_CTL_EL0).
pub mod cntv_ctl {
    /// The timer is enabled.
    pub const ENABLE: u64 = 1 << 0;
    /// The timer's interrupt is masked by the guest.
    pub const IMASK: u64 = 1 << 1;
    /// The timer condition is met (read-only).
    pub const ISTATUS: u64 = 1 << 2;
}

/// PSTATE for the Linux arm64 boot protocol: EL1 with SP_EL1 (EL1h), and
/// Debug, SError, IRQ and FIQ masked.
pub const PSTATE_EL1H_DAIF: u64 = 0x3c5;

/// The MPIDR_EL1 of vCPU `index`: Aff0 holds the low four bits, Aff1 the rest
/// (so a GICv3 redistributor's 16-entry target lists cover each Aff1 group),
/// with bit 31 (RES1) set. The device tree's `cpu` nodes must use the same
/// values (without bit 31).
pub fn mpidr_for(index: u8) -> u64 {
    (1 << 31) | (u64::from(index >> 4) << 8) | u64::from(index & 0xf)
}

/// The affinity fields of an MPIDR (Aff3, Aff2, Aff1, Aff0), the part PSCI
/// compares; everything else (RES1, U, MT) is ignored.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// The vCPU index whose [`mpidr_for`] has the affinity of `mpidr`, among `count` vCPUs.
pub fn index_of_mpidr(mpidr: u64, count: usize) -> Option<u8> {
    (0..count.min(256))
        .map(|i| i as u8)
        .find(|&i| mpidr_for(i) & MPIDR_AFFINITY_MASK == mpidr & MPIDR_AFFINITY_MASK)
}

/// The registers to set before a vCPU first runs, in the order to set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// General and special registers.
    pub regs: Vec<(Reg, u64)>,
    /// System registers.
    pub sys_regs: Vec<(SysReg, u64)>,
}

/// The entry state of the Linux arm64 boot protocol
/// (Documentation/arch/arm64/booting.rst): x0 the device tree's guest
/// address, x1..x3 zero, PC the kernel entry, EL1h with DAIF masked, and the
/// MMU off (SCTLR_EL1 at its architectural reset value with M and C clear).
pub fn linux_entry(fdt_addr: u64, kernel_entry: u64) -> EntryState {
    EntryState {
        regs: vec![
            (Reg::X(0), fdt_addr),
            (Reg::X(1), 0),
            (Reg::X(2), 0),
            (Reg::X(3), 0),
            (Reg::Pc, kernel_entry),
            (Reg::Cpsr, PSTATE_EL1H_DAIF),
        ],
        // RES1 bits of SCTLR_EL1 (11, 20, 22, 23, 28, 29); M, C and I clear.
        sys_regs: vec![(SysReg::SCTLR_EL1, 0x30d0_0800)],
    }
}

/// The entry state of a secondary vCPU started by PSCI CPU_ON: x0 the
/// caller's context id, PC its entry point, the same EL1h/DAIF and MMU-off
/// state as the boot vCPU (PSCI 1.0 §6.4.3).
pub fn cpu_on_entry(entry: u64, context: u64) -> EntryState {
    let mut state = linux_entry(context, entry);
    state.regs.retain(|(r, _)| !matches!(r, Reg::X(1..=3)));
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_numbers_are_apples() {
        assert_eq!(Reg::X(0).hv_reg(), 0);
        assert_eq!(Reg::X(30).hv_reg(), 30);
        assert_eq!(Reg::Pc.hv_reg(), 31);
        assert_eq!(Reg::Fpcr.hv_reg(), 32);
        assert_eq!(Reg::Fpsr.hv_reg(), 33);
        assert_eq!(Reg::Cpsr.hv_reg(), 34);
        // Values from Apple's hv_vcpu_types.h.
        assert_eq!(SysReg::SCTLR_EL1.raw(), 0xc080);
        assert_eq!(SysReg::MPIDR_EL1.raw(), 0xc005);
        assert_eq!(SysReg::CNTV_CTL_EL0.raw(), 0xdf19);
        assert_eq!(SysReg::CNTV_CVAL_EL0.raw(), 0xdf1a);
        assert_eq!(SysReg::SP_EL1.raw(), 0xe208);
        assert_eq!(SysReg::VBAR_EL1.raw(), 0xc600);
    }

    #[test]
    fn register_31_is_the_zero_register() {
        assert_eq!(Reg::x(31), None);
        assert_eq!(Reg::x(30), Some(Reg::X(30)));
        assert_eq!(Reg::x(0), Some(Reg::X(0)));
    }

    #[test]
    fn linux_entry_follows_the_boot_protocol() {
        let s = linux_entry(0x4800_0000, 0x4020_0000);
        assert!(s.regs.contains(&(Reg::X(0), 0x4800_0000)));
        for n in 1..=3 {
            assert!(s.regs.contains(&(Reg::X(n), 0)));
        }
        assert!(s.regs.contains(&(Reg::Pc, 0x4020_0000)));
        assert!(s.regs.contains(&(Reg::Cpsr, 0x3c5)));
        let sctlr = s.sys_regs[0].1;
        assert_eq!(sctlr & 0b101, 0, "MMU and data cache off");
    }

    #[test]
    fn cpu_on_entry_passes_the_context_in_x0() {
        let s = cpu_on_entry(0x4021_0000, 0xabcd);
        assert_eq!(
            s.regs,
            vec![
                (Reg::X(0), 0xabcd),
                (Reg::Pc, 0x4021_0000),
                (Reg::Cpsr, PSTATE_EL1H_DAIF)
            ]
        );
    }

    #[test]
    fn mpidr_round_trips_for_every_index() {
        assert_eq!(mpidr_for(0), 0x8000_0000);
        assert_eq!(mpidr_for(17), 0x8000_0101);
        for i in 0..=255u8 {
            assert_eq!(index_of_mpidr(mpidr_for(i), 256), Some(i));
            // The guest may or may not set the RES1 and MT bits.
            assert_eq!(index_of_mpidr(mpidr_for(i) & !(1 << 31), 256), Some(i));
        }
        assert_eq!(index_of_mpidr(mpidr_for(4), 4), None);
        assert_eq!(index_of_mpidr(1 << 32, 4), None);
    }
}
