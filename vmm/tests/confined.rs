//! The VMM's threads under their seccomp filters (`msbvm_vmm::seccomp`), as the sandbox
//! runtime installs them: tiny guests on this host's /dev/kvm doing port I/O, MMIO and a
//! power-off on several vCPUs must behave exactly as unconfined. A call outside a list
//! raises SIGSYS, which ends this test process: a missing entry fails the test run.
//!
//! Its own test binary, because the hook is process-wide.

use std::sync::{Arc, Mutex};

use msbvm_virtio::confine::{install, set_thread_hook};
use msbvm_vmm::layout::PLATFORM_MMIO_START;
use msbvm_vmm::{BootSource, ConsoleOutput, VmConfig, VmExit};

/// What the runtime's hook does for these kinds.
fn confine(kind: &'static str) {
    let program = msbvm_vmm::seccomp::program(kind)
        .unwrap_or_else(|| panic!("unexpected thread kind {kind}"))
        .expect("the filter compiles");
    install(&program).expect("the filter installs");
    CONFINED.lock().unwrap().push(kind);
}

static CONFINED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

#[test]
fn tiny_guests_run_under_the_vcpu_and_vm_filters() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("skipped: tiny_guests_run_under_the_vcpu_and_vm_filters: no /dev/kvm");
        return;
    }
    assert!(set_thread_hook(confine));
    // Print on COM1 (port I/O, the console writer), start the boot timer by MMIO, then
    // power off with code 3 through MMIO; two vCPUs (the second waits in its APIC).
    let mut guest = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"confined\n" {
        guest.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    for (offset, value) in [(0u64, 0x4du8), (4, 3)] {
        guest.extend_from_slice(&[0x48, 0xb8]); // mov rax, imm64
        guest.extend_from_slice(&(PLATFORM_MMIO_START + offset).to_le_bytes());
        guest.extend_from_slice(&[0xc6, 0x00, value]); // mov byte [rax], value
    }
    guest.push(0xf4); // hlt
    let console: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(BootSource::RawLongMode {
        code: guest,
        load_addr: 0x10_0000,
    });
    config.vcpus = 2;
    config.memory_mib = 32;
    config.console = ConsoleOutput::Writer(console.clone());
    // The VM thread confines itself too, so run it on a thread of its own.
    let outcome = std::thread::spawn(move || msbvm_vmm::run(&config, |_| {}))
        .join()
        .expect("the VM thread ends normally")
        .expect("the VM starts");
    assert_eq!(outcome.exit, VmExit::PowerOff { code: 3 });
    assert_eq!(
        String::from_utf8_lossy(&console.lock().unwrap()),
        "confined\n"
    );
    let mut confined = CONFINED.lock().unwrap().clone();
    confined.sort();
    assert_eq!(confined, ["vcpu", "vcpu", "vm"]);
}
