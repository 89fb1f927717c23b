//! The boot path: from a [`VmConfig`] to a running VM, and back to a
//! [`VmOutcome`] once it stops.
//!
//! The calling thread becomes the VM's supervisor: it creates the memory, the
//! VM (through the [`Hypervisor`] it is given), the devices and one thread per
//! vCPU, then waits for a vCPU to report the end. Whatever the end, every vCPU
//! thread is stopped and joined before [`run`] returns, so nothing of the VM
//! outlives the call. Nothing here knows which hypervisor runs the VM.

use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::{self, boot, layout, EntryMode};
use crate::config::{BootSource, VmConfig};
use crate::devices::console::{Console, SharedConsole};
use crate::devices::virtio::{self, VirtioPlacement, VirtioSlots};
use crate::devices::{self, Buses};
use crate::exit::{FaultKind, VcpuFault, VmExit};
use crate::halt::{self, HaltWatch};
use crate::hypervisor::{self, Hypervisor, Vcpu, Vm};
use crate::memory::GuestMemory;
use crate::snapshot::{self, Snapshot};
use crate::stats::{self, MemoryStats};
use crate::vcpu::{self, Report, Shared, VcpuThread};

/// How often the supervisor wakes to flush the console.
const TICK: Duration = Duration::from_millis(100);
/// How often the supervisor samples the vCPU threads' scheduler state once
/// every vCPU has stayed inside the guest this long (see [`halt`]).
const HALT_SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How often the supervisor looks for device interrupts the guest never took
/// ([`crate::devices::bus::BusDevice::recover_lost_interrupt`]).
const LOST_INTERRUPT_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Interval between kicks while waiting for vCPU threads to stop.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// How long every vCPU gets to pause for a snapshot.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The snapshot to restore cannot be used.
    #[error("cannot restore the snapshot: {0}")]
    Restore(#[from] snapshot::Error),
}

/// A snapshot asked of a running VM: where to write it, what else to do
/// while the guest is paused, and where the answer goes.
pub struct SnapshotRequest {
    dir: PathBuf,
    while_paused: Option<WhilePaused>,
    reply: Sender<Result<snapshot::Header, snapshot::Error>>,
}

/// Work a snapshot's taker does while the guest is paused, after the VM's
/// state was written (e.g. freezing a writable filesystem layer, which must
/// match the saved memory); an error fails the snapshot.
pub type WhilePaused = Box<dyn FnOnce() -> Result<(), String> + Send>;

impl std::fmt::Debug for SnapshotRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotRequest")
            .field("dir", &self.dir)
            .field("while_paused", &self.while_paused.is_some())
            .finish()
    }
}

/// Lets another thread ask a running VM for a snapshot (cloned from
/// [`VmConfig::control`]). Before the VM runs and after it ends, requests
/// fail with [`snapshot::Error::NotRunning`].
#[derive(Clone, Debug, Default)]
pub struct VmControl(Arc<Mutex<Option<Sender<Report>>>>);

impl VmControl {
    /// A handle to no VM yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn connect(&self, to: Option<Sender<Report>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    /// Pauses the VM, writes a snapshot of it into the existing, empty
    /// directory `dir` ([`snapshot`] says what is in it) and resumes it;
    /// returns the snapshot's header. The guest is paused while its memory
    /// is written.
    pub fn snapshot(&self, dir: &Path) -> Result<snapshot::Header, snapshot::Error> {
        self.request(dir, None)
    }

    /// [`VmControl::snapshot`], running `while_paused` on the VM thread
    /// after the VM's state is written and before the guest resumes.
    pub fn snapshot_with(
        &self,
        dir: &Path,
        while_paused: WhilePaused,
    ) -> Result<snapshot::Header, snapshot::Error> {
        self.request(dir, Some(while_paused))
    }

    fn request(
        &self,
        dir: &Path,
        while_paused: Option<WhilePaused>,
    ) -> Result<snapshot::Header, snapshot::Error> {
        let (reply, answer) = mpsc::channel();
        let request = SnapshotRequest {
            dir: dir.to_path_buf(),
            while_paused,
            reply,
        };
        let sent = match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(Report::Snapshot(request)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(snapshot::Error::NotRunning);
        }
        answer.recv().unwrap_or(Err(snapshot::Error::NotRunning))
    }
}

/// Disconnects a [`VmControl`] when dropped.
struct Disconnect<'a>(&'a VmControl);

impl Drop for Disconnect<'_> {
    fn drop(&mut self) {
        self.0.connect(None);
    }
}

/// Something that happened while the VM ran, delivered as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum VmEvent {
    /// The guest wrote the boot-complete marker, this long after the VMM started.
    BootComplete(Duration),
    /// A VM restored from a snapshot has its vCPUs running, this long after
    /// the VMM started.
    Restored(Duration),
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
    /// After a vCPU fault, or a stop that asked for a description
    /// ([`crate::StopHandle::stop_and_describe`]): the end of the guest
    /// kernel's log buffer read from guest memory (what a `quiet` kernel
    /// never printed), or why it could not be read. `None` otherwise.
    pub kernel_log: Option<String>,
    /// After a stop that asked for a description: one line per vCPU saying
    /// where it was (run state, instruction pointer, code, registers), then
    /// one per virtio device (status, pending interrupt, ring positions).
    /// Empty otherwise.
    pub state_at_stop: Vec<String>,
}

/// Lines of the guest kernel's log kept in a fault report.
const KERNEL_LOG_LINES: usize = 40;

/// The end of the kernel log of a guest that faulted or is being described
/// (see [`crate::klog`]), read through `opened` when the kernel was opened at
/// start (a confined thread may not open it again).
fn kernel_log_of(config: &VmConfig, mem: &GuestMemory, opened: Option<&std::fs::File>) -> String {
    let log = match (&config.boot, opened) {
        (BootSource::Linux { kernel, .. }, Some(file)) => {
            crate::klog::read_open(mem, file, kernel, KERNEL_LOG_LINES)
        }
        (BootSource::Linux { kernel, .. }, None) => {
            crate::klog::read(mem, kernel, KERNEL_LOG_LINES)
        }
        _ => return "(kernel log unavailable: not a Linux guest)".into(),
    };
    log.unwrap_or_else(|why| format!("(kernel log unavailable: {why})"))
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
    let machine = match &config.restore {
        Some(snapshot) => Machine::restore(&hypervisor, config, snapshot)?,
        None => Machine::build(&hypervisor, config)?,
    };
    config.memory.set(Some(machine.mem.clone()));
    // Whatever happens next, the handle lets go of the memory when the VM ends.
    let _forget = ForgetMemory(&config.memory);
    let vcpus = Vcpus::start(&machine, config)?;
    if config.restore.is_some() {
        machine.buses.reraise_interrupts();
        on_event(&VmEvent::Restored(config.start_time.elapsed()));
    }
    config.control.connect(Some(vcpus.tx.clone()));
    let _disconnect = Disconnect(&config.control);
    // Set-up is over: from here this thread only supervises the vCPUs.
    msbvm_virtio::confine::thread_started("vm");

    let (exit, boot_complete) = supervise(config, &machine, &vcpus, &mut on_event);
    let stopped_after = config.start_time.elapsed();
    let describe = matches!(exit, VmExit::Stopped) && config.stop.wants_description();
    let shared = Arc::clone(&vcpus.shared);
    shared.describe_on_stop.store(describe, Ordering::Release);
    vcpus.stop();
    machine.console.flush_pending();
    let state_at_stop = if describe {
        let at = shared.stopped_at.lock().unwrap_or_else(|p| p.into_inner());
        let vcpus = at.iter().enumerate().map(|(i, d)| {
            d.clone()
                .unwrap_or_else(|| format!("vCPU {i}: did not stop in time to say"))
        });
        vcpus.chain(machine.buses.describe_all()).collect()
    } else {
        Vec::new()
    };
    let mut outcome = machine.outcome(config, exit, boot_complete, stopped_after, describe);
    outcome.state_at_stop = state_at_stop;
    Ok(outcome)
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
    /// Where the boot vCPU starts, or `None` for a VM restored from a
    /// snapshot (whose vCPUs continue where they were).
    entry: Option<EntryMode>,
    /// The SHA-256 of the guest kernel (hex), with the identity of the file
    /// hashed, once a snapshot needed it.
    kernel_stamp: Mutex<Option<snapshot::kernel_stamp::KernelStamp>>,
    /// The guest kernel, opened at start: a snapshot hashes it after the VM
    /// thread confined itself (when it may no longer open the file).
    kernel_file: Option<std::fs::File>,
    /// The saved vCPU states of a restored VM, in index order.
    vcpu_states: Vec<Vec<u8>>,
}

/// The guest kernel of `config`, open for a later snapshot's hash (`None`
/// when there is none or it cannot be opened now: the snapshot then opens it
/// by name, and says so if that fails).
fn open_kernel(config: &VmConfig) -> Option<std::fs::File> {
    match &config.boot {
        BootSource::Linux { kernel, .. } => std::fs::File::open(kernel).ok(),
        _ => None,
    }
}

impl<V: Vm> Machine<V> {
    /// Memory, the VM, the devices and the loaded guest.
    fn build<H: Hypervisor<Vm = V>>(hypervisor: &H, config: &VmConfig) -> Result<Self, Error> {
        let mem =
            layout::create_memory(config.memory_mib << 20).map_err(|source| Error::Memory {
                mib: config.memory_mib,
                source,
            })?;
        let (vm, console, buses, placements) = assemble(hypervisor, &mem, config)?;
        let entry = boot::load(&mem, &config.boot, config.vcpus, &placements)?;
        Ok(Machine {
            vm,
            mem,
            console,
            buses,
            entry: Some(entry),
            kernel_stamp: Mutex::new(None),
            kernel_file: open_kernel(config),
            vcpu_states: Vec::new(),
        })
    }

    /// The VM of `snapshot`, with its memory mapped privately and its
    /// hypervisor state loaded; the vCPUs get theirs when they are created.
    fn restore<H: Hypervisor<Vm = V>>(
        hypervisor: &H,
        config: &VmConfig,
        snapshot: &Snapshot,
    ) -> Result<Self, Error> {
        let state = &snapshot.state;
        let header = &state.header;
        let mismatch = |what, snapshot: String, asked: String| {
            Error::Restore(snapshot::Error::Mismatch {
                what,
                snapshot,
                asked,
            })
        };
        if header.vcpus != config.vcpus || state.vcpus.len() != usize::from(config.vcpus) {
            return Err(mismatch(
                "vCPUs",
                header.vcpus.to_string(),
                config.vcpus.to_string(),
            ));
        }
        if header.memory_mib != config.memory_mib {
            return Err(mismatch(
                "memory (MiB)",
                header.memory_mib.to_string(),
                config.memory_mib.to_string(),
            ));
        }
        if let (BootSource::Linux { kernel, .. }, Some(saved)) =
            (&config.boot, &header.kernel_sha256)
        {
            // The file the snapshot hashed, unchanged, need not be read again.
            let here = match snapshot::kernel_stamp::known_hash(&snapshot.dir, kernel) {
                Some(known) => known,
                None => snapshot::sha256_file(kernel)?,
            };
            if &here != saved {
                return Err(mismatch("kernel SHA-256", saved.clone(), here));
            }
        }
        let mem = snapshot::memory::load(
            &snapshot.memory_path(),
            &header.memory,
            config.restore_memory,
        )?;
        // The devices go where they were (the same configuration attaches
        // them in the same order); the command line is already in memory.
        let (vm, console, buses, _) = assemble(hypervisor, &mem, config)?;
        vm.restore_state(&state.vm)
            .map_err(|e| Error::Restore(e.into()))?;
        buses
            .restore_all(
                state
                    .devices
                    .iter()
                    .map(|d| (d.name.as_str(), d.state.as_slice())),
            )
            .map_err(|f| Error::Restore(f.into()))?;
        Ok(Machine {
            vm,
            mem,
            console,
            buses,
            entry: None,
            // A snapshot of this VM hashes (and stamps) the kernel again: the
            // restore may have taken the hash on the stamp's word.
            kernel_stamp: Mutex::new(None),
            kernel_file: open_kernel(config),
            vcpu_states: state.vcpus.clone(),
        })
    }

    /// The guest kernel's SHA-256 and file identity, computed once.
    fn kernel_stamp(
        &self,
        config: &VmConfig,
    ) -> Result<Option<snapshot::kernel_stamp::KernelStamp>, snapshot::Error> {
        let BootSource::Linux { kernel, .. } = &config.boot else {
            return Ok(None);
        };
        let mut known = self.kernel_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            *known = Some(match &self.kernel_file {
                Some(file) => snapshot::kernel_stamp::stamp_open(file, kernel)?,
                None => snapshot::kernel_stamp::KernelStamp {
                    identity: None,
                    sha256: snapshot::sha256_file(kernel)?,
                },
            });
        }
        Ok(known.clone())
    }

    /// Writes everything of the VM, whose vCPUs are paused with `vcpu_states`
    /// saved, into `dir`.
    fn write_snapshot(
        &self,
        config: &VmConfig,
        dir: &Path,
        kernel: Option<snapshot::kernel_stamp::KernelStamp>,
        vcpu_states: Vec<Vec<u8>>,
    ) -> Result<snapshot::Header, snapshot::Error> {
        let vm = self.vm.save_state()?;
        let devices = self
            .buses
            .save_all()
            .map_err(snapshot::Error::from)?
            .into_iter()
            .map(|(name, state)| snapshot::DeviceState { name, state })
            .collect();
        let memory_path = dir.join(snapshot::MEMORY_FILE);
        let memory = snapshot::memory::write(&self.mem, &memory_path)?;
        let header = snapshot::Header {
            msbvm_version: env!("CARGO_PKG_VERSION").into(),
            created_unix_ms: snapshot::now_unix_ms(),
            kernel_sha256: kernel.as_ref().map(|k| k.sha256.clone()),
            host_cpu: self.vm.host_cpu(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            memory,
        };
        let state = snapshot::VmSnapshot {
            header: header.clone(),
            vm,
            vcpus: vcpu_states,
            devices,
        };
        if let Some(stamp) = &kernel {
            snapshot::kernel_stamp::write(dir, stamp);
        }
        if let Err(e) = snapshot::write_state(dir, &state) {
            let _ = std::fs::remove_file(&memory_path);
            return Err(e);
        }
        Ok(header)
    }

    /// The outcome of a run that ended with `exit`, read before the memory goes.
    fn outcome(
        &self,
        config: &VmConfig,
        exit: VmExit,
        boot_complete: Option<Duration>,
        stopped_after: Duration,
        describe: bool,
    ) -> VmOutcome {
        let guest_starts: Vec<usize> = self
            .mem
            .iter()
            .filter_map(|r| self.mem.get_host_address(r.start_addr()).ok())
            .map(|p| p as usize)
            .collect();
        let memory = stats::read(&guest_starts);
        let kernel_log = (describe || matches!(exit, VmExit::Fault(_)))
            .then(|| kernel_log_of(config, &self.mem, self.kernel_file.as_ref()));
        VmOutcome {
            exit,
            boot_complete,
            stopped_after,
            memory,
            console_tail: self.console.tail(),
            kernel_log,
            state_at_stop: Vec::new(),
        }
    }
}

/// The VM over `mem` with its interrupt controllers, the console and every
/// device attached in order (the same order on every run of `config`, which
/// a restore relies on); returns them with where the virtio devices went.
fn assemble<H: Hypervisor>(
    hypervisor: &H,
    mem: &GuestMemory,
    config: &VmConfig,
) -> Result<(H::Vm, SharedConsole, Buses, Vec<VirtioPlacement>), Error> {
    let vm = hypervisor.create_vm()?;
    vm.map_memory(mem)?;
    vm.create_irqchip()?;
    let console = Console::open(&config.console).map_err(Error::Console)?;
    let console = SharedConsole(Arc::new(Mutex::new(console)));
    let mut buses = Buses::default();
    let register_irq = |event: &_, line| vm.register_irqfd(event, line).map_err(Into::into);
    arch::attach_legacy_devices(register_irq, mem, console.clone(), &mut buses)?;
    let placements = attach_virtio_devices(&vm, mem, &mut buses, config)?;
    Ok((vm, console, buses, placements))
}

/// Creates every device of `config` and attaches it in order; returns where
/// each went.
fn attach_virtio_devices(
    vm: &impl Vm,
    mem: &GuestMemory,
    buses: &mut Buses,
    config: &VmConfig,
) -> Result<Vec<VirtioPlacement>, devices::Error> {
    let mut slots = VirtioSlots::new(layout::VIRTIO_MMIO_START, layout::VIRTIO_IRQS);
    let mut placements = Vec::new();
    for spec in &config.devices {
        let device = (spec.make)().map_err(|source| devices::Error::Create {
            name: spec.name.clone(),
            source,
        })?;
        placements.push(virtio::attach(
            vm,
            mem,
            &mut buses.mmio,
            &mut slots,
            device,
        )?);
    }
    Ok(placements)
}

/// The running vCPU threads and what they share with the supervisor.
struct Vcpus {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    reports: Receiver<Report>,
    /// The sending side of `reports`, for [`VmControl`].
    tx: Sender<Report>,
}

impl Vcpus {
    /// Creates every vCPU (the boot one with its entry state), completes the
    /// interrupt controller (which on arm64 must see every vCPU before any
    /// runs), then starts a thread per vCPU. On failure the threads already
    /// started are stopped.
    fn start<V: Vm>(machine: &Machine<V>, config: &VmConfig) -> Result<Self, Error> {
        let mut created = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            created.push(create_vcpu(machine, index, config.vcpus)?);
        }
        machine.vm.finish_irqchip()?;
        let (tx, reports) = mpsc::channel();
        vcpu::install_kick_handler();
        let mut vcpus = Vcpus {
            shared: Arc::new(Shared::new(config.vcpus, machine.vm.vcpu_kicker())),
            threads: Vec::new(),
            reports,
            tx: tx.clone(),
        };
        for (index, vcpu) in (0..config.vcpus).zip(created) {
            match spawn_vcpu(machine, index, vcpu, &vcpus.shared, &tx) {
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

    /// Pauses every vCPU and collects the states they saved, in index order.
    /// Reports that arrive meanwhile are kept in `deferred`. On failure the
    /// vCPUs are resumed.
    fn pause(&self, deferred: &mut Vec<Report>) -> Result<Vec<Vec<u8>>, snapshot::Error> {
        self.shared.pause.store(true, Ordering::Release);
        let mut states: Vec<Option<Result<Vec<u8>, hypervisor::Error>>> =
            (0..self.threads.len()).map(|_| None).collect();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut failure = None;
        while states.iter().any(Option::is_none) {
            // A kick can land just before a thread re-enters the guest, so
            // the ones not yet paused are kicked again until they are.
            for (index, handle) in self.threads.iter().enumerate() {
                if states[index].is_none() {
                    kick(&self.shared, index, handle);
                }
            }
            match self.reports.recv_timeout(KICK_INTERVAL) {
                Ok(Report::Paused(index, state)) => {
                    if let Some(slot) = states.get_mut(index as usize) {
                        *slot = Some(state);
                    }
                }
                Ok(stop @ Report::Stop(_)) => {
                    deferred.push(stop);
                    failure = Some(snapshot::Error::NotRunning);
                    break;
                }
                Ok(other) => deferred.push(other),
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    failure = Some(snapshot::Error::PauseTimeout(PAUSE_TIMEOUT));
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    failure = Some(snapshot::Error::NotRunning);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.shared.resume();
            return Err(e);
        }
        let mut saved = Vec::with_capacity(states.len());
        for state in states.into_iter().flatten() {
            match state {
                Ok(bytes) => saved.push(bytes),
                Err(e) => {
                    self.shared.resume();
                    return Err(e.into());
                }
            }
        }
        Ok(saved)
    }
}

/// Creates vCPU `index` of `count` with its entry or restored state.
fn create_vcpu<V: Vm>(machine: &Machine<V>, index: u8, count: u8) -> Result<V::Vcpu, Error> {
    let mut vcpu = machine.vm.create_vcpu(index, count)?;
    match (machine.entry, machine.vcpu_states.get(usize::from(index))) {
        (None, Some(state)) => vcpu
            .restore_state(state)
            .map_err(|e| Error::Restore(e.into()))?,
        // Application processors wait for the boot CPU to start them (a
        // start-up IPI on x86, PSCI CPU_ON on arm64) in the hypervisor; only
        // the boot CPU gets an entry state.
        (Some(entry), _) if index == 0 => vcpu.set_entry(entry)?,
        _ => {}
    }
    Ok(vcpu)
}

/// Starts the thread of vCPU `index`.
fn spawn_vcpu<V: Vm>(
    machine: &Machine<V>,
    index: u8,
    vcpu: V::Vcpu,
    shared: &Arc<Shared>,
    reports: &mpsc::Sender<Report>,
) -> Result<JoinHandle<()>, Error> {
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
fn supervise<V: Vm>(
    config: &VmConfig,
    machine: &Machine<V>,
    vcpus: &Vcpus,
    on_event: &mut impl FnMut(&VmEvent),
) -> (VmExit, Option<Duration>) {
    let console = &machine.console;
    // Reports that arrived while the vCPUs were being paused, handled next.
    let mut deferred: Vec<Report> = Vec::new();
    let mut boot_complete = None;
    let mut halted = vec![false; config.vcpus as usize];
    let mut watch = HaltWatch::new(config.vcpus as usize);
    let mut last_sample = Instant::now();
    let mut last_interrupt_check = Instant::now();
    let exit = loop {
        if config.stop.is_stopped() {
            break VmExit::Stopped;
        }
        let report = if deferred.is_empty() {
            vcpus.reports.recv_timeout(TICK)
        } else {
            Ok(deferred.remove(0))
        };
        match report {
            Ok(Report::Snapshot(request)) => {
                let result = take_snapshot(
                    config,
                    machine,
                    vcpus,
                    &request.dir,
                    request.while_paused,
                    &mut deferred,
                );
                let _ = request.reply.send(result);
            }
            // A pause that was given up on can still be answered late.
            Ok(Report::Paused(..)) => {}
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
                if last_interrupt_check.elapsed() >= LOST_INTERRUPT_CHECK_EVERY {
                    last_interrupt_check = Instant::now();
                    machine.buses.recover_lost_interrupts();
                }
                if last_sample.elapsed() < HALT_SAMPLE_EVERY {
                    continue;
                }
                last_sample = Instant::now();
                if check_for_halt(&vcpus.shared, &mut watch) {
                    for (index, handle) in vcpus.threads.iter().enumerate() {
                        if !halted[index] {
                            kick(&vcpus.shared, index, handle);
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

/// Pauses the vCPUs, writes the snapshot into `dir` and resumes them.
fn take_snapshot<V: Vm>(
    config: &VmConfig,
    machine: &Machine<V>,
    vcpus: &Vcpus,
    dir: &Path,
    while_paused: Option<WhilePaused>,
    deferred: &mut Vec<Report>,
) -> Result<snapshot::Header, snapshot::Error> {
    // Hashed before the pause: the guest should not wait for it.
    let kernel = machine.kernel_stamp(config)?;
    let started = Instant::now();
    let states = vcpus.pause(deferred)?;
    let result = match machine.buses.pause_all() {
        Ok(()) => {
            let result = machine
                .write_snapshot(config, dir, kernel, states)
                .and_then(|header| match while_paused {
                    Some(work) => work()
                        .map(|()| header)
                        .map_err(|why| snapshot::Error::Device {
                            name: "snapshot taker".into(),
                            why,
                        }),
                    None => Ok(header),
                });
            machine.buses.resume_all();
            result
        }
        Err(failure) => Err(failure.into()),
    };
    vcpus.shared.resume();
    tracing::debug!("snapshot: the guest was paused for {:?}", started.elapsed());
    result
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

/// Interrupts vCPU `index`'s run: the thread signal, and the backend's kicker if it has one.
fn kick(shared: &Shared, index: usize, handle: &JoinHandle<()>) {
    if let Some(kicker) = &shared.kicker {
        kicker(u8::try_from(index).unwrap_or(u8::MAX));
    }
    // SAFETY: the thread is alive (not joined) while we hold its handle, and the
    // kick signal has a handler installed, so delivery only interrupts the vCPU's run call.
    unsafe {
        libc::pthread_kill(handle.as_pthread_t() as _, vcpu::kick_signal());
    }
}

/// Raises the stop flag and kicks every vCPU thread until it has left its loop.
fn stop_vcpus(shared: &Shared, threads: Vec<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    shared.wake_for_stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (index, handle) in threads.into_iter().enumerate() {
        // The kick can land just before the thread re-enters the guest, so keep
        // kicking until it is out.
        while !handle.is_finished() && Instant::now() < deadline {
            kick(shared, index, &handle);
            std::thread::sleep(KICK_INTERVAL);
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            tracing::error!("a vCPU thread did not stop within 10 s; leaving it detached");
        }
    }
}
