//! The boot path: from a [`VmConfig`] to a running VM, and back to a
//! [`VmOutcome`] once it stops.
//!
//! The calling thread becomes the VM's supervisor: it creates the memory, the
//! KVM VM, the devices and one thread per vCPU, then waits for a vCPU to report
//! the end. Whatever the end, every vCPU thread is stopped and joined before
//! `run` returns, so nothing of the VM outlives the call.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, EntryMode};
use crate::config::{BootSource, VmConfig};
use crate::devices::console::{Console, SharedConsole};
use crate::devices::virtio::{self, VirtioSlots};
use crate::devices::{i8042, platform, serial, Bus};
use crate::exit::{FaultKind, VcpuFault, VmExit};
use crate::kvm::halt::{self, HaltWatch};
use crate::kvm::vcpu::{self, Report, Shared, Vcpu};
use crate::kvm::{self, cpuid, regs, KvmVm};
use crate::layout::{PLATFORM_MMIO_START, SERIAL_IRQ};
use crate::memory;
use crate::stats::{self, MemoryStats};

/// How often the supervisor wakes to flush the console.
const TICK: Duration = Duration::from_millis(100);
/// How often the supervisor samples the vCPU threads' scheduler state once
/// every vCPU has stayed inside KVM_RUN this long (see [`halt`]).
const HALT_SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Interval between kicks while waiting for vCPU threads to stop.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Errors that keep a VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// KVM could not be opened or set up.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {detail}")]
    Memory {
        /// Requested size.
        mib: u64,
        /// Why.
        detail: String,
    },
    /// Loading the kernel or writing boot structures failed.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The console destination could not be opened.
    #[error("cannot open the console output: {0}")]
    Console(std::io::Error),
    /// A host resource (eventfd, thread) could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A device could not be placed on a bus.
    #[error("device layout: {0}")]
    Bus(#[from] crate::devices::BusError),
    /// A device could not be created.
    #[error("cannot create the {what} device: {detail}")]
    Device {
        /// Which device.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Something that happened while the VM ran, delivered as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum VmEvent {
    /// The guest wrote the boot-complete marker, this long after the VMM started.
    BootComplete(Duration),
}

/// How a VM run ended, with what was measured.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// Why it stopped.
    pub exit: VmExit,
    /// When the guest signalled boot completion, relative to `start_time`.
    pub boot_complete: Option<Duration>,
    /// From `start_time` to the moment the stop was decided.
    pub stopped_after: Duration,
    /// The VMM's memory figures just before the guest memory was released.
    pub memory: MemoryStats,
    /// The last bytes the guest wrote to its console (at most
    /// [`crate::devices::console::TAIL_BYTES`]).
    pub console_tail: String,
    /// After a vCPU fault: the end of the guest kernel's log buffer read from
    /// guest memory (what a `quiet` kernel never printed), or why it could not
    /// be read. `None` for other exits.
    pub kernel_log: Option<String>,
}

/// Lines of the guest kernel's log kept in a fault report.
const KERNEL_LOG_LINES: usize = 40;

/// The end of the kernel log of a guest that faulted (see [`crate::klog`]).
fn kernel_log_after_fault(config: &VmConfig, mem: &memory::GuestMemory) -> String {
    match &config.boot {
        BootSource::Linux { kernel, .. } => crate::klog::read(mem, kernel, KERNEL_LOG_LINES)
            .unwrap_or_else(|why| format!("(kernel log unavailable: {why})")),
        _ => "(kernel log unavailable: not a Linux guest)".into(),
    }
}

/// Boots the VM described by `config` and runs it to the end. `on_event` is
/// called on this thread as events happen.
pub fn run(config: &VmConfig, mut on_event: impl FnMut(&VmEvent)) -> Result<VmOutcome, Error> {
    config.validate().map_err(Error::Config)?;
    let kvm_handle = kvm::open()?;

    let mem = memory::create(config.memory_mib << 20).map_err(|e| Error::Memory {
        mib: config.memory_mib,
        detail: e.to_string(),
    })?;
    let vm = kvm::create_vm(kvm_handle, &mem)?;

    let console = Console::open(&config.console).map_err(Error::Console)?;
    let console = SharedConsole(Arc::new(Mutex::new(console)));
    let (pio, mut mmio) = build_buses(&vm, &mem, console.clone())?;
    let mut announce = Vec::new();
    let mut slots = VirtioSlots::default();
    if let Some(vsock) = &config.vsock {
        let device =
            msbvm_virtio::vsock::Vsock::new(vsock.guest_cid.into(), vsock.uds_path.clone())
                .map_err(|e| Error::Device {
                    what: "virtio-vsock",
                    detail: e.to_string(),
                })?;
        announce.push(virtio::attach(
            &vm,
            &mem,
            &mut mmio,
            &mut slots,
            Box::new(device),
        )?);
    }
    for spec in &config.devices {
        let device = (spec.make)().map_err(|e| Error::Device {
            what: "virtio device",
            detail: format!("{}: {e}", spec.name),
        })?;
        announce.push(virtio::attach(&vm, &mem, &mut mmio, &mut slots, device)?);
    }
    let entry = boot::load(
        &mem,
        &with_devices_announced(&config.boot, &announce),
        config.vcpus,
    )?;

    let shared = Arc::new(Shared::new(config.vcpus));
    let (tx, rx) = mpsc::channel();
    vcpu::install_kick_handler();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut setup_error = None;
    for index in 0..config.vcpus {
        let result = create_vcpu(&vm, index, config.vcpus, entry).and_then(|fd| {
            let vcpu = Vcpu {
                index,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: mem.clone(),
                shared: shared.clone(),
                reports: tx.clone(),
            };
            std::thread::Builder::new()
                .name(format!("msbvm-vcpu{index}"))
                .spawn(move || {
                    msbvm_virtio::confine::thread_started("vcpu");
                    vcpu.run()
                })
                .map_err(|source| Error::Host {
                    what: "vCPU thread",
                    source,
                })
        });
        match result {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                setup_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    if let Some(e) = setup_error {
        stop_vcpus(&shared, threads);
        return Err(e);
    }
    // Set-up is over: from here this thread only supervises the vCPUs.
    msbvm_virtio::confine::thread_started("vm");

    let mut boot_complete = None;
    let mut halted = vec![false; config.vcpus as usize];
    let mut watch = HaltWatch::new(config.vcpus as usize);
    let mut last_sample = Instant::now();
    let exit = loop {
        if config.stop.is_stopped() {
            break VmExit::Stopped;
        }
        match rx.recv_timeout(TICK) {
            Ok(Report::Stop(exit)) => break exit,
            Ok(Report::BootComplete(at)) => {
                let since = at.saturating_duration_since(config.start_time);
                boot_complete = Some(since);
                on_event(&VmEvent::BootComplete(since));
            }
            Ok(Report::Halted(index, state)) => {
                halted[index as usize] = state;
                if halted.iter().all(|h| *h) {
                    break VmExit::Halted;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                console.flush_pending();
                if last_sample.elapsed() < HALT_SAMPLE_EVERY {
                    continue;
                }
                last_sample = Instant::now();
                if check_for_halt(&shared, &mut watch) {
                    for (index, handle) in threads.iter().enumerate() {
                        if !halted[index] {
                            kick(handle);
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break VmExit::Fault(VcpuFault {
                    vcpu: 0,
                    kind: FaultKind::Host("every vCPU thread ended without a report".into()),
                    rip: 0,
                    insn_bytes: Vec::new(),
                    regs: None,
                })
            }
        }
    };
    let stopped_after = config.start_time.elapsed();
    stop_vcpus(&shared, threads);
    console.flush_pending();

    let guest_starts: Vec<usize> = mem
        .iter()
        .filter_map(|r| mem.get_host_address(r.start_addr()).ok())
        .map(|p| p as usize)
        .collect();
    let memory = stats::read(&guest_starts);
    let kernel_log = matches!(exit, VmExit::Fault(_)).then(|| kernel_log_after_fault(config, &mem));
    Ok(VmOutcome {
        exit,
        boot_complete,
        stopped_after,
        memory,
        console_tail: console.tail(),
        kernel_log,
    })
}

/// Samples the vCPU threads for [`HaltWatch`]; true when they should be
/// kicked to check for a halt with interrupts off. The scheduler is only asked
/// once every vCPU has been inside KVM_RUN for a while (a vCPU exiting to user
/// space is visibly alive). Where `/proc` cannot be read (a confined runtime),
/// the time since the vCPU last entered KVM_RUN stands in: coarser (an idle
/// guest looks quiet too), but the watcher's backoff still bounds the checks.
fn check_for_halt(shared: &Shared, watch: &mut HaltWatch) -> bool {
    let samples: Vec<_> = (0..shared.tids.len())
        .map(|i| {
            let inside = shared
                .in_guest_for(i)
                .is_some_and(|d| d >= HALT_SAMPLE_EVERY);
            let tid = shared.tids[i].load(Ordering::Acquire);
            if !inside || tid <= 0 {
                return None;
            }
            halt::sample_thread(tid).or(Some(halt::ThreadSample {
                sleeping: true,
                switches: shared.in_guest_since[i].load(Ordering::Acquire),
            }))
        })
        .collect();
    watch.observe(
        Instant::now(),
        &samples,
        shared.io_exits.load(Ordering::Relaxed),
    )
}

/// The boot source with the virtio devices' command-line entries appended
/// (raw guests have no command line and are returned unchanged).
fn with_devices_announced(boot: &BootSource, entries: &[String]) -> BootSource {
    match boot {
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } if !entries.is_empty() => BootSource::Linux {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: format!("{cmdline} {}", entries.join(" ")),
        },
        other => other.clone(),
    }
}

/// Port-I/O and MMIO buses with the console UART, the i8042 and the platform device.
fn build_buses(
    vm: &KvmVm,
    mem: &memory::GuestMemory,
    console: SharedConsole,
) -> Result<(Bus, Bus), Error> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Host {
        what: "serial interrupt eventfd",
        source,
    })?;
    vm.fd
        .register_irqfd(&irq, SERIAL_IRQ)
        .map_err(kvm::ioctl("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(serial::SerialDevice::new(irq, console)));
    let i8042 = Arc::new(Mutex::new(i8042::I8042::new(mem.clone())));
    let platform = Arc::new(Mutex::new(platform::Platform::default()));

    let mut pio = Bus::new();
    pio.insert(serial, serial::COM1_BASE, serial::COM1_LEN)?;
    pio.insert(
        i8042,
        i8042::DATA_PORT,
        i8042::COMMAND_PORT - i8042::DATA_PORT + 1,
    )?;
    pio.insert(platform.clone(), platform::PORT_BASE, platform::LEN)?;
    let mut mmio = Bus::new();
    mmio.insert(platform, PLATFORM_MMIO_START, platform::LEN)?;
    Ok((pio, mmio))
}

fn create_vcpu(
    vm: &KvmVm,
    index: u8,
    count: u8,
    entry: EntryMode,
) -> Result<kvm_ioctls::VcpuFd, Error> {
    let fd = vm
        .fd
        .create_vcpu(index as u64)
        .map_err(kvm::ioctl("KVM_CREATE_VCPU"))?;
    let host = cpuid::HostFeatures {
        tsc_deadline_timer: vm.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    };
    fd.set_cpuid2(&cpuid::for_vcpu(&vm.supported_cpuid, index, count, host))
        .map_err(kvm::ioctl("KVM_SET_CPUID2"))?;
    let (set, wanted) = regs::setup_msrs(&fd).map_err(kvm::ioctl("KVM_SET_MSRS"))?;
    if set != wanted {
        tracing::warn!(
            vcpu = index,
            set,
            wanted,
            "KVM accepted only some boot MSRs"
        );
    }
    regs::setup_fpu(&fd).map_err(kvm::ioctl("KVM_SET_FPU"))?;
    regs::setup_lint(&fd).map_err(kvm::ioctl("KVM_SET_LAPIC"))?;
    // Application processors wait for the boot CPU's INIT/SIPI in the
    // in-kernel local APIC; only the boot CPU gets an entry state.
    if index == 0 {
        regs::setup_boot_vcpu(&fd, entry).map_err(kvm::ioctl("KVM_SET_REGS"))?;
    }
    Ok(fd)
}

fn kick(handle: &JoinHandle<()>) {
    // SAFETY: the thread is alive (not joined) while we hold its handle, and the
    // kick signal has a handler installed, so delivery only interrupts KVM_RUN.
    unsafe {
        libc::pthread_kill(handle.as_pthread_t() as _, vcpu::kick_signal());
    }
}

/// Raises the stop flag and kicks every vCPU thread until it has left its loop.
fn stop_vcpus(shared: &Shared, threads: Vec<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    for handle in threads {
        // The kick can land just before the thread re-enters KVM_RUN, so keep
        // kicking until it is out.
        while !handle.is_finished() && Instant::now() < deadline {
            kick(&handle);
            std::thread::sleep(KICK_INTERVAL);
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            tracing::error!("a vCPU thread did not stop within 10 s; leaving it detached");
        }
    }
}
