//! What the VMM's threads may call once the VM is set up (the installer and the shared lists
//! are in `msbvm_virtio::confine`).
//!
//! - A vCPU thread runs `KVM_RUN` (and the few KVM ioctls the exits need), forwards port and
//!   MMIO accesses to the devices (console writes to its file, eventfd signals), and starts a
//!   device's worker threads when the guest activates the device. Seccomp filters are
//!   inherited, so its list must also hold everything those workers do, and what they do to
//!   confine themselves (`CONFINE_CHILDREN`); each worker then narrows itself to its own
//!   list at start.
//! - The VM thread, after it created the vCPUs, only waits for their reports, kicks them
//!   (`tgkill`), flushes the console and, at the end, reads its memory figures from
//!   `/proc/self` and tears the VM down (the vsock device removes its socket file).
//!   It also takes snapshots ([`SNAPSHOT`]): it writes the state and memory files and runs
//!   the taker's work while the guest is paused, which for a sandbox is copying the
//!   virtio-fs writable layer (the virtio-fs workers' list). Landlock keeps those writes
//!   inside the sandbox's state directory.

use msbvm_virtio::confine::{
    compile, BackendError, BpfProgram, Syscall, CONFINE_CHILDREN, EVENT_LOOP, FILE_READ, SPAWN,
};

/// The ioctl "type" byte of every KVM request (`KVMIO`), as the `(mask, value)` pair the
/// installer matches on the request number.
pub const KVM_IOCTLS: (u64, u64) = (0xff00, 0xae00);

/// What a vCPU thread itself does (the worker lists are added by [`vcpu_lists`]).
pub const VCPU: &[Syscall] = &[
    libc::SYS_ioctl,
    libc::SYS_read,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_dup,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
];

/// The VM thread's list (after set-up), with `confine::FILE_READ`.
pub const VM_THREAD: &[Syscall] = &[
    libc::SYS_ioctl,
    libc::SYS_fsync,
    libc::SYS_fcntl,
    // Tearing the devices down: the vsock device removes its listening socket.
    libc::SYS_unlinkat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
];

/// Writing a snapshot: the state file (temporary file, sync, rename), the sparse memory
/// file (holes by `ftruncate`, data by `pwrite64`) and its directory; reading the page map
/// and, for a restored VM, the memory file it was restored from (`pread64`).
pub const SNAPSHOT: &[Syscall] = &[
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
];

/// Every list a vCPU thread needs: its own, thread start-up, and the device workers' (it
/// starts them), with the `ioctl` requests they use.
pub fn vcpu_lists() -> (Vec<&'static [Syscall]>, Vec<(u64, u64)>) {
    use msbvm_virtio::{fs, net, vsock};
    let lists = vec![
        VCPU,
        SPAWN,
        CONFINE_CHILDREN,
        EVENT_LOOP,
        fs::seccomp::SYSCALLS,
        net::seccomp::SYSCALLS,
        vsock::seccomp::SYSCALLS,
    ];
    let mut ioctls = vec![KVM_IOCTLS];
    ioctls.extend_from_slice(vsock::seccomp::IOCTLS);
    (lists, ioctls)
}

/// The filter of the VMM's thread kinds (`"vcpu"`, `"vm"`), or `None` for another kind.
pub fn program(kind: &str) -> Option<Result<BpfProgram, BackendError>> {
    Some(match kind {
        "vcpu" => {
            let (lists, ioctls) = vcpu_lists();
            compile(&lists, &[libc::AF_UNIX], &ioctls)
        }
        "vm" => compile(
            &[
                VM_THREAD,
                FILE_READ,
                EVENT_LOOP,
                SNAPSHOT,
                msbvm_virtio::fs::seccomp::SYSCALLS,
            ],
            &[],
            &[KVM_IOCTLS],
        ),
        _ => return None,
    })
}
