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
}

impl<F: FileSystem> FsServer for Server<F> {
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<(), msbvm_fs::server::Error> {
        Server::handle(self, request, reply)
    }

    fn reset(&self) {
        Server::reset(self)
    }
}
