//! What a virtio-vsock worker may call (beyond `confine::BASE` and `confine::EVENT_LOOP`): it
//! accepts host connections on the listener it holds, connects guest-initiated streams to
//! `<uds>_<port>` Unix sockets (`socket` is limited to `AF_UNIX` by the installer), and
//! moves bytes.

use crate::allowlist::Syscall;

/// The virtio-vsock worker's allowlist.
pub const SYSCALLS: &[Syscall] = &[
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_ioctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_accept,
];

/// The only `ioctl` it makes: `FIONBIO` (std's `set_nonblocking` on accepted and connected
/// sockets), as `(mask, value)` on the request number.
pub const IOCTLS: &[(u64, u64)] = &[(0xffff_ffff, crate::allowlist::FIONBIO)];
