//! The macOS Hypervisor.framework backend (Apple Silicon, aarch64).
//!
//! Under KVM the kernel finishes most guest exits; under Hypervisor.framework
//! the VMM gets the raw exception and must decode and emulate it. That work is
//! platform-neutral and lives in modules that build and are tested on every
//! OS, against an in-memory fake of the framework:
//!
//! - [`esr`]: the exception syndrome (ESR_EL2) decoded into an MMIO access,
//!   HVC/SMC, WFI/WFE, a system register access, or an unknown class.
//! - [`mmio`]: moving data between a register and an emulated load or store.
//! - [`psci`]: PSCI 1.0 (CPU_ON, CPU_OFF, SYSTEM_OFF, ...), which KVM serves
//!   in the kernel and this backend serves itself.
//! - [`regs`]: the framework's register numbers, MPIDR values, and the Linux
//!   arm64 boot entry state.
//! - [`exit`]: one exit in, what the VMM core does next out, over the small
//!   [`exit::VcpuOps`] (framework calls) and [`exit::Mmio`] (device bus) traits.
//! - [`gic`]: a GICv3 in user space (distributor, redistributors, the `ICC_*`
//!   system registers), for macOS 11 to 14 where the framework has no GIC: the
//!   exit handling serves the guest's accesses to it, and the run sets each
//!   vCPU's IRQ line from it.
//! - [`cpus`]: what the vCPU threads share: PSCI power states, CPU_ON hand-over,
//!   and the sleep of a halted or stopped vCPU until an interrupt, its timer or a kick.
//! - [`run`]: one `msbvm_vmm::hypervisor::Vcpu::run` over [`run::Framework`], and
//!   the irqfd and ioeventfd equivalents the framework lacks.
//!
//! On macOS, `macos` is the thin layer over the `applevisor` crate: the VM
//! (with the framework's GICv3 on macOS 15 and later, the default
//! `framework-gic` feature; without it, with [`gic`]), vCPUs, and
//! `msbvm_vmm::hypervisor`'s `Hypervisor`, `Vm` and `Vcpu` over them. It has
//! been type-checked for `aarch64-apple-darwin` but never built into a binary
//! or run: this project's machines are Linux only (see `hvf/README.md`), and
//! the VMM core above the boundary builds on Linux only. The
//! `typecheck-macos` feature type-checks it on any host against applevisor's
//! API, which is what `scripts/check-macos` falls back to.
// Two calls in `macos` need unsafe (mapping the core's guest memory, reading the host
// counter), each allowed where it is made; everything else stays safe.
#![deny(unsafe_code)]

pub mod cpus;
pub mod esr;
pub mod exit;
pub mod gic;
pub mod mmio;
pub mod psci;
pub mod regs;
pub mod run;

#[cfg(test)]
mod fake;

#[cfg(any(target_os = "macos", feature = "typecheck-macos"))]
pub mod macos;
