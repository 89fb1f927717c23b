//! The L1 machine: QEMU in software emulation with AMD SVM, booting the distribution kernel, so
//! that a VMM inside it gets a /dev/kvm that behaves like hardware.
//!
//! This host's own /dev/kvm (PVM) cannot run a stock guest kernel (see PLATFORM.md), so the
//! end-to-end tests and `msbvm-nested` run `msbvm` one level down. The L1 initramfs holds
//! busybox, the kvm-amd modules, whatever the caller adds, and an init script that loads the
//! modules, runs the caller's command and prints its exit status on a marker line before
//! powering off. The console is cleaned ([`crate::console`]), optionally streamed, and captured.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use msbvm_kernel::initramfs::Initramfs;

use crate::console::{tail, LineCleaner};
use crate::distro::{have_program, DistroKernel};
use crate::error::{Error, Result, INSTALL_HINT};
use crate::l1_arch::L1Arch;
use crate::liveness::{self, Heartbeat};
use crate::report::shell_command;

/// The QEMU binary that runs an x86_64 L1 (see [`L1Arch::qemu`] for the others).
pub const QEMU: &str = "qemu-system-x86_64";
/// Where busybox (static) comes from on the host.
pub const HOST_BUSYBOX: &str = "/bin/busybox";
/// Modules loaded in L1: kvm-amd for /dev/kvm; vhost_vsock and tun for the product's devices.
pub const DEFAULT_MODULES: [&str; 3] = ["kvm-amd", "vhost_vsock", "tun"];
/// Kernel command line of L1: quiet, so the console carries little besides the command's output.
/// `cryptomgr.notests` skips the crypto self-tests: seconds of emulated work that L1 does not
/// need (and where it once stalled in a soft lockup).
pub const L1_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=k quiet loglevel=3 cryptomgr.notests";

/// [`L1_CMDLINE`] with the console of `arch`.
pub fn l1_cmdline(arch: L1Arch) -> String {
    L1_CMDLINE.replace("console=ttyS0", &format!("console={}", arch.console()))
}
/// Printed by the L1 init script once modules are loaded, just before the command runs.
pub const READY_MARKER: &str = "msbvm-nested: L1 ready";
/// Printed by the L1 init script with the command's exit status: `msbvm-nested: exit=<n>`.
pub const EXIT_MARKER: &str = "msbvm-nested: exit=";
/// How long L1 may take to reach its init script (it needs about 5 s; heavy host load can
/// make that several times longer) before the boot counts as stalled.
pub const L1_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Boots of L1 tried when it stalls before reaching its init script.
const L1_BOOT_ATTEMPTS: u32 = 3;
/// What the L1 kernel prints when one of its CPUs is wedged. Seen now and then
/// (a few runs in a hundred) while L2 guests run under QEMU's emulated SVM with
/// two L1 CPUs: the emulated machine never recovers, whatever runs in it.
pub const L1_LOCKUP_MARKER: &str = "watchdog: BUG: soft lockup";
/// What the L1 kernel prints when it panics (then QEMU exits: `panic=-1` with `-no-reboot`).
/// Seen once in a CI run of the fork suite, after many passing ones: "BUG: TASK stack guard
/// page was hit" in `exc_page_fault` on an L1 thread in KVM_RUN, then this line.
pub const L1_PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Console lines kept in error messages.
const TAIL_LINES: usize = 40;
/// Longest wait for a console line before the watcher looks at L1's heartbeat again.
const HEARTBEAT_POLL: Duration = Duration::from_secs(5);

/// Serializes L1 runs within one process: on a 2-core machine two emulated machines at once
/// only slow each other down towards their timeouts, and test functions run in parallel.
static L1_LOCK: Mutex<()> = Mutex::new(());

/// Where the L1 console goes while the machine runs (it is always captured as well).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Only captured.
    Off,
    /// Each line is also printed to stdout.
    Stdout,
    /// Each line is also printed to stderr.
    Stderr,
}

/// The outcome of an L1 run whose command finished.
#[derive(Debug, Clone)]
pub struct NestedOutput {
    /// Exit status of the command inside L1.
    pub exit_code: i32,
    /// The cleaned console: L1 kernel messages (few, L1 is quiet) and the command's output.
    pub console: String,
    /// Host time from starting QEMU to its exit.
    pub elapsed: Duration,
    /// The longest silence of L1's heartbeat ([`liveness::Heartbeat::longest_gap`]).
    pub longest_heartbeat_gap: Option<Duration>,
}

/// Entry point of the harness: `NestedVm::builder()...run(&[...])`.
#[derive(Debug)]
pub struct NestedVm;

impl NestedVm {
    /// A builder with the defaults: 1 vCPU, 2048 MiB, a 600 s timeout, the kvm modules.
    ///
    /// One vCPU because an L1 with two, under QEMU's emulated SVM, now and then wedges its
    /// own kernel (soft lockups on both CPUs, never recovering) while L2 guests run: seen in
    /// 3 of about 60 boots here, against none in 20 boots in a row with one vCPU. L2 guests
    /// with more vCPUs than L1 has still run (their threads share L1's CPU).
    pub fn builder() -> NestedVmBuilder {
        NestedVmBuilder {
            memory_mib: 2048,
            cpus: 1,
            timeout: Duration::from_secs(600),
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            files: Vec::new(),
            stream: Stream::Off,
            arch: L1Arch::X86_64,
        }
    }
}

/// Something the caller adds to the L1 initramfs.
#[derive(Debug, Clone)]
enum Addition {
    /// A host file or directory at an L1 path.
    Host { host: PathBuf, l1: String },
    /// Bytes at an L1 path, with a mode.
    Bytes {
        l1: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A host program and the shared libraries `ldd` names, at their host paths.
    Program { host: PathBuf, l1: String },
}

/// Configures and runs one L1 machine.
#[derive(Debug, Clone)]
pub struct NestedVmBuilder {
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    modules: Vec<String>,
    files: Vec<Addition>,
    stream: Stream,
    arch: L1Arch,
}

impl NestedVmBuilder {
    /// Memory of the L1 machine in MiB (the initramfs lives in it too).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The architecture L1 emulates (x86_64 by default). Also resets the modules to that
    /// architecture's defaults ([`L1Arch::default_modules`]): call it before [`Self::module`].
    pub fn arch(mut self, arch: L1Arch) -> Self {
        self.arch = arch;
        self.modules = arch
            .default_modules()
            .iter()
            .map(|m| m.to_string())
            .collect();
        self
    }

    /// vCPUs of the L1 machine.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Host time after which QEMU is killed; protects against hangs only, so be generous.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also loads this kernel module (with its dependencies) in L1.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// Copies a host file or directory (recursively) to `l1_path`. Binaries must be static,
    /// or added with [`NestedVmBuilder::add_program`].
    pub fn add_file(self, host: impl AsRef<Path>, l1_path: &str) -> Self {
        self.add(Addition::Host {
            host: host.as_ref().to_path_buf(),
            l1: l1_path.to_string(),
        })
    }

    /// Puts `data` at `l1_path` with permission bits `mode`.
    pub fn add_bytes(self, l1_path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.add(Addition::Bytes {
            l1: l1_path.to_string(),
            data: data.into(),
            mode,
        })
    }

    /// Copies a dynamically linked host program to `l1_path`, with every shared library and
    /// the dynamic loader that `ldd` names, each at its host path (L1 has no ld.so.cache, and
    /// the loader's default directories match the host's layout).
    pub fn add_program(self, host: impl AsRef<Path>, l1_path: &str) -> Self {
        self.add(Addition::Program {
            host: host.as_ref().to_path_buf(),
            l1: l1_path.to_string(),
        })
    }

    fn add(mut self, addition: Addition) -> Self {
        self.files.push(addition);
        self
    }

    /// Where the console goes while the machine runs.
    pub fn stream(mut self, stream: Stream) -> Self {
        self.stream = stream;
        self
    }

    /// Runs one command (an argument vector of L1 paths and words) in L1 and returns its exit
    /// status and the console.
    pub fn run<S: AsRef<str>>(self, argv: &[S]) -> Result<NestedOutput> {
        let script = shell_command(argv);
        self.run_script(&script)
    }

    /// Runs a busybox `sh` script in L1 (working directory /tmp) and returns the status it
    /// exits with and the console.
    pub fn run_script(self, script: &str) -> Result<NestedOutput> {
        check_host_tools_for(self.arch)?;
        let kernel = DistroKernel::locate_or_fetch_for(self.arch)?;
        let cpio = self.initramfs(&kernel, script)?;
        let file = TempFile::new("l1-initramfs", "cpio");
        let write = || -> std::io::Result<()> {
            let mut w = BufWriter::new(std::fs::File::create(&file.0)?);
            cpio.write_to(&mut w)?;
            w.flush()
        };
        write().map_err(Error::io(format!("cannot write {}", file.0.display())))?;
        drop(cpio);
        let _serial = L1_LOCK.lock().unwrap_or_else(|poison| poison.into_inner());
        // An L1 boot that stalls, or an L1 kernel that locks up, freezes or panics, is a fault of the
        // emulated machine, not of the command: say so and run the whole script again in a
        // fresh L1 (at most L1_BOOT_ATTEMPTS boots; the message stays in the test's output).
        for attempt in 1.. {
            match self.boot(&kernel.vmlinuz, &file.0) {
                Err(
                    e @ (Error::L1Boot { .. }
                    | Error::L1Lockup { .. }
                    | Error::L1Frozen { .. }
                    | Error::L1Panic { .. }),
                ) if attempt < L1_BOOT_ATTEMPTS => {
                    eprintln!(
                        "msbvm-nested: {}; booting L1 again",
                        first_line(&e.to_string())
                    );
                    if let Error::L1Frozen { registers, .. } = &e {
                        eprintln!("msbvm-nested: where L1's vCPUs were:\n{registers}");
                    }
                }
                result => return result,
            }
        }
        unreachable!("the loop returns")
    }

    /// Builds the L1 initramfs: busybox, modules, additions, the script and the init.
    fn initramfs(&self, kernel: &DistroKernel, script: &str) -> Result<Initramfs> {
        let mut cpio = Initramfs::new();
        for d in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/run",
            "/etc",
            "/mods",
        ] {
            cpio.dir(d, 0o755);
        }
        cpio.char_dev("/dev/console", 0o600, 5, 1);
        add_host(&mut cpio, "/bin/busybox", &self.arch.busybox()?)?;

        let names: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        let modules = kernel.modules(&names)?;
        for m in &modules {
            add_host(&mut cpio, &format!("/mods/{}.ko", m.name), &m.path)?;
        }
        for add in &self.files {
            match add {
                Addition::Host { host, l1 } => add_host(&mut cpio, l1, host)?,
                Addition::Bytes { l1, data, mode } => {
                    cpio.file(l1, *mode, data.clone());
                }
                Addition::Program { host, l1 } => {
                    add_host(&mut cpio, l1, host)?;
                    for lib in shared_libraries(host)? {
                        add_host(&mut cpio, &lib.to_string_lossy(), &lib)?;
                    }
                }
            }
        }
        cpio.file("/inner.sh", 0o755, script.as_bytes().to_vec());
        let modules: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        cpio.file(
            "/init",
            0o755,
            init_script(&modules, self.arch.has_heartbeat_port()),
        );
        Ok(cpio)
    }

    /// Boots L1 with QEMU, streams and captures the console, enforces the timeout.
    fn boot(&self, vmlinuz: &Path, initrd: &Path) -> Result<NestedOutput> {
        let start = Instant::now();
        let beat = TempFile::new("l1-heartbeat", "log");
        let monitor = TempFile::new("l1-monitor", "sock");
        let mut child = self.spawn_qemu(vmlinuz, initrd, &beat.0, &monitor.0)?;
        let (rx, reader, err_reader) = read_console(&mut child);
        let mut heartbeat = Heartbeat::new(&beat.0);
        let watch = self.watch(&mut child, &rx, start, &mut heartbeat, &monitor.0);
        let status = child
            .wait()
            .map_err(Error::io(format!("cannot wait for {QEMU}")))?;
        let _ = reader.join();
        let qemu_err = err_reader.join().unwrap_or_default();
        let elapsed = start.elapsed();
        let gap = heartbeat.longest_gap();
        self.outcome(watch, status, &qemu_err, elapsed)
            .map(|out| NestedOutput {
                longest_heartbeat_gap: gap,
                ..out
            })
    }

    /// Starts QEMU on the L1 kernel and initramfs, its console on stdout, the heartbeat port
    /// appending to `beat` and the monitor on the socket `monitor` ([`liveness`]).
    fn spawn_qemu(
        &self,
        vmlinuz: &Path,
        initrd: &Path,
        beat: &Path,
        monitor: &Path,
    ) -> Result<Child> {
        let qemu = self.arch.qemu();
        let serial_and_monitor = if self.arch.has_heartbeat_port() {
            liveness::qemu_args(beat, monitor)
        } else {
            liveness::qemu_args_without_heartbeat(monitor)
        };
        Command::new(qemu)
            .args(self.arch.machine_args())
            .args([
                "-smp",
                &self.cpus.to_string(),
                "-m",
                &self.memory_mib.to_string(),
            ])
            // No NIC: it would only add an iPXE option ROM to the boot.
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .args(serial_and_monitor)
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &l1_cmdline(self.arch)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::QemuStart {
                reason: format!("cannot start {qemu}: {e}"),
                console_tail: String::new(),
            })
    }

    /// Collects the console until L1's command ends, the L1 kernel locks up, L1 freezes (its
    /// heartbeat stops) or a deadline passes (the ready deadline until the command runs, then
    /// the run's); kills QEMU in all but the first case.
    fn watch(
        &self,
        child: &mut Child,
        rx: &mpsc::Receiver<String>,
        start: Instant,
        heartbeat: &mut Heartbeat,
        monitor: &Path,
    ) -> Watch {
        let deadline = start + self.timeout;
        let ready_deadline = start + L1_READY_TIMEOUT.min(self.timeout);
        let mut watch = Watch::default();
        loop {
            let until = if watch.ready {
                deadline
            } else {
                ready_deadline
            };
            let now = Instant::now();
            if watch.ready && heartbeat.frozen(now) {
                watch.frozen = Some(liveness::registers(monitor));
                let _ = child.kill();
                break;
            }
            let left = until.saturating_duration_since(now);
            // Wake at least every few seconds to look at the heartbeat.
            match rx.recv_timeout(left.min(HEARTBEAT_POLL)) {
                Ok(line) => {
                    // Blank lines before the command runs are the firmware's screen clearing.
                    if !watch.ready && line.trim().is_empty() {
                        continue;
                    }
                    watch.ready |= line.contains(READY_MARKER);
                    self.echo(&line);
                    watch.console.push_str(&line);
                    watch.console.push('\n');
                    if line.contains(L1_LOCKUP_MARKER) {
                        // The emulated L1 kernel itself is wedged; it will not recover.
                        watch.locked_up = true;
                        let _ = child.kill();
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < until => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    watch.timed_out = true;
                    // Our own child, killed by handle; the reader then sees EOF.
                    let _ = child.kill();
                    break;
                }
            }
        }
        watch
    }

    /// What the run came to, from its console and QEMU's exit.
    fn outcome(
        &self,
        watch: Watch,
        status: ExitStatus,
        qemu_err: &str,
        elapsed: Duration,
    ) -> Result<NestedOutput> {
        let Watch {
            console,
            ready,
            timed_out,
            locked_up,
            frozen,
        } = watch;
        if let Some(registers) = frozen {
            return Err(Error::L1Frozen {
                secs: liveness::FROZEN_AFTER.as_secs(),
                registers,
                console_tail: tail(&console, TAIL_LINES),
            });
        }
        if locked_up {
            return Err(Error::L1Lockup {
                console_tail: tail(&console, TAIL_LINES),
            });
        }
        if timed_out && !ready {
            return Err(Error::L1Boot {
                secs: L1_READY_TIMEOUT.min(self.timeout).as_secs(),
                console_tail: tail(&console, TAIL_LINES),
            });
        }
        if timed_out {
            return Err(Error::Timeout {
                secs: self.timeout.as_secs(),
                console_tail: tail(&console, TAIL_LINES),
            });
        }
        if let Some(code) = exit_status(&console) {
            return Ok(NestedOutput {
                exit_code: code,
                console,
                elapsed,
                longest_heartbeat_gap: None,
            });
        }
        if ready && l1_panicked(&console) {
            return Err(Error::L1Panic {
                console_tail: tail(&console, TAIL_LINES),
            });
        }
        let qemu_status = format!("QEMU {status}; its stderr: {}", qemu_err.trim());
        if !ready && !status.success() {
            // QEMU itself failed (bad option, no memory, broken install): the host cannot run
            // the nested machine.
            return Err(Error::QemuStart {
                reason: qemu_status,
                console_tail: tail(&console, TAIL_LINES),
            });
        }
        Err(Error::NoExitStatus {
            qemu_status,
            console_tail: tail(&console, TAIL_LINES),
        })
    }

    /// Prints a console line where the caller asked for it.
    fn echo(&self, line: &str) {
        match self.stream {
            Stream::Off => {}
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            // eprintln! (not a raw write) so that the test harness captures it per test.
            Stream::Stderr => eprintln!("{line}"),
        }
    }
}

/// Checks that this host can run L1 at all: QEMU and busybox installed, the distribution
/// kernel available (downloaded into the cache on first use). Cheap after the first call, so
/// tests run it before spending minutes on builds that L1 could not use.
pub fn preflight() -> Result<()> {
    preflight_for(L1Arch::X86_64)
}

/// [`preflight`] for an L1 of architecture `arch`; for a foreign one also the cross toolchain
/// that builds what runs inside it (`scripts/setup-arm64` installs it).
pub fn preflight_for(arch: L1Arch) -> Result<()> {
    check_host_tools_for(arch)?;
    if arch != L1Arch::host() {
        let std_dir = format!("/usr/lib/rustlib/{}", arch.target_triple());
        let linker = crate::artifacts::CROSS_LINKER;
        for (what, present) in [
            (
                crate::artifacts::CROSS_CARGO.to_string(),
                have_program(crate::artifacts::CROSS_CARGO),
            ),
            (
                format!("{std_dir} (the {arch} Rust standard library)"),
                Path::new(&std_dir).is_dir(),
            ),
            (linker.to_string(), have_program(linker)),
        ] {
            if !present {
                return Err(Error::missing(what, "scripts/setup-arm64"));
            }
        }
    }
    DistroKernel::locate_or_fetch_for(arch).map(drop)
}

/// Whether L1's own kernel panicked. Only asked of a run that ended without an exit status
/// (an L1 whose command finished never panicked); a guest kernel's panic that a script
/// printed from a log would not have ended L1.
fn l1_panicked(console: &str) -> bool {
    console.lines().any(|l| l.contains(L1_PANIC_MARKER))
}

/// What [`NestedVmBuilder::boot`] saw of the console.
#[derive(Default)]
struct Watch {
    /// Every line, cleaned.
    console: String,
    /// L1 reached its command (the ready marker was printed).
    ready: bool,
    /// A deadline passed.
    timed_out: bool,
    /// The L1 kernel reported a lockup.
    locked_up: bool,
    /// L1's heartbeat stopped: where its vCPUs were, as the QEMU monitor said.
    frozen: Option<String>,
}

/// Reader threads: stdout is the console (split into clean lines, sent one by one), stderr is
/// QEMU's own messages (returned whole). Both end when QEMU exits or is killed.
fn read_console(
    child: &mut Child,
) -> (
    mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
    std::thread::JoinHandle<String>,
) {
    let (tx, rx) = mpsc::channel::<String>();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut cleaner = LineCleaner::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            for line in cleaner.push(&buf[..n]) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
        if let Some(line) = cleaner.finish() {
            let _ = tx.send(line);
        }
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    (rx, reader, err_reader)
}

/// The first line of a message.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Adds a host file (symlinks followed) or directory tree at `l1` in the archive.
fn add_host(cpio: &mut Initramfs, l1: &str, host: &Path) -> Result<()> {
    let added = if host.is_dir() {
        cpio.host_tree(l1, host).map(drop)
    } else {
        cpio.host_file(l1, host).map(drop)
    };
    added.map_err(|e| Error::Initramfs(format!("adding {} as {l1}: {e}", host.display())))
}

/// Fails with a clear message when QEMU or busybox is missing on the host.
pub fn check_host_tools() -> Result<()> {
    check_host_tools_for(L1Arch::X86_64)
}

/// [`check_host_tools`] for an L1 of architecture `arch`.
pub fn check_host_tools_for(arch: L1Arch) -> Result<()> {
    let qemu = arch.qemu();
    if !have_program(qemu) {
        return Err(Error::missing(
            qemu,
            format!("apt-get install {}", arch.qemu_package()),
        ));
    }
    if arch == L1Arch::X86_64 && !Path::new(HOST_BUSYBOX).is_file() {
        return Err(Error::missing(HOST_BUSYBOX, INSTALL_HINT));
    }
    Ok(())
}

/// The exit status on the last exit marker line of an L1 console.
pub fn exit_status(console: &str) -> Option<i32> {
    console.lines().rev().find_map(|l| {
        let rest = &l[l.find(EXIT_MARKER)? + EXIT_MARKER.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    })
}

/// The L1 init: mounts, modules, the caller's script, the exit marker, power off.
fn init_script(modules: &[&str], heartbeat: bool) -> Vec<u8> {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s\n\
         export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         ip link set lo up 2>/dev/null\n",
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /mods/{m}.ko || echo 'msbvm-nested: insmod {m} failed'\n"
        ));
    }
    s.push_str("[ -c /dev/kvm ] || echo 'msbvm-nested: warning: no /dev/kvm in L1'\n");
    if heartbeat {
        s.push_str(&liveness::heartbeat_line());
    }
    // A newline first: the quiet L1 kernel may print nothing after the firmware's last,
    // unterminated line ("Booting from ROM..."), and the marker must not share a line with
    // firmware noise, which the console cleaner drops (then a retried run never counted as
    // ready and was cut at the ready deadline).
    s.push_str(&format!("echo; echo '{READY_MARKER}'\n"));
    // The script runs in a subshell so that its `exit` still reaches the marker below.
    s.push_str("cd /tmp\n(. /inner.sh)\n");
    s.push_str(&format!("echo \"{EXIT_MARKER}$?\"\n"));
    s.push_str("sync\npoweroff -f\n");
    s.into_bytes()
}

/// The shared libraries and dynamic loader of a host program, as `ldd` lists them.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("cannot run ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(Error::BadArtifact {
            path: program.to_path_buf(),
            reason: format!(
                "ldd failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(parse_ldd(&text))
}

/// Extracts absolute library paths from `ldd` output.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso lines name no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A file in the temp directory, removed on drop.
#[derive(Debug)]
struct TempFile(PathBuf);

impl TempFile {
    /// A fresh path unique to this process and call.
    fn new(stem: &str, ext: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir();
        let path = dir.join(format!("msbvm-{stem}-{}-{n}.{ext}", std::process::id()));
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exit_status() {
        assert_eq!(exit_status("x\nmsbvm-nested: exit=3\n"), Some(3));
        assert_eq!(
            exit_status("msbvm-nested: exit=1\nmsbvm-nested: exit=0"),
            Some(0)
        );
        assert_eq!(exit_status("junk[  1.0] msbvm-nested: exit=42\n"), Some(42));
        assert_eq!(exit_status("msbvm-nested: exit=\n"), None);
    }

    #[test]
    fn an_l1_kernel_panic_is_told_from_a_finished_command() {
        use std::os::unix::process::ExitStatusExt;
        let panicked = format!(
            "{READY_MARKER}\n[  216.391147] BUG: TASK stack guard page was hit\n\
             [  216.403516] {L1_PANIC_MARKER}: corrupted stack end detected inside scheduler\n"
        );
        let run = |console: &str| {
            let watch = Watch {
                console: console.to_string(),
                ready: true,
                ..Watch::default()
            };
            NestedVm::builder().outcome(watch, ExitStatus::from_raw(0), "", Duration::from_secs(1))
        };
        assert!(matches!(run(&panicked), Err(Error::L1Panic { .. })));
        // A command that printed a panic (a guest's log, say) and then finished is not one.
        let finished = format!("{panicked}{EXIT_MARKER}0\n");
        assert_eq!(run(&finished).expect("finished").exit_code, 0);
        // Without the panic line, an L1 that ended early is still an unexplained end.
        assert!(matches!(
            run(&format!("{READY_MARKER}\n")),
            Err(Error::NoExitStatus { .. })
        ));
    }

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibgone.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn init_script_loads_modules_then_runs() {
        let s = String::from_utf8(init_script(&["kvm", "kvm_amd"], true)).unwrap();
        let kvm = s.find("insmod /mods/kvm.ko").unwrap();
        let amd = s.find("insmod /mods/kvm_amd.ko").unwrap();
        let run = s.find("/inner.sh").unwrap();
        assert!(kvm < amd && amd < run);
        assert!(s.ends_with("poweroff -f\n"));
    }
}
