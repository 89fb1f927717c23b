//! The hypervisor boundary: what the VMM core asks of a hypervisor backend.
//!
//! The core (devices, buses, boot, the run loop) talks only to these traits.
//! A [`Hypervisor`] creates a [`Vm`]; the VM maps guest memory into memory
//! slots, creates the interrupt controllers, connects eventfds to interrupt
//! lines (irqfd) and to device registers (ioeventfd), and creates [`Vcpu`]s.
//! A vCPU runs until an exit the core must see, which it reports as a
//! [`VcpuExit`]; device accesses are answered during the run through
//! [`DeviceAccess`], so an exit never borrows the backend's run area.
//!
//! KVM implements these in the `kvm` module, the macOS Hypervisor.framework
//! backend in `msbvm-hvf`. The register and entry
//! types are the architecture's (re-exported by [`crate::arch`]), since what "registers" means
//! differs between x86_64 and aarch64.

use crate::event::EventFd;

use crate::arch::{EntryMode, VcpuRegisters};
use crate::exit::{FaultKind, VmExit};
use crate::memory::GuestMemory;

/// A failure of the hypervisor backend, keeping the backend's own error as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor cannot be used on this host (missing, not permitted,
    /// unusable version); the message names the fix.
    #[error(transparent)]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// An operation on a VM or vCPU failed.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// True when the host has no usable hypervisor, as opposed to a failure of
    /// one that works.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// A hypervisor on this host, able to create VMs.
pub trait Hypervisor {
    /// The VMs it creates.
    type Vm: Vm;

    /// Creates an empty VM: no memory, no interrupt controllers, no vCPUs.
    fn create_vm(&self) -> Result<Self::Vm, Error>;
}

/// Where an ioeventfd listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    /// A port-I/O address.
    Pio(u64),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

/// One virtual machine.
pub trait Vm: Send + Sync {
    /// Its vCPUs.
    type Vcpu: Vcpu + Send + 'static;

    /// Maps every region of `mem` into a memory slot of its own. The VM keeps
    /// `mem` alive for as long as it exists.
    fn map_memory(&self, mem: &GuestMemory) -> Result<(), Error>;

    /// Creates the interrupt controllers (and on x86 the PIT) in the hypervisor.
    fn create_irqchip(&self) -> Result<(), Error>;

    /// Completes the interrupt controllers once every vCPU exists and before
    /// any runs (arm64's GIC sizes its redistributors by the vCPUs present).
    /// Nothing to do on x86.
    fn finish_irqchip(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Makes a write to `event` raise interrupt line `line`.
    fn register_irqfd(&self, event: &EventFd, line: u32) -> Result<(), Error>;

    /// Makes a guest write of `datamatch` to `addr` signal `event` without an exit.
    fn register_ioevent(
        &self,
        event: &EventFd,
        addr: IoEventAddress,
        datamatch: u32,
    ) -> Result<(), Error>;

    /// Creates vCPU `index` of `count`, with the CPU model and reset state the
    /// guest expects (but no entry state: see [`Vcpu::set_entry`]).
    fn create_vcpu(&self, index: u8, count: u8) -> Result<Self::Vcpu, Error>;

    /// Saves the VM-wide state the hypervisor holds (interrupt controllers,
    /// timers, the guest clock) while every vCPU is paused, as an opaque blob
    /// for [`Vm::restore_state`].
    fn save_state(&self) -> Result<Vec<u8>, Error>;

    /// Loads a blob from [`Vm::save_state`] into this VM, whose interrupt
    /// controllers exist and whose vCPUs have not run yet.
    fn restore_state(&self, state: &[u8]) -> Result<(), Error>;

    /// The host CPU in words ("GenuineIntel family 6 model 85"), recorded in
    /// snapshots so a mismatch can be explained.
    fn host_cpu(&self) -> String;

    /// What the core calls, from any thread, to make vCPU `index`'s [`Vcpu::run`] return
    /// soon with [`VcpuExit::Interrupted`], besides the signal it sends the vCPU's thread.
    /// `None` (the default) when that signal is enough, as it is for KVM (it interrupts
    /// `KVM_RUN`); a backend whose run a signal does not end (Hypervisor.framework, or one
    /// that sleeps a halted vCPU in user space) returns its own.
    fn vcpu_kicker(&self) -> Option<Kicker> {
        None
    }
}

/// Kicks vCPU `index` out of its run (see [`Vm::vcpu_kicker`]).
pub type Kicker = std::sync::Arc<dyn Fn(u8) + Send + Sync>;

/// The device accesses a vCPU exits for, answered by the VMM's buses.
pub trait DeviceAccess {
    /// What a device write may ask of the VMM beyond the access itself.
    type Event;

    /// A port read: fill `data`.
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    /// A port write.
    fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<Self::Event>;
    /// An MMIO read: fill `data`.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    /// An MMIO write.
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<Self::Event>;
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuExit<E> {
    /// A device access was answered; run again.
    Io,
    /// A device access asked for something.
    Event(E),
    /// The run was interrupted (the thread was kicked): nothing happened in the guest.
    Interrupted,
    /// The guest asked the hypervisor to stop the VM (power-off, reset,
    /// crash, or a `hlt` reaching user space without an in-kernel local APIC).
    Stop(VmExit),
    /// The vCPU cannot continue.
    Fault(FaultKind),
}

/// Whether a vCPU can still run by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Running or runnable.
    Runnable,
    /// Halted until an interrupt; `interrupts_enabled` says whether one can arrive.
    Halted {
        /// The guest's interrupt flag.
        interrupts_enabled: bool,
    },
    /// Waiting to be started by another vCPU (an application processor before its start-up IPI).
    WaitingForStartup,
}

/// One virtual CPU, driven by one host thread.
pub trait Vcpu {
    /// Sets the registers the boot vCPU enters the guest with.
    fn set_entry(&mut self, entry: EntryMode) -> Result<(), Error>;

    /// Runs the guest until an exit the core must see; device accesses on the
    /// way are answered through `io`. A host signal to the thread ends the run
    /// with [`VcpuExit::Interrupted`].
    fn run<A: DeviceAccess>(&mut self, io: &mut A) -> VcpuExit<A::Event>;

    /// Whether the vCPU is halted (only meaningful while it is out of [`Vcpu::run`]).
    fn run_state(&self) -> Result<RunState, Error>;

    /// The registers that say where the vCPU is and in what mode.
    fn registers(&self) -> Result<VcpuRegisters, Error>;

    /// Saves everything of the vCPU (registers, CPU model, local APIC, MSRs,
    /// pending events) as an opaque blob for [`Vcpu::restore_state`]. Called
    /// on the vCPU's own thread while it is out of [`Vcpu::run`]; a device
    /// access it exited for is completed first.
    fn save_state(&mut self) -> Result<Vec<u8>, Error>;

    /// Loads a blob from [`Vcpu::save_state`] into this vCPU before it first
    /// runs (instead of [`Vcpu::set_entry`]). Fails with a message naming the
    /// difference when this host cannot run the saved CPU model.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), Error>;
}
