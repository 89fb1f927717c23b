//! `msbvm boot`: boot a kernel with the console on stdout, and turn the way
//! the VM ended into an exit status.
//!
//! Exit status: 0 clean power-off; 1 the VM could not start; 3 the guest
//! rebooted; 4 the guest kernel panicked; 5 the guest halted without powering
//! off; 6 a vCPU failed (hypervisor error); 7 the guest powered off with a
//! non-zero code (printed); 8 stopped by the host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use msbvm_vmm::kvm::{probe_host, HostKvm};
use msbvm_vmm::{BootSource, ConsoleOutput, VmConfig, VmEvent, VmExit, DEFAULT_CMDLINE};

/// The command that boots under nested emulation on hosts like ours.
const NESTED_COMMAND: &str = "cargo run --release -p msbvm-tests --bin msbvm-nested -- boot";

/// Arguments of `msbvm boot`.
#[derive(Args)]
pub struct BootArgs {
    /// Kernel image (ELF vmlinux with a PVH note, or bzImage). Default: the
    /// project's guest kernel, built on first use.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio archive). Default: a minimal one holding
    /// `msbvm-init`, found next to this executable or at $MSBVM_INIT.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default).
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Words appended to the command line (for example `loglevel=7` to see the
    /// whole boot log).
    #[arg(long)]
    append: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Append the console to this file instead of stdout.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Report the VMM's memory use at exit.
    #[arg(long)]
    stats: bool,
    /// Write a snapshot of the running guest into this new directory after
    /// --snapshot-after seconds, then let it run on (a low-level aid for
    /// testing the VMM; sandboxes have `msbvm snapshot`).
    #[arg(long, requires = "snapshot_after")]
    snapshot_dir: Option<PathBuf>,
    /// Seconds after the start at which --snapshot-dir is written.
    #[arg(long, requires = "snapshot_dir")]
    snapshot_after: Option<f64>,
    /// Restore the guest saved in this snapshot directory instead of booting
    /// (--kernel must be the one it was taken with; the vCPU count and
    /// memory size are the snapshot's).
    #[arg(long, conflicts_with_all = ["initrd", "snapshot_dir"])]
    restore: Option<PathBuf>,
    /// How a restored guest gets its memory: `shared` (mapped from the
    /// snapshot, copy on write) or `copy` (read into memory of its own).
    #[arg(long, default_value = "shared", requires = "restore")]
    restore_memory: msbvm_vmm::snapshot::RestoreMemory,
}

/// Asks the VM for a snapshot into `dir` after `after` seconds, on a thread
/// of its own, and reports how it went on stderr.
fn snapshot_later(control: msbvm_vmm::VmControl, dir: PathBuf, after: f64) {
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs_f64(after.max(0.0)));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!(
                "msbvm: snapshot failed: cannot create {}: {e}",
                dir.display()
            );
            return;
        }
        let started = Instant::now();
        match control.snapshot(&dir) {
            Ok(header) => eprintln!(
                "msbvm: snapshot dir={} ms={:.3} data_pages={} memory_mib={}",
                dir.display(),
                started.elapsed().as_secs_f64() * 1e3,
                header.memory.data_pages,
                header.memory_mib
            ),
            Err(e) => eprintln!("msbvm: snapshot failed: {e}"),
        }
    });
}

fn default_init() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MSBVM_INIT").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("msbvm-init");
    candidate.is_file().then_some(candidate)
}

/// Writes the default initramfs to a temporary file and returns its path.
fn default_initrd() -> Result<PathBuf, String> {
    let init = default_init().ok_or(
        "no --initrd given and `msbvm-init` was not found next to msbvm or at $MSBVM_INIT; \
         build it (`cargo build -p msbvm-guest-agent`) or pass --initrd",
    )?;
    let mut image = msbvm_kernel::Initramfs::new();
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run"] {
        image.dir(dir, 0o755);
    }
    image
        .host_file("/init", &init)
        .map_err(|e| format!("cannot add {} to the initramfs: {e}", init.display()))?;
    let path = std::env::temp_dir().join(format!("msbvm-initrd-{}.cpio", std::process::id()));
    std::fs::write(&path, image.to_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn kernel_path(given: Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(p) => Ok(p),
        None => msbvm_kernel::build(msbvm_kernel::Progress::auto())
            .map_err(|e| format!("no --kernel given and the guest kernel is unavailable: {e}")),
    }
}

struct TempFile(Option<PathBuf>);
impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Runs `msbvm boot`.
pub fn run(args: BootArgs, start: Instant) -> ExitCode {
    let kernel = match kernel_path(args.kernel) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let restore = match &args.restore {
        Some(dir) => match msbvm_vmm::snapshot::Snapshot::open(dir) {
            Ok(s) => Some(std::sync::Arc::new(s)),
            Err(e) => return fail(&e.to_string()),
        },
        None => None,
    };
    let (initrd, _cleanup) = match (args.initrd, &restore) {
        (_, Some(_)) => (None, TempFile(None)),
        (Some(p), None) => (Some(p), TempFile(None)),
        (None, None) => match default_initrd() {
            Ok(p) => (Some(p.clone()), TempFile(Some(p))),
            Err(e) => return fail(&e),
        },
    };
    let (cpus, memory) = match &restore {
        Some(s) => (s.state.header.vcpus, s.state.header.memory_mib),
        None => (args.cpus, args.memory),
    };
    warn_about_host(&kernel);

    let config = VmConfig {
        boot: BootSource::Linux {
            kernel,
            initrd,
            cmdline: match args.append {
                Some(extra) => format!("{} {extra}", args.cmdline),
                None => args.cmdline,
            },
        },
        vcpus: cpus,
        memory_mib: memory,
        console: match args.console_log {
            Some(p) => ConsoleOutput::File(p),
            None => ConsoleOutput::Stdout,
        },
        start_time: start,
        devices: Vec::new(),
        stop: msbvm_vmm::StopHandle::new(),
        memory: msbvm_vmm::memory::MemoryHandle::new(),
        control: msbvm_vmm::VmControl::new(),
        restore,
        restore_memory: args.restore_memory,
    };
    if let (Some(dir), Some(after)) = (args.snapshot_dir, args.snapshot_after) {
        snapshot_later(config.control.clone(), dir, after);
    }
    let outcome = match msbvm_vmm::run(&config, |event| match event {
        VmEvent::BootComplete(d) => {
            eprintln!("msbvm: boot-timer ms={:.3}", d.as_secs_f64() * 1e3)
        }
        VmEvent::Restored(d) => {
            eprintln!("msbvm: restored ms={:.3}", d.as_secs_f64() * 1e3)
        }
    }) {
        Ok(o) => o,
        Err(e) => return fail(&e.to_string()),
    };

    let code = match &outcome.exit {
        VmExit::PowerOff { code } => *code,
        _ => 0,
    };
    if args.stats {
        let m = outcome.memory;
        eprintln!(
            "msbvm: stats vmm_rss_kib={} vmm_peak_rss_kib={} guest_resident_kib={} overhead_kib={}",
            m.rss_kib,
            m.peak_rss_kib,
            m.guest_resident_kib,
            m.overhead_kib()
        );
    }
    if !matches!(outcome.exit, VmExit::PowerOff { code: 0 }) {
        eprintln!("msbvm: {}", outcome.exit);
    }
    if let Some(log) = &outcome.kernel_log {
        eprintln!("msbvm: guest kernel log (read from guest memory):\n{log}");
    }
    eprintln!(
        "msbvm: exit reason={} code={} ms={:.3}",
        outcome.exit.reason(),
        code,
        outcome.stopped_after.as_secs_f64() * 1e3
    );
    ExitCode::from(match outcome.exit {
        VmExit::PowerOff { code: 0 } => 0,
        VmExit::PowerOff { .. } => 7,
        VmExit::Reboot => 3,
        VmExit::Panic => 4,
        VmExit::Halted => 5,
        VmExit::Fault(_) => 6,
        VmExit::Stopped => 8,
    })
}

fn warn_about_host(kernel: &Path) {
    match probe_host() {
        HostKvm::Pvm => eprintln!(
            "msbvm: warning: this host's /dev/kvm is PVM, a paravirtual KVM that runs only \
             PVM-enabled guest kernels; {} will print its banner and then stop with a KVM \
             emulation failure. To boot it under nested emulation instead, run from the \
             msbvm source tree: {NESTED_COMMAND}",
            kernel.display()
        ),
        HostKvm::Unknown => eprintln!(
            "msbvm: warning: /dev/kvm exists but the CPU shows no VT-x/AMD-V flags; \
             a stock guest kernel may not run here"
        ),
        HostKvm::Hardware | HostKvm::Missing => {}
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("msbvm: error: {message}");
    ExitCode::from(1)
}
