//! Starting a requested process: fork, set the child up, exec.
//!
//! Everything that allocates (C strings, `PATH` candidates, user lookup) is
//! prepared before `fork`, because the agent is multi-threaded and the child
//! may only make async-signal-safe calls until it execs. The child reports a
//! failed step (which one, and errno) through a close-on-exec pipe, so the
//! host gets "cannot start `foo`: exec failed: No such file or directory"
//! instead of a mysterious exit code 127.
//!
//! The child always starts a new session (`setsid`), so its pid is also its
//! process group id and signals, timeouts and disconnects reach the whole
//! tree it starts.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use msbvm_protocol::events::{GUEST_BIN_DIR, GUEST_SOCKET, SOCKET_ENV};
use msbvm_protocol::{ExecRequest, TtySize};

use super::reaper::{Reaper, WaitStatus};
use super::{pty, users};

/// `PATH` for programs when the request gives no environment (or none with
/// `PATH`).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The request itself is unusable (empty argv, NUL bytes, bad env name).
    #[error("invalid exec request: {0}")]
    Invalid(String),
    /// The agent could not prepare the process (pipes, pty, fork).
    #[error("cannot start `{program}`: {what}: {source}")]
    Setup {
        /// argv\[0].
        program: String,
        /// The failed preparation.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The child failed a step before its program ran.
    #[error("cannot start `{program}`: {step} failed: {source}")]
    Child {
        /// argv\[0].
        program: String,
        /// The failed step, e.g. "exec" or "chdir to /nope".
        step: String,
        /// The errno it got.
        source: io::Error,
    },
}

/// A started process and the agent's ends of its I/O.
pub struct Process {
    /// Its pid, which is also its process group id.
    pub pid: libc::pid_t,
    /// The agent's ends of its stdin, stdout and stderr.
    pub io: Stdio,
    /// Its wait status, from the reaper.
    pub exit: Receiver<WaitStatus>,
}

/// The agent's ends of a process's I/O.
pub struct Stdio {
    /// Where its input goes (pipe write end, or the PTY master). Non-blocking.
    pub stdin: Arc<File>,
    /// Its stdout (or the PTY master). Non-blocking.
    pub stdout: Arc<File>,
    /// Its stderr; `None` with a PTY.
    pub stderr: Option<Arc<File>>,
    /// The PTY master, for resizes; `None` without a PTY.
    pub pty: Option<Arc<File>>,
}

/// Steps of the child between fork and exec, reported back on failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Session = 1,
    Stdio,
    Terminal,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
}

impl Step {
    fn from_u8(v: u8) -> Option<Step> {
        [
            Step::Session,
            Step::Stdio,
            Step::Terminal,
            Step::Groups,
            Step::Gid,
            Step::Uid,
            Step::Chdir,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }
}

/// Who the child becomes.
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// setgroups needs CAP_SETGID even for no change; skip it when the agent
    /// is not root (only on a development host).
    set_groups: bool,
}

/// Everything the child needs, allocated before fork.
struct Prepared {
    program: String,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Paths to try in order (the `PATH` search, done as execvp does).
    candidates: Vec<CString>,
    cwd: CString,
    credentials: Option<Credentials>,
}

fn cstring(s: &str, what: impl FnOnce() -> String) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Invalid(format!("{} contains a NUL byte", what())))
}

/// The environment when the request gives none.
pub fn default_env(home: &str, tty: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), home.to_string()),
    ];
    if tty {
        env.push(("TERM".to_string(), "xterm".to_string()));
    }
    env
}

/// `env` with what every exec gets for guest events: [`SOCKET_ENV`] naming
/// the events socket (unless the request set it) and [`GUEST_BIN_DIR`], where
/// the in-guest `msbvm` lives, at the end of `PATH` (once; with no `PATH`
/// at all, the default one gets it).
pub fn with_events_env(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut has_path = false;
    for (_, v) in env.iter_mut().filter(|(k, _)| k == "PATH") {
        has_path = true;
        if !v.split(':').any(|dir| dir == GUEST_BIN_DIR) {
            if !v.is_empty() {
                v.push(':');
            }
            v.push_str(GUEST_BIN_DIR);
        }
    }
    if !has_path {
        env.push(("PATH".into(), format!("{DEFAULT_PATH}:{GUEST_BIN_DIR}")));
    }
    if !env.iter().any(|(k, _)| k == SOCKET_ENV) {
        env.push((SOCKET_ENV.into(), GUEST_SOCKET.into()));
    }
    env
}

/// The paths to try for `program` given `path` (the `PATH` value): the
/// program itself if it names a path, else each `PATH` entry joined with it
/// (an empty entry meaning the current directory, as in execvp).
pub fn candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{program}", dir.trim_end_matches('/'))
        })
        .collect()
}

fn prepare(req: &ExecRequest) -> Result<Prepared, SpawnError> {
    let program = match req.argv.first() {
        Some(p) if !p.is_empty() => p.clone(),
        _ => return Err(SpawnError::Invalid("argv is empty".into())),
    };
    let argv = req
        .argv
        .iter()
        .enumerate()
        .map(|(i, a)| cstring(a, || format!("argv[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    // The user the child runs as (the agent's own, root in the guest, when
    // the request names none): for HOME and the groups.
    // SAFETY: geteuid has no preconditions.
    let uid = req.uid.unwrap_or_else(|| unsafe { libc::geteuid() });
    let user = users::lookup(uid);
    let env_pairs = if req.env.is_empty() {
        let home = match &user {
            Some(u) if !u.home.is_empty() => u.home.clone(),
            _ if uid == 0 => "/root".to_string(),
            _ => "/".to_string(),
        };
        default_env(&home, req.tty.is_some())
    } else {
        req.env.clone()
    };
    let env_pairs = with_events_env(super::trust::merge(&env_pairs, &super::trust::boot_env()));
    let mut env = Vec::with_capacity(env_pairs.len());
    for (k, v) in &env_pairs {
        if k.is_empty() || k.contains('=') {
            return Err(SpawnError::Invalid(format!(
                "environment variable name {k:?} is empty or contains '='"
            )));
        }
        env.push(cstring(&format!("{k}={v}"), || {
            format!("environment variable {k}")
        })?);
    }
    let path = env_pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let candidates = candidates(&program, path)
        .iter()
        .map(|c| cstring(c, || "argv[0]".into()))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = cstring(req.cwd.as_deref().unwrap_or("/"), || "cwd".into())?;

    let credentials = (req.uid.is_some() || req.gid.is_some()).then(|| {
        let uid = req.uid.unwrap_or(0);
        let user = user.filter(|u| u.uid == uid);
        let gid = req
            .gid
            .or_else(|| user.as_ref().map(|u| u.gid))
            .unwrap_or(0);
        let groups = match &user {
            Some(u) => users::groups_of(&u.name, gid),
            None => vec![gid],
        };
        Credentials {
            uid,
            gid,
            groups,
            // SAFETY: geteuid has no preconditions.
            set_groups: unsafe { libc::geteuid() } == 0,
        }
    });
    Ok(Prepared {
        program,
        argv,
        env,
        candidates,
        cwd,
        credentials,
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A NULL-terminated array of pointers into `strings` (which must outlive it).
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the child process works with; only borrowed, pre-built data.
struct ChildSetup<'a> {
    prepared: &'a Prepared,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [RawFd; 3],
    tty: bool,
    report: RawFd,
}

/// Reports `step` and errno on the report pipe and exits.
///
/// # Safety
/// Only for the forked child.
unsafe fn child_fail(report: RawFd, step: Step, errno: i32) -> ! {
    let e = errno.to_le_bytes();
    let msg = [step as u8, e[0], e[1], e[2], e[3]];
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The child between fork and exec: async-signal-safe calls only.
///
/// # Safety
/// Only right after `fork`, in the child.
unsafe fn child(s: &ChildSetup<'_>) -> ! {
    // Dispositions the agent ignores (SIGPIPE) would survive exec, and the
    // mask is inherited: give the program a clean slate.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    if libc::setsid() < 0 {
        child_fail(s.report, Step::Session, errno());
    }
    // Move the ends above 2 first so one dup2 cannot clobber another's
    // source.
    let mut high = [0; 3];
    for (h, &fd) in high.iter_mut().zip(&s.stdio) {
        *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
        if *h < 0 {
            child_fail(s.report, Step::Stdio, errno());
        }
    }
    for (target, &fd) in high.iter().enumerate() {
        if libc::dup2(fd, target as RawFd) < 0 {
            child_fail(s.report, Step::Stdio, errno());
        }
    }
    close_inherited(s.report);
    if s.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
        child_fail(s.report, Step::Terminal, errno());
    }
    if let Some(c) = &s.prepared.credentials {
        if c.set_groups && libc::setgroups(c.groups.len(), c.groups.as_ptr()) < 0 {
            child_fail(s.report, Step::Groups, errno());
        }
        if libc::setgid(c.gid) < 0 {
            child_fail(s.report, Step::Gid, errno());
        }
        if libc::setuid(c.uid) < 0 {
            child_fail(s.report, Step::Uid, errno());
        }
    }
    if libc::chdir(s.prepared.cwd.as_ptr()) < 0 {
        child_fail(s.report, Step::Chdir, errno());
    }
    // The PATH search as execvp does it: go on past missing entries, remember
    // a permission problem, fail at once on anything else.
    let mut denied = false;
    for candidate in &s.prepared.candidates {
        libc::execve(candidate.as_ptr(), s.argv.as_ptr(), s.envp.as_ptr());
        match errno() {
            libc::EACCES => denied = true,
            libc::ENOENT
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::ENAMETOOLONG
            | libc::ESTALE
            | libc::ENODEV
            | libc::ETIMEDOUT => {}
            other => child_fail(s.report, Step::Exec, other),
        }
    }
    let e = if denied { libc::EACCES } else { libc::ENOENT };
    child_fail(s.report, Step::Exec, e)
}

/// Closes every descriptor from 3 up except `keep` (the report pipe, closed by the exec).
///
/// They are all close-on-exec, but a child holds them until its exec completes, and an exec
/// can take long (the binary is read over virtio-fs). Meanwhile the child would keep other
/// sessions' ends open, their report pipes included, and their starts would wait for its
/// exec: one slow exec would hold up every exec started beside it. Errors are ignored (a
/// kernel without close_range only loses this isolation).
///
/// # Safety
/// Only for a forked child, before it execs (it closes descriptors other code may own).
unsafe fn close_inherited(keep: RawFd) {
    let close_range = |first: libc::c_uint, last: libc::c_uint| {
        if first <= last {
            libc::syscall(libc::SYS_close_range, first, last, 0);
        }
    };
    match libc::c_uint::try_from(keep) {
        Ok(keep) if keep >= 3 => {
            close_range(3, keep - 1);
            close_range(keep.saturating_add(1), libc::c_uint::MAX);
        }
        _ => close_range(3, libc::c_uint::MAX),
    }
}

fn step_text(step: Step, p: &Prepared) -> String {
    let c = p.credentials.as_ref();
    match step {
        Step::Session => "setsid".into(),
        Step::Stdio => "setting up stdio".into(),
        Step::Terminal => "acquiring the terminal".into(),
        Step::Groups => format!("setgroups {:?}", c.map(|c| &c.groups)),
        Step::Gid => format!("setgid {}", c.map_or(0, |c| c.gid)),
        Step::Uid => format!("setuid {}", c.map_or(0, |c| c.uid)),
        Step::Chdir => format!("chdir to {}", p.cwd.to_string_lossy()),
        Step::Exec => "exec".into(),
    }
}

/// Starts the process `req` describes; its exit status is routed by
/// `reaper`.
pub fn spawn(req: &ExecRequest, reaper: &Reaper) -> Result<Process, SpawnError> {
    let p = prepare(req)?;
    let setup = |(what, source): (&'static str, io::Error)| SpawnError::Setup {
        program: p.program.clone(),
        what,
        source,
    };
    let plumbing = Plumbing::open(req.tty).map_err(setup)?;
    let (report_r, report_w) = pipe().map_err(|e| setup(("creating the report pipe", e)))?;
    let (pid, exit) = fork_child(&p, &plumbing, req.tty.is_some(), &report_w, reaper)
        .map_err(|e| setup(("fork", e)))?;

    // Close our copies of the child's ends: EOF on its output (and EOF on
    // the report pipe once it execs) depends on it.
    let Plumbing { child_fds, io, .. } = plumbing;
    drop(child_fds);
    drop(report_w);
    if let Some((step, errno)) = read_report(File::from(report_r)) {
        // The child has _exit-ed or is about to; the reaper reaps it.
        reaper.forget(pid);
        return Err(SpawnError::Child {
            program: p.program.clone(),
            step: step_text(step, &p),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(Process { pid, io, exit })
}

/// A process's I/O before it is forked: the child's ends, the fds it puts
/// on 0, 1 and 2, and the agent's ends.
struct Plumbing {
    child_fds: Vec<OwnedFd>,
    stdio: [RawFd; 3],
    io: Stdio,
}

impl Plumbing {
    /// A PTY with `tty`, else three pipes; an error names what failed.
    fn open(tty: Option<TtySize>) -> Result<Plumbing, (&'static str, io::Error)> {
        match tty {
            Some(size) => Self::pty(size).map_err(|e| ("opening a pty", e)),
            None => Self::pipes().map_err(|e| ("creating pipes", e)),
        }
    }

    fn pty(size: TtySize) -> io::Result<Plumbing> {
        let (master, slave) = pty::open(size)?;
        set_nonblocking(&master)?;
        let master = Arc::new(File::from(master));
        let fd = slave.as_raw_fd();
        Ok(Plumbing {
            child_fds: vec![slave],
            stdio: [fd; 3],
            io: Stdio {
                stdin: Arc::clone(&master),
                stdout: Arc::clone(&master),
                stderr: None,
                pty: Some(master),
            },
        })
    }

    fn pipes() -> io::Result<Plumbing> {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&in_w, &out_r, &err_r] {
            set_nonblocking(fd)?;
        }
        Ok(Plumbing {
            stdio: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            child_fds: vec![in_r, out_w, err_w],
            io: Stdio {
                stdin: Arc::new(File::from(in_w)),
                stdout: Arc::new(File::from(out_r)),
                stderr: Some(Arc::new(File::from(err_r))),
                pty: None,
            },
        })
    }
}

/// Forks the child that sets itself up and execs `p`, reporting a failed
/// step on `report`.
fn fork_child(
    p: &Prepared,
    plumbing: &Plumbing,
    tty: bool,
    report: &OwnedFd,
    reaper: &Reaper,
) -> io::Result<(libc::pid_t, Receiver<WaitStatus>)> {
    let argv = pointers(&p.argv);
    let envp = pointers(&p.env);
    let child_setup = ChildSetup {
        prepared: p,
        argv: &argv,
        envp: &envp,
        stdio: plumbing.stdio,
        tty,
        report: report.as_raw_fd(),
    };
    reaper.spawn(|| {
        // SAFETY: the child only runs `child`, which makes
        // async-signal-safe calls on data prepared above.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: we are the child.
            0 => unsafe { child(&child_setup) },
            pid => Ok(pid),
        }
    })
}

/// The child's report of a failed step (step, errno), or `None` once it
/// exec'd (the close-on-exec pipe ended empty).
fn read_report(mut report_r: File) -> Option<(Step, i32)> {
    let mut report = [0u8; 8];
    let mut got = 0;
    loop {
        match report_r.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        if got == report.len() {
            break;
        }
    }
    if got < 5 {
        return None;
    }
    let step = Step::from_u8(report[0]).unwrap_or(Step::Exec);
    Some((
        step,
        i32::from_le_bytes([report[1], report[2], report[3], report[4]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_only_stdio_and_the_report_pipe_before_exec() {
        let (report_r, report_w) = pipe().unwrap();
        // Descriptors another session would own: below and above the report pipe.
        let (others_r, others_w) = pipe().unwrap();
        let keep = report_w.as_raw_fd();
        let watched: Vec<RawFd> = [&report_r, &others_r, &others_w]
            .iter()
            .map(|fd| fd.as_raw_fd())
            .collect();
        // SAFETY: the child only makes raw system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the forked child.
            unsafe {
                close_inherited(keep);
                let open = |fd: RawFd| libc::fcntl(fd, libc::F_GETFD) >= 0;
                let mut flags = u8::from(open(keep));
                for (i, &fd) in watched.iter().enumerate() {
                    flags |= u8::from(open(fd)) << (i + 1);
                }
                libc::write(keep, (&flags as *const u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork: {}", io::Error::last_os_error());
        drop(report_w);
        let mut flags = [0u8; 1];
        let n = (&File::from(report_r)).read(&mut flags).unwrap();
        let mut status = 0;
        // SAFETY: waitpid writes one int we own.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(n, 1);
        assert_eq!(flags[0], 1, "only the report pipe stays open (bit 0)");
    }

    #[test]
    fn path_search_candidates() {
        assert_eq!(
            candidates("ls", "/usr/bin:/bin/"),
            vec!["/usr/bin/ls", "/bin/ls"]
        );
        assert_eq!(candidates("ls", ":/bin"), vec!["./ls", "/bin/ls"]);
        assert_eq!(candidates("./x", "/bin"), vec!["./x"]);
        assert_eq!(candidates("/bin/sh", "/usr/bin"), vec!["/bin/sh"]);
    }

    #[test]
    fn default_env_has_path_home_and_term_for_a_tty() {
        let env = default_env("/root", true);
        assert!(env.contains(&("PATH".into(), DEFAULT_PATH.into())));
        assert!(env.contains(&("HOME".into(), "/root".into())));
        assert!(env.contains(&("TERM".into(), "xterm".into())));
        assert!(!default_env("/root", false).iter().any(|(k, _)| k == "TERM"));
    }

    #[test]
    fn bad_requests_are_refused_before_fork() {
        let bad = |req: ExecRequest| matches!(prepare(&req), Err(SpawnError::Invalid(_)));
        assert!(bad(ExecRequest::default()));
        assert!(bad(ExecRequest {
            argv: vec!["".into()],
            ..Default::default()
        }));
        assert!(bad(ExecRequest {
            argv: vec!["a\0b".into()],
            ..Default::default()
        }));
        assert!(bad(ExecRequest {
            argv: vec!["true".into()],
            env: vec![("A=B".into(), "c".into())],
            ..Default::default()
        }));
        assert!(bad(ExecRequest {
            argv: vec!["true".into()],
            cwd: Some("/\0".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn path_comes_from_the_requested_env() {
        let p = prepare(&ExecRequest {
            argv: vec!["prog".into()],
            env: vec![("PATH".into(), "/opt/x".into())],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            p.candidates,
            vec![
                CString::new("/opt/x/prog").unwrap(),
                CString::new(format!("{GUEST_BIN_DIR}/prog")).unwrap()
            ]
        );
        assert_eq!(
            p.env,
            vec![
                CString::new(format!("PATH=/opt/x:{GUEST_BIN_DIR}")).unwrap(),
                CString::new(format!("{SOCKET_ENV}={GUEST_SOCKET}")).unwrap(),
            ]
        );
    }

    #[test]
    fn every_exec_finds_the_events_socket_and_the_command() {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        // Already there: nothing is added twice; a chosen socket is kept.
        let env = pairs(&[
            ("PATH", &format!("/bin:{GUEST_BIN_DIR}")),
            (SOCKET_ENV, "/elsewhere"),
        ]);
        assert_eq!(with_events_env(env.clone()), env);
        // No PATH at all: the default one, with the command's directory.
        assert_eq!(
            with_events_env(pairs(&[("A", "b")])),
            pairs(&[
                ("A", "b"),
                ("PATH", &format!("{DEFAULT_PATH}:{GUEST_BIN_DIR}")),
                (SOCKET_ENV, GUEST_SOCKET),
            ])
        );
        assert_eq!(
            with_events_env(pairs(&[("PATH", "")])),
            pairs(&[("PATH", GUEST_BIN_DIR), (SOCKET_ENV, GUEST_SOCKET)])
        );
    }
}
