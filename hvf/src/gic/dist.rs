//! The distributor's registers (`GICD_*`, one 64 KiB frame), and the per-interrupt register
//! banks it shares with the redistributors' SGI frame ([`bank_read`], [`bank_write`]).

use super::{
    read_bytes, write_words, Gic, Irq, Kicks, State, AFFINITY_MASK, PRIORITY_MASK, PRIVATE_IRQS,
};

/// Size of the distributor's frame.
pub const SIZE: u64 = 0x1_0000;

const CTLR: u64 = 0x0000;
const TYPER: u64 = 0x0004;
const IIDR: u64 = 0x0008;
const IROUTER: u64 = 0x6000;
const IROUTER_END: u64 = 0x7fe0;
/// `GICD_PIDR2` and `GICR_PIDR2`: architecture version 3 in bits [7:4].
pub(crate) const PIDR2: u64 = 0xffe8;
pub(crate) const PIDR2_GICV3: u32 = 0x3b;
/// Implementer (JEP106 0x43b is Arm's), product and revision: an identity, not a promise.
pub(crate) const IIDR_VALUE: u32 = 0x0100_043b;

const CTLR_ENABLE_GRP0: u32 = 1 << 0;
const CTLR_ENABLE_GRP1: u32 = 1 << 1;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;

/// Which kind of per-interrupt register an offset in 0x080..0xd00 is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bank {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
    Priority,
    Config,
}

/// The bank an offset falls in, and the first INTID of the register it names.
fn bank(offset: u64) -> Option<(Bank, u32)> {
    let bit_bank = |base: u64, bank: Bank| Some((bank, ((offset - base) / 4 * 32) as u32));
    match offset {
        0x080..=0x0ff => bit_bank(0x080, Bank::Group),
        0x100..=0x17f => bit_bank(0x100, Bank::SetEnable),
        0x180..=0x1ff => bit_bank(0x180, Bank::ClearEnable),
        0x200..=0x27f => bit_bank(0x200, Bank::SetPending),
        0x280..=0x2ff => bit_bank(0x280, Bank::ClearPending),
        0x300..=0x37f => bit_bank(0x300, Bank::SetActive),
        0x380..=0x3ff => bit_bank(0x380, Bank::ClearActive),
        0x400..=0x7fb => Some((Bank::Priority, (offset - 0x400) as u32)),
        0xc00..=0xcff => Some((Bank::Config, ((offset - 0xc00) / 4 * 16) as u32)),
        _ => None,
    }
}

/// Reads the aligned word at `offset` of a per-interrupt bank as vCPU `cpu` sees it, for the
/// INTIDs `allowed` accepts (others read as zero).
pub(crate) fn bank_read(st: &State, cpu: usize, offset: u64, allowed: impl Fn(u32) -> bool) -> u32 {
    let Some((bank, first)) = bank(offset) else {
        return 0;
    };
    let irq = |intid: u32| allowed(intid).then(|| st.irq(cpu, intid)).flatten();
    match bank {
        Bank::Priority => (0..4)
            .map(|i| irq(first + i).map_or(0, |q| u32::from(q.priority)) << (8 * i))
            .fold(0, |a, b| a | b),
        Bank::Config => (0..16)
            .map(|i| irq(first + i).map_or(0, |q| u32::from(q.edge) << (2 * i + 1)))
            .fold(0, |a, b| a | b),
        _ => {
            let bit = |q: &Irq| match bank {
                Bank::Group => q.group1,
                Bank::SetEnable | Bank::ClearEnable => q.enabled,
                Bank::SetPending | Bank::ClearPending => q.is_pending(),
                _ => q.active,
            };
            (0..32)
                .map(|i| irq(first + i).map_or(0, |q| u32::from(bit(q)) << i))
                .fold(0, |a, b| a | b)
        }
    }
}

/// Writes `value` (the bytes in `mask`) to the aligned word at `offset` of a per-interrupt bank
/// as vCPU `cpu` sees it, for the INTIDs `allowed` accepts (others ignore it).
pub(crate) fn bank_write(
    st: &mut State,
    cpu: usize,
    offset: u64,
    value: u32,
    mask: u32,
    allowed: impl Fn(u32) -> bool,
) {
    let Some((bank, first)) = bank(offset) else {
        return;
    };
    match bank {
        Bank::Priority => {
            for i in 0..4 {
                if mask >> (8 * i) & 0xff == 0 || !allowed(first + i) {
                    continue;
                }
                if let Some(q) = st.irq_mut(cpu, first + i) {
                    q.priority = (value >> (8 * i)) as u8 & PRIORITY_MASK;
                }
            }
        }
        Bank::Config => {
            for i in 0..16 {
                // SGIs are always edge-triggered (their fields are read-only).
                let intid = first + i;
                if mask >> (2 * i) & 3 == 0 || !allowed(intid) || intid < 16 {
                    continue;
                }
                if let Some(q) = st.irq_mut(cpu, intid) {
                    q.edge = value >> (2 * i + 1) & 1 == 1;
                }
            }
        }
        _ => {
            for i in 0..32 {
                let set = (value >> i) & 1 == 1;
                let written = (mask >> i) & 1 == 1;
                if !written || !allowed(first + i) {
                    continue;
                }
                let Some(q) = st.irq_mut(cpu, first + i) else {
                    continue;
                };
                match bank {
                    Bank::Group => q.group1 = set,
                    Bank::SetEnable if set => q.enabled = true,
                    Bank::ClearEnable if set => q.enabled = false,
                    Bank::SetPending if set => q.pending = true,
                    Bank::ClearPending if set => q.pending = false,
                    Bank::SetActive if set => q.active = true,
                    Bank::ClearActive if set => q.active = false,
                    _ => {}
                }
            }
        }
    }
}

fn spi_only(intid: u32) -> bool {
    intid >= PRIVATE_IRQS
}

fn read32(st: &State, offset: u64) -> u32 {
    match offset {
        CTLR => {
            let mut v = CTLR_ARE | CTLR_DS;
            if st.dist.grp0_enabled {
                v |= CTLR_ENABLE_GRP0;
            }
            if st.dist.grp1_enabled {
                v |= CTLR_ENABLE_GRP1;
            }
            v
        }
        TYPER => {
            // ITLinesNumber: 32 * (N + 1) INTIDs; IDbits 9: 10 bits of INTID; no LPIs, one
            // security state.
            let lines = st.max_intid().div_ceil(32).saturating_sub(1);
            (9 << 19) | (lines & 0x1f)
        }
        IIDR => IIDR_VALUE,
        IROUTER..=IROUTER_END => {
            let n = ((offset - IROUTER) / 8) as usize;
            match n
                .checked_sub(PRIVATE_IRQS as usize)
                .and_then(|s| st.dist.routes.get(s))
            {
                Some(route) if offset.is_multiple_of(8) => *route as u32,
                Some(route) => (*route >> 32) as u32,
                None => 0,
            }
        }
        PIDR2 => PIDR2_GICV3,
        _ => bank_read(st, 0, offset, spi_only),
    }
}

fn write32(st: &mut State, offset: u64, value: u32, mask: u32) {
    match offset {
        CTLR => {
            if mask & 0xff != 0 {
                st.dist.grp0_enabled = value & CTLR_ENABLE_GRP0 != 0;
                st.dist.grp1_enabled = value & CTLR_ENABLE_GRP1 != 0;
            }
        }
        IROUTER..=IROUTER_END => {
            let n = ((offset - IROUTER) / 8) as usize;
            let Some(route) = n
                .checked_sub(PRIVATE_IRQS as usize)
                .and_then(|s| st.dist.routes.get_mut(s))
            else {
                return;
            };
            let shift = if offset.is_multiple_of(8) { 0 } else { 32 };
            let m = u64::from(mask) << shift;
            // IRM (bit 31) reads as 0: 1-of-N routing is not offered.
            *route = (*route & !m | u64::from(value & mask) << shift) & AFFINITY_MASK;
        }
        _ => bank_write(st, 0, offset, value, mask, spi_only),
    }
}

impl Gic {
    /// A guest read of `data.len()` bytes at `offset` in the distributor's frame.
    pub fn dist_read(&self, offset: u64, data: &mut [u8]) {
        let st = self.lock();
        read_bytes(data, offset, |o| if o < SIZE { read32(&st, o) } else { 0 });
    }

    /// A guest write by vCPU `from` at `offset` in the distributor's frame; the vCPUs whose
    /// line may have moved (the notifier is told of all but `from`).
    pub fn dist_write(&self, from: usize, offset: u64, data: &[u8]) -> Kicks {
        let kicks = {
            let mut st = self.lock();
            for (word, value, mask) in write_words(offset, data) {
                if word < SIZE {
                    write32(&mut st, word, value, mask);
                }
            }
            // Enables, routes, pending bits: any vCPU's line may have moved.
            (0..st.cpus.len()).collect()
        };
        self.notify(kicks, Some(from))
    }
}
