//! The few socket calls the net device makes on its backend socket beyond
//! send and receive.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Reads the `int` socket option `name` at `SOL_SOCKET`.
fn socket_option(fd: &OwnedFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option is one c_int, written into `value`, whose size
    // `len` gives.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Fails unless `fd` is a datagram socket (one frame per datagram).
pub fn check_datagram_socket(fd: &OwnedFd) -> io::Result<()> {
    let ty = socket_option(fd, libc::SO_TYPE)
        .map_err(|e| io::Error::new(e.kind(), format!("network backend is not a socket: {e}")))?;
    if ty != libc::SOCK_DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "network backend must be a SOCK_DGRAM socket (one frame per datagram)",
        ));
    }
    Ok(())
}

/// Reads and clears the socket's pending error (SO_ERROR).
pub fn take_socket_error(socket: &OwnedFd) -> Option<io::Error> {
    match socket_option(socket, libc::SO_ERROR) {
        Ok(err) if err != 0 => Some(io::Error::from_raw_os_error(err)),
        _ => None,
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
