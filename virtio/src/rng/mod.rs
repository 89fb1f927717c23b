//! virtio-rng (device ID 4): an entropy source for the guest, so its
//! `/dev/hwrng` (and the kernel's pool at boot) is fed from the host's
//! `getrandom`.
//!
//! One queue; the driver posts device-writable buffers and the device fills
//! them. It is the smallest device on [`crate::base`], and shows what a new
//! device takes: a backend that starts one worker ([`device`]), and an
//! [`crate::event_loop::EventHandler`] for its queue (`worker.rs`).
//!
//! Layout, as in every device folder: [`device`] (the device on the base),
//! `worker.rs` (its event handler), [`seccomp`] (its allowlist), `tests.rs`
//! (device tests through the driver harness).

pub mod device;
pub mod seccomp;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Rng, RngBackend};
