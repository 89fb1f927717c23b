//! The boot path: from a [`VmConfig`] to a running VM, and back to a
//! [`VmOutcome`] once it stops.
//!
//! The calling thread becomes the VM's supervisor: it creates the memory, the
//! VM (through the [`Hypervisor`] it is given), the devices and one thread per
//! vCPU, then waits for a vCPU to report the end. Whatever the end, every vCPU
//! thread is stopped and joined before [`run`] returns, so nothing of the VM
//! outlives the call. Nothing here knows which hypervisor runs the VM.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::{self, boot, layout, EntryMode};
use crate::config::{BootSource, VmConfig};
use crate::devices::console::{Console, SharedConsole};
use crate::devices::virtio::{self, VirtioSlots};
use crate::devices::{self, Buses};
use crate::exit::{FaultKind, VcpuFault, VmExit};
use crate::halt::{self, HaltWatch};
use crate::hypervisor::{self, Hypervisor, Vcpu, Vm};
use crate::memory::GuestMemory;
use crate::stats::{self, MemoryStats};
use crate::vcpu::{self, Report, Shared, VcpuThread};

/// How often the supervisor wakes to flush the console.
const TICK: Duration = Duration::from_millis(100);
/// How often the supervisor samples the vCPU threads' scheduler state once
/// every vCPU has stayed inside the guest this long (see [`halt`]).
const HALT_SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Interval between kicks while waiting for vCPU threads to stop.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Errors that keep a VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The hypervisor could not be opened or set up.
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::Error),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        /// Requested size.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
    /// Loading the kernel or writing boot structures failed.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// The console destination could not be opened.
    #[error("cannot open the console output: {0}")]
    Console(std::io::Error),
    /// A host resource (thread) could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A device could not be created or placed.
    #[error(transparent)]
    Devices(#[from] devices::Error),
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
fn kernel_log_after_fault(config: &VmConfig, mem: &GuestMemory) -> String {
    match &config.boot {
        BootSource::Linux { kernel, .. } => crate::klog::read(mem, kernel, KERNEL_LOG_LINES)
            .unwrap_or_else(|why| format!("(kernel log unavailable: {why})")),
        _ => "(kernel log unavailable: not a Linux guest)".into(),
    }
}

/// Boots the VM described by `config` on the hypervisor `open` returns and
/// runs it to the end. `on_event` is called on this thread as events happen.
/// The configuration is checked before the hypervisor is opened, so a bad one
/// is reported as such on any host.
pub fn run<H: Hypervisor>(
    open: impl FnOnce() -> Result<H, hypervisor::Error>,
    config: &VmConfig,
    mut on_event: impl FnMut(&VmEvent),
) -> Result<VmOutcome, Error> {
    config.validate()?;
    let hypervisor = open()?;
    let machine = Machine::build(&hypervisor, config)?;
    config.memory.set(Some(machine.mem.clone()));
    // Whatever happens next, the handle lets go of the memory when the VM ends.
    let _forget = ForgetMemory(&config.memory);
    let vcpus = Vcpus::start(&machine, config)?;
    // Set-up is over: from here this thread only supervises the vCPUs.
    msbvm_virtio::confine::thread_started("vm");

    let (exit, boot_complete) = supervise(config, &machine.console, &vcpus, &mut on_event);
    let stopped_after = config.start_time.elapsed();
    vcpus.stop();
    machine.console.flush_pending();
    Ok(machine.outcome(config, exit, boot_complete, stopped_after))
}

/// Clears a [`crate::memory::MemoryHandle`] when dropped.
struct ForgetMemory<'a>(&'a crate::memory::MemoryHandle);

impl Drop for ForgetMemory<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// Everything of a VM but its vCPU threads.
struct Machine<V> {
    /// The hypervisor's VM; dropped (after the vCPUs stopped) when `run` returns.
    vm: V,
    mem: GuestMemory,
    console: SharedConsole,
    buses: Buses,
    entry: EntryMode,
}

impl<V: Vm> Machine<V> {
    /// Memory, the VM, the devices and the loaded guest.
    fn build<H: Hypervisor<Vm = V>>(hypervisor: &H, config: &VmConfig) -> Result<Self, Error> {
        let mem =
            layout::create_memory(config.memory_mib << 20).map_err(|source| Error::Memory {
                mib: config.memory_mib,
                source,
            })?;
        let vm = hypervisor.create_vm()?;
        vm.map_memory(&mem)?;
        vm.create_irqchip()?;

        let console = Console::open(&config.console).map_err(Error::Console)?;
        let console = SharedConsole(Arc::new(Mutex::new(console)));
        let mut buses = Buses::default();
        let register_irq = |event: &_, line| vm.register_irqfd(event, line).map_err(Into::into);
        arch::attach_legacy_devices(register_irq, &mem, console.clone(), &mut buses)?;
        let announce = attach_virtio_devices(&vm, &mem, &mut buses, config)?;
        let entry = boot::load(
            &mem,
            &with_devices_announced(&config.boot, &announce),
            config.vcpus,
        )?;
        Ok(Machine {
            vm,
            mem,
            console,
            buses,
            entry,
        })
    }

    /// The outcome of a run that ended with `exit`, read before the memory goes.
    fn outcome(
        &self,
        config: &VmConfig,
        exit: VmExit,
        boot_complete: Option<Duration>,
        stopped_after: Duration,
    ) -> VmOutcome {
        let guest_starts: Vec<usize> = self
            .mem
            .iter()
            .filter_map(|r| self.mem.get_host_address(r.start_addr()).ok())
            .map(|p| p as usize)
            .collect();
        let memory = stats::read(&guest_starts);
        let kernel_log =
            matches!(exit, VmExit::Fault(_)).then(|| kernel_log_after_fault(config, &self.mem));
        VmOutcome {
            exit,
            boot_complete,
            stopped_after,
            memory,
            console_tail: self.console.tail(),
            kernel_log,
        }
    }
}

/// Creates every device of `config` and attaches it in order; returns their
/// command-line entries.
fn attach_virtio_devices(
    vm: &impl Vm,
    mem: &GuestMemory,
    buses: &mut Buses,
    config: &VmConfig,
) -> Result<Vec<String>, devices::Error> {
    let mut slots = VirtioSlots::new(layout::VIRTIO_MMIO_START, layout::VIRTIO_IRQS);
    let mut announce = Vec::new();
    for spec in &config.devices {
        let device = (spec.make)().map_err(|source| devices::Error::Create {
            name: spec.name.clone(),
            source,
        })?;
        announce.push(virtio::attach(
            vm,
            mem,
            &mut buses.mmio,
            &mut slots,
            device,
        )?);
    }
    Ok(announce)
}

/// The running vCPU threads and what they share with the supervisor.
struct Vcpus {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    reports: Receiver<Report>,
}

impl Vcpus {
    /// Creates every vCPU (the boot one with its entry state) and its thread.
    /// On failure the threads already started are stopped.
    fn start<V: Vm>(machine: &Machine<V>, config: &VmConfig) -> Result<Self, Error> {
        let (tx, reports) = mpsc::channel();
        vcpu::install_kick_handler();
        let mut vcpus = Vcpus {
            shared: Arc::new(Shared::new(config.vcpus)),
            threads: Vec::new(),
            reports,
        };
        for index in 0..config.vcpus {
            match spawn_vcpu(machine, index, config.vcpus, &vcpus.shared, &tx) {
                Ok(handle) => vcpus.threads.push(handle),
                Err(e) => {
                    vcpus.stop();
                    return Err(e);
                }
            }
        }
        Ok(vcpus)
    }

    /// Raises the stop flag and kicks every vCPU thread until it has left its loop.
    fn stop(self) {
        stop_vcpus(&self.shared, self.threads);
    }
}

/// Creates vCPU `index` of `count` and starts its thread.
fn spawn_vcpu<V: Vm>(
    machine: &Machine<V>,
    index: u8,
    count: u8,
    shared: &Arc<Shared>,
    reports: &mpsc::Sender<Report>,
) -> Result<JoinHandle<()>, Error> {
    let mut vcpu = machine.vm.create_vcpu(index, count)?;
    // Application processors wait for the boot CPU's start-up IPI in the
    // hypervisor's local APIC; only the boot CPU gets an entry state.
    if index == 0 {
        vcpu.set_entry(machine.entry)?;
    }
    let thread = VcpuThread {
        index,
        vcpu,
        buses: machine.buses.clone(),
        mem: machine.mem.clone(),
        shared: shared.clone(),
        reports: reports.clone(),
    };
    std::thread::Builder::new()
        .name(format!("msbvm-vcpu{index}"))
        .spawn(move || {
            msbvm_virtio::confine::thread_started("vcpu");
            thread.run()
        })
        .map_err(|source| Error::Host {
            what: "vCPU thread",
            source,
        })
}

/// Waits for the vCPUs' reports until the VM ends; returns how, and when the
/// guest reported boot completion.
fn supervise(
    config: &VmConfig,
    console: &SharedConsole,
    vcpus: &Vcpus,
    on_event: &mut impl FnMut(&VmEvent),
) -> (VmExit, Option<Duration>) {
    let mut boot_complete = None;
    let mut halted = vec![false; config.vcpus as usize];
    let mut watch = HaltWatch::new(config.vcpus as usize);
    let mut last_sample = Instant::now();
    let exit = loop {
        if config.stop.is_stopped() {
            break VmExit::Stopped;
        }
        match vcpus.reports.recv_timeout(TICK) {
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
                if check_for_halt(&vcpus.shared, &mut watch) {
                    for (index, handle) in vcpus.threads.iter().enumerate() {
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
    (exit, boot_complete)
}

/// Samples the vCPU threads for [`HaltWatch`]; true when they should be
/// kicked to check for a halt with interrupts off. The scheduler is only asked
/// once every vCPU has been inside the guest for a while (a vCPU exiting to user
/// space is visibly alive). Where `/proc` cannot be read (a confined runtime),
/// the time since the vCPU last entered the guest stands in: coarser (an idle
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

fn kick(handle: &JoinHandle<()>) {
    // SAFETY: the thread is alive (not joined) while we hold its handle, and the
    // kick signal has a handler installed, so delivery only interrupts the vCPU's run call.
    unsafe {
        libc::pthread_kill(handle.as_pthread_t() as _, vcpu::kick_signal());
    }
}

/// Raises the stop flag and kicks every vCPU thread until it has left its loop.
fn stop_vcpus(shared: &Shared, threads: Vec<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    for handle in threads {
        // The kick can land just before the thread re-enters the guest, so keep
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
