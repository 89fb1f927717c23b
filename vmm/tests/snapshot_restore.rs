//! Snapshot and restore against this host's real /dev/kvm, with a guest of
//! hand-written machine code: a loop that counts in a register and in
//! memory, with a port read (an exit to the VMM) on every turn. The snapshot
//! is taken while it runs; the source and two VMs restored from the snapshot
//! must each finish the count with the register and the memory agreeing,
//! the restored ones without starting over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msbvm_vmm::snapshot::{self, Snapshot};
use msbvm_vmm::{BootSource, ConsoleOutput, VmConfig, VmExit};

const LOAD: u64 = 0x10_0000;
/// Where the guest keeps its count.
const COUNTER: u32 = 0x5000;
/// How far it counts.
const TARGET: u32 = 150_000;
const OK: u32 = 0x11;
const BAD: u32 = 0x22;

/// A tiny assembler: bytes plus forward jumps patched by label.
#[derive(Default)]
struct Asm {
    bytes: Vec<u8>,
    /// (offset of a rel32 field, label it jumps to)
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.push((name, self.bytes.len()));
        self
    }
    /// `jne rel32` to `label`.
    fn jne(&mut self, label: &'static str) -> &mut Self {
        self.emit(&[0x0f, 0x85]);
        self.fixups.push((self.bytes.len(), label));
        self.emit(&[0; 4])
    }
    fn print(&mut self, text: &[u8]) -> &mut Self {
        self.emit(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        for b in text {
            self.emit(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
        }
        self
    }
    fn power_off(&mut self, code: u32) -> &mut Self {
        self.emit(&[0xb8]).emit(&code.to_le_bytes()); // mov eax, code
        self.emit(&[0x66, 0xba, 0x44, 0x04, 0xef, 0xf4]) // mov dx, 0x444; out dx, eax; hlt
    }
    fn finish(&mut self) -> Vec<u8> {
        for &(at, label) in &self.fixups {
            let target = self.labels.iter().find(|l| l.0 == label).unwrap().1;
            let rel = target as i64 - (at as i64 + 4);
            self.bytes[at..at + 4].copy_from_slice(&(rel as i32).to_le_bytes());
        }
        self.bytes.clone()
    }
}

fn counting_guest() -> Vec<u8> {
    let magic = u32::from_le_bytes(*b"MSBV");
    let counter = COUNTER.to_le_bytes();
    let mut a = Asm::default();
    a.print(b"S")
        .emit(&[0x31, 0xc9]) // xor ecx, ecx
        .label("loop")
        .emit(&[0x66, 0xba, 0x40, 0x04]) // mov dx, 0x440 (the platform magic)
        .emit(&[0xed]) // in eax, dx
        .emit(&[0x3d])
        .emit(&magic.to_le_bytes()) // cmp eax, magic
        .jne("bad")
        .emit(&[0x48, 0xff, 0xc1]) // inc rcx
        .emit(&[0x48, 0x89, 0x0c, 0x25])
        .emit(&counter) // mov [COUNTER], rcx
        .emit(&[0x48, 0x81, 0xf9])
        .emit(&TARGET.to_le_bytes()) // cmp rcx, TARGET
        .jne("loop")
        .emit(&[0x48, 0x3b, 0x0c, 0x25])
        .emit(&counter) // cmp rcx, [COUNTER]
        .jne("bad")
        .print(b"E")
        .power_off(OK)
        .label("bad")
        .power_off(BAD);
    a.finish()
}

fn config(console: &Arc<Mutex<Vec<u8>>>) -> VmConfig {
    let mut config = VmConfig::new(BootSource::RawLongMode {
        code: counting_guest(),
        load_addr: LOAD,
    });
    config.vcpus = 2;
    config.memory_mib = 32;
    config.console = ConsoleOutput::Writer(console.clone());
    config
}

fn text(console: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&console.lock().unwrap()).into_owned()
}

/// Runs `source` on a thread and waits until its guest has started counting.
fn start(
    source: VmConfig,
    console: &Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<msbvm_vmm::VmOutcome> {
    let runner = std::thread::spawn(move || msbvm_vmm::run(&source, |_| {}).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(console).contains('S') {
        assert!(Instant::now() < deadline, "the guest never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    runner
}

/// Whether this host can run the test; says why not in one line.
fn kvm_available(test: &str) -> bool {
    let here = std::path::Path::new("/dev/kvm").exists();
    if !here {
        println!("skipped: {test}: this machine has no /dev/kvm");
    }
    here
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("msbvm-snaptest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_running_guest_is_snapshotted_and_restored_twice() {
    if !kvm_available("a_running_guest_is_snapshotted_and_restored_twice") {
        return;
    }
    let dir = scratch("twice");
    let console = Arc::new(Mutex::new(Vec::new()));
    let source = config(&console);
    let control = source.control.clone();
    // Before the VM runs there is nothing to snapshot.
    assert!(matches!(
        control.snapshot(&dir),
        Err(snapshot::Error::NotRunning)
    ));
    let runner = start(source, &console);
    std::thread::sleep(Duration::from_millis(20));
    let header = control.snapshot(&dir).expect("snapshot");
    let outcome = runner.join().unwrap();
    assert_eq!(outcome.exit, VmExit::PowerOff { code: OK }, "source");
    assert_eq!(text(&console), "SE");
    assert_eq!((header.vcpus, header.memory_mib), (2, 32));
    assert_eq!(header.kernel_sha256, None);

    // The count was somewhere in the middle when the snapshot was taken.
    let memory = std::fs::read(dir.join(snapshot::MEMORY_FILE)).unwrap();
    let at = COUNTER as usize;
    let saved = u64::from_le_bytes(memory[at..at + 8].try_into().unwrap());
    println!("snapshot taken at count {saved} of {TARGET}");
    assert!(saved > 0, "the snapshot was taken before the loop ran");

    let snapshot = Arc::new(Snapshot::open(&dir).expect("open"));
    snapshot.verify_memory().expect("memory checksum");
    let restored: Vec<_> = (0..2)
        .map(|_| {
            let console = Arc::new(Mutex::new(Vec::new()));
            let mut config = config(&console);
            config.restore = Some(snapshot.clone());
            let vm = std::thread::spawn(move || msbvm_vmm::run(&config, |_| {}));
            (console, vm)
        })
        .collect();
    for (console, vm) in restored {
        let outcome = vm.join().unwrap().expect("restored VM runs");
        assert_eq!(outcome.exit, VmExit::PowerOff { code: OK }, "restored");
        // It went on from the snapshot: it never printed the start marker.
        assert_eq!(text(&console), "E");
    }
    // Running the restored VMs changed nothing in the snapshot.
    snapshot.verify_memory().expect("memory unchanged");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_restores_only_as_it_was_taken() {
    if !kvm_available("a_snapshot_restores_only_as_it_was_taken") {
        return;
    }
    let dir = scratch("mismatch");
    let console = Arc::new(Mutex::new(Vec::new()));
    let source = config(&console);
    let control = source.control.clone();
    let runner = start(source, &console);
    control.snapshot(&dir).expect("snapshot");
    // A second snapshot into the same directory never overwrites the first;
    // pauses right after one another each pause every vCPU (a vCPU slow to
    // wake from one used to miss the next).
    for _ in 0..20 {
        match control.snapshot(&dir) {
            Err(snapshot::Error::NotRunning) => break,
            other => {
                let again = other.unwrap_err().to_string();
                assert!(again.contains("cannot create"), "{again}");
            }
        }
    }
    runner.join().unwrap();
    // After the VM ended there is nothing to snapshot.
    let snapshot = Arc::new(Snapshot::open(&dir).unwrap());

    let mut fewer = config(&Arc::new(Mutex::new(Vec::new())));
    fewer.vcpus = 1;
    fewer.restore = Some(snapshot.clone());
    let err = msbvm_vmm::run(&fewer, |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("the snapshot has vCPUs 2; the restore asked for 1"),
        "{err}"
    );

    let mut bigger = config(&Arc::new(Mutex::new(Vec::new())));
    bigger.memory_mib = 64;
    bigger.restore = Some(snapshot);
    let err = msbvm_vmm::run(&bigger, |_| {}).unwrap_err().to_string();
    assert!(err.contains("memory (MiB) 32"), "{err}");

    // A damaged state file is refused by name.
    let state = dir.join(snapshot::STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let err = Snapshot::open(&dir).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("checksum"), "{err}");
    // A truncated memory file too.
    bytes[middle] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(snapshot::MEMORY_FILE))
        .unwrap();
    memory.set_len(4096).unwrap();
    let err = Snapshot::open(&dir).unwrap_err().to_string();
    assert!(err.contains("memory file is 4096 bytes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
