//! The redistributors' registers: per vCPU, an `RD_base` frame (identity, `GICR_TYPER`,
//! `GICR_WAKER`) and an `SGI_base` frame (the vCPU's SGIs and PPIs, in the distributor's
//! register layout), 64 KiB each, one pair after another from the region's start.

use super::dist::{bank_read, bank_write, IIDR_VALUE, PIDR2, PIDR2_GICV3};
use super::{read_bytes, write_words, Gic, Kicks, State, PRIVATE_IRQS};
use crate::regs::mpidr_for;

/// One vCPU's frames: `RD_base` then `SGI_base`.
pub const SIZE_PER_CPU: u64 = 0x2_0000;
const FRAME: u64 = 0x1_0000;

const CTLR: u64 = 0x0000;
const IIDR: u64 = 0x0004;
const TYPER: u64 = 0x0008;
const WAKER: u64 = 0x0014;

const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// `GICR_TYPER.Last`: the last redistributor of the region.
const TYPER_LAST: u64 = 1 << 4;

fn private_only(intid: u32) -> bool {
    intid < PRIVATE_IRQS
}

/// `GICR_TYPER` of vCPU `cpu` among `count`: its affinity in bits [63:32], its number in
/// [23:8], and `Last` on the last one.
fn typer(cpu: usize, count: usize) -> u64 {
    let mpidr = mpidr_for(cpu as u8);
    let affinity = (mpidr & 0xff_ffff) | ((mpidr >> 32) & 0xff) << 24;
    let mut v = affinity << 32 | ((cpu as u64) & 0xffff) << 8;
    if cpu + 1 == count {
        v |= TYPER_LAST;
    }
    v
}

fn read32(st: &State, cpu: usize, offset: u64) -> u32 {
    if offset >= FRAME {
        return bank_read(st, cpu, offset - FRAME, private_only);
    }
    match offset {
        // No LPIs: EnableLPIs stays 0.
        CTLR => 0,
        IIDR => IIDR_VALUE,
        TYPER => typer(cpu, st.cpus.len()) as u32,
        o if o == TYPER + 4 => (typer(cpu, st.cpus.len()) >> 32) as u32,
        WAKER if st.cpus[cpu].asleep => WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
        PIDR2 => PIDR2_GICV3,
        _ => 0,
    }
}

fn write32(st: &mut State, cpu: usize, offset: u64, value: u32, mask: u32) {
    if offset >= FRAME {
        bank_write(st, cpu, offset - FRAME, value, mask, private_only);
    } else if offset == WAKER && mask & WAKER_PROCESSOR_SLEEP != 0 {
        st.cpus[cpu].asleep = value & WAKER_PROCESSOR_SLEEP != 0;
    }
}

impl Gic {
    /// The vCPU whose frames hold `offset` of the redistributor region, and the offset within.
    fn redist_frame(st: &State, offset: u64) -> Option<(usize, u64)> {
        let cpu = (offset / SIZE_PER_CPU) as usize;
        (cpu < st.cpus.len()).then_some((cpu, offset % SIZE_PER_CPU))
    }

    /// A guest read at `offset` in the redistributor region (past the last vCPU's frames it
    /// reads as zero).
    pub fn redist_read(&self, offset: u64, data: &mut [u8]) {
        let st = self.lock();
        read_bytes(data, offset, |o| match Self::redist_frame(&st, o) {
            Some((cpu, within)) => read32(&st, cpu, within),
            None => 0,
        });
    }

    /// A guest write by vCPU `from` at `offset` in the redistributor region; the vCPUs whose
    /// line may have moved (the notifier is told of all but `from`).
    pub fn redist_write(&self, from: usize, offset: u64, data: &[u8]) -> Kicks {
        let mut kicks = Kicks::new();
        {
            let mut st = self.lock();
            for (word, value, mask) in write_words(offset, data) {
                if let Some((cpu, within)) = Self::redist_frame(&st, word) {
                    write32(&mut st, cpu, within, value, mask);
                    if !kicks.contains(&cpu) {
                        kicks.push(cpu);
                    }
                }
            }
        }
        self.notify(kicks, Some(from))
    }
}
