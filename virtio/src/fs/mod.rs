//! virtio-fs (device ID 26): the guest mounts a host-side filesystem with
//! `mount -t virtiofs <tag> <dir>`; its FUSE requests arrive on virtqueues
//! and are answered in-process by an [`FsServer`] (normally
//! `msbvm_fs::Server` over a backend, with hooks).
//!
//! Queue 0 is the high-priority queue (the kernel sends FORGETs there),
//! queues 1..=N the request queues. Each queue is served on its own thread,
//! so a slow request on one queue never holds up another.
//!
//! Layout, as in every device folder: `device.rs` (the
//! [`crate::VirtioDevice`] impl and thread life cycle), `worker.rs` (one
//! queue's thread: chains in, replies out), [`defs`] (constants), `tests.rs`
//! (device tests through the driver harness).

pub mod defs;
mod device;
pub mod seccomp;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Error, Fs, FsServer};
