//! The seccomp allowlists of the runtime's own threads, the table from a thread kind to its
//! lists, and the SIGSYS reporter.
//!
//! Lists of the VMM, device and netstack threads live beside their code
//! (`msbvm_vmm::seccomp`, `msbvm_virtio::{fs,net,vsock}::seccomp`, `msbvm_netstack::seccomp`);
//! this module only adds the runtime's threads and puts everything together.

use std::sync::atomic::{AtomicBool, Ordering};

use msbvm_virtio::confine::{
    BackendError, BpfProgram, Syscall, CONFINE_CHILDREN, FILE_READ, SPAWN,
};

/// The signal thread: waits for the handled signals and hands them on.
pub const SIGNALS: &[Syscall] = &[libc::SYS_rt_sigtimedwait];

/// The lifeline thread: reads the creator's pipe until it closes.
pub const LIFELINE: &[Syscall] = &[libc::SYS_read];

/// The listeners of the control socket and the agent's events port and the threads they
/// start per connection: accept, then framed reads and writes on the connection, and a
/// zero-timeout poll of an idle event stream's client.
pub const LISTENER: &[Syscall] = &[
    libc::SYS_accept4,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_accept,
];

/// The supervisor (the main thread after set-up; with [`FILE_READ`]) and the shutdown thread it starts: state
/// records written by rename, the final clean-up of the state directory, a connection to the
/// agent with socket timeouts, the listener of a port published while the sandbox runs
/// (`msbvm net publish` binds it here and hands it to the netstack), waiting for the VM
/// thread, `capset` (only ever lowering: the shutdown thread drops the capability the
/// supervisor keeps), and stopping the plugin host.
pub const SUPERVISOR: &[Syscall] = &[
    libc::SYS_getdents64,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_ioctl,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_ppoll,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_capset,
    // Stopping the plugin host at the end: kill, then reap (it is this process's child).
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_waitid,
];

/// The supervisor's calls that x86-64 has beside their `*at` and `ppoll` forms (std and
/// libc still make some of them).
#[cfg(target_arch = "x86_64")]
const SUPERVISOR_LEGACY: &[Syscall] = &[
    libc::SYS_poll,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_mkdir,
    libc::SYS_open,
    libc::SYS_chmod,
    libc::SYS_stat,
    libc::SYS_lstat,
];
#[cfg(not(target_arch = "x86_64"))]
const SUPERVISOR_LEGACY: &[Syscall] = &[];

/// The threads that talk to the plugin host (`msbvm_plugins::external`): reads and writes on
/// its pipes, and stopping it (kill, then reap) if it breaks the protocol.
pub const PLUGINS: &[Syscall] = &[
    libc::SYS_read,
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_pidfd_send_signal,
];

/// The exec gateway (`exec_gateway`): a listener like the control socket's, plus a
/// connection to the vsock device's socket per client.
pub const EXEC_GATEWAY: &[Syscall] = &[libc::SYS_socket, libc::SYS_connect];

/// The log writer thread (`log_writer`): appends to `runtime.log` and, when
/// it is full, renames it and opens a new one relative to the sandbox directory, then points
/// stderr at it.
pub const LOG: &[Syscall] = &[
    libc::SYS_openat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_lseek,
];

/// Every thread kind the runtime knows, as the `&'static str` the threads announce.
pub const KINDS: &[&str] = &[
    "signals",
    "lifeline",
    "log",
    "control",
    "agent-events",
    "supervisor",
    "netstack",
    "vm",
    "vcpu",
    "virtio-fs",
    "virtio-net",
    "virtio-vsock",
    "virtio-balloon",
    msbvm_plugins::THREAD_KIND,
    "exec-gateway",
];

/// The filter of thread kind `kind` (`None` for a kind this runtime does not know): the
/// VMM's and the devices' kinds come from their crates, the rest from here.
pub fn program(kind: &str) -> Option<Result<BpfProgram, BackendError>> {
    use msbvm_virtio::confine::{compile, device_program};
    if let Some(program) = msbvm_vmm::seccomp::program(kind).or_else(|| device_program(kind)) {
        return Some(program);
    }
    let fionbio = [(0xffff_ffff, msbvm_virtio::confine::FIONBIO)];
    Some(match kind {
        "signals" => compile(&[SIGNALS], &[], &[]),
        "lifeline" => compile(&[LIFELINE], &[], &[]),
        "log" => compile(&[LOG], &[], &[]),
        "control" | "agent-events" => compile(&[LISTENER, SPAWN], &[], &fionbio),
        msbvm_plugins::THREAD_KIND => compile(&[PLUGINS, SPAWN, CONFINE_CHILDREN], &[], &[]),
        "exec-gateway" => compile(
            &[LISTENER, EXEC_GATEWAY, SPAWN, CONFINE_CHILDREN],
            &[libc::AF_UNIX],
            &fionbio,
        ),
        "supervisor" => compile(
            &[SUPERVISOR, SUPERVISOR_LEGACY, FILE_READ, SPAWN],
            &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6],
            &fionbio,
        ),
        "netstack" => {
            use msbvm_netstack::seccomp as n;
            compile(&[n::SYSCALLS], n::SOCKET_FAMILIES, n::IOCTLS)
        }
        _ => return None,
    })
}

/// Set once the reporter is installed.
static REPORTER: AtomicBool = AtomicBool::new(false);

/// Installs the SIGSYS handler that reports a forbidden system call on stderr (the runtime
/// log) and then lets SIGSYS end the process: a sandbox with one thread gone (a vCPU, a
/// device) would hang, so the whole runtime goes and the SDK sees it die.
pub fn install_reporter() -> std::io::Result<()> {
    if REPORTER.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        // SA_RESETHAND: the handler runs once, then SIGSYS has its default action again.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` (after signo, errno, code, padding and
/// `si_call_addr`), the same on x86_64 and aarch64.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; si_syscall is an int at this
    // offset of its _sigsys member.
    let nr = unsafe {
        *(info
            .cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<libc::c_int>())
    };
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|b| *b == 0).unwrap_or(16);
    let mut line = [0u8; 160];
    let mut len = 0;
    for part in [
        &b"msbvm runtime: seccomp: thread "[..],
        &name[..name_len],
        &b" made the forbidden system call "[..],
        decimal(nr, &mut [0u8; 12]),
        &b"; the runtime stops (SIGSYS)\n"[..],
    ] {
        let n = part.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    // SAFETY: write, getpid, gettid and tgkill are async-signal-safe; SIGSYS is blocked
    // while this handler runs and back at its default action, so the signal raised here
    // ends the process as soon as the handler returns.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

/// `n` in decimal, in `buf`, without allocating (for the signal handler).
fn decimal(n: libc::c_int, buf: &mut [u8; 12]) -> &[u8] {
    let mut v = i64::from(n).unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in KINDS {
            let program = program(kind)
                .expect("a known kind")
                .expect("a valid filter");
            assert!(!program.is_empty(), "{kind}");
        }
        assert!(program("nope").is_none());
        assert_eq!(decimal(-17, &mut [0; 12]), b"-17");
        assert_eq!(decimal(0, &mut [0; 12]), b"0");
    }
}
