//! The macOS Hypervisor.framework backend (Apple Silicon, aarch64).
//!
//! It will implement the same hypervisor trait as the KVM backend in `msbvm-vmm`,
//! so that the hypervisor-neutral core boots guests on macOS unchanged. Off macOS
//! this crate compiles to nothing.
#![cfg(target_os = "macos")]
