//! The VMM against this host's real /dev/kvm, with guests of a few bytes of
//! hand-written machine code entered directly in 64-bit long mode.
//!
//! Each guest talks to the VMM the way a kernel would: port and MMIO accesses
//! that must reach the right device, console bytes, a power-off. On a host
//! without /dev/kvm each test says so in one line and does nothing else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msbvm_vmm::kvm::{probe_host, HostKvm};
use msbvm_vmm::layout::PLATFORM_MMIO_START;
use msbvm_vmm::{BootSource, ConsoleOutput, FaultKind, VmConfig, VmEvent, VmExit};

const LOAD: u64 = 0x10_0000;

fn kvm_available(test: &str) -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        true
    } else {
        println!("skipped: {test}: this machine has no /dev/kvm");
        false
    }
}

/// Assembles a guest from byte pieces.
fn code(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

fn mov_dx(port: u16) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0x66, 0xba, p[0], p[1]]
}
fn mov_eax(v: u32) -> Vec<u8> {
    let mut c = vec![0xb8];
    c.extend_from_slice(&v.to_le_bytes());
    c
}
fn mov_rax_imm64(v: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xb8];
    c.extend_from_slice(&v.to_le_bytes());
    c
}
const OUT_DX_AL: &[u8] = &[0xee];
const OUT_DX_EAX: &[u8] = &[0xef];
const HLT: &[u8] = &[0xf4];

/// `out` of each byte of `text` to COM1.
fn print(text: &[u8]) -> Vec<u8> {
    let mut c = mov_dx(0x3f8);
    for b in text {
        c.extend_from_slice(&[0xb0, *b]); // mov al, imm8
        c.extend_from_slice(OUT_DX_AL);
    }
    c
}

/// Power off through the platform port with the code in eax.
fn power_off_eax() -> Vec<u8> {
    code(&[&mov_dx(0x444), OUT_DX_EAX, HLT])
}

fn power_off(value: u32) -> Vec<u8> {
    code(&[&mov_eax(value), &power_off_eax()])
}

struct Run {
    exit: VmExit,
    console: String,
    events: Vec<VmEvent>,
    took: Duration,
}

fn run(guest: Vec<u8>, vcpus: u8) -> Run {
    let console: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(BootSource::RawLongMode {
        code: guest,
        load_addr: LOAD,
    });
    config.vcpus = vcpus;
    config.memory_mib = 32;
    config.console = ConsoleOutput::Writer(console.clone());
    let mut events = Vec::new();
    let started = Instant::now();
    let outcome = msbvm_vmm::run(&config, |e| events.push(e.clone())).expect("VM starts");
    let console = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    Run {
        exit: outcome.exit,
        console,
        events,
        took: started.elapsed(),
    }
}

#[test]
fn serial_output_then_power_off_with_code() {
    if !kvm_available("serial_output_then_power_off_with_code") {
        return;
    }
    let r = run(code(&[&print(b"hello from L2\n"), &power_off(42)]), 1);
    assert_eq!(r.exit, VmExit::PowerOff { code: 42 });
    assert_eq!(r.console, "hello from L2\n");
}

#[test]
fn guest_runs_in_long_mode_with_paging() {
    if !kvm_available("guest_runs_in_long_mode_with_paging") {
        return;
    }
    // rdmsr IA32_EFER; power off with its low 32 bits.
    let efer = run(
        code(&[
            &[0xb9, 0x80, 0x00, 0x00, 0xc0][..],
            &[0x0f, 0x32],
            &power_off_eax(),
        ]),
        1,
    );
    let VmExit::PowerOff { code: efer } = efer.exit else {
        panic!("unexpected exit {:?}", efer.exit)
    };
    assert_eq!(efer & 0x500, 0x500, "EFER.LME and LMA set: {efer:#x}");
    // mov rax, cr0; power off with it.
    let cr0 = run(code(&[&[0x0f, 0x20, 0xc0][..], &power_off_eax()]), 1);
    let VmExit::PowerOff { code: cr0 } = cr0.exit else {
        panic!("unexpected exit {:?}", cr0.exit)
    };
    assert_eq!(
        cr0 & 0x8000_0001,
        0x8000_0001,
        "CR0.PG and PE set: {cr0:#x}"
    );
}

#[test]
fn mmio_writes_reach_the_platform_device() {
    if !kvm_available("mmio_writes_reach_the_platform_device") {
        return;
    }
    let guest = code(&[
        &mov_rax_imm64(PLATFORM_MMIO_START),
        &[0xc6, 0x00, 0x4d], // mov byte [rax], 0x4d: boot timer
        &mov_rax_imm64(PLATFORM_MMIO_START + 4),
        &[0xc7, 0x00, 0x07, 0x00, 0x00, 0x00], // mov dword [rax], 7: power off
        HLT,
    ]);
    let r = run(guest, 1);
    assert_eq!(r.exit, VmExit::PowerOff { code: 7 });
    assert!(
        matches!(r.events.as_slice(), [VmEvent::BootComplete(_)]),
        "{:?}",
        r.events
    );
}

#[test]
fn port_reads_reach_the_right_device() {
    if !kvm_available("port_reads_reach_the_right_device") {
        return;
    }
    // in eax, dx from the platform device's magic ("MSBV"), then from an
    // unclaimed port (all ones); power off with their xor.
    let guest = code(&[
        &mov_dx(0x440),
        &[0xed],       // in eax, dx
        &[0x89, 0xc3], // mov ebx, eax
        &mov_dx(0x4f0),
        &[0xed],       // in eax, dx
        &[0x31, 0xd8], // xor eax, ebx
        &power_off_eax(),
    ]);
    let r = run(guest, 1);
    let magic = u32::from_le_bytes(*b"MSBV");
    assert_eq!(
        r.exit,
        VmExit::PowerOff {
            code: magic ^ 0xffff_ffff
        }
    );
}

#[test]
fn i8042_reset_is_a_reboot() {
    if !kvm_available("i8042_reset_is_a_reboot") {
        return;
    }
    let guest = code(&[&[0xb0, 0xfe, 0xe6, 0x64], HLT]); // mov al, 0xfe; out 0x64, al
    assert_eq!(run(guest, 1).exit, VmExit::Reboot);
}

/// Runs raw `code` on one vCPU and asks the VM to stop `after` this long;
/// returns how it ended.
fn run_until_stopped(code: Vec<u8>, after: Duration) -> VmExit {
    stop_after(code, after, false).exit
}

/// Runs raw `code` on one vCPU and stops it after `after`, asking for a
/// description of where the guest was when `describe`; returns the outcome.
fn stop_after(code: Vec<u8>, after: Duration, describe: bool) -> msbvm_vmm::VmOutcome {
    let mut config = VmConfig::new(BootSource::RawLongMode {
        code,
        load_addr: LOAD,
    });
    config.memory_mib = 32;
    config.console = ConsoleOutput::Sink;
    let stop = config.stop.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(after);
        if describe {
            stop.stop_and_describe();
        } else {
            stop.stop();
        }
    });
    let outcome = msbvm_vmm::run(&config, |_| {}).expect("VM starts");
    stopper.join().unwrap();
    outcome
}

/// Runs `cli; hlt` on the boot CPU of `vcpus` and checks the VM is found
/// halted well within the halt watcher's backoff.
fn assert_halted_soon(vcpus: u8) {
    let r = run(code(&[&[0xfa, 0xf4]]), vcpus);
    assert_eq!(r.exit, VmExit::Halted);
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
}

#[test]
fn halt_with_interrupts_off_is_detected() {
    if !kvm_available("halt_with_interrupts_off_is_detected") {
        return;
    }
    // What Linux's machine_halt() ends in: cli; hlt. Linux prints a line
    // first, but which line depends on the path (`System halted`, `Power off
    // not available: System halted instead`) and a guest may print nothing:
    // the detection must not depend on the console.
    assert_halted_soon(1);
    let r = run(
        code(&[
            &print(b"reboot: Power off not available: System halted instead\n"),
            &[0xfa, 0xf4],
        ]),
        1,
    );
    assert_eq!(r.exit, VmExit::Halted);
}

#[test]
fn halt_with_an_application_processor_never_started_is_detected() {
    if !kvm_available("halt_with_an_application_processor_never_started_is_detected") {
        return;
    }
    // vCPU 1 waits for a start-up IPI that the halted boot CPU will never send.
    assert_halted_soon(2);
}

#[test]
fn idle_guest_with_interrupts_on_is_not_halted() {
    if !kvm_available("idle_guest_with_interrupts_on_is_not_halted") {
        return;
    }
    // sti; hlt with no interrupt source: idle, not dead. It must survive
    // several halt checks and end only when the host stops it.
    let code = vec![0xfb, 0xf4, 0xeb, 0xfc]; // sti; hlt; jmp back to hlt
    assert_eq!(
        run_until_stopped(code, Duration::from_secs(5)),
        VmExit::Stopped
    );
}

#[test]
fn several_vcpus_stop_together_and_leave_no_thread() {
    if !kvm_available("several_vcpus_stop_together_and_leave_no_thread") {
        return;
    }
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let r = run(code(&[&print(b"bsp\n"), &power_off(0)]), 4);
    assert_eq!(r.exit, VmExit::PowerOff { code: 0 });
    // Other tests run VMs in parallel threads; ours must at least not add any.
    let after = threads();
    assert!(
        after <= before + 8,
        "threads before {before}, after {after}"
    );
}

#[test]
fn unemulatable_or_faulting_instruction_is_a_clear_error() {
    if !kvm_available("unemulatable_or_faulting_instruction_is_a_clear_error") {
        return;
    }
    // pcmpeqb xmm0, xmm0: PVM's emulator refuses it (emulation failure); on
    // hardware it raises #UD (SSE is off in CR4) with no IDT: a triple fault.
    let prefix = print(b"x");
    let insn = [0x66, 0x0f, 0x74, 0xc0];
    let r = run(code(&[&prefix, &insn, &power_off(0)]), 1);
    let VmExit::Fault(fault) = &r.exit else {
        panic!("expected a fault, got {:?}", r.exit)
    };
    assert_eq!(fault.vcpu, 0);
    assert_eq!(fault.rip, LOAD + prefix.len() as u64, "{fault}");
    assert!(fault.insn_bytes.starts_with(&insn), "{fault}");
    if probe_host() == HostKvm::Pvm {
        assert_eq!(fault.kind, FaultKind::EmulationFailure, "{fault}");
    }
    let text = fault.to_string();
    assert!(text.contains("KVM_EXIT_"), "{text}");
    assert!(text.contains("66 0f 74 c0"), "{text}");
}

#[test]
fn bad_config_is_refused_before_touching_kvm() {
    let mut config = VmConfig::new(BootSource::RawLongMode {
        code: vec![0xf4],
        load_addr: LOAD,
    });
    config.vcpus = 0;
    let err = msbvm_vmm::run(&config, |_| {}).unwrap_err().to_string();
    assert!(err.contains("vCPU count 0"), "{err}");
}

/// The project kernel on this host: on PVM it must reach its banner on our
/// console and then end with the clear emulation-failure error.
#[test]
fn project_kernel_reaches_banner_then_clear_error_on_pvm() {
    let name = "project_kernel_reaches_banner_then_clear_error_on_pvm";
    if !kvm_available(name) {
        return;
    }
    if probe_host() != HostKvm::Pvm {
        println!("skipped: {name}: this host's KVM is not PVM (the nested end-to-end tests cover real boots)");
        return;
    }
    let kernel = match msbvm_kernel::find_built() {
        Ok(Some(k)) => k,
        _ => panic!(
            "the guest kernel is not built; run `cargo run -p msbvm-cli -- kernel build` (the test script does this first)"
        ),
    };
    let console: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(BootSource::Linux {
        kernel,
        initrd: None,
        // The banner is a notice, which the default `quiet` hides.
        cmdline: format!("{} loglevel=7", msbvm_vmm::DEFAULT_CMDLINE),
    });
    config.console = ConsoleOutput::Writer(console.clone());
    let outcome = msbvm_vmm::run(&config, |_| {}).expect("VM starts");
    let text = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    assert!(text.contains("Linux version 6.12"), "no banner in:\n{text}");
    let VmExit::Fault(fault) = &outcome.exit else {
        panic!("expected a fault, got {:?}", outcome.exit)
    };
    assert_eq!(fault.kind, FaultKind::EmulationFailure, "{fault}");
    assert!(!fault.insn_bytes.is_empty(), "{fault}");
    assert!(fault.rip >= 0xffff_ffff_8000_0000, "{fault}");
    assert!(fault.regs.is_some(), "{fault}");
    // The kernel's own log buffer, read from guest memory, holds the banner
    // even though the console line came from the same kernel: it is what a
    // quiet kernel that dies early leaves behind.
    let log = outcome.kernel_log.as_deref().unwrap_or("");
    assert!(log.lines().count() >= 10, "kernel log:\n{log}");
    assert!(log.contains("clocksource"), "kernel log:\n{log}");
    let tail = &outcome.console_tail;
    assert!(!tail.is_empty() && text.ends_with(tail.as_str()), "{tail}");
}

#[test]
fn stop_handle_ends_a_spinning_guest() {
    if !kvm_available("stop_handle_ends_a_spinning_guest") {
        return;
    }
    let code = vec![0xeb, 0xfe]; // jmp $
    assert_eq!(
        run_until_stopped(code, Duration::from_millis(300)),
        VmExit::Stopped
    );
}

#[test]
fn a_described_stop_says_where_each_vcpu_was() {
    if !kvm_available("a_described_stop_says_where_each_vcpu_was") {
        return;
    }
    let spin = || vec![0x90, 0xeb, 0xfd]; // nop; jmp back to the nop
    let plain = stop_after(spin(), Duration::from_millis(200), false);
    assert_eq!(plain.exit, VmExit::Stopped);
    assert!(plain.state_at_stop.is_empty() && plain.kernel_log.is_none());

    let described = stop_after(spin(), Duration::from_millis(200), true);
    assert_eq!(described.exit, VmExit::Stopped);
    let [line] = described.state_at_stop.as_slice() else {
        panic!("one line per vCPU: {:?}", described.state_at_stop);
    };
    // The spin is two instructions at LOAD: the vCPU is at one of them.
    let at_nop = format!("at RIP {LOAD:#x}, instruction bytes 90 eb fd");
    let at_jmp = format!("at RIP {:#x}, instruction bytes eb fd", LOAD + 1);
    assert!(
        line.starts_with("vCPU 0 (runnable)") && (line.contains(&at_nop) || line.contains(&at_jmp)),
        "{line}"
    );
    assert!(line.contains("CR0"), "control registers: {line}");
    // Not a Linux guest: no log, and it says why.
    assert_eq!(
        described.kernel_log.as_deref(),
        Some("(kernel log unavailable: not a Linux guest)")
    );
}
