//! Leaving root: the user a runtime started as root switches to, the capabilities it keeps,
//! handing the state directory over to that user, and the reaper that removes the state
//! directory of an attached sandbox at the end (its parent stays root's).
//!
//! Credentials belong to each thread at the system-call level, so every thread switches
//! itself (raw `setgroups`/`setresgid`/`setresuid`, then `capset`) when it confines itself;
//! glibc's process-wide `setuid` would signal every thread, and seccomp would stop the
//! threads that are already confined.
//!
//! Capabilities kept (only by the threads that serve virtio-fs: its workers and the vCPU
//! threads that start them, and by the supervisor; every other thread keeps none):
//! - the supervisor of a sandbox with a network: `CAP_NET_BIND_SERVICE` (it binds the ports
//!   `msbvm net publish` adds while the sandbox runs, which may be below 1024; the threads it
//!   starts drop it);
//! - a `-v`/`--rootfs` share (passthrough, guest ids are host ids): `CAP_CHOWN` (files the
//!   guest creates get the guest's owner), `CAP_FOWNER` (mode, times and xattrs of files the
//!   runtime's user does not own), `CAP_DAC_OVERRIDE` (the guest's root reads and writes
//!   files of every owner, as on any root filesystem);
//! - an image root, or only read-only shares: `CAP_DAC_READ_SEARCH` (the layers are the image
//!   store's files, root's when root pulled them, with the image's modes such as `0640`;
//!   read-only shares are read as the guest's root would);
//! - an image root on a filesystem without user xattrs (tmpfs before Linux 6.6): the layered
//!   backend keeps the guest's metadata in `trusted.*` xattrs, which need `CAP_SYS_ADMIN`.
//!   It is kept only then, and the runtime log says so.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// The variable naming the user id a root runtime switches to (`0` keeps root).
pub const UID_ENV: &str = "MSBVM_RUNTIME_UID";
/// The variable naming the group id (default: the same number as the user id).
pub const GID_ENV: &str = "MSBVM_RUNTIME_GID";
/// The default: `nobody`/`nogroup`.
pub const DEFAULT_ID: u32 = 65534;

/// `CAP_CHOWN`.
pub const CAP_CHOWN: u32 = 0;
/// `CAP_DAC_OVERRIDE`.
pub const CAP_DAC_OVERRIDE: u32 = 1;
/// `CAP_DAC_READ_SEARCH`.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
/// `CAP_FOWNER`.
pub const CAP_FOWNER: u32 = 3;
/// `CAP_NET_BIND_SERVICE`.
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;

/// The user and group a root runtime becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The identity to switch to: `None` when the runtime is not root, or when
/// [`UID_ENV`] is `0`.
pub fn target() -> Result<Option<Identity>, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let read = |name: &str| -> Result<Option<u32>, String> {
        match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={v:?} is not a numeric id")),
            Err(_) => Ok(None),
        }
    };
    let uid = read(UID_ENV)?.unwrap_or(DEFAULT_ID);
    if uid == 0 {
        return Ok(None);
    }
    let gid = read(GID_ENV)?.unwrap_or(uid);
    Ok(Some(Identity { uid, gid }))
}

/// The capabilities the virtio-fs threads keep, as a bit set (see the module doc).
pub fn fs_capabilities(passthrough: bool, trusted_xattrs: bool) -> u64 {
    let mut caps = 0u64;
    if passthrough {
        caps |= 1 << CAP_CHOWN | 1 << CAP_DAC_OVERRIDE | 1 << CAP_FOWNER;
    }
    if trusted_xattrs {
        caps |= 1 << CAP_SYS_ADMIN;
    }
    caps
}

/// Whether the layered backend will need `trusted.*` xattrs for an upper directory in
/// `dir`: the same probe it makes (a `user.*` xattr that cannot be set).
pub fn needs_trusted_xattrs(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let name = c"user.msbvm.probe";
    // SAFETY: valid C strings and an empty value.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), std::ptr::null(), 0, 0) };
    if rc == 0 {
        // SAFETY: as above.
        unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
        return false;
    }
    true
}

/// Gives `dir` and everything in it (not following links, not leaving the filesystem) to
/// `id`, so the runtime can still write its records, sockets and `upper/` after the switch.
/// Only the top level unless `recursive`. Entries that vanish meanwhile are skipped.
pub fn hand_over(dir: &Path, id: Identity, recursive: bool) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(id.uid), Some(id.gid))?;
    let device = std::fs::symlink_metadata(dir)?.dev();
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            match std::os::unix::fs::lchown(&path, Some(id.uid), Some(id.gid)) {
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
            if recursive && meta.is_dir() && meta.dev() == device {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Switches the calling thread (only it) to `id`, keeping the capabilities in `caps` (bit
/// set) effective and permitted and dropping every other one. A thread started by one that
/// already switched (a device worker started by a vCPU thread) is `id` already: it only
/// narrows its capabilities.
pub fn switch_thread(id: Identity, caps: u64) -> io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three ids of the calling thread.
    check(unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) })?;
    if [r, e, s] == [id.uid; 3] {
        return set_capabilities(caps);
    }
    // SAFETY: raw credential calls with integer arguments (and a NULL group list of length
    // 0); they affect only the calling thread.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into())?;
        check(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid))?;
        check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid))?;
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0).into())?;
    }
    set_capabilities(caps)
}

/// Sets the calling thread's effective and permitted capabilities to `caps`, inheritable to
/// none.
pub fn set_capabilities(caps: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| Data {
        effective: (caps >> shift) as u32,
        permitted: (caps >> shift) as u32,
        inheritable: 0,
    };
    let data = [word(0), word(32)];
    // SAFETY: capset reads a version-3 header and two data words from valid memory.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The calling thread's effective capabilities, as a bit set (for tests and the log).
pub fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// The write end of the pipe to the reaper process.
pub struct Reaper {
    pipe: std::fs::File,
}

impl Reaper {
    /// Forks the reaper: a process that stays root, holds nothing but the pipe's read end,
    /// waits for the runtime to end, and then removes `dir` if the runtime asked for it.
    /// Call before the runtime starts any thread.
    pub fn spawn(dir: &Path) -> io::Result<Reaper> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let dir = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: the process has one thread here, so the child may run any code.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => reap(fds[0], &dir),
            _ => {
                // SAFETY: the read end is the child's; the write end is ours alone.
                unsafe { libc::close(fds[0]) };
                Ok(Reaper {
                    // SAFETY: fds[1] is a fresh descriptor nothing else owns.
                    pipe: unsafe { std::os::fd::FromRawFd::from_raw_fd(fds[1]) },
                })
            }
        }
    }

    /// Asks the reaper to remove the directory once the runtime has exited.
    pub fn remove_on_exit(&mut self) {
        use std::io::Write;
        let _ = self.pipe.write_all(b"r");
    }
}

/// The reaper's whole life (in the forked child).
fn reap(pipe: libc::c_int, dir: &CString) -> ! {
    // SAFETY: only the pipe stays open (the readiness pipe must not be held open by us);
    // then a blocking read loop, rmdir-style clean-up and _exit.
    unsafe {
        let moved = libc::fcntl(pipe, libc::F_DUPFD_CLOEXEC, 1000);
        libc::syscall(libc::SYS_close_range, 0u32, 999u32, 0u32);
        libc::syscall(libc::SYS_close_range, moved as u32 + 1, u32::MAX, 0u32);
        let mut remove = false;
        let mut byte = 0u8;
        loop {
            let n = libc::read(moved, (&mut byte as *mut u8).cast(), 1);
            if n == 1 {
                remove |= byte == b'r';
            } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        if remove {
            let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(dir.as_bytes()));
            let _ = std::fs::remove_dir_all(path);
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_shares() {
        assert_eq!(fs_capabilities(false, false), 0);
        assert_eq!(fs_capabilities(false, true), 1 << CAP_SYS_ADMIN);
        assert_eq!(
            fs_capabilities(true, false),
            1 << CAP_CHOWN | 1 << CAP_DAC_OVERRIDE | 1 << CAP_FOWNER
        );
    }

    #[test]
    fn hand_over_skips_nothing_it_can_reach() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: hand_over_skips_nothing_it_can_reach: needs root");
            return;
        }
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("upper/a/b")).unwrap();
        std::fs::write(dir.path().join("upper/a/b/f"), b"f").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let id = Identity {
            uid: 4242,
            gid: 4343,
        };
        hand_over(dir.path(), id, true).unwrap();
        for p in ["", "upper/a/b/f", "link"] {
            let meta = std::fs::symlink_metadata(dir.path().join(p)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{p}");
        }
        // The link was not followed.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
