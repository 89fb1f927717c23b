//! A GICv3 in user space, for Hypervisor.framework without its own GIC (macOS 11 to 14, where
//! `hv_gic_create` does not exist): the distributor and redistributor registers the guest
//! reaches over MMIO ([`dist`], [`redist`]), the CPU interface it reaches through the `ICC_*`
//! system registers, which the framework then traps ([`cpuif`]), and the one output the
//! framework takes: whether each vCPU's IRQ line is asserted ([`Gic::irq_line`], for
//! `hv_vcpu_set_pending_interrupt` before every run).
//!
//! What Linux's GICv3 driver needs in a guest, and no more:
//! - one security state (`GICD_CTLR.DS` reads 1) and affinity routing always on (`ARE`);
//! - Group 1 interrupts signalled as IRQs; Group 0 is kept in the registers but never
//!   signalled (nothing here asks for FIQs);
//! - SGIs, PPIs and as many SPIs as the VM has lines; no LPIs or ITS (`GICD_TYPER.LPIS` 0);
//! - SPIs routed to the vCPU their `GICD_IROUTER` names (a route naming no vCPU delivers
//!   nowhere); 1-of-N routing (`IRM`) is read as 0;
//! - 5 bits of priority (`ICC_CTLR_EL1.PRIbits` 4), as many as Hypervisor.framework's GIC and
//!   KVM's have, so Linux programs them the same way.
//!
//! Everything the guest writes is bounds-checked and nothing in it can panic: it is all
//! guest-controlled (the property test below feeds it arbitrary accesses). Platform-neutral and
//! tested on every host; the framework glue that would use it is not written (`hvf/README.md`).

pub mod cpuif;
pub mod dist;
pub mod redist;

use std::sync::{Mutex, MutexGuard};

use crate::regs::mpidr_for;

/// INTIDs below this are private to a vCPU (SGIs 0-15, PPIs 16-31).
pub const PRIVATE_IRQS: u32 = 32;
/// The INTID the CPU interface answers when nothing is pending.
pub const SPURIOUS: u32 = 1023;
/// Implemented priority bits: the low 3 bits of every priority read as zero.
pub const PRIORITY_MASK: u8 = 0xf8;
/// The priority of an idle CPU interface (no active interrupt).
pub const IDLE_PRIORITY: u8 = 0xff;

/// One interrupt's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irq {
    /// Group 1 (signalled as IRQ) rather than Group 0.
    pub group1: bool,
    /// Forwarded to the CPU interface.
    pub enabled: bool,
    /// The pending latch: set by an edge, by a write to `ISPENDR`, cleared by the acknowledge.
    pub pending: bool,
    /// Acknowledged and not yet deactivated.
    pub active: bool,
    /// Edge-triggered (else level-sensitive). SGIs are always edge.
    pub edge: bool,
    /// The input line, for a level-sensitive interrupt: pending while it is high.
    pub level: bool,
    /// Priority, lower is more urgent (only [`PRIORITY_MASK`] bits kept).
    pub priority: u8,
}

impl Irq {
    /// Pending as the GIC sees it: the latch, or a level-sensitive line held high.
    pub fn is_pending(&self) -> bool {
        self.pending || (!self.edge && self.level)
    }
}

/// One vCPU's part: its private interrupts, redistributor and CPU interface state.
#[derive(Clone, Debug)]
pub struct Cpu {
    /// SGIs and PPIs (INTIDs 0-31).
    pub private: [Irq; PRIVATE_IRQS as usize],
    /// `GICR_WAKER.ProcessorSleep`.
    pub asleep: bool,
    /// `ICC_PMR_EL1`: only interrupts of a higher priority (lower value) are signalled.
    pub pmr: u8,
    /// `ICC_BPR1_EL1`.
    pub bpr1: u8,
    /// `ICC_BPR0_EL1`.
    pub bpr0: u8,
    /// `ICC_IGRPEN1_EL1.Enable`.
    pub grp1_enabled: bool,
    /// `ICC_IGRPEN0_EL1.Enable` (kept; Group 0 is never signalled).
    pub grp0_enabled: bool,
    /// `ICC_CTLR_EL1.EOImode`: EOI only drops the priority, `ICC_DIR_EL1` deactivates.
    pub eoi_mode: bool,
    /// Group priorities of the acknowledged interrupts whose priority has not been dropped
    /// yet, in acknowledge order (the running priority is the most urgent one).
    pub active_priorities: Vec<u8>,
}

impl Cpu {
    fn new() -> Cpu {
        let mut private = [Irq::default(); PRIVATE_IRQS as usize];
        for sgi in &mut private[..16] {
            sgi.edge = true;
        }
        Cpu {
            private,
            asleep: true,
            pmr: 0,
            bpr1: 1,
            bpr0: 0,
            grp1_enabled: false,
            grp0_enabled: false,
            eoi_mode: false,
            active_priorities: Vec::new(),
        }
    }

    /// The running priority: that of the most urgent active interrupt not yet dropped.
    pub fn running_priority(&self) -> u8 {
        self.active_priorities
            .iter()
            .copied()
            .min()
            .unwrap_or(IDLE_PRIORITY)
    }

    /// The group priority of `priority` under `ICC_BPR1_EL1` (the subpriority bits cleared):
    /// what preemption compares.
    fn group_priority(&self, priority: u8) -> u8 {
        let bits = self.bpr1.clamp(1, 7) - 1;
        priority & (0xffu8 << bits)
    }
}

/// The distributor's own state.
#[derive(Clone, Debug)]
pub struct Distributor {
    /// `GICD_CTLR.EnableGrp1` (with one security state, bit 1).
    pub grp1_enabled: bool,
    /// `GICD_CTLR.EnableGrp0`.
    pub grp0_enabled: bool,
    /// The SPIs, INTID 32 upwards.
    pub spis: Vec<Irq>,
    /// Each SPI's `GICD_IROUTER` (affinity fields only).
    pub routes: Vec<u64>,
}

/// The whole GIC's state, behind the [`Gic`]'s lock.
#[derive(Clone, Debug)]
pub struct State {
    /// The distributor.
    pub dist: Distributor,
    /// One per vCPU, by index.
    pub cpus: Vec<Cpu>,
}

/// Where an interrupt lives: private to a vCPU, or an SPI.
enum Slot {
    Private(usize, usize),
    Spi(usize),
}

impl State {
    /// A GIC of `vcpus` CPU interfaces and `spis` SPIs, as at reset.
    pub fn new(vcpus: usize, spis: u32) -> State {
        // The INTID space stops at 1020 (1020-1023 are special).
        let spis = spis.min(1020 - PRIVATE_IRQS) as usize;
        State {
            dist: Distributor {
                grp1_enabled: false,
                grp0_enabled: false,
                spis: vec![Irq::default(); spis],
                routes: vec![0; spis],
            },
            cpus: vec![Cpu::new(); vcpus],
        }
    }

    /// One past the largest INTID.
    pub fn max_intid(&self) -> u32 {
        PRIVATE_IRQS + self.dist.spis.len() as u32
    }

    fn slot(&self, cpu: usize, intid: u32) -> Option<Slot> {
        if intid < PRIVATE_IRQS {
            (cpu < self.cpus.len()).then_some(Slot::Private(cpu, intid as usize))
        } else {
            let n = (intid - PRIVATE_IRQS) as usize;
            (n < self.dist.spis.len()).then_some(Slot::Spi(n))
        }
    }

    /// Interrupt `intid` as vCPU `cpu` sees it (its own SGIs and PPIs).
    pub fn irq(&self, cpu: usize, intid: u32) -> Option<&Irq> {
        match self.slot(cpu, intid)? {
            Slot::Private(c, n) => Some(&self.cpus[c].private[n]),
            Slot::Spi(n) => Some(&self.dist.spis[n]),
        }
    }

    /// Mutable [`State::irq`].
    pub fn irq_mut(&mut self, cpu: usize, intid: u32) -> Option<&mut Irq> {
        match self.slot(cpu, intid)? {
            Slot::Private(c, n) => Some(&mut self.cpus[c].private[n]),
            Slot::Spi(n) => Some(&mut self.dist.spis[n]),
        }
    }

    /// The vCPU an SPI is routed to, if its route names one.
    fn spi_target(&self, n: usize) -> Option<usize> {
        let route = self.dist.routes[n] & AFFINITY_MASK;
        (0..self.cpus.len().min(256)).find(|&i| mpidr_for(i as u8) & AFFINITY_MASK == route)
    }

    /// The most urgent interrupt vCPU `cpu` could take now (pending, enabled, inactive, its
    /// group enabled at both ends, routed to it), as (priority, INTID); ties go to the lower
    /// INTID. Neither the priority mask nor the running priority is applied.
    pub fn highest_pending(&self, cpu: usize) -> Option<(u8, u32)> {
        let c = self.cpus.get(cpu)?;
        if !(self.dist.grp1_enabled && c.grp1_enabled) {
            return None;
        }
        let ready = |irq: &Irq| irq.group1 && irq.enabled && !irq.active && irq.is_pending();
        let private = c
            .private
            .iter()
            .enumerate()
            .filter(|(_, irq)| ready(irq))
            .map(|(n, irq)| (irq.priority, n as u32));
        let spis = self
            .dist
            .spis
            .iter()
            .enumerate()
            .filter(|(n, irq)| ready(irq) && self.spi_target(*n) == Some(cpu))
            .map(|(n, irq)| (irq.priority, PRIVATE_IRQS + n as u32));
        private.chain(spis).min()
    }

    /// The interrupt that is signalled to `cpu`: [`State::highest_pending`] if its priority is
    /// above the priority mask and preempts the running priority.
    pub fn signalled(&self, cpu: usize) -> Option<(u8, u32)> {
        let c = self.cpus.get(cpu)?;
        let (priority, intid) = self.highest_pending(cpu)?;
        let preempts = c.group_priority(priority) < c.group_priority(c.running_priority());
        (priority < c.pmr && preempts).then_some((priority, intid))
    }
}

/// The affinity fields of an MPIDR or `GICD_IROUTER` (Aff3, Aff2, Aff1, Aff0).
pub const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Called with each vCPU whose IRQ line may have changed: it must leave the guest
/// (`hv_vcpus_exit`) or wake from a halt, so its line is set again before it runs.
pub type Notifier = Box<dyn Fn(usize) + Send + Sync>;

/// A GICv3 shared by the vCPU threads (which reach it through traps) and the threads that
/// raise device interrupts.
pub struct Gic {
    state: Mutex<State>,
    notifier: std::sync::OnceLock<Notifier>,
}

impl std::fmt::Debug for Gic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gic")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The vCPUs whose IRQ line may have changed after an update: each should be woken or made
/// to leave the guest (`hv_vcpus_exit`) so the line is set again before it runs.
pub type Kicks = Vec<usize>;

impl Gic {
    /// A GIC of `vcpus` CPU interfaces and `spis` SPIs (INTIDs 32 to 32 + `spis` - 1).
    pub fn new(vcpus: usize, spis: u32) -> Gic {
        Gic {
            state: Mutex::new(State::new(vcpus, spis)),
            notifier: std::sync::OnceLock::new(),
        }
    }

    /// Sets what is told of the vCPUs whose line may have changed, once (the vCPU table it
    /// reaches exists only after the GIC). Every update that can raise a line calls it, after
    /// the GIC's lock is released; until it is set, nobody is told.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Tells the notifier of `kicks` but `caller` (a vCPU whose own thread made the update:
    /// it sets its line before it runs again, and a kick would only cost it an exit), and
    /// hands them all back.
    fn notify(&self, kicks: Kicks, caller: Option<usize>) -> Kicks {
        if let Some(notify) = self.notifier.get() {
            kicks
                .iter()
                .filter(|&&cpu| Some(cpu) != caller)
                .for_each(|&cpu| notify(cpu));
        }
        kicks
    }

    /// The state, locked. A panic elsewhere while it was held leaves nothing half-written
    /// that matters more than stopping, so a poisoned lock is taken as it is.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether vCPU `cpu`'s IRQ line is asserted: some interrupt is signalled to it.
    pub fn irq_line(&self, cpu: usize) -> bool {
        self.lock().signalled(cpu).is_some()
    }

    /// Drives SPI `line` (INTID 32 + `line`): an edge-triggered SPI latches pending on a rising
    /// level; a level-sensitive one is pending while the level is high. Returns the vCPU to
    /// kick, if any. A line the GIC does not have is ignored.
    pub fn set_spi(&self, line: u32, level: bool) -> Kicks {
        let kicks = {
            let mut st = self.lock();
            let n = line as usize;
            if n >= st.dist.spis.len() {
                return Kicks::new();
            }
            set_level(&mut st.dist.spis[n], level);
            st.spi_target(n).into_iter().collect()
        };
        self.notify(kicks, None)
    }

    /// Drives PPI `intid` (16-31) of vCPU `cpu`, as [`Gic::set_spi`] does an SPI, from that
    /// vCPU's own thread (its timer), so the notifier is not told.
    pub fn set_ppi(&self, cpu: usize, intid: u32, level: bool) -> Kicks {
        if !(16..PRIVATE_IRQS).contains(&intid) {
            return Kicks::new();
        }
        let kicks = match self.lock().irq_mut(cpu, intid) {
            Some(irq) => {
                set_level(irq, level);
                vec![cpu]
            }
            None => Kicks::new(),
        };
        self.notify(kicks, Some(cpu))
    }
}

fn set_level(irq: &mut Irq, level: bool) {
    if irq.edge && level && !irq.level {
        irq.pending = true;
    }
    irq.level = level;
}

/// Reads `width` bytes (1, 2, 4 or 8) of a register file in which `read32(offset)` gives the
/// aligned 32-bit word at `offset`: the shared path of the MMIO frames' accesses.
pub(crate) fn read_bytes(data: &mut [u8], offset: u64, read32: impl Fn(u64) -> u32) {
    let mut bytes = [0u8; 8];
    let base = offset & !3;
    let low = read32(base).to_le_bytes();
    bytes[..4].copy_from_slice(&low);
    if (offset & 3) as usize + data.len() > 4 {
        let high = read32(base + 4).to_le_bytes();
        bytes[4..].copy_from_slice(&high);
    }
    let start = (offset & 3) as usize;
    let end = (start + data.len()).min(8);
    let len = end - start;
    data[..len].copy_from_slice(&bytes[start..end]);
}

/// Splits a write of `data` at `offset` into aligned 32-bit words, each with a mask of the
/// bytes it writes: `(offset, value, byte mask)`.
pub(crate) fn write_words(offset: u64, data: &[u8]) -> Vec<(u64, u32, u32)> {
    let mut words: Vec<(u64, u32, u32)> = Vec::new();
    for (i, &b) in data.iter().enumerate().take(8) {
        let at = offset + i as u64;
        let word = at & !3;
        let shift = 8 * (at & 3) as u32;
        match words.last_mut() {
            Some((w, value, mask)) if *w == word => {
                *value |= u32::from(b) << shift;
                *mask |= 0xff << shift;
            }
            _ => words.push((word, u32::from(b) << shift, 0xff << shift)),
        }
    }
    words
}

#[cfg(test)]
mod tests;
