use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use super::*;
use crate::cpus::MAX_HALT;
use crate::esr::tests::dabt;
use crate::fake::{FakeBus, FakeVcpu, Hook};
use crate::psci::fid;
use crate::regs::{cntv_ctl, mpidr_for, SysReg};

const HVC0: u64 = 0x5a00_0000;
const WFI: u64 = 0x0600_0000 | (1 << 25);
/// Apple Silicon's counter frequency.
const HZ: u64 = 24_000_000;

fn exception(syndrome: u64, ipa: u64) -> HvExit {
    HvExit::Exception {
        syndrome,
        virtual_address: ipa,
        physical_address: ipa,
    }
}

/// A store of w1 (4 bytes) to `ipa`.
fn store_w1(ipa: u64) -> HvExit {
    exception(dabt(2, false, 1, false, true), ipa)
}

fn machine(count: u8) -> (Arc<Cpus>, Arc<IoEvents>) {
    (Arc::new(Cpus::new(count)), Arc::new(IoEvents::default()))
}

fn runner(index: u8, cpus: &Arc<Cpus>, ioevents: &Arc<IoEvents>) -> VcpuRunner {
    VcpuRunner::new(index, cpus.clone(), ioevents.clone(), HZ)
}

fn vcpu_with(exits: impl IntoIterator<Item = HvExit>) -> FakeVcpu {
    let mut v = FakeVcpu::at(0x1000);
    v.exits = exits.into_iter().collect();
    v
}

fn psci(vcpu: &mut FakeVcpu, function: u32, args: [u64; 3]) {
    vcpu.set(Reg::X(0), u64::from(function));
    for (i, a) in args.into_iter().enumerate() {
        vcpu.set(Reg::X(i as u8 + 1), a);
    }
    vcpu.exits.push_back(exception(HVC0, 0));
}

#[test]
fn device_accesses_reach_the_bus_and_writes_may_ask_the_core() {
    let (cpus, io) = machine(1);
    let mut r = runner(0, &cpus, &io);
    let mut v = vcpu_with([
        exception(dabt(2, false, 5, false, false), 0x0a00_0000),
        store_w1(0x0a00_0070),
    ]);
    v.set(Reg::X(1), 0xf);
    let mut bus = FakeBus::with_read(0x0a00_0000, &[0x76, 0x69, 0x72, 0x74]);
    bus.event_on_write = Some(9);
    assert_eq!(r.run(&mut v, &mut bus), VcpuExit::Io);
    assert_eq!(v.get(Reg::X(5)), 0x7472_6976);
    assert_eq!(r.run(&mut v, &mut bus), VcpuExit::Event(9));
    assert_eq!(bus.writes, vec![(0x0a00_0070, vec![0xf, 0, 0, 0])]);
    assert_eq!(v.get(Reg::Pc), 0x1008, "both accesses completed");
}

#[test]
fn a_write_matching_an_ioevent_signals_it_instead_of_the_bus() {
    let (cpus, io) = machine(1);
    let event = EventFd::new(msbvm_vmm::event::EFD_NONBLOCK).unwrap();
    io.register(0x0a00_0050, 1, event.try_clone().unwrap());
    let mut r = runner(0, &cpus, &io);
    let mut v = vcpu_with([store_w1(0x0a00_0050), store_w1(0x0a00_0050)]);
    let mut bus = FakeBus::default();
    v.set(Reg::X(1), 1);
    assert_eq!(r.run(&mut v, &mut bus), VcpuExit::Io);
    assert_eq!(event.read().unwrap(), 1);
    assert!(bus.writes.is_empty(), "the bus never saw the notify");
    // Another queue's index is not this event's: the bus gets it.
    v.set(Reg::X(1), 2);
    assert_eq!(r.run(&mut v, &mut bus), VcpuExit::Io);
    assert_eq!(bus.writes, vec![(0x0a00_0050, vec![2, 0, 0, 0])]);
    assert!(event.read().is_err(), "not signalled again");
}

#[test]
fn psci_system_calls_stop_the_vm_as_kvm_reports_them() {
    let cases = [
        (fid::SYSTEM_OFF, 0, VmExit::PowerOff { code: 0 }),
        (fid::SYSTEM_RESET, 0, VmExit::Reboot),
        // Linux's reset after a panic under `reboot=panic_w`.
        (fid::SYSTEM_RESET2 | fid::SMC64, 0, VmExit::Panic),
    ];
    for (function, arg, expected) in cases {
        let (cpus, io) = machine(1);
        let mut v = vcpu_with([]);
        psci(&mut v, function, [arg, 0, 0]);
        let exit = runner(0, &cpus, &io).run(&mut v, &mut FakeBus::default());
        assert_eq!(exit, VcpuExit::Stop(expected), "{function:#x}");
    }
}

#[test]
fn a_secondary_vcpu_waits_for_cpu_on_then_enters_where_it_says() {
    let (cpus, io) = machine(2);
    let secondary = {
        let (cpus, io) = (cpus.clone(), io.clone());
        std::thread::spawn(move || {
            let mut v = vcpu_with([exception(WFI, 0)]);
            v.set(Reg::X(3), 0x77);
            let exit = runner(1, &cpus, &io).run(&mut v, &mut FakeBus::default());
            (exit, v)
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    assert!(!secondary.is_finished(), "vCPU 1 must wait while off");
    let mut boot = vcpu_with([]);
    psci(
        &mut boot,
        fid::CPU_ON | fid::SMC64,
        [mpidr_for(1), 0x8020_0000, 0x55],
    );
    assert_eq!(
        runner(0, &cpus, &io).run(&mut boot, &mut FakeBus::default()),
        VcpuExit::Io
    );
    assert_eq!(boot.get(Reg::X(0)), 0, "CPU_ON succeeded");
    let (exit, v) = secondary.join().unwrap();
    assert_eq!(exit, VcpuExit::Io, "its first exit (a WFI) was handled");
    // Entered at the entry point (then moved past the WFI there), x0 the context id,
    // x1..x3 left alone.
    assert_eq!(v.get(Reg::Pc), 0x8020_0004);
    assert_eq!(v.get(Reg::X(0)), 0x55);
    assert_eq!(v.get(Reg::X(3)), 0x77);
    assert_eq!(v.get(Reg::Cpsr), crate::regs::PSTATE_EL1H_DAIF);
}

#[test]
fn a_cpu_on_that_lost_the_race_answers_already_on() {
    let (cpus, io) = machine(2);
    let mut boot = vcpu_with([]);
    psci(&mut boot, fid::CPU_ON, [mpidr_for(1), 0x8000_0000, 0]);
    // Another vCPU starts vCPU 1 while this one is in the guest.
    let other = cpus.clone();
    boot.during_run = Some(Hook(Arc::new(move || {
        let _ = other.start(1, cpu_on_entry(0x9000_0000, 1));
    })));
    // PSCI answered against the power states from before the run (vCPU 1 off), so it
    // said SUCCESS; applying the start finds it pending and corrects x0.
    assert_eq!(
        runner(0, &cpus, &io).run(&mut boot, &mut FakeBus::default()),
        VcpuExit::Io
    );
    assert_eq!(boot.get(Reg::X(0)) as i64, ret::ON_PENDING);
    assert_eq!(
        cpus.wait_until_on(1),
        Wake::Started(Some(cpu_on_entry(0x9000_0000, 1))),
        "the first start stands"
    );
}

#[test]
fn a_halt_sleeps_until_the_timer_deadline() {
    let (cpus, io) = machine(1);
    let mut v = vcpu_with([exception(WFI, 0)]);
    v.counter = 1_000_000;
    v.set_sys(SysReg::CNTV_CTL_EL0, cntv_ctl::ENABLE);
    // 3 ms of ticks ahead.
    v.set_sys(SysReg::CNTV_CVAL_EL0, 1_000_000 + 3 * HZ / 1000);
    let began = Instant::now();
    assert_eq!(
        runner(0, &cpus, &io).run(&mut v, &mut FakeBus::default()),
        VcpuExit::Io
    );
    let slept = began.elapsed();
    assert!(slept >= Duration::from_millis(3), "{slept:?}");
    assert!(slept < Duration::from_secs(2), "{slept:?}");
}

#[test]
fn a_timer_already_due_does_not_sleep() {
    let (cpus, io) = machine(1);
    let mut v = vcpu_with([exception(WFI, 0)]);
    v.counter = 5_000;
    v.set_sys(SysReg::CNTV_CTL_EL0, cntv_ctl::ENABLE);
    v.set_sys(SysReg::CNTV_CVAL_EL0, 10);
    let began = Instant::now();
    runner(0, &cpus, &io).run(&mut v, &mut FakeBus::default());
    assert!(began.elapsed() < MAX_HALT, "{:?}", began.elapsed());
}

#[test]
fn a_kick_ends_a_halt_and_is_reported_once() {
    let (cpus, io) = machine(1);
    let kicker = {
        let cpus = cpus.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            cpus.kick(0);
        })
    };
    let mut r = runner(0, &cpus, &io);
    // Without a timer a halt is capped at MAX_HALT; halt until the kick lands.
    let mut v = vcpu_with(std::iter::repeat_n(exception(WFI, 0), 1000));
    let began = Instant::now();
    loop {
        match r.run(&mut v, &mut FakeBus::default()) {
            VcpuExit::Io => assert!(began.elapsed() < Duration::from_secs(5)),
            exit => {
                assert_eq!(exit, VcpuExit::Interrupted);
                break;
            }
        }
    }
    kicker.join().unwrap();
    assert!(!cpus.take_kick(0), "the kick was consumed");
}

#[test]
fn a_kick_before_the_run_returns_without_entering_the_guest() {
    let (cpus, io) = machine(1);
    cpus.kick(0);
    let mut v = vcpu_with([exception(WFI, 0)]);
    assert_eq!(
        runner(0, &cpus, &io).run(&mut v, &mut FakeBus::default()),
        VcpuExit::Interrupted
    );
    assert_eq!(v.exits.len(), 1, "never entered");
}

#[test]
fn a_cancelled_run_is_an_interruption() {
    let (cpus, io) = machine(1);
    let mut v = vcpu_with([HvExit::Canceled]);
    assert_eq!(
        runner(0, &cpus, &io).run(&mut v, &mut FakeBus::default()),
        VcpuExit::Interrupted
    );
}

#[test]
fn cpu_off_parks_the_vcpu_until_a_kick_or_cpu_on() {
    let (cpus, io) = machine(2);
    cpus.start(1, cpu_on_entry(0x1000, 0)).unwrap();
    // Started (its entry taken) before the runner sees it.
    assert!(matches!(cpus.wait_until_on(1), Wake::Started(Some(_))));
    let mut v = vcpu_with([]);
    psci(&mut v, fid::CPU_OFF, [0, 0, 0]);
    let mut r = runner(1, &cpus, &io);
    assert_eq!(r.run(&mut v, &mut FakeBus::default()), VcpuExit::Io);
    assert!(cpus.is_off(1));
    let kicker = {
        let cpus = cpus.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cpus.kick(1);
        })
    };
    assert_eq!(
        r.run(&mut v, &mut FakeBus::default()),
        VcpuExit::Interrupted
    );
    kicker.join().unwrap();
}

#[test]
fn framework_and_guest_failures_are_faults_with_words() {
    let (cpus, io) = machine(1);
    let mut r = runner(0, &cpus, &io);
    let mut v = vcpu_with([]);
    match r.run(&mut v, &mut FakeBus::default()) {
        VcpuExit::Fault(FaultKind::Unexpected(m)) => {
            assert!(
                m.contains("running the vCPU") && m.contains("no exit scripted"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut v = vcpu_with([HvExit::Unknown(77)]);
    match r.run(&mut v, &mut FakeBus::default()) {
        VcpuExit::Fault(FaultKind::Unexpected(m)) => assert!(m.contains("77"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn irq_forwarders_raise_the_line_and_wake_a_halted_vcpu() {
    let cpus = Arc::new(Cpus::new(1));
    let raised = Arc::new(AtomicU32::new(0));
    let event = EventFd::new(0).unwrap();
    let mut forwarders = IrqForwarders::default();
    {
        let raised = raised.clone();
        let cpus = cpus.clone();
        forwarders
            .add(
                &event,
                35,
                move |intid| {
                    raised.store(intid, Ordering::SeqCst);
                    Ok(())
                },
                move || cpus.interrupt_raised(),
            )
            .unwrap();
    }
    // Take any stale wake-up, then halt while the device signals.
    cpus.halt(0, Some(Duration::ZERO));
    let signaller = {
        let event = event.try_clone().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            event.write(1).unwrap();
        })
    };
    let began = Instant::now();
    assert_eq!(cpus.halt(0, Some(Duration::from_secs(5))), Wake::Run);
    assert!(began.elapsed() < Duration::from_secs(5));
    signaller.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while raised.load(Ordering::SeqCst) != 35 {
        assert!(Instant::now() < deadline, "the line was never raised");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Dropping stops and joins the thread (a hang here fails the test by timeout).
    drop(forwarders);
}

#[test]
fn with_a_user_space_gic_the_irq_line_follows_it_and_a_pending_interrupt_ends_a_wfi() {
    use crate::gic::cpuif::IccReg;
    let (cpus, io) = machine(1);
    let gic = Arc::new(crate::gic::Gic::new(1, 32));
    // The notifier wakes halted vCPUs, as the framework layer's does (with hv_vcpus_exit).
    let woken = Arc::new(AtomicU32::new(0));
    {
        let (cpus, woken) = (cpus.clone(), woken.clone());
        gic.set_notifier(Box::new(move |_| {
            woken.fetch_add(1, Ordering::SeqCst);
            cpus.interrupt_raised();
        }));
    }
    let mut r = runner(0, &cpus, &io).with_gic(gic.clone());
    // The guest's set-up, as Linux writes it: SPI 33 enabled, Group 1, edge; everything on.
    for (offset, value) in [(0x084u64, !0u32), (0x104, 2), (0xc08, 8), (0, 2)] {
        gic.dist_write(0, offset, &value.to_le_bytes());
    }
    gic.redist_write(0, 0x14, &[0; 4]);
    gic.icc_write(0, IccReg::Pmr, 0xf0);
    gic.icc_write(0, IccReg::Igrpen1, 1);
    let mut v = vcpu_with([exception(WFI, 0), exception(WFI, 0)]);
    let before = woken.load(Ordering::SeqCst);
    assert_eq!(r.run(&mut v, &mut FakeBus::default()), VcpuExit::Io);
    assert_eq!(v.irq_lines, [false], "nothing pending yet");
    gic.set_spi(1, true);
    assert!(
        woken.load(Ordering::SeqCst) > before,
        "the GIC told the vCPU"
    );
    assert_eq!(r.run(&mut v, &mut FakeBus::default()), VcpuExit::Io);
    assert_eq!(
        v.irq_lines,
        [false, true],
        "asserted before entering the guest"
    );
}
