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
//!
//! The core and the KVM backend build on Linux only. Elsewhere (macOS) the crate
//! is [`hypervisor`], [`event`], [`exit`], [`memory`], [`klog`], [`stats`],
//! [`boot_source`] and the arm64 platform code in [`arch`] (address map, `Image`
//! loading, device tree, entry registers): what the Hypervisor.framework backend
//! implements and reuses.

pub mod arch;
pub mod boot_source;
pub mod event;
pub mod exit;
pub mod hypervisor;
pub mod klog;
pub mod memory;
pub mod stats;

// The core and the KVM backend: Linux only, since the virtio devices (epoll, eventfd), the
// seccomp filters and KVM are. On other hosts the modules above are what a backend (the
// macOS `msbvm-hvf`) implements and reuses.
#[cfg(target_os = "linux")]
pub mod config;
#[cfg(target_os = "linux")]
pub mod devices;
#[cfg(target_os = "linux")]
pub mod halt;
#[cfg(target_os = "linux")]
pub mod kvm;
mod read_at;
#[cfg(target_os = "linux")]
pub mod seccomp;
#[cfg(target_os = "linux")]
pub mod snapshot;
#[cfg(target_os = "linux")]
pub mod vcpu;
#[cfg(target_os = "linux")]
pub mod vm;

#[cfg(target_os = "linux")]
pub use arch::{boot, layout};
#[cfg(target_os = "linux")]
pub use config::{
    BootSource, ConfigError, ConsoleOutput, DeviceFactory, DeviceSpec, StopHandle, VmConfig,
    VsockConfig, DEFAULT_CMDLINE,
};
pub use exit::{FaultKind, FaultRegs, VcpuFault, VmExit};
#[cfg(target_os = "linux")]
pub use vm::{Error, VmControl, VmEvent, VmOutcome, WhilePaused};

/// Boots the VM described by `config` on this host's KVM and runs it to the
/// end (see [`vm::run`]). `on_event` is called on this thread as events happen.
#[cfg(target_os = "linux")]
pub fn run(config: &VmConfig, on_event: impl FnMut(&VmEvent)) -> Result<VmOutcome, Error> {
    vm::run(|| kvm::open().map_err(Into::into), config, on_event)
}
