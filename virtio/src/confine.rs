//! Per-thread confinement: the seccomp-BPF allowlists of msbvm's thread kinds and how a
//! thread installs its own.
//!
//! Seccomp filters belong to one thread and are inherited by the threads it creates, so each
//! thread confines itself when it starts: the code that starts a thread calls
//! [`thread_started`] with the thread's kind first thing in the new thread. That is a no-op
//! unless the process registered a hook ([`set_thread_hook`]); the sandbox runtime does, and
//! its hook installs [`install`] with the kind's allowlist (plus Landlock and the user
//! switch). `msbvm boot`, the tests and other embedders register nothing and run unconfined.
//!
//! The allowlists are data that sit next to the code that needs them: [`BASE`] here (what
//! every Rust thread does), `fs::seccomp`, `net::seccomp`, `rng::seccomp`, `vsock::seccomp`, `balloon::seccomp`
//! for the device workers, `msbvm_vmm::seccomp` for the vCPU and VM threads, `msbvm_netstack::seccomp`
//! and the runtime's own threads in the SDK. A call outside the thread's list raises SIGSYS
//! (`SECCOMP_RET_TRAP`); the runtime's handler reports the call and ends the process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

pub use seccompiler::{BackendError, BpfProgram};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

pub use crate::allowlist::{Syscall, FIONBIO};

/// What every thread of a Rust program does whatever its work: memory, locks, time, its own
/// end, signal returns, thread-local start-up, log lines (`write` to stderr) and the calls the
/// runtime's SIGSYS reporter makes. `prctl` is limited to naming threads (see [`compile`]).
pub const BASE: &[Syscall] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_getrandom,
    libc::SYS_prctl,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
];

/// What a thread that starts other threads needs beyond [`BASE`] (std's and tokio's thread
/// start: `clone3`, falling back to `clone`, with the new thread's stack guard page).
pub const SPAWN: &[Syscall] = &[libc::SYS_clone, libc::SYS_clone3];

/// What a confined thread needs to start threads that confine themselves in turn (a vCPU
/// thread starting device workers): each new thread narrows its capabilities, enters the
/// Landlock ruleset (a duplicate of its descriptor) and adds its own filter.
pub const CONFINE_CHILDREN: &[Syscall] = &[
    libc::SYS_getresuid,
    libc::SYS_capset,
    libc::SYS_capget,
    libc::SYS_fcntl,
    libc::SYS_landlock_restrict_self,
    libc::SYS_seccomp,
];

/// Opening files and reading them: what the runtime's supervisor and the VM thread share.
pub const FILE_READ: &[Syscall] = &[
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// Reading and polling descriptors a thread already holds: event loops (epoll, eventfds).
pub const EVENT_LOOP: &[Syscall] = &[
    libc::SYS_read,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_fcntl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
];

/// Where the process's confinement hook lives (one per process).
static HOOK: OnceLock<fn(&'static str)> = OnceLock::new();

/// Registers `hook`, which every msbvm thread calls with its kind when it starts. Returns
/// false when a hook was already registered (the first one stays).
pub fn set_thread_hook(hook: fn(&'static str)) -> bool {
    HOOK.set(hook).is_ok()
}

/// Called by each msbvm thread first thing, with its kind (`"vcpu"`, `"virtio-fs"`, ...):
/// runs the registered hook, if any.
pub fn thread_started(kind: &'static str) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}

/// `prctl` options every thread may use: naming threads (std and tokio name new threads from
/// inside them), reading the name (the SIGSYS reporter) and `PR_SET_NO_NEW_PRIVS` (which
/// only restricts; new threads that confine themselves set it).
const PRCTL_ALLOWED: [libc::c_int; 3] = [
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_SET_NO_NEW_PRIVS,
];

/// The filter that allows [`BASE`] and `lists`, and traps everything else. `socket` (when
/// listed) is limited to `socket_families`; `prctl` to naming threads; `ioctl` (when listed)
/// to the requests in `ioctls` (each a `(mask, value)` pair on the request number);
/// `tgkill` to this process.
pub fn compile(
    lists: &[&[Syscall]],
    socket_families: &[libc::c_int],
    ioctls: &[(u64, u64)],
) -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in BASE.iter().chain(lists.iter().flat_map(|l| l.iter())) {
        rules.insert(*nr, Vec::new());
    }
    let eq = |arg: u8, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    let prctl = PRCTL_ALLOWED
        .iter()
        .map(|op| eq(0, *op as u64))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_prctl, prctl);
    // Signals only to this process's own threads (vCPU kicks, the SIGSYS reporter), never
    // to another process running as the same user.
    rules.insert(
        libc::SYS_tgkill,
        vec![eq(0, u64::from(std::process::id()))?],
    );
    if let Some(entry) = rules.get_mut(&libc::SYS_socket) {
        *entry = socket_families
            .iter()
            .map(|family| eq(0, *family as u64))
            .collect::<Result<Vec<_>, _>>()?;
    }
    if let Some(entry) = rules.get_mut(&libc::SYS_ioctl) {
        *entry = ioctls
            .iter()
            .map(|(mask, value)| {
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(*mask),
                    *value,
                )
                .and_then(|c| SeccompRule::new(vec![c]))
            })
            .collect::<Result<Vec<_>, _>>()?;
    }
    // An entry left with no rule after the narrowing above allows nothing: drop it.
    rules.retain(|nr, r| !r.is_empty() || ![libc::SYS_socket, libc::SYS_ioctl].contains(nr));
    let arch = std::env::consts::ARCH.try_into()?;
    SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)?.try_into()
}

/// Installs `program` on the calling thread (after `PR_SET_NO_NEW_PRIVS`, which seccompiler
/// sets). The threads it starts from now on inherit it.
pub fn install(program: &BpfProgram) -> Result<(), seccompiler::Error> {
    seccompiler::apply_filter(program)
}

/// The filter of a device worker kind (`"virtio-fs"`, `"virtio-net"`, `"virtio-rng"`, `"virtio-balloon"`,
/// `"virtio-vsock"`), or `None` for another kind.
pub fn device_program(kind: &str) -> Option<Result<BpfProgram, seccompiler::BackendError>> {
    use crate::{balloon, fs, net, rng, vsock};
    Some(match kind {
        "virtio-fs" => compile(&[fs::seccomp::SYSCALLS, EVENT_LOOP], &[], &[]),
        "virtio-net" => compile(&[net::seccomp::SYSCALLS, EVENT_LOOP], &[], &[]),
        "virtio-rng" => compile(&[rng::seccomp::SYSCALLS, EVENT_LOOP], &[], &[]),
        "virtio-balloon" => compile(&[balloon::seccomp::SYSCALLS, EVENT_LOOP], &[], &[]),
        "virtio-vsock" => compile(
            &[vsock::seccomp::SYSCALLS, EVENT_LOOP],
            &[libc::AF_UNIX],
            vsock::seccomp::IOCTLS,
        ),
        _ => return None,
    })
}

/// The environment variable that makes the device test harness confine the device workers
/// it starts (see [`confine_workers_in_tests`]).
#[cfg(any(test, feature = "test-utils"))]
pub const TEST_ENV: &str = "MSBVM_TEST_SECCOMP";

/// Test support: with [`TEST_ENV`]`=1`, registers a hook that installs each device worker's
/// filter, so the device tests run their real work under the filters. A call outside a list
/// then ends the test process with SIGSYS.
#[cfg(any(test, feature = "test-utils"))]
pub fn confine_workers_in_tests() {
    fn hook(kind: &'static str) {
        if let Some(program) = device_program(kind) {
            install(&program.expect("the filter compiles")).expect("the filter installs");
        }
    }
    if std::env::var(TEST_ENV).as_deref() == Ok("1") {
        set_thread_hook(hook);
    }
}

/// Whether this kernel offers seccomp filters (`CONFIG_SECCOMP_FILTER`).
pub fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer; it fails with EINVAL without seccomp.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_architecture() {
        let program = compile(
            &[SPAWN, EVENT_LOOP, &[libc::SYS_socket, libc::SYS_ioctl]],
            &[libc::AF_UNIX],
            &[(0xff00, 0xae00)],
        )
        .unwrap();
        assert!(program.len() > BASE.len());
        assert!(seccomp_available());
        for kind in [
            "virtio-fs",
            "virtio-net",
            "virtio-rng",
            "virtio-vsock",
            "virtio-balloon",
        ] {
            assert!(device_program(kind).unwrap().is_ok(), "{kind}");
        }
        assert!(device_program("vcpu").is_none());
    }

    /// Runs this binary's device tests again in a child process, with every device worker
    /// under its filter (see [`confine_workers_in_tests`]).
    #[test]
    fn device_tests_pass_under_their_seccomp_filters() {
        if std::env::var(TEST_ENV).is_ok() {
            return; // The child itself.
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "fs::",
                "net::",
                "rng::",
                "vsock::",
                "balloon::",
                "--test-threads=2",
            ])
            .env(TEST_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "device tests under seccomp: {:?}\n{stdout}\n{stderr}",
            out.status
        );
        let passed: usize = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("test result: ok. "))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum();
        assert!(passed >= 20, "only {passed} device tests ran:\n{stdout}");
    }
}
