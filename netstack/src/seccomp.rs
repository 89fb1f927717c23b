//! What the netstack thread may call once it runs (the sandbox runtime installs the filter;
//! see `msbvm_virtio::confine`), and the hook through which it confines itself at start.
//!
//! The thread runs a single-threaded tokio runtime: an epoll loop (with an eventfd to wake
//! it), the frame socket it was handed, and the host sockets it opens for the guest's flows
//! (TCP and UDP over IPv4 and IPv6 only: the installer limits `socket` to `AF_INET` and
//! `AF_INET6`), DNS upstream queries and published-port listeners. It needs no file of its
//! own (the host's resolvers are read from `/etc/resolv.conf` before the thread starts); the
//! file calls listed are for the event sink's log.
//!
//! In a sandbox the thread also runs the virtio-net device's worker ([`crate::HostedDevice`]):
//! guest memory is plain memory, and the worker's calls (`epoll_wait` on its set, `read` of
//! its queue eventfds, `write` of the interrupt eventfd, `recvfrom`/`sendto` on the device end
//! of the frame socketpair) are all listed here or in the base. The worker thus runs under
//! this wider list rather than the device's own (`msbvm_virtio::net::seccomp`); the stack
//! already parses every guest frame under it.

use std::sync::OnceLock;

/// A system call number (`libc::SYS_*`).
pub type Syscall = libc::c_long;

/// The netstack thread's allowlist, beyond the base every thread has.
pub const SYSCALLS: &[Syscall] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendmmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_clone,
    libc::SYS_clone3,
    // Event sinks write `net-events.jsonl` from this thread; listed so that a sink that caps
    // or rotates its file does not end the sandbox (Landlock keeps it in the state directory).
    libc::SYS_openat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    // tokio's signal driver (enabled when the embedding program's tokio has the `signal` or
    // `process` feature, as the SDK's does) makes a socket pair at start.
    libc::SYS_socketpair,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
];

/// Socket families the netstack opens.
pub const SOCKET_FAMILIES: &[libc::c_int] = &[libc::AF_INET, libc::AF_INET6];

/// `FIONBIO` (the same number on every Linux architecture we build for).
const FIONBIO: u64 = 0x5421;

/// `ioctl` requests it makes, as `(mask, value)` on the request number: `FIONBIO`
/// (`set_nonblocking` on sockets).
pub const IOCTLS: &[(u64, u64)] = &[(0xffff_ffff, FIONBIO)];

static HOOK: OnceLock<fn(&'static str)> = OnceLock::new();

/// Registers the hook the netstack thread calls with its kind (`"netstack"`) when it starts.
/// Returns false when one was already registered.
pub fn set_thread_hook(hook: fn(&'static str)) -> bool {
    HOOK.set(hook).is_ok()
}

/// Runs the registered hook, if any.
pub(crate) fn thread_started() {
    if let Some(hook) = HOOK.get() {
        hook("netstack");
    }
}
