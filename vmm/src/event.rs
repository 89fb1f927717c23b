//! The notification object the hypervisor boundary wires to interrupt lines and device
//! registers ([`crate::hypervisor::Vm::register_irqfd`], [`crate::hypervisor::Vm::register_ioevent`]).
//!
//! On Linux it is the kernel's eventfd (`vmm_sys_util`'s [`EventFd`]), which KVM consumes
//! directly. Other hosts have no eventfd, so there [`EventFd`] is [`PortableEvent`]: the same
//! calls (`new`, `write`, `read`, `try_clone`, a pollable descriptor) over a Unix datagram
//! pair. No crate offers that for macOS in the shape the boundary needs (vmm-sys-util's is
//! Linux-only), and it is small. It is built and tested on Linux too, so the macOS backend's
//! notifications run through tested code.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

#[cfg(target_os = "linux")]
pub use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[cfg(not(target_os = "linux"))]
pub use self::PortableEvent as EventFd;

/// [`PortableEvent::new`]'s flag for a [`PortableEvent::read`] that fails with `WouldBlock`
/// instead of waiting (eventfd's `EFD_NONBLOCK`).
#[cfg(not(target_os = "linux"))]
pub const EFD_NONBLOCK: i32 = 1;

/// A counter one side adds to and the other reads and resets, like an eventfd.
///
/// Each [`write`](Self::write) is one 8-byte datagram; [`read`](Self::read) sums every one
/// waiting. Writes never block: when the socket's buffer is full the value is dropped, but a
/// notification is then pending anyway, so a reader never misses that something happened
/// (only how much, past a few hundred unread writes). Clones share the counter.
#[derive(Debug)]
pub struct PortableEvent {
    /// Always non-blocking; a blocking read waits with `poll`.
    reader: UnixDatagram,
    writer: UnixDatagram,
    nonblocking: bool,
}

impl PortableEvent {
    /// A counter at zero. `flags` is 0 or [`EFD_NONBLOCK`]-like (any non-zero value makes
    /// reads of a zero counter fail with `WouldBlock`).
    pub fn new(flags: i32) -> io::Result<PortableEvent> {
        let (reader, writer) = UnixDatagram::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(PortableEvent {
            reader,
            writer,
            nonblocking: flags != 0,
        })
    }

    /// Adds `value` to the counter, waking a reader.
    pub fn write(&self, value: u64) -> io::Result<()> {
        match self.writer.send(&value.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // Full: unread notifications are waiting, so the reader wakes regardless.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes the counter's value (at least 1), waiting for one unless created non-blocking.
    pub fn read(&self) -> io::Result<u64> {
        loop {
            let sum = self.drain()?;
            if sum > 0 {
                return Ok(sum);
            }
            if self.nonblocking {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            wait_readable(self.reader.as_raw_fd())?;
        }
    }

    /// Another handle on the same counter.
    pub fn try_clone(&self) -> io::Result<PortableEvent> {
        Ok(PortableEvent {
            reader: self.reader.try_clone()?,
            writer: self.writer.try_clone()?,
            nonblocking: self.nonblocking,
        })
    }

    /// Every datagram waiting, summed (saturating: a counter cannot wrap to look empty).
    fn drain(&self) -> io::Result<u64> {
        let mut sum = 0u64;
        let mut buf = [0u8; 8];
        loop {
            match self.reader.recv(&mut buf) {
                Ok(8) => sum = sum.saturating_add(u64::from_ne_bytes(buf)),
                // Only this type writes to the pair, always 8 bytes.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sum),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Readable when the counter is not zero: what an event loop (epoll, kqueue) waits on.
impl AsRawFd for PortableEvent {
    fn as_raw_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }
}

fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_sum_until_read_and_read_resets() {
        let e = PortableEvent::new(1).unwrap();
        assert_eq!(
            e.read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "a zero counter does not read"
        );
        e.write(1).unwrap();
        e.write(2).unwrap();
        e.write(u64::MAX).unwrap();
        assert_eq!(e.read().unwrap(), u64::MAX, "saturates instead of wrapping");
        e.write(5).unwrap();
        assert_eq!(e.read().unwrap(), 5);
        assert_eq!(e.read().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_blocking_read_waits_for_a_write_from_a_clone() {
        let e = PortableEvent::new(0).unwrap();
        let other = e.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.write(7).unwrap();
        });
        assert_eq!(e.read().unwrap(), 7);
        t.join().unwrap();
    }

    #[test]
    fn a_full_buffer_never_blocks_the_writer_nor_loses_the_wake_up() {
        let e = PortableEvent::new(1).unwrap();
        for _ in 0..100_000 {
            e.write(1).unwrap();
        }
        let n = e.read().unwrap();
        assert!((1..=100_000).contains(&n), "{n}");
        assert_eq!(e.read().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn the_descriptor_is_readable_exactly_while_the_counter_is_not_zero() {
        let e = PortableEvent::new(1).unwrap();
        let readable = |e: &PortableEvent| {
            let mut pfd = libc::pollfd {
                fd: e.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call; zero timeout.
            unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
        };
        assert!(!readable(&e));
        e.write(1).unwrap();
        assert!(readable(&e));
        e.read().unwrap();
        assert!(!readable(&e));
    }
}
