//! Pseudo-terminals for `tty` exec sessions.
//!
//! The master stays in the agent (output, input, resizes); the slave becomes
//! the child's stdin, stdout, stderr and controlling terminal.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use msbvm_protocol::TtySize;

/// The byte sent for the host's `CloseStdin` when the terminal does not say
/// otherwise (^D).
const DEFAULT_EOF: u8 = 0x04;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a new PTY pair of the given size; returns (master, slave). Both are
/// close-on-exec (the child gets the slave through `dup2`).
pub fn open(size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain open of /dev/ptmx; the result is checked.
    let master =
        check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: plain calls on a valid master descriptor.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name into our buffer.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `name` is NUL-terminated (ptsname_r succeeded).
    let slave = check(unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    resize(&master, size)?;
    Ok((master, slave))
}

/// Sets the terminal size (the kernel sends SIGWINCH to the foreground
/// process group).
pub fn resize(master: &impl AsRawFd, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize we own.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// The terminal's end-of-file character (what `CloseStdin` types).
pub fn eof_char(master: &File) -> u8 {
    // SAFETY: termios is plain old data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a valid descriptor.
    if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } == 0 && t.c_cc[libc::VEOF] != 0 {
        t.c_cc[libc::VEOF]
    } else {
        DEFAULT_EOF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_has_the_requested_size() {
        let (master, _slave) = match open(TtySize { rows: 33, cols: 99 }) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipped: this host cannot open a pty: {e}");
                return;
            }
        };
        // SAFETY: winsize is plain integers, for which all zeroes is valid.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 99));
        assert_eq!(eof_char(&File::from(master)), 4);
    }
}
