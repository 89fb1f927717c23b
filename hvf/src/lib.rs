//! The macOS Hypervisor.framework backend (Apple Silicon, aarch64).
//!
//! It will implement the traits of `msbvm_vmm::hypervisor` (`Hypervisor`,
//! `Vm`, `Vcpu`), as the KVM backend in `msbvm_vmm::kvm` does, so that the
//! hypervisor-neutral core (devices, buses, boot, the run loop) runs guests on
//! macOS unchanged; the aarch64 machine set-up will sit beside
//! `msbvm_vmm::arch::x86_64`. Nothing is implemented yet. Off macOS this crate
//! compiles to nothing.
#![cfg(target_os = "macos")]
#![forbid(unsafe_code)]
