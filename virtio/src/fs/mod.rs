//! virtio-fs (device ID 26): the guest mounts a host-side filesystem with
//! `mount -t virtiofs <tag> <dir>`; its FUSE requests arrive on virtqueues
//! and are answered in-process by an [`FsServer`] (normally
//! `msbvm_fs::Server` over a backend, with hooks).
//!
//! Queue 0 is the high-priority queue (the kernel sends FORGETs there),
//! queues 1..=N the request queues. Each queue is served on its own thread,
//! so a slow request on one queue never holds up another.
//!
//! Layout, as in every device folder: `device.rs` (the device on
//! [`crate::base`]: config space and one worker per queue), `worker.rs` (one
//! queue's event handler: chains in, replies out), `server.rs` (the
//! [`FsServer`] the workers answer with), [`defs`] (constants), `tests.rs`
//! (device tests through the driver harness).

pub mod defs;
mod device;
pub mod seccomp;
mod server;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Error, Fs, FsBackend, FsConfig};
pub use server::FsServer;
