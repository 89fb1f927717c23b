//! A frame device run on the stack's own thread.
//!
//! Frames between a device and the stack cross the frame socketpair. When the device runs on a
//! thread of its own, every frame that finds the other side asleep costs a thread wake-up, and
//! in a request-response exchange (a TCP handshake, a small request) that is every frame: the
//! wake-ups, not the stack, bound the connection rate. A device handed to
//! [`NetStackHandle::host`](super::NetStackHandle::host) instead runs on the stack's thread:
//! the stack runs it when its descriptor is readable and again after the stack has sent
//! frames, so a frame crosses the socketpair and is taken out of it on the same thread, with
//! no wake-up in between.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A device that moves frames between a guest and the device end of
/// [`frame_socketpair`](super::frame_socketpair), run on the stack's thread.
///
/// It must never block: [`run`](Self::run) does what is ready and returns.
pub trait HostedDevice: Send + 'static {
    /// A descriptor that is readable while the device has work (typically an epoll set holding
    /// the device's own descriptors, the socketpair's device end among them).
    fn ready_fd(&self) -> BorrowedFd<'_>;

    /// Does the work that is ready, without blocking. Returns false once the device is done
    /// (stopped); the stack then drops it.
    fn run(&mut self) -> bool;
}

/// A device the stack hosts, registered with the stack's reactor.
pub(super) struct Hosted {
    /// A duplicate of the device's [`ready_fd`](HostedDevice::ready_fd): the same open
    /// file, owned here, so the registration can never outlive it.
    fd: AsyncFd<OwnedFd>,
    device: Box<dyn HostedDevice>,
}

impl Hosted {
    /// Registers `device`'s descriptor with the current reactor.
    pub(super) fn new(device: Box<dyn HostedDevice>) -> io::Result<Self> {
        let fd = device.ready_fd().try_clone_to_owned()?;
        // Deprecated because a bare `AsRawFd` need not stay open; an `OwnedFd` does.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Hosted { fd, device })
    }

    /// Runs the device; false once it is done.
    pub(super) fn run(&mut self) -> bool {
        self.device.run()
    }

    /// Waits until the device's descriptor is readable, and clears the reactor's readiness
    /// (the caller runs the device next, which does whatever is ready).
    pub(super) async fn ready(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }
}

/// Waits for the hosted device, if there is one; never completes without one.
pub(super) async fn ready(hosted: &Option<Hosted>) -> io::Result<()> {
    match hosted {
        Some(h) => h.ready().await,
        None => std::future::pending().await,
    }
}
