//! msbvm's virtual machine monitor.
//!
//! The crate boots a Linux guest (or a hand-made test guest) in a KVM microVM and
//! runs it until it powers off, reboots, panics or fails. The parts:
//!
//! - [`config`]: what to boot and with how many vCPUs and how much memory.
//! - [`layout`] and [`memory`]: the guest-physical address map and the guest RAM.
//! - [`boot`]: loading the kernel (PVH ELF or bzImage), initrd and command line,
//!   and the boot-protocol structures that describe the machine to the kernel.
//! - [`arch`]: x86_64 machine tables (MP table) and register/paging set-up.
//! - [`devices`]: the port-I/O and MMIO buses and the legacy devices on them
//!   (16550 console, i8042 reset line, msbvm's platform port).
//! - [`kvm`]: the KVM backend: the VM, its vCPU threads and exit handling.
//! - [`vm`]: the boot path that ties these together ([`vm::run`]).
//! - [`exit`]: how a VM ended, in words a user can act on.
//! - [`klog`]: the guest kernel's log buffer, read back after a failure.
//!
//! Everything above `kvm` is hypervisor-neutral, so a second backend (the macOS
//! Hypervisor.framework one in `msbvm-hvf`) plugs in beside it.

pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod exit;
pub mod klog;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod seccomp;
pub mod stats;
pub mod vm;

pub use config::{
    BootSource, ConsoleOutput, DeviceFactory, DeviceSpec, StopHandle, VmConfig, VsockConfig,
    DEFAULT_CMDLINE,
};
pub use exit::{FaultKind, FaultRegs, VcpuFault, VmExit};
pub use vm::{run, Error, VmEvent, VmOutcome};
