//! Confined host-side file operations shared by the passthrough and layered
//! backends: every host syscall they make goes through a wrapper here, so
//! this is the one module whose `unsafe` blocks talk to the host kernel.
//!
//! Every path the backends hand to the host kernel is resolved relative to an
//! `O_PATH` directory fd with `openat2(2)` and [`CONFINED`]: no `..` above
//! the start, no absolute paths, no symlinks (magic or not) anywhere in the
//! walk. The backends only ever walk directories they have seen, so a
//! symlink in the middle of a path means the tree changed under them; they
//! answer `ELOOP`/`ESTALE` instead of following it. Operations on an object
//! itself go through its own fd (`/proc/self/fd/N` for the calls that have no
//! `f*` form accepting `O_PATH` fds); that magic link names the exact inode,
//! so no resolution happens in the shared tree at all.
//!
//! libc has the `openat2` syscall number and `open_how` but no wrapper, and
//! no well-kept crate adds exactly this discipline without pulling in a large
//! API surface, so the few wrappers are written here.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Resolution flags for every confined walk: beneath the start directory, no
/// symlinks of any kind.
pub(crate) const CONFINED: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// An `io::Error` from an errno value.
pub(crate) fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// Turns a `-1` libc return value into the thread's errno.
pub(crate) fn cvt<T: Default + PartialOrd>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat2(2)` relative to `dirfd`. Retries `EAGAIN`, which the kernel
/// returns when a concurrent rename made a `RESOLVE_BENEATH` walk unsure.
pub(crate) fn openat2(
    dirfd: RawFd,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = resolve;
    for _ in 0..64 {
        // SAFETY: `how` is a valid open_how of the size passed; path is NUL-terminated.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
    Err(err(libc::EAGAIN))
}

/// An `O_PATH` fd of `rel` (a `/`-separated relative path, empty for the
/// start itself) beneath `dirfd`, never following a symlink, the last
/// component included.
pub(crate) fn open_beneath(dirfd: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() {
        c".".to_owned()
    } else {
        cstring(rel)?
    };
    open_child(dirfd, &path)
}

/// An `O_PATH` fd of `name` in `dirfd` itself (a final symlink is not
/// followed): how the backends hold the objects they hand out.
pub(crate) fn open_child(dirfd: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    openat2(dirfd, name, libc::O_PATH | libc::O_NOFOLLOW, 0, CONFINED)
}

/// An `O_PATH` fd of a configured host directory (the share or a layer
/// root). The path comes from the host's configuration, so symlinks in it
/// are followed; confinement starts below it.
pub(crate) fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: NUL-terminated path; the result is checked.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `CString` from bytes, `EINVAL` if they hold a NUL.
pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| err(libc::EINVAL))
}

/// Rejects names that would make a single-component `*at` call walk
/// somewhere else. The server already rejects `/` and empty names.
pub(crate) fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

/// `fstat` of any fd, `O_PATH` ones included.
pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: valid out pointer; empty path with AT_EMPTY_PATH stats fd itself.
    cvt(unsafe {
        libc::fstatat64(
            fd,
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 filled it in.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat` of one name in `dirfd` without following a symlink.
pub(crate) fn statat(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: valid out pointer and NUL-terminated name.
    cvt(unsafe {
        libc::fstatat64(
            dirfd,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 filled it in.
    Ok(unsafe { st.assume_init() })
}

/// `/proc/self/fd/N`: the magic link naming exactly the object behind `fd`.
pub(crate) fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a formatted number")
}

/// Opens the object behind an `O_PATH` fd again with real access `flags`.
/// Callers make sure it is not a symlink (the magic link would then be the
/// link itself, which cannot be opened for I/O).
pub(crate) fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_path(fd);
    // SAFETY: NUL-terminated path; the result is checked.
    let new = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The access mode (`O_RDONLY`, `O_WRONLY` or `O_RDWR`) `fd` was opened with.
pub(crate) fn access_mode(fd: RawFd) -> io::Result<i32> {
    // SAFETY: F_GETFL reads the descriptor's flags; the result is checked.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    Ok(flags & libc::O_ACCMODE)
}

/// Moves `fd`'s file offset back to the start.
pub(crate) fn rewind(fd: RawFd) -> io::Result<()> {
    // SAFETY: lseek on a descriptor the caller holds; the result is checked.
    cvt(unsafe { libc::lseek(fd, 0, libc::SEEK_SET) }).map(drop)
}

/// Reads a symlink's target given an `O_PATH` fd of the link itself.
pub(crate) fn readlink_fd(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer is valid for its length; empty path reads the link fd.
    let n = cvt(unsafe { libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// The entries of a directory (without `.` and `..`): host inode number,
/// `DT_*` type and name. Opens its own read fd from the `O_PATH` `dirfd`
/// and closes it before returning, so a listing holds no descriptor.
pub(crate) fn list_dir(dirfd: RawFd) -> io::Result<Vec<(u64, u8, Vec<u8>)>> {
    list_dir_capped(dirfd, usize::MAX)
}

/// One listed entry as the backends keep it: inode (or 0), `DT_*` kind, name.
pub(crate) type ListEntry = (u64, u32, Vec<u8>);

/// Host memory one listed entry takes: the tuple and its name's allocation.
pub(crate) fn entry_bytes(name_len: usize) -> usize {
    std::mem::size_of::<ListEntry>() + name_len.next_multiple_of(8)
}

/// [`list_dir`], failing with `ENOMEM` once the entries would take more
/// than `max_bytes` of memory (as counted by [`entry_bytes`]).
pub(crate) fn list_dir_capped(
    dirfd: RawFd,
    max_bytes: usize,
) -> io::Result<Vec<(u64, u8, Vec<u8>)>> {
    let fd = openat2(dirfd, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0, CONFINED)?;
    let mut out = Vec::new();
    let mut used = 0usize;
    let mut buf = vec![0u8; 32 * 1024];
    let mut over = false;
    while read_dirents(fd.as_raw_fd(), &mut buf, &mut |ino, _, kind, name| {
        if name != b"." && name != b".." {
            used = used.saturating_add(entry_bytes(name.len()));
            if used > max_bytes {
                over = true;
                return false;
            }
            out.push((ino, kind, name.to_vec()));
        }
        true
    })? > 0
    {
        if over {
            return Err(err(libc::ENOMEM));
        }
    }
    Ok(out)
}

/// What [`read_dirents`] hands each entry to: host inode, offset after
/// it, `DT_*` type, name; false stops.
pub(crate) type DirentFn<'a> = dyn FnMut(u64, i64, u8, &[u8]) -> bool + 'a;

/// Reads one batch of entries from the directory fd `fd` at its current
/// position into `buf` and hands each to `each` (host inode, the offset
/// after it, `DT_*` type, name) until `each` says stop. Returns the bytes
/// the kernel returned, 0 at the end.
pub(crate) fn read_dirents(
    fd: RawFd,
    buf: &mut [u8],
    each: &mut DirentFn<'_>,
) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let data = &buf[..n as usize];
    let mut pos = 0usize;
    // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name NUL-terminated.
    while pos + 19 <= data.len() {
        let ino = u64::from_ne_bytes(data[pos..pos + 8].try_into().expect("8 bytes"));
        let off = i64::from_ne_bytes(data[pos + 8..pos + 16].try_into().expect("8 bytes"));
        let reclen =
            u16::from_ne_bytes(data[pos + 16..pos + 18].try_into().expect("2 bytes")) as usize;
        let kind = data[pos + 18];
        if reclen < 19 || pos + reclen > data.len() {
            return Err(err(libc::EIO));
        }
        let name_area = &data[pos + 19..pos + reclen];
        let len = name_area
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_area.len());
        if !each(ino, off, kind, &name_area[..len]) {
            break;
        }
        pos += reclen;
    }
    Ok(n as usize)
}

/// `DT_*` value for an `S_IF*` mode.
pub(crate) fn dtype(mode: u32) -> u32 {
    (mode & libc::S_IFMT) >> 12
}

/// A value of the extended attribute `name` of the object behind `fd`
/// (which must not be a symlink), sized by a probe.
pub(crate) fn getxattr(fd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let path = proc_path(fd);
    loop {
        // SAFETY: NUL-terminated strings; a NULL buffer of size 0 asks for the size.
        let size =
            cvt(unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
            continue; // grew between the probe and the read
        }
        buf.truncate(cvt(n)? as usize);
        return Ok(buf);
    }
}

/// Sets an extended attribute on the object behind `fd` (not a symlink).
pub(crate) fn setxattr(fd: RawFd, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: NUL-terminated strings and a valid value buffer.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

/// All extended attribute names of the object behind `fd`, NUL-separated.
pub(crate) fn listxattr(fd: RawFd) -> io::Result<Vec<u8>> {
    let path = proc_path(fd);
    loop {
        // SAFETY: NULL buffer of size 0 asks for the size.
        let size = cvt(unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
            continue;
        }
        buf.truncate(cvt(n)? as usize);
        return Ok(buf);
    }
}

/// Removes an extended attribute from the object behind `fd` (not a symlink).
pub(crate) fn removexattr(fd: RawFd, name: &CStr) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

/// `timespec` for `utimensat` from an optional [`crate::filesystem::TimeSet`].
pub(crate) fn timespec(t: Option<crate::filesystem::TimeSet>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(crate::filesystem::TimeSet::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(crate::filesystem::TimeSet::At(s, ns)) => libc::timespec {
            tv_sec: s,
            tv_nsec: i64::from(ns.min(999_999_999)),
        },
    }
}

/// Sets times on the object behind `fd` (not a symlink).
pub(crate) fn set_times(
    fd: RawFd,
    atime: Option<crate::filesystem::TimeSet>,
    mtime: Option<crate::filesystem::TimeSet>,
) -> io::Result<()> {
    if atime.is_none() && mtime.is_none() {
        return Ok(());
    }
    utimens(fd, &[timespec(atime), timespec(mtime)])
}

/// Sets access and modification times on the object behind `fd`, which may
/// be an `O_PATH` fd (not of a symlink: the magic link would be followed).
pub(crate) fn utimens(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: NUL-terminated path and a two-element array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
    Ok(())
}

/// Sets times on the symlink behind the `O_PATH` fd `fd` itself.
pub(crate) fn utimens_link(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: empty path with AT_EMPTY_PATH acts on the link fd itself; times
    // is a two-element array.
    cvt(unsafe { libc::utimensat(fd, c"".as_ptr(), times.as_ptr(), libc::AT_EMPTY_PATH) })?;
    Ok(())
}

/// Copies everything from the current offset of `input` to the end into
/// `output` at its offset, with `copy_file_range(2)` (which reflinks or
/// copies inside the kernel) and read/write where the kernel cannot (across
/// filesystems on old kernels, or filesystems without it). Returns the bytes
/// copied.
pub(crate) fn copy_file(input: RawFd, output: RawFd) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // SAFETY: two fds the caller holds; NULL offsets use and advance the
        // file offsets.
        let n = unsafe {
            libc::copy_file_range(
                input,
                std::ptr::null_mut(),
                output,
                std::ptr::null_mut(),
                1 << 30,
                0,
            )
        };
        if n == 0 {
            return Ok(total);
        }
        if n > 0 {
            total += n as u64;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) if total == 0 => {
                break
            }
            _ => return Err(e),
        }
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::read(input, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(total);
        }
        let mut done = 0usize;
        while done < n as usize {
            // SAFETY: `done..n` lies within the buffer.
            let w = unsafe { libc::write(output, buf[done..].as_ptr().cast(), n as usize - done) };
            if w < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            done += w as usize;
        }
        total += n as u64;
    }
}

/// Sets times on an fd opened for I/O.
pub(crate) fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: an fd the caller holds and a two-element array.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
    Ok(())
}

// The namespace calls below take one name relative to a directory fd the
// backend holds: the backends check names (`check_name`) before, so none of
// them walks a path in the shared tree.

/// unlinkat(2); `flags` is 0 or `AT_REMOVEDIR`.
pub(crate) fn unlinkat(dirfd: RawFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: NUL-terminated name relative to the caller's dir fd.
    cvt(unsafe { libc::unlinkat(dirfd, name.as_ptr(), flags) })?;
    Ok(())
}

/// mkdirat(2).
pub(crate) fn mkdirat(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name relative to the caller's dir fd.
    cvt(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) })?;
    Ok(())
}

/// mknodat(2) without a device number: FIFOs, sockets, regular files.
pub(crate) fn mknodat(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated name relative to the caller's dir fd.
    cvt(unsafe { libc::mknodat(dirfd, name.as_ptr(), mode, 0) })?;
    Ok(())
}

/// symlinkat(2): `name` in `dirfd` pointing at `target` (stored, not followed).
pub(crate) fn symlinkat(target: &CStr, dirfd: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings; the target is stored, never followed here.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) })?;
    Ok(())
}

/// renameat2(2) between two directory fds.
pub(crate) fn renameat2(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: NUL-terminated names relative to the caller's dir fds.
    cvt(unsafe { libc::renameat2(olddir, oldname.as_ptr(), newdir, newname.as_ptr(), flags) })?;
    Ok(())
}

/// linkat(2) of `oldname` in `olddir` (not following a final symlink) as
/// `newname` in `newdir`.
pub(crate) fn linkat(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
) -> io::Result<()> {
    // SAFETY: NUL-terminated names relative to the caller's dir fds; flags 0
    // never follows.
    cvt(unsafe { libc::linkat(olddir, oldname.as_ptr(), newdir, newname.as_ptr(), 0) })?;
    Ok(())
}

/// A new hard link `newname` in `newdir` to the object behind `fd`.
pub(crate) fn link_fd(fd: RawFd, newdir: RawFd, newname: &CStr) -> io::Result<()> {
    let src = proc_path(fd);
    // SAFETY: NUL-terminated strings; following the magic link yields exactly
    // the object behind `fd`, even a symlink itself.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            newdir,
            newname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })?;
    Ok(())
}

/// Changes the owner of `name` in `dirfd` (an empty name with
/// `AT_EMPTY_PATH`: of `dirfd` itself) without following a final symlink;
/// `u32::MAX` leaves an id unchanged.
pub(crate) fn fchownat(
    dirfd: RawFd,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: NUL-terminated name; AT_SYMLINK_NOFOLLOW never follows a final link.
    cvt(unsafe {
        libc::fchownat(
            dirfd,
            name.as_ptr(),
            uid,
            gid,
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// chmod(2) of the object behind `fd` (not a symlink).
pub(crate) fn chmod_fd(fd: RawFd, mode: u32) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: NUL-terminated path to the magic link of the caller's fd.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) })?;
    Ok(())
}

/// ftruncate(2).
pub(crate) fn ftruncate(fd: RawFd, size: i64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd the caller holds.
    cvt(unsafe { libc::ftruncate64(fd, size) })?;
    Ok(())
}

/// fsync(2), or fdatasync(2) when `datasync`.
pub(crate) fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on an fd the caller holds.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })?;
    Ok(())
}

/// Whether this process runs as host root (it can then give files owners).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Positional read of up to `size` bytes, short only at end of file.
pub(crate) fn pread_full(fd: RawFd, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    pread_append(fd, offset, size, &mut out)?;
    Ok(out)
}

/// [`pread_full`] appending to `out`: the kernel copies into `out`'s spare
/// room directly, with no zeroing pass first (a READ is up to 1 MiB). On an
/// error `out` is left as it was.
pub(crate) fn pread_append(fd: RawFd, offset: u64, size: u32, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let size = size as usize;
    out.reserve(size);
    let mut done = 0usize;
    while done < size {
        let off = offset
            .checked_add(done as u64)
            .and_then(|off| i64::try_from(off).ok())
            .ok_or_else(|| err(libc::EINVAL));
        let off = match off {
            Ok(off) => off,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let spare = out.spare_capacity_mut();
        debug_assert!(spare.len() >= size - done);
        // SAFETY: `spare` is writable for at least `size - done` bytes (reserved above, and
        // only `done` of them used since).
        let n = unsafe { libc::pread64(fd, spare.as_mut_ptr().cast(), size - done, off) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            out.truncate(start);
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialized the `n` bytes after the current length (`n` is at
        // most the `size - done` asked for).
        unsafe { out.set_len(out.len() + n as usize) };
        done += n as usize;
    }
    Ok(())
}

/// Positional write; with `append` the file's own end is used (pwrite
/// ignores the offset for `O_APPEND` files on Linux anyway).
pub(crate) fn pwrite(fd: RawFd, offset: u64, data: &[u8]) -> io::Result<u32> {
    let off = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
    let len = data.len().min(u32::MAX as usize);
    loop {
        // SAFETY: the slice is valid for `len` bytes.
        let n = unsafe { libc::pwrite64(fd, data.as_ptr().cast(), len, off) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Ok(cvt(n)? as u32);
    }
}

/// Filesystem statistics of the filesystem holding `fd`.
pub(crate) fn statfs(fd: RawFd) -> io::Result<crate::filesystem::StatFs> {
    let mut st = MaybeUninit::<libc::statfs64>::zeroed();
    // SAFETY: valid out pointer; fstatfs accepts O_PATH fds.
    cvt(unsafe { libc::fstatfs64(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled in by the kernel.
    let st = unsafe { st.assume_init() };
    Ok(crate::filesystem::StatFs {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: st.f_bsize as u32,
        namelen: st.f_namelen as u32,
        frsize: st.f_frsize as u32,
    })
}

/// fallocate(2) on an open fd.
pub(crate) fn fallocate(fd: RawFd, mode: u32, offset: u64, length: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
    let len = i64::try_from(length).map_err(|_| err(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::fallocate64(fd, mode as i32, off, len) })?;
    Ok(())
}

/// lseek(2) for `SEEK_DATA`/`SEEK_HOLE` (other whences are the kernel's business).
pub(crate) fn lseek(fd: RawFd, offset: u64, whence: u32) -> io::Result<u64> {
    let whence = whence as i32;
    if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
        return Err(err(libc::EINVAL));
    }
    let off = i64::try_from(offset).map_err(|_| err(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd we own.
    Ok(cvt(unsafe { libc::lseek64(fd, off, whence) })? as u64)
}

/// Moves the position of `fd` (a directory: to a `d_off` cookie) to `pos`.
pub(crate) fn seek_set(fd: RawFd, pos: u64) -> io::Result<()> {
    let pos = i64::try_from(pos).map_err(|_| err(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd the caller holds.
    cvt(unsafe { libc::lseek64(fd, pos, libc::SEEK_SET) })?;
    Ok(())
}

/// The guest's open(2) flags that the host open may carry; creation flags
/// are handled by the backends, `O_DIRECT` is dropped because the guest page
/// cache already sits in front of us and some host filesystems refuse it.
pub(crate) fn host_open_flags(guest: u32) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOATIME;
    (guest as i32) & keep
}

/// Whether open flags ask for write access or truncation.
pub(crate) fn wants_write(flags: u32) -> bool {
    let f = flags as i32;
    f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0
}

/// Attributes from a host `stat` (owner and mode still host values).
pub(crate) fn attr_from_stat(st: &libc::stat64) -> crate::filesystem::Attr {
    crate::filesystem::Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime,
        atime_nsec: st.st_atime_nsec as u32,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        ctime: st.st_ctime,
        ctime_nsec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The errno `open_beneath` refuses `rel` with, if it does.
    fn beneath_errno(dirfd: RawFd, rel: &[u8]) -> Option<i32> {
        open_beneath(dirfd, rel)
            .err()
            .and_then(|e| e.raw_os_error())
    }

    #[test]
    fn pread_append_keeps_what_was_there_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fd = file.as_raw_fd();
        let mut out = b"head".to_vec();
        pread_append(fd, 3, 4, &mut out).unwrap();
        assert_eq!(out, b"head3456");
        pread_append(fd, 8, 100, &mut out).unwrap();
        assert_eq!(out, b"head345689");
        pread_append(fd, 50, 100, &mut out).unwrap();
        assert_eq!(out, b"head345689");
        // A failure leaves `out` as it was.
        let dir_fd = open_root(dir.path()).unwrap();
        assert!(pread_append(dir_fd.as_raw_fd(), 0, 10, &mut out).is_err());
        assert!(pread_append(fd, u64::MAX, 10, &mut out).is_err());
        assert_eq!(out, b"head345689");
    }

    #[test]
    fn open_beneath_refuses_dotdot_absolute_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"x").unwrap();
        symlink("/", dir.path().join("d/root")).unwrap();
        symlink("d", dir.path().join("alias")).unwrap();
        let root = open_root(dir.path()).unwrap();
        let r = root.as_raw_fd();
        assert!(open_beneath(r, b"d/f").is_ok());
        assert_eq!(beneath_errno(r, b"../etc"), Some(libc::EXDEV));
        assert_eq!(beneath_errno(r, b"/etc"), Some(libc::EXDEV));
        assert_eq!(beneath_errno(r, b"alias/f"), Some(libc::ELOOP));
        assert_eq!(beneath_errno(r, b"d/root/etc"), Some(libc::ELOOP));
        // The last component as a link itself is fine: an O_PATH fd of the link.
        let link = open_beneath(r, b"d/root").unwrap();
        assert_eq!(
            fstat(link.as_raw_fd()).unwrap().st_mode & libc::S_IFMT,
            libc::S_IFLNK
        );
    }

    #[test]
    fn list_dir_returns_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..500 {
            std::fs::write(dir.path().join(format!("file-with-a-long-name-{i}")), b"").unwrap();
        }
        let root = open_root(dir.path()).unwrap();
        let entries = list_dir(root.as_raw_fd()).unwrap();
        assert_eq!(entries.len(), 500);
        assert!(entries.iter().all(|(_, kind, _)| *kind == libc::DT_REG));
    }
}
