//! Integration and end-to-end test support for msbvm, built around the nested-virtualization
//! harness.
//!
//! The development hosts' /dev/kvm cannot run a stock Linux guest (PLATFORM.md), so end-to-end
//! tests run `msbvm` inside an L1 machine: QEMU in software emulation with AMD SVM, booting the
//! distribution's kernel with kvm-amd loaded. The pieces:
//!
//! - [`nested`]: the L1 machine (`NestedVm::builder()...run(&[...])`),
//! - [`distro`]: the L1 kernel and its modules, fetched once into the cache,
//! - [`l1_arch`]: what differs between an x86_64 and an aarch64 L1,
//! - [`artifacts`]: static `msbvm`/`msbvm-init`, the guest kernel, the guest's initramfs,
//! - [`report`]: parsing what `msbvm boot` and `msbvm-init` print, batching runs in one L1,
//! - [`console`]: cleaning the serial console,
//! - [`liveness`]: the heartbeat that tells a frozen L1 from a busy one,
//! - [`registry`]: a real OCI registry holding a test image, for `msbvm pull` in L1,
//! - [`skip`]: failing (or, on request, skipping) when the host cannot run L1,
//! - [`python_l1`]: the host's Python interpreter in L1, for suites that run Python there,
//! - [`test_image`]: the secrets suite's guest image, built from distribution packages,
//! - [`tls_peers`]: the secrets suite's HTTPS upstreams in L1 and their test CA.

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod console;
pub mod distro;
pub mod e2e;
pub mod error;
pub mod l1_arch;
pub mod liveness;
pub mod nested;
pub mod python_l1;
pub mod registry;
pub mod report;
pub mod skip;
pub mod test_image;
pub mod tls_peers;

pub use error::{Error, Result};
pub use l1_arch::L1Arch;
pub use nested::{NestedOutput, NestedVm, NestedVmBuilder, Stream};
pub use skip::or_skip;
