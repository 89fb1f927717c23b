//! Unix-socket calls the standard library does not offer the way we need
//! them: writes that cannot raise SIGPIPE (the embedding program may not
//! ignore it) and a connect that never blocks the device thread.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// `send(2)` with MSG_NOSIGNAL: a peer that went away yields EPIPE, not a
/// process-killing signal.
pub fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes and the fd is owned by
        // `stream` for the duration of the call.
        let rc = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `Write` over [`send_nosignal`], for [`crate::vsock::csm::txbuf::TxBuf::flush_to`].
pub struct SocketWriter<'a>(pub &'a UnixStream);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_nosignal(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects a non-blocking stream to the Unix socket at `path`.
///
/// A Unix connect completes at once or fails, except when the listener's
/// backlog is full, where a blocking socket would wait: here that case fails
/// with EAGAIN instead, so a stuck host listener cannot stall the device.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: plain socket(2) call; the returned fd is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let (addr, len) = sockaddr_un(path.as_os_str())?;
    // SAFETY: `addr` is a properly initialized sockaddr_un of length `len`.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn sockaddr_un(path: &OsStr) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    // Keep a terminating NUL, as the kernel expects for pathname sockets.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unusable Unix socket path {path:?}"),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn connects_without_blocking_and_fails_cleanly() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("sock");
        assert!(connect_nonblocking(&path).is_err(), "nobody listening");
        let listener = UnixListener::bind(&path).unwrap();
        let stream = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(send_nosignal(&stream, b"hi").unwrap(), 2);
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(peer);
        // EPIPE, not SIGPIPE.
        let mut failed = false;
        for _ in 0..10 {
            if send_nosignal(&stream, b"x").is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn overlong_or_empty_paths_are_refused() {
        let long = "x".repeat(200);
        assert_eq!(
            connect_nonblocking(Path::new(&long)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(connect_nonblocking(Path::new("")).is_err());
    }
}
