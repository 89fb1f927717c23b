//! The CPU interface: the `ICC_*_EL1` system registers, which Hypervisor.framework traps to
//! the VMM when it has no GIC of its own. Acknowledge (`IAR1`), priority drop and deactivation
//! (`EOIR1`, `DIR`), the priority mask, binary point and enables, and SGIs (`SGI1R`).

use super::{Gic, Kicks, State, PRIORITY_MASK, SPURIOUS};
use crate::regs::index_of_mpidr;

/// The CPU interface registers, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IccReg {
    /// `ICC_PMR_EL1`.
    Pmr,
    /// `ICC_IAR0_EL1`.
    Iar0,
    /// `ICC_EOIR0_EL1`.
    Eoir0,
    /// `ICC_HPPIR0_EL1`.
    Hppir0,
    /// `ICC_BPR0_EL1`.
    Bpr0,
    /// `ICC_AP0R<n>_EL1`.
    Ap0r(u8),
    /// `ICC_AP1R<n>_EL1`.
    Ap1r(u8),
    /// `ICC_DIR_EL1`.
    Dir,
    /// `ICC_RPR_EL1`.
    Rpr,
    /// `ICC_SGI1R_EL1`.
    Sgi1r,
    /// `ICC_ASGI1R_EL1`.
    Asgi1r,
    /// `ICC_SGI0R_EL1`.
    Sgi0r,
    /// `ICC_IAR1_EL1`.
    Iar1,
    /// `ICC_EOIR1_EL1`.
    Eoir1,
    /// `ICC_HPPIR1_EL1`.
    Hppir1,
    /// `ICC_BPR1_EL1`.
    Bpr1,
    /// `ICC_CTLR_EL1`.
    Ctlr,
    /// `ICC_SRE_EL1`.
    Sre,
    /// `ICC_IGRPEN0_EL1`.
    Igrpen0,
    /// `ICC_IGRPEN1_EL1`.
    Igrpen1,
}

impl IccReg {
    /// The register a trapped MRS/MSR names (op0, op1, CRn, CRm, op2), if it is one of these.
    pub fn decode(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Option<IccReg> {
        use IccReg::*;
        if op0 != 3 || op1 != 0 {
            return None;
        }
        Some(match (crn, crm, op2) {
            (4, 6, 0) => Pmr,
            (12, 8, 0) => Iar0,
            (12, 8, 1) => Eoir0,
            (12, 8, 2) => Hppir0,
            (12, 8, 3) => Bpr0,
            (12, 8, n @ 4..=7) => Ap0r(n - 4),
            (12, 9, n @ 0..=3) => Ap1r(n),
            (12, 11, 1) => Dir,
            (12, 11, 3) => Rpr,
            (12, 11, 5) => Sgi1r,
            (12, 11, 6) => Asgi1r,
            (12, 11, 7) => Sgi0r,
            (12, 12, 0) => Iar1,
            (12, 12, 1) => Eoir1,
            (12, 12, 2) => Hppir1,
            (12, 12, 3) => Bpr1,
            (12, 12, 4) => Ctlr,
            (12, 12, 5) => Sre,
            (12, 12, 6) => Igrpen0,
            (12, 12, 7) => Igrpen1,
            _ => return None,
        })
    }
}

/// `ICC_CTLR_EL1.PRIbits`: 5 priority bits, as the value minus one.
const CTLR_PRIBITS: u64 = 4 << 8;
const CTLR_EOIMODE: u64 = 1 << 1;
/// `ICC_SRE_EL1`: system registers on (SRE), FIQ and IRQ bypass disabled; fixed.
const SRE_VALUE: u64 = 0b111;

impl State {
    /// Acknowledges the interrupt signalled to `cpu`: it becomes active and its priority the
    /// running one. [`SPURIOUS`] when none is.
    fn acknowledge(&mut self, cpu: usize) -> u32 {
        let Some((priority, intid)) = self.signalled(cpu) else {
            return SPURIOUS;
        };
        if let Some(irq) = self.irq_mut(cpu, intid) {
            irq.pending = false;
            irq.active = true;
        }
        let c = &mut self.cpus[cpu];
        let group = c.group_priority(priority);
        c.active_priorities.push(group);
        intid
    }

    /// Drops the running priority of `cpu` (the most urgent active one, which is the most
    /// recently acknowledged under priority preemption).
    fn drop_priority(&mut self, cpu: usize) {
        let c = &mut self.cpus[cpu];
        let running = c.running_priority();
        if let Some(at) = c.active_priorities.iter().rposition(|&p| p == running) {
            c.active_priorities.remove(at);
        }
    }

    fn deactivate(&mut self, cpu: usize, intid: u32) {
        if let Some(irq) = self.irq_mut(cpu, intid) {
            irq.active = false;
        }
    }

    /// `ICC_AP1R0_EL1`: one bit per active group priority (priority >> 3).
    fn ap1r0(&self, cpu: usize) -> u64 {
        self.cpus[cpu]
            .active_priorities
            .iter()
            .fold(0, |bits, &p| bits | 1 << (p >> 3))
    }

    /// Pends SGI `intid` on the vCPUs an `ICC_SGI1R_EL1` value from `cpu` names.
    fn send_sgi(&mut self, cpu: usize, value: u64) -> Kicks {
        let intid = ((value >> 24) & 0xf) as u32;
        let count = self.cpus.len();
        let targets: Kicks = if value >> 40 & 1 == 1 {
            // IRM: every vCPU but the sender.
            (0..count).filter(|&c| c != cpu).collect()
        } else {
            let aff3 = (value >> 48) & 0xff;
            let aff2 = (value >> 32) & 0xff;
            let aff1 = (value >> 16) & 0xff;
            let range = (value >> 44) & 0xf;
            (0..16u64)
                .filter(|bit| value >> bit & 1 == 1)
                .filter_map(|bit| {
                    let aff0 = range * 16 + bit;
                    if aff0 > 0xff {
                        return None;
                    }
                    let mpidr = aff3 << 32 | aff2 << 16 | aff1 << 8 | aff0;
                    index_of_mpidr(mpidr, count).map(usize::from)
                })
                .collect()
        };
        for &target in &targets {
            if let Some(sgi) = self.irq_mut(target, intid) {
                sgi.pending = true;
            }
        }
        targets
    }
}

impl Gic {
    /// A guest read (MRS) of `reg` on vCPU `cpu`. Reading `IAR1` acknowledges.
    pub fn icc_read(&self, cpu: usize, reg: IccReg) -> u64 {
        let mut st = self.lock();
        if cpu >= st.cpus.len() {
            return 0;
        }
        match reg {
            IccReg::Pmr => u64::from(st.cpus[cpu].pmr),
            IccReg::Iar1 => u64::from(st.acknowledge(cpu)),
            // Group 0 is never signalled.
            IccReg::Iar0 | IccReg::Hppir0 => u64::from(SPURIOUS),
            IccReg::Hppir1 => u64::from(st.highest_pending(cpu).map_or(SPURIOUS, |(_, i)| i)),
            IccReg::Bpr0 => u64::from(st.cpus[cpu].bpr0),
            IccReg::Bpr1 => u64::from(st.cpus[cpu].bpr1),
            IccReg::Ap1r(0) => st.ap1r0(cpu),
            IccReg::Rpr => u64::from(st.cpus[cpu].running_priority()),
            IccReg::Ctlr => {
                CTLR_PRIBITS
                    | if st.cpus[cpu].eoi_mode {
                        CTLR_EOIMODE
                    } else {
                        0
                    }
            }
            IccReg::Sre => SRE_VALUE,
            IccReg::Igrpen0 => u64::from(st.cpus[cpu].grp0_enabled),
            IccReg::Igrpen1 => u64::from(st.cpus[cpu].grp1_enabled),
            // Write-only registers, and the active-priority words beyond 5 bits: zero.
            IccReg::Ap0r(_)
            | IccReg::Ap1r(_)
            | IccReg::Eoir0
            | IccReg::Eoir1
            | IccReg::Dir
            | IccReg::Sgi1r
            | IccReg::Asgi1r
            | IccReg::Sgi0r => 0,
        }
    }

    /// A guest write (MSR) of `value` to `reg` on vCPU `cpu` (on its own thread); the vCPUs
    /// whose line may have moved (the notifier is told of the others: an SGI's targets).
    pub fn icc_write(&self, cpu: usize, reg: IccReg, value: u64) -> Kicks {
        let kicks = self.icc_update(cpu, reg, value);
        self.notify(kicks, Some(cpu))
    }

    fn icc_update(&self, cpu: usize, reg: IccReg, value: u64) -> Kicks {
        let mut st = self.lock();
        if cpu >= st.cpus.len() {
            return Kicks::new();
        }
        let intid = (value & 0xff_ffff) as u32;
        match reg {
            IccReg::Pmr => st.cpus[cpu].pmr = value as u8 & PRIORITY_MASK,
            IccReg::Eoir1 => {
                if intid < SPURIOUS - 3 {
                    st.drop_priority(cpu);
                    if !st.cpus[cpu].eoi_mode {
                        st.deactivate(cpu, intid);
                    }
                }
            }
            IccReg::Dir => st.deactivate(cpu, intid),
            IccReg::Bpr0 => st.cpus[cpu].bpr0 = (value & 7) as u8,
            IccReg::Bpr1 => st.cpus[cpu].bpr1 = (value & 7).max(1) as u8,
            IccReg::Ap1r(0) => {
                st.cpus[cpu].active_priorities = (0..32u8)
                    .filter(|bit| value >> bit & 1 == 1)
                    .map(|bit| bit << 3)
                    .collect();
            }
            IccReg::Ctlr => st.cpus[cpu].eoi_mode = value & CTLR_EOIMODE != 0,
            IccReg::Igrpen0 => st.cpus[cpu].grp0_enabled = value & 1 == 1,
            IccReg::Igrpen1 => st.cpus[cpu].grp1_enabled = value & 1 == 1,
            IccReg::Sgi1r => return st.send_sgi(cpu, value),
            // Group 0 and other-security SGIs are not delivered; read-only registers and the
            // unimplemented active-priority words ignore writes.
            IccReg::Sgi0r
            | IccReg::Asgi1r
            | IccReg::Eoir0
            | IccReg::Ap0r(_)
            | IccReg::Ap1r(_)
            | IccReg::Iar0
            | IccReg::Iar1
            | IccReg::Hppir0
            | IccReg::Hppir1
            | IccReg::Rpr
            | IccReg::Sre => return Kicks::new(),
        }
        // Masks, enables, deactivations: only this vCPU's line moves.
        vec![cpu]
    }
}
