//! Decoding the exception syndrome (ESR_EL2) that Hypervisor.framework reports
//! with every `HV_EXIT_REASON_EXCEPTION` exit.
//!
//! KVM decodes guest exceptions in the kernel and hands user space an MMIO
//! access or a system event; under Hypervisor.framework the VMM gets the raw
//! syndrome and must do that itself. Every `u64` decodes to some
//! [`Exception`] (never a panic): a guest controls what traps, so an unknown
//! class is data for an error message, not a bug. Field positions are those of
//! the Arm Architecture Reference Manual (ESR_ELx, "ISS encoding for ...").

/// Exception classes (ESR_EL2.EC, bits 31:26) this backend handles.
pub mod ec {
    /// WFI or WFE trapped.
    pub const WFX: u8 = 0x01;
    /// HVC from AArch32 state (not used by a 64-bit guest).
    pub const HVC32: u8 = 0x12;
    /// SMC from AArch32 state.
    pub const SMC32: u8 = 0x13;
    /// HVC from AArch64 state.
    pub const HVC64: u8 = 0x16;
    /// SMC from AArch64 state.
    pub const SMC64: u8 = 0x17;
    /// MSR, MRS or system instruction from AArch64 state.
    pub const SYS64: u8 = 0x18;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOWER: u8 = 0x20;
    /// Data abort from a lower exception level: for us, an MMIO access.
    pub const DABT_LOWER: u8 = 0x24;
    /// BRK instruction from AArch64 state.
    pub const BRK64: u8 = 0x3c;
}

/// A data abort the hardware described fully (ISV=1): enough to emulate the
/// load or store without reading the instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbort {
    /// Access size in bytes: 1, 2, 4 or 8 (from SAS).
    pub size: u8,
    /// True for a store (WnR).
    pub write: bool,
    /// The register transferred (SRT); 31 is the zero register.
    pub reg: u8,
    /// A load sign-extends to the register width (SSE).
    pub sign_extend: bool,
    /// The register is a 64-bit X register; otherwise a 32-bit W register (SF).
    pub sixty_four: bool,
}

/// A trapped MSR or MRS (EC 0x18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// Op0 of the register's encoding.
    pub op0: u8,
    /// Op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// Op2.
    pub op2: u8,
    /// The general register read or written (Rt); 31 is the zero register.
    pub rt: u8,
    /// True for MRS (a read of the system register into Rt).
    pub read: bool,
}

impl SysRegAccess {
    /// The register's encoding in Hypervisor.framework's `hv_sys_reg_t` form.
    pub fn sys_reg(&self) -> crate::regs::SysReg {
        crate::regs::SysReg::new(self.op0, self.op1, self.crn, self.crm, self.op2)
    }
}

/// What a syndrome says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// A load or store to an address with no memory behind it.
    DataAbort(DataAbort),
    /// A data abort without a valid instruction syndrome (ISV=0: a load/store
    /// pair, a vector or atomic access, writeback), or one taken on the guest's
    /// own page-table walk (S1PTW), whose address is not the access's: this
    /// VMM cannot emulate it.
    DataAbortNoSyndrome {
        /// The raw syndrome, for the error message.
        esr: u64,
    },
    /// A data-cache maintenance instruction (DC ... by address) on an address
    /// with no memory behind it: there is nothing to maintain, so it is skipped.
    CacheMaintenance,
    /// An HVC (the PSCI conduit for Linux under a hypervisor).
    Hvc {
        /// The instruction's 16-bit immediate (0 for SMCCC calls).
        imm: u16,
    },
    /// An SMC.
    Smc {
        /// The instruction's 16-bit immediate.
        imm: u16,
    },
    /// WFI (or WFE when `wfe`).
    Wfx {
        /// True for WFE (or WFET), false for WFI (or WFIT).
        wfe: bool,
    },
    /// A trapped system register access.
    SysReg(SysRegAccess),
    /// Anything else, kept raw for the error message.
    Unknown {
        /// The exception class.
        ec: u8,
        /// The raw syndrome.
        esr: u64,
    },
}

/// The exception class of a syndrome.
pub fn class(esr: u64) -> u8 {
    ((esr >> 26) & 0x3f) as u8
}

/// Decodes a syndrome as Hypervisor.framework reports it (ESR_EL2).
pub fn decode(esr: u64) -> Exception {
    let iss = esr & 0x01ff_ffff;
    match class(esr) {
        ec::DABT_LOWER => {
            // CM (bit 8) is valid whatever ISV says, and such a fault reports
            // WnR=1 although nothing is written.
            if iss & (1 << 8) != 0 {
                return Exception::CacheMaintenance;
            }
            // Without ISV the remaining fields are not valid, whatever they read;
            // with S1PTW (bit 7) the IPA is a page-table entry's.
            if iss & (1 << 24) == 0 || iss & (1 << 7) != 0 {
                return Exception::DataAbortNoSyndrome { esr };
            }
            Exception::DataAbort(DataAbort {
                size: 1 << ((iss >> 22) & 0x3),
                sign_extend: iss & (1 << 21) != 0,
                reg: ((iss >> 16) & 0x1f) as u8,
                sixty_four: iss & (1 << 15) != 0,
                write: iss & (1 << 6) != 0,
            })
        }
        ec::HVC64 => Exception::Hvc { imm: iss as u16 },
        ec::SMC64 => Exception::Smc { imm: iss as u16 },
        // TI (bits 1:0): 0 WFI, 1 WFE, 2 WFIT, 3 WFET.
        ec::WFX => Exception::Wfx { wfe: iss & 1 != 0 },
        ec::SYS64 => Exception::SysReg(SysRegAccess {
            op0: ((iss >> 20) & 0x3) as u8,
            op2: ((iss >> 17) & 0x7) as u8,
            op1: ((iss >> 14) & 0x7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            rt: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 != 0,
        }),
        ec => Exception::Unknown { ec, esr },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A data-abort syndrome with ISV set, built from its fields.
    pub(crate) fn dabt(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (u64::from(ec::DABT_LOWER) << 26)
            | (1 << 25) // IL: a 32-bit instruction
            | (1 << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
    }

    #[test]
    fn data_abort_fields_decode_into_an_mmio_access() {
        for sas in 0..4u64 {
            for srt in [0u64, 1, 17, 30, 31] {
                for (sse, sf, wnr) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, true),
                    (true, true, false),
                ] {
                    let got = decode(dabt(sas, sse, srt, sf, wnr));
                    assert_eq!(
                        got,
                        Exception::DataAbort(DataAbort {
                            size: 1 << sas,
                            write: wnr,
                            reg: srt as u8,
                            sign_extend: sse,
                            sixty_four: sf,
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn a_real_linux_readl_syndrome_decodes() {
        // `ldr w1, [x0]` faulting on MMIO: EC 0x24, IL, ISV, SAS=2, SRT=1, FnV clear,
        // DFSC 0x07 (translation fault, level 3).
        let esr = 0x9381_0007;
        assert_eq!(
            decode(esr),
            Exception::DataAbort(DataAbort {
                size: 4,
                write: false,
                reg: 1,
                sign_extend: false,
                sixty_four: false,
            })
        );
    }

    #[test]
    fn data_abort_without_isv_is_reported_not_guessed() {
        let esr = dabt(3, false, 5, true, true) & !(1 << 24);
        assert_eq!(decode(esr), Exception::DataAbortNoSyndrome { esr });
    }

    #[test]
    fn page_table_walks_are_not_mmio_and_cache_maintenance_is_named() {
        let walk = dabt(3, false, 2, true, false) | (1 << 7);
        assert_eq!(decode(walk), Exception::DataAbortNoSyndrome { esr: walk });
        // DC CIVAC on an MMIO address: CM and WnR set, ISV clear.
        let dc = (dabt(0, false, 0, false, true) & !(1 << 24)) | (1 << 8);
        assert_eq!(decode(dc), Exception::CacheMaintenance);
    }

    #[test]
    fn hvc_and_smc_keep_their_immediate() {
        assert_eq!(decode(0x5a00_0000), Exception::Hvc { imm: 0 });
        assert_eq!(decode(0x5e00_0000 | 0x1234), Exception::Smc { imm: 0x1234 });
        // The 32-bit conduits are not something a 64-bit guest uses: reported raw.
        assert_eq!(
            decode(0x4a00_0000),
            Exception::Unknown {
                ec: ec::HVC32,
                esr: 0x4a00_0000
            }
        );
    }

    #[test]
    fn wfi_and_wfe_are_told_apart() {
        let base = (u64::from(ec::WFX) << 26) | (1 << 25);
        assert_eq!(decode(base), Exception::Wfx { wfe: false });
        assert_eq!(decode(base | 1), Exception::Wfx { wfe: true });
        assert_eq!(decode(base | 2), Exception::Wfx { wfe: false }); // WFIT
        assert_eq!(decode(base | 3), Exception::Wfx { wfe: true }); // WFET
    }

    #[test]
    fn msr_and_mrs_decode_register_and_direction() {
        // MRS x3, CNTVCT_EL0 (op0 3, op1 3, CRn 14, CRm 0, op2 2).
        let iss = (3 << 20) | (2 << 17) | (3 << 14) | (14 << 10) | (3 << 5) | 1;
        let got = decode((u64::from(ec::SYS64) << 26) | (1 << 25) | iss);
        let Exception::SysReg(access) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            access,
            SysRegAccess {
                op0: 3,
                op1: 3,
                crn: 14,
                crm: 0,
                op2: 2,
                rt: 3,
                read: true
            }
        );
        assert_eq!(access.sys_reg().raw(), 0xdf02);
        // MSR OSLAR_EL1, xzr (op0 2, op1 0, CRn 1, CRm 0, op2 4): a write.
        let iss = (2 << 20) | (4 << 17) | (1 << 10) | (31 << 5);
        let Exception::SysReg(access) = decode((u64::from(ec::SYS64) << 26) | iss) else {
            panic!()
        };
        assert!(!access.read);
        assert_eq!(access.rt, 31);
        assert_eq!(access.sys_reg(), crate::regs::SysReg::OSLAR_EL1);
    }

    #[test]
    fn every_other_class_is_unknown_with_the_raw_value() {
        let handled = [ec::WFX, ec::HVC64, ec::SMC64, ec::SYS64, ec::DABT_LOWER];
        for class_value in 0..64u8 {
            if handled.contains(&class_value) {
                continue;
            }
            let esr = (u64::from(class_value) << 26) | 0x1ff_ffff;
            assert_eq!(
                decode(esr),
                Exception::Unknown {
                    ec: class_value,
                    esr
                }
            );
        }
    }

    proptest! {
        #[test]
        fn no_syndrome_panics(esr in any::<u64>()) {
            let got = decode(esr);
            if let Exception::DataAbort(d) = got {
                prop_assert!([1, 2, 4, 8].contains(&d.size));
                prop_assert!(d.reg < 32);
            }
            if let Exception::SysReg(s) = got {
                prop_assert!(s.rt < 32);
            }
        }
    }
}
