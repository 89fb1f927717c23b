//! What a virtio-net worker may call (beyond `confine::BASE` and `confine::EVENT_LOOP`): it
//! moves frames between the queues and the netstack's datagram socket, which it already
//! holds, so it needs only reads and writes on that socket. This list applies when the worker
//! runs on a thread of its own; hosted by the network stack
//! ([`NetDeviceConfig::host`](super::NetDeviceConfig::host)) it runs under the stack thread's.

use crate::allowlist::Syscall;

/// The virtio-net worker's allowlist.
pub const SYSCALLS: &[Syscall] = &[
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
];
