//! The GIC driven the way Linux's GICv3 driver drives it: registers at the offsets and widths
//! it uses, system registers as it reads and writes them.

use proptest::prelude::*;

use super::cpuif::IccReg;
use super::*;

const SPI_BASE: u32 = 32;

fn dist_w32(gic: &Gic, offset: u64, value: u32) -> Kicks {
    gic.dist_write(0, offset, &value.to_le_bytes())
}

fn dist_r32(gic: &Gic, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    gic.dist_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn redist_w32(gic: &Gic, cpu: usize, offset: u64, value: u32) -> Kicks {
    gic.redist_write(
        cpu,
        cpu as u64 * redist::SIZE_PER_CPU + offset,
        &value.to_le_bytes(),
    )
}

fn redist_r32(gic: &Gic, cpu: usize, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    gic.redist_read(cpu as u64 * redist::SIZE_PER_CPU + offset, &mut b);
    u32::from_le_bytes(b)
}

/// What Linux does at boot: distributor off, every SPI Group 1 at priority 0xa0, level,
/// disabled, routed to vCPU 0, distributor on; each redistributor awake with its SGIs and
/// PPIs Group 1 at 0xa0; each CPU interface with PMR 0xf0, BPR1 0 and Group 1 on.
fn linux_init(vcpus: usize, spis: u32) -> Gic {
    let gic = Gic::new(vcpus, spis);
    dist_w32(&gic, 0, 0);
    for reg in 1..(SPI_BASE + spis).div_ceil(32) as u64 {
        dist_w32(&gic, 0x080 + 4 * reg, !0);
        dist_w32(&gic, 0x180 + 4 * reg, !0);
    }
    for intid in (SPI_BASE..SPI_BASE + spis).step_by(4) {
        dist_w32(&gic, 0x400 + u64::from(intid), 0xa0a0_a0a0);
    }
    for intid in SPI_BASE..SPI_BASE + spis {
        gic.dist_write(0, 0x6000 + 8 * u64::from(intid), &0u64.to_le_bytes());
    }
    dist_w32(&gic, 0, 0x12);
    for cpu in 0..vcpus {
        redist_w32(&gic, cpu, 0x14, 0);
        assert_eq!(redist_r32(&gic, cpu, 0x14) & 0b110, 0, "awake");
        redist_w32(&gic, cpu, 0x1_0080, !0);
        redist_w32(&gic, cpu, 0x1_0180, !0);
        for reg in 0..8 {
            redist_w32(&gic, cpu, 0x1_0400 + 4 * reg, 0xa0a0_a0a0);
        }
        // SGIs enabled, as Linux does for its IPIs.
        redist_w32(&gic, cpu, 0x1_0100, 0xffff);
        gic.icc_write(cpu, IccReg::Pmr, 0xf0);
        gic.icc_write(cpu, IccReg::Bpr1, 0);
        gic.icc_write(cpu, IccReg::Ctlr, 0);
        gic.icc_write(cpu, IccReg::Ap1r(0), 0);
        gic.icc_write(cpu, IccReg::Igrpen1, 1);
    }
    gic
}

fn enable_spi(gic: &Gic, intid: u32, edge: bool) {
    let reg = u64::from(intid / 32);
    dist_w32(gic, 0x100 + 4 * reg, 1 << (intid % 32));
    let cfg = 0xc00 + 4 * u64::from(intid / 16);
    let old = dist_r32(gic, cfg);
    let bit = 1 << (2 * (intid % 16) + 1);
    dist_w32(gic, cfg, if edge { old | bit } else { old & !bit });
}

#[test]
fn identity_registers_read_as_a_gicv3_with_one_security_state() {
    let gic = Gic::new(2, 64);
    assert_eq!(dist_r32(&gic, 0xffe8), 0x3b, "GICD_PIDR2: GICv3");
    assert_eq!(redist_r32(&gic, 1, 0xffe8), 0x3b, "GICR_PIDR2");
    let typer = dist_r32(&gic, 4);
    assert_eq!(typer & 0x1f, 2, "96 INTIDs: ITLinesNumber 2");
    assert_eq!(typer >> 17 & 1, 0, "no LPIs");
    assert_eq!(dist_r32(&gic, 0) & 0x50, 0x50, "ARE and DS read as one");
    assert_eq!(gic.icc_read(0, IccReg::Sre), 0b111);
    assert_eq!(gic.icc_read(0, IccReg::Ctlr) >> 8 & 7, 4, "5 priority bits");
}

#[test]
fn each_redistributor_names_its_vcpu_and_the_last_says_so() {
    let gic = Gic::new(18, 32);
    for cpu in [0usize, 1, 16, 17] {
        let mut b = [0u8; 8];
        gic.redist_read(cpu as u64 * redist::SIZE_PER_CPU + 8, &mut b);
        let typer = u64::from_le_bytes(b);
        let mpidr = crate::regs::mpidr_for(cpu as u8);
        assert_eq!(typer >> 32, mpidr & 0xffff, "vCPU {cpu}: affinity");
        assert_eq!(typer >> 8 & 0xffff, cpu as u64, "processor number");
        assert_eq!(typer >> 4 & 1 == 1, cpu == 17, "Last");
        // The same as two 32-bit reads.
        let low = redist_r32(&gic, cpu, 8);
        let high = redist_r32(&gic, cpu, 12);
        assert_eq!(u64::from(high) << 32 | u64::from(low), typer);
    }
    // Past the last vCPU's frames: nothing.
    assert_eq!(redist_r32(&gic, 18, 8), 0);
    assert!(gic
        .redist_write(0, 18 * redist::SIZE_PER_CPU + 0x14, &[0; 4])
        .is_empty());
}

#[test]
fn an_edge_spi_is_acknowledged_once_and_ends_with_its_eoi() {
    let gic = linux_init(1, 32);
    enable_spi(&gic, 33, true);
    assert!(!gic.irq_line(0));
    assert_eq!(gic.set_spi(1, true), vec![0]);
    gic.set_spi(1, false);
    assert!(gic.irq_line(0), "the edge latched");
    assert_eq!(gic.icc_read(0, IccReg::Hppir1), 33);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 33);
    assert!(!gic.irq_line(0), "active: not signalled again");
    assert_eq!(gic.icc_read(0, IccReg::Rpr), 0xa0);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), u64::from(SPURIOUS));
    gic.icc_write(0, IccReg::Eoir1, 33);
    assert_eq!(gic.icc_read(0, IccReg::Rpr), 0xff);
    assert!(!gic.irq_line(0));
    assert!(!gic.lock().irq(0, 33).unwrap().active);
}

#[test]
fn a_level_interrupt_fires_again_while_its_line_stays_high() {
    let gic = linux_init(1, 32);
    // The virtual timer: PPI 27, level, enabled in the redistributor.
    redist_w32(&gic, 0, 0x1_0100, 1 << 27);
    gic.set_ppi(0, 27, true);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 27);
    gic.icc_write(0, IccReg::Eoir1, 27);
    assert!(gic.irq_line(0), "still high: pending again");
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 27);
    gic.set_ppi(0, 27, false);
    gic.icc_write(0, IccReg::Eoir1, 27);
    assert!(!gic.irq_line(0));
    // PPIs only: an SGI or SPI number is not a PPI.
    assert!(gic.set_ppi(0, 3, true).is_empty());
    assert!(gic.set_ppi(0, 40, true).is_empty());
    assert!(gic.set_ppi(5, 27, true).is_empty(), "no such vCPU");
}

#[test]
fn priorities_order_mask_and_preempt() {
    let gic = linux_init(1, 32);
    for intid in [34, 35, 36] {
        enable_spi(&gic, intid, true);
    }
    // 34 at 0xc0, 35 at 0x80, 36 at 0x40.
    gic.dist_write(0, 0x400 + 34, &[0xc0]);
    gic.dist_write(0, 0x400 + 35, &[0x80]);
    gic.dist_write(0, 0x400 + 36, &[0x40]);
    gic.set_spi(2, true);
    gic.set_spi(3, true);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 35, "the more urgent first");
    assert_eq!(
        gic.icc_read(0, IccReg::Iar1),
        u64::from(SPURIOUS),
        "34 cannot preempt 35"
    );
    gic.set_spi(4, true);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 36, "36 preempts 35");
    assert_eq!(
        gic.icc_read(0, IccReg::Ap1r(0)),
        1 << (0x40 >> 3) | 1 << (0x80 >> 3)
    );
    gic.icc_write(0, IccReg::Eoir1, 36);
    assert_eq!(gic.icc_read(0, IccReg::Rpr), 0x80);
    gic.icc_write(0, IccReg::Eoir1, 35);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 34);
    gic.icc_write(0, IccReg::Eoir1, 34);
    // The priority mask: 0xa0 lets through only what is more urgent.
    gic.icc_write(0, IccReg::Pmr, 0xa0);
    gic.set_spi(2, false);
    gic.set_spi(2, true);
    assert!(!gic.irq_line(0), "0xc0 is masked by PMR 0xa0");
    assert_eq!(
        gic.icc_read(0, IccReg::Hppir1),
        34,
        "but it is the highest pending"
    );
    gic.icc_write(0, IccReg::Pmr, 0xf0);
    assert!(gic.irq_line(0));
}

#[test]
fn with_eoi_mode_1_the_eoi_drops_priority_and_dir_deactivates() {
    let gic = linux_init(1, 32);
    gic.icc_write(0, IccReg::Ctlr, 1 << 1);
    enable_spi(&gic, 33, true);
    gic.set_spi(1, true);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 33);
    gic.icc_write(0, IccReg::Eoir1, 33);
    assert_eq!(gic.icc_read(0, IccReg::Rpr), 0xff, "priority dropped");
    assert!(gic.lock().irq(0, 33).unwrap().active, "still active");
    gic.icc_write(0, IccReg::Dir, 33);
    assert!(!gic.lock().irq(0, 33).unwrap().active);
}

#[test]
fn spis_go_where_their_route_says() {
    let gic = linux_init(2, 32);
    enable_spi(&gic, 33, true);
    let cpu1 = crate::regs::mpidr_for(1) & AFFINITY_MASK;
    gic.dist_write(0, 0x6000 + 8 * 33, &cpu1.to_le_bytes());
    assert_eq!(gic.set_spi(1, true), vec![1]);
    assert!(!gic.irq_line(0) && gic.irq_line(1));
    assert_eq!(gic.icc_read(1, IccReg::Iar1), 33);
    gic.icc_write(1, IccReg::Eoir1, 33);
    // A route naming no vCPU delivers nowhere (and says so: no kick).
    gic.dist_write(0, 0x6000 + 8 * 33, &0x55u64.to_le_bytes());
    assert!(gic.set_spi(1, false).is_empty());
    gic.set_spi(1, true);
    assert!(!gic.irq_line(0) && !gic.irq_line(1));
    // IRM reads as zero; the route reads back as written in 32-bit halves.
    gic.dist_write(0, 0x6000 + 8 * 33, &(1u64 << 31 | 1).to_le_bytes());
    assert_eq!(dist_r32(&gic, 0x6000 + 8 * 33), 1);
    assert_eq!(dist_r32(&gic, 0x6000 + 8 * 33 + 4), 0);
}

#[test]
fn sgis_reach_the_listed_vcpus_or_all_others() {
    let gic = linux_init(3, 32);
    // SGI 3 to vCPU 2 (Aff0 2: target list bit 2).
    let kicks = gic.icc_write(0, IccReg::Sgi1r, 3 << 24 | 1 << 2);
    assert_eq!(kicks, vec![2]);
    assert!(gic.irq_line(2) && !gic.irq_line(1) && !gic.irq_line(0));
    assert_eq!(gic.icc_read(2, IccReg::Iar1), 3);
    gic.icc_write(2, IccReg::Eoir1, 3);
    // IRM: everyone but the sender.
    let kicks = gic.icc_write(1, IccReg::Sgi1r, 1 << 40 | 5 << 24);
    assert_eq!(kicks, vec![0, 2]);
    assert_eq!(gic.icc_read(0, IccReg::Iar1), 5);
    assert!(!gic.irq_line(1));
    // A target list naming vCPUs that do not exist reaches nobody.
    assert!(gic.icc_write(0, IccReg::Sgi1r, 1 << 24 | 1 << 9).is_empty());
    // Group 0 SGIs are not delivered.
    assert!(gic.icc_write(0, IccReg::Sgi0r, 1 << 24 | 1).is_empty());
}

#[test]
fn nothing_is_signalled_until_both_group_enables_are_on() {
    let gic = Gic::new(1, 32);
    enable_spi(&gic, 33, true);
    dist_w32(&gic, 0x084, !0);
    gic.icc_write(0, IccReg::Pmr, 0xf0);
    gic.set_spi(1, true);
    assert!(!gic.irq_line(0), "distributor and CPU interface off");
    dist_w32(&gic, 0, 0x2);
    assert!(!gic.irq_line(0), "CPU interface off");
    gic.icc_write(0, IccReg::Igrpen1, 1);
    assert!(gic.irq_line(0));
    // The distributor's registers for INTIDs 0-31 are the redistributors' (RAZ/WI there).
    dist_w32(&gic, 0x100, !0);
    assert_eq!(dist_r32(&gic, 0x100), 0);
    assert!(!gic.lock().irq(0, 5).unwrap().enabled);
}

#[test]
fn the_icc_encodings_are_the_architectures() {
    assert_eq!(IccReg::decode(3, 0, 12, 12, 0), Some(IccReg::Iar1));
    assert_eq!(IccReg::decode(3, 0, 12, 12, 1), Some(IccReg::Eoir1));
    assert_eq!(IccReg::decode(3, 0, 4, 6, 0), Some(IccReg::Pmr));
    assert_eq!(IccReg::decode(3, 0, 12, 11, 5), Some(IccReg::Sgi1r));
    assert_eq!(IccReg::decode(3, 0, 12, 12, 7), Some(IccReg::Igrpen1));
    assert_eq!(IccReg::decode(3, 0, 12, 9, 2), Some(IccReg::Ap1r(2)));
    assert_eq!(IccReg::decode(3, 0, 12, 10, 0), None);
    assert_eq!(
        IccReg::decode(3, 4, 12, 12, 0),
        None,
        "EL2's ICC_ registers are not here"
    );
}

/// One guest-driven step for the property test.
#[derive(Clone, Debug)]
enum Step {
    Dist(u64, Vec<u8>),
    DistRead(u64, usize),
    Redist(u64, Vec<u8>),
    RedistRead(u64, usize),
    Icc(u8, u8, u8, u64, bool),
    Spi(u32, bool),
    Ppi(u32, bool),
}

fn step() -> impl Strategy<Value = Step> {
    let width = prop_oneof![Just(1usize), Just(2), Just(4), Just(8)];
    prop_oneof![
        (0..0x1_0010u64, prop::collection::vec(any::<u8>(), 1..=8))
            .prop_map(|(o, d)| Step::Dist(o, d)),
        (0..0x1_0010u64, width.clone()).prop_map(|(o, w)| Step::DistRead(o, w)),
        (0..0x6_0010u64, prop::collection::vec(any::<u8>(), 1..=8))
            .prop_map(|(o, d)| Step::Redist(o, d)),
        (0..0x6_0010u64, width).prop_map(|(o, w)| Step::RedistRead(o, w)),
        (0..16u8, 0..16u8, 0..8u8, any::<u64>(), any::<bool>())
            .prop_map(|(crn, crm, op2, v, r)| Step::Icc(crn, crm, op2, v, r)),
        (0..80u32, any::<bool>()).prop_map(|(l, v)| Step::Spi(l, v)),
        (0..40u32, any::<bool>()).prop_map(|(i, v)| Step::Ppi(i, v)),
    ]
}

proptest! {
    /// Whatever a hostile guest does to the registers, nothing panics, no vCPU outside the VM
    /// is named, and the active-priority stack stays within the 32 levels it can hold.
    #[test]
    fn no_guest_access_breaks_the_gic(steps in prop::collection::vec((0..3usize, step()), 1..200)) {
        let gic = linux_init(2, 48);
        for (cpu, s) in steps {
            let kicks = match s {
                Step::Dist(o, d) => gic.dist_write(cpu.min(1), o, &d),
                Step::DistRead(o, w) => { gic.dist_read(o, &mut vec![0; w]); Vec::new() }
                Step::Redist(o, d) => gic.redist_write(cpu.min(1), o, &d),
                Step::RedistRead(o, w) => { gic.redist_read(o, &mut vec![0; w]); Vec::new() }
                Step::Icc(crn, crm, op2, v, read) => match IccReg::decode(3, 0, crn, crm, op2) {
                    Some(reg) if read => { gic.icc_read(cpu, reg); Vec::new() }
                    Some(reg) => gic.icc_write(cpu, reg, v),
                    None => Vec::new(),
                },
                Step::Spi(line, v) => gic.set_spi(line, v),
                Step::Ppi(intid, v) => gic.set_ppi(cpu, intid, v),
            };
            prop_assert!(kicks.iter().all(|&k| k < 2), "{kicks:?}");
            let st = gic.lock();
            for c in &st.cpus {
                prop_assert!(c.active_priorities.len() <= 32);
            }
        }
    }
}

#[test]
fn the_notifier_hears_of_every_vcpu_but_the_one_that_made_the_change() {
    let gic = linux_init(3, 32);
    let told = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = told.clone();
    gic.set_notifier(Box::new(move |cpu| sink.lock().unwrap().push(cpu)));
    let take = || std::mem::take(&mut *told.lock().unwrap());
    // An SGI from vCPU 0 to vCPU 2.
    gic.icc_write(0, IccReg::Sgi1r, 1 << 24 | 1 << 2);
    assert_eq!(take(), [2]);
    // A vCPU's own mask: nobody else.
    gic.icc_write(1, IccReg::Pmr, 0x80);
    assert_eq!(take(), Vec::<usize>::new());
    // A distributor write by vCPU 0: the others.
    dist_w32(&gic, 0x104, 1);
    assert_eq!(take(), [1, 2]);
    // A device's SPI (routed to vCPU 0): vCPU 0, from whatever thread raised it.
    enable_spi(&gic, 33, true);
    take();
    gic.set_spi(1, true);
    assert_eq!(take(), [0]);
    // The timer PPI, raised by its own vCPU: nobody.
    gic.set_ppi(1, 27, true);
    assert_eq!(take(), Vec::<usize>::new());
}
