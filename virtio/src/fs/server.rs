//! What answers the device's FUSE requests, seen from the device and its
//! queue workers.

use msbvm_fs::{FileSystem, Server};

/// The FUSE server behind the device: one request in, one reply out.
/// Implemented by [`msbvm_fs::Server`]; object-safe so the device does not
/// care which backend it serves.
pub trait FsServer: Send + Sync {
    /// Answers one request (see `msbvm_fs::server`); an empty `reply`
    /// means no reply.
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<(), msbvm_fs::server::Error>;

    /// The device was reset: end the FUSE session.
    fn reset(&self);

    /// The FUSE session and the backend's inodes and handles, for a VM
    /// snapshot (see `msbvm_fs::server::ServerState`); fails when the
    /// backend cannot be saved. The queues are paused meanwhile.
    fn save_state(&self) -> std::io::Result<Vec<u8>>;

    /// Carries on a saved session in this fresh server, before the device
    /// is activated again.
    fn restore_state(&self, state: &[u8]) -> std::io::Result<()>;
}

impl<F: FileSystem> FsServer for Server<F> {
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<(), msbvm_fs::server::Error> {
        Server::handle(self, request, reply)
    }

    fn reset(&self) {
        Server::reset(self)
    }

    fn save_state(&self) -> std::io::Result<Vec<u8>> {
        Server::save_state(self)
    }

    fn restore_state(&self, state: &[u8]) -> std::io::Result<()> {
        Server::restore_state(self, state)
    }
}
