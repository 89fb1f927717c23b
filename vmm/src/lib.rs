//! msbvm's virtual machine monitor.
//!
//! The crate boots a Linux guest (or a hand-made test guest) in a microVM and
//! runs it until it powers off, reboots, panics or fails. It is layered so that
//! the core does not know which hypervisor runs the VM:
//!
//! - [`hypervisor`]: the boundary, as traits (a hypervisor creates VMs; a VM
//!   maps memory, wires interrupt lines and notification eventfds and creates
//!   vCPUs; a vCPU runs until a hypervisor-neutral exit).
//! - [`kvm`]: the KVM backend implementing them, on x86_64 (CPUID, MSRs, the
//!   PIT, snapshots) and on arm64 (the vGICv3, vCPU init with PSCI). The macOS
//!   Hypervisor.framework backend (`msbvm-hvf`) is to implement the same traits.
//! - [`arch`]: what depends on the guest architecture but not on the
//!   hypervisor: the address map ([`arch::layout`]) and the boot protocol
//!   ([`arch::boot`]) of the host's architecture. For x86_64: PVH, 64-bit
//!   Linux and raw long mode, the MP table, GDT and page tables, and the legacy
//!   PC devices; for arm64: the `Image` protocol, the device tree, and the
//!   console and platform device on the MMIO bus.
//! - [`config`]: what to boot, with how many vCPUs, how much memory and which
//!   virtio devices.
//! - [`memory`]: the guest RAM.
//! - [`devices`]: the buses, the console UART, msbvm's platform device and the
//!   attachment of virtio-mmio devices.
//! - [`vcpu`] and [`halt`]: the vCPU threads' run loop and the detection of a
//!   guest halted for good.
//! - [`vm`]: the boot path that ties these together ([`vm::run`]; [`run`] runs
//!   it on KVM).
//! - [`exit`]: how a VM ended, in words a user can act on.
//! - [`klog`]: the guest kernel's log buffer, read back after a failure.
//! - [`snapshot`]: a running VM saved to files, and VMs restored from them.
//!
//! The core ([`config`], [`memory`], [`devices`], [`vcpu`], [`halt`], [`vm`])
//! reaches the hypervisor only through [`hypervisor`], and the architecture only
//! through the names [`arch`] re-exports. Only [`run`] picks the backend.

pub mod arch;
pub mod config;
pub mod devices;
pub mod exit;
pub mod halt;
pub mod hypervisor;
pub mod klog;
pub mod kvm;
pub mod memory;
mod read_at;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod vm;

pub use arch::{boot, layout};
pub use config::{
    BootSource, ConfigError, ConsoleOutput, DeviceFactory, DeviceSpec, StopHandle, VmConfig,
    VsockConfig, DEFAULT_CMDLINE,
};
pub use exit::{FaultKind, FaultRegs, VcpuFault, VmExit};
pub use vm::{Error, VmControl, VmEvent, VmOutcome, WhilePaused};

/// Boots the VM described by `config` on this host's KVM and runs it to the
/// end (see [`vm::run`]). `on_event` is called on this thread as events happen.
pub fn run(config: &VmConfig, on_event: impl FnMut(&VmEvent)) -> Result<VmOutcome, Error> {
    vm::run(|| kvm::open().map_err(Into::into), config, on_event)
}
