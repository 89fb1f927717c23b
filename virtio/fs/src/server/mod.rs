//! The FUSE protocol server: one request in, one reply out.
//!
//! [`Server::handle`] takes every device-readable byte of one descriptor
//! chain (a whole FUSE request) and produces the bytes for the
//! device-writable part. Everything in the request comes from the guest and
//! is checked before use: the header's length must equal the buffer's,
//! argument structs must be complete, names must be NUL-terminated, non-empty,
//! free of `/`, not `.`/`..` and at most 255 bytes, and WRITE payloads must be
//! as long as they claim. A request whose header is readable but whose body
//! is not gets an error reply carrying its `unique` id (EINVAL for malformed
//! input); only a request too short to hold a header is returned as
//! [`Error::ShortHeader`] for the device to log.
//!
//! Reply sizes: the server keeps READ, READDIR(PLUS), GETXATTR and LISTXATTR
//! replies within the sizes the request asks for (GETXATTR/LISTXATTR answer
//! ERANGE when the value does not fit), which is what the kernel sizes its
//! reply buffers by. A reply that still does not fit the chain's writable
//! part (a guest that lies about its buffers) must be replaced by the device
//! with [`abi::error_reply`]`(unique, EIO)`: FUSE has no partial replies.
//!
//! FORGET, BATCH_FORGET and INTERRUPT produce no reply (an empty `reply`).

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::abi::{self, fattr, init_flags, opcode, ArgReader, InHeader, PutLe};
use crate::filesystem::{Context, DirEntry, Entry, FileSystem, SetAttr, TimeSet};

#[cfg(test)]
mod tests;

/// The largest WRITE payload we accept (and tell the kernel, `max_write`).
pub const MAX_WRITE: u32 = 1 << 20;
/// The largest READ we serve; the kernel sends at most `max_pages` pages.
pub const MAX_READ: u32 = 1 << 20;
/// `max_pages` told to the kernel: MAX_WRITE in 4 KiB pages.
pub const MAX_PAGES: u16 = (MAX_WRITE / 4096) as u16;
/// The largest request the server can receive: a full WRITE with its
/// headers, plus slack for request extensions. Devices should refuse bigger
/// chains before gathering them.
pub const MAX_REQUEST_SIZE: usize = MAX_WRITE as usize + 4096;
/// Longest file name (a path component).
const NAME_MAX: usize = 255;
/// Longest symlink target, NUL excluded.
const PATH_MAX: usize = 4095;
/// Longest xattr name and value (Linux's limits).
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;

/// The INIT flags we accept when the kernel offers them.
const WANTED_FLAGS: u64 = init_flags::ASYNC_READ
    | init_flags::ATOMIC_O_TRUNC
    | init_flags::BIG_WRITES
    | init_flags::DO_READDIRPLUS
    | init_flags::READDIRPLUS_AUTO
    | init_flags::PARALLEL_DIROPS
    | init_flags::MAX_PAGES
    | init_flags::CACHE_SYMLINKS;

/// A request the server could not even attribute to a `unique` id.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than a FUSE request header.
    #[error("FUSE request of {0} bytes is shorter than its 40-byte header")]
    ShortHeader(usize),
}

/// How the server presents the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Refuse every mutating operation with EROFS (and writable opens).
    pub read_only: bool,
    /// If set, replaces the attribute cache timeout the backend returns.
    pub attr_timeout: Option<Duration>,
    /// If set, replaces the name cache timeout the backend returns.
    pub entry_timeout: Option<Duration>,
}

/// A FUSE server in front of a [`FileSystem`]. Safe to share between the
/// threads that serve the device's queues.
pub struct Server<F: FileSystem> {
    fs: F,
    options: ServerOptions,
    initialized: AtomicBool,
    minor: AtomicU32,
}

/// What an operation answers: a body after the header, or nothing at all.
enum Reply {
    Body(Vec<u8>),
    None,
}

type OpResult = Result<Reply, i32>;

fn errno(e: io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if n > 0 => n,
        _ => libc::EIO,
    }
}

fn einval<T>(_: T) -> i32 {
    libc::EINVAL
}

/// A path component from the guest: checked as the module docs say.
fn name<'a>(r: &mut ArgReader<'a>) -> Result<&'a CStr, i32> {
    let n = r.c_str().map_err(einval)?;
    let b = n.to_bytes();
    if b.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    Ok(n)
}

fn xattr_name<'a>(r: &mut ArgReader<'a>) -> Result<&'a CStr, i32> {
    let n = r.c_str().map_err(einval)?;
    match n.to_bytes().len() {
        0 => Err(libc::EINVAL),
        l if l > XATTR_NAME_MAX => Err(libc::ERANGE),
        _ => Ok(n),
    }
}

fn body(f: impl FnOnce(&mut Vec<u8>)) -> OpResult {
    let mut v = Vec::new();
    f(&mut v);
    Ok(Reply::Body(v))
}

fn empty() -> OpResult {
    Ok(Reply::Body(Vec::new()))
}

/// Opcodes that change the filesystem, refused with EROFS when read-only.
fn mutates(op: u32) -> bool {
    matches!(
        op,
        opcode::SETATTR
            | opcode::SYMLINK
            | opcode::MKNOD
            | opcode::MKDIR
            | opcode::UNLINK
            | opcode::RMDIR
            | opcode::RENAME
            | opcode::RENAME2
            | opcode::LINK
            | opcode::CREATE
            | opcode::WRITE
            | opcode::SETXATTR
            | opcode::REMOVEXATTR
            | opcode::FALLOCATE
    )
}

impl<F: FileSystem> Server<F> {
    /// Serves `fs` with `options`.
    pub fn new(fs: F, options: ServerOptions) -> Self {
        Self {
            fs,
            options,
            initialized: AtomicBool::new(false),
            minor: AtomicU32::new(0),
        }
    }

    /// The backend.
    pub fn filesystem(&self) -> &F {
        &self.fs
    }

    /// The negotiated minor version, 0 before INIT.
    pub fn negotiated_minor(&self) -> u32 {
        self.minor.load(Ordering::Acquire)
    }

    /// Ends the session as a device reset does: the backend is told
    /// (`destroy`) if a session was up, and the next request must be INIT.
    pub fn reset(&self) {
        if self.initialized.swap(false, Ordering::AcqRel) {
            self.fs.destroy();
        }
        self.minor.store(0, Ordering::Release);
    }

    /// Handles one request; see the module docs. `reply` is cleared first and
    /// left empty when the request takes no reply.
    pub fn handle(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<(), Error> {
        reply.clear();
        let h = InHeader::parse(request).ok_or(Error::ShortHeader(request.len()))?;
        let ext = usize::from(h.total_extlen) * 8;
        let result = if h.len as usize != request.len() {
            Err(libc::EINVAL)
        } else {
            match request.len().checked_sub(ext) {
                Some(end) if end >= abi::IN_HEADER_SIZE => {
                    self.dispatch(&h, &request[abi::IN_HEADER_SIZE..end])
                }
                _ => Err(libc::EINVAL),
            }
        };
        match result {
            Ok(Reply::Body(b)) => abi::reply(reply, h.unique, 0, &b),
            Ok(Reply::None) => {}
            Err(e) => reply.extend_from_slice(&abi::error_reply(h.unique, e)),
        }
        Ok(())
    }

    fn dispatch(&self, h: &InHeader, args: &[u8]) -> OpResult {
        let no_reply = matches!(
            h.opcode,
            opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT
        );
        if h.opcode == opcode::INIT {
            return self.init(args);
        }
        if !self.initialized.load(Ordering::Acquire) {
            return if no_reply {
                Ok(Reply::None)
            } else {
                Err(libc::EIO)
            };
        }
        if self.options.read_only && mutates(h.opcode) {
            return Err(libc::EROFS);
        }
        let ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        let mut r = ArgReader::new(args);
        let ino = h.nodeid;
        let fs = &self.fs;
        match h.opcode {
            opcode::DESTROY => {
                self.reset();
                empty()
            }
            opcode::LOOKUP => {
                let n = name(&mut r)?;
                self.entry(fs.lookup(&ctx, ino, n))
            }
            opcode::FORGET => {
                if let Ok(count) = r.u64() {
                    fs.forget(ino, count);
                }
                Ok(Reply::None)
            }
            opcode::BATCH_FORGET => {
                let count = r.u32().unwrap_or(0);
                let _ = r.u32();
                for _ in 0..count {
                    let (Ok(node), Ok(n)) = (r.u64(), r.u64()) else {
                        break;
                    };
                    fs.forget(node, n);
                }
                Ok(Reply::None)
            }
            opcode::INTERRUPT => Ok(Reply::None),
            opcode::GETATTR => {
                let flags = r.u32().map_err(einval)?;
                r.u32().map_err(einval)?;
                let fh = r.u64().map_err(einval)?;
                let handle = (flags & abi::GETATTR_FH != 0).then_some(fh);
                let (attr, t) = fs.getattr(&ctx, ino, handle).map_err(errno)?;
                body(|b| abi::put_attr_out(b, &attr, self.attr_timeout(t)))
            }
            opcode::SETATTR => {
                let set = parse_setattr(&mut r).map_err(einval)?;
                let (attr, t) = fs.setattr(&ctx, ino, set).map_err(errno)?;
                body(|b| abi::put_attr_out(b, &attr, self.attr_timeout(t)))
            }
            opcode::READLINK => {
                let target = fs.readlink(&ctx, ino).map_err(errno)?;
                Ok(Reply::Body(target))
            }
            opcode::SYMLINK => {
                let n = name(&mut r)?;
                let target = r.c_str().map_err(einval)?;
                match target.to_bytes().len() {
                    0 => return Err(libc::EINVAL),
                    l if l > PATH_MAX => return Err(libc::ENAMETOOLONG),
                    _ => {}
                }
                self.entry(fs.symlink(&ctx, target, ino, n))
            }
            opcode::MKNOD => {
                let mode = r.u32().map_err(einval)?;
                let rdev = r.u32().map_err(einval)?;
                let umask = r.u32().map_err(einval)?;
                r.u32().map_err(einval)?;
                let n = name(&mut r)?;
                self.entry(fs.mknod(&ctx, ino, n, mode, rdev, umask))
            }
            opcode::MKDIR => {
                let mode = r.u32().map_err(einval)?;
                let umask = r.u32().map_err(einval)?;
                let n = name(&mut r)?;
                self.entry(fs.mkdir(&ctx, ino, n, mode, umask))
            }
            opcode::UNLINK => {
                let n = name(&mut r)?;
                fs.unlink(&ctx, ino, n).map_err(errno)?;
                empty()
            }
            opcode::RMDIR => {
                let n = name(&mut r)?;
                fs.rmdir(&ctx, ino, n).map_err(errno)?;
                empty()
            }
            opcode::RENAME | opcode::RENAME2 => {
                let newdir = r.u64().map_err(einval)?;
                let flags = if h.opcode == opcode::RENAME2 {
                    let f = r.u32().map_err(einval)?;
                    r.u32().map_err(einval)?;
                    f
                } else {
                    0
                };
                let old = name(&mut r)?;
                let new = name(&mut r)?;
                fs.rename(&ctx, ino, old, newdir, new, flags)
                    .map_err(errno)?;
                empty()
            }
            opcode::LINK => {
                let old = r.u64().map_err(einval)?;
                let n = name(&mut r)?;
                self.entry(fs.link(&ctx, old, ino, n))
            }
            opcode::OPEN | opcode::OPENDIR => {
                let flags = r.u32().map_err(einval)?;
                r.u32().map_err(einval)?;
                let writes = (flags as i32 & libc::O_ACCMODE) != libc::O_RDONLY
                    || flags as i32 & libc::O_TRUNC != 0;
                if self.options.read_only && h.opcode == opcode::OPEN && writes {
                    return Err(libc::EROFS);
                }
                let open = if h.opcode == opcode::OPEN {
                    fs.open(&ctx, ino, flags)
                } else {
                    fs.opendir(&ctx, ino, flags)
                }
                .map_err(errno)?;
                body(|b| abi::put_open_out(b, open.handle, open.open_flags))
            }
            opcode::CREATE => {
                let flags = r.u32().map_err(einval)?;
                let mode = r.u32().map_err(einval)?;
                let umask = r.u32().map_err(einval)?;
                r.u32().map_err(einval)?;
                let n = name(&mut r)?;
                let (e, open) = fs.create(&ctx, ino, n, mode, flags, umask).map_err(errno)?;
                let e = self.fix_entry(e);
                body(|b| {
                    abi::put_entry(b, &e);
                    abi::put_open_out(b, open.handle, open.open_flags);
                })
            }
            opcode::READ => {
                let (fh, offset, size) = parse_read(&mut r).map_err(einval)?;
                if size > MAX_READ {
                    return Err(libc::EINVAL);
                }
                let mut data = fs.read(&ctx, ino, fh, offset, size).map_err(errno)?;
                data.truncate(size as usize);
                Ok(Reply::Body(data))
            }
            opcode::WRITE => {
                let fh = r.u64().map_err(einval)?;
                let offset = r.u64().map_err(einval)?;
                let size = r.u32().map_err(einval)?;
                let write_flags = r.u32().map_err(einval)?;
                r.bytes(16).map_err(einval)?; // lock_owner, flags, padding
                if size > MAX_WRITE {
                    return Err(libc::EINVAL);
                }
                let data = r.bytes(size as usize).map_err(einval)?;
                let n = fs
                    .write(&ctx, ino, fh, offset, data, write_flags)
                    .map_err(errno)?;
                body(|b| {
                    b.put_u32(n.min(size));
                    b.put_u32(0);
                })
            }
            opcode::STATFS => {
                let s = fs.statfs(&ctx, ino).map_err(errno)?;
                body(|b| abi::put_statfs(b, &s))
            }
            opcode::RELEASE | opcode::RELEASEDIR => {
                let fh = r.u64().map_err(einval)?;
                let flags = r.u32().map_err(einval)?;
                if h.opcode == opcode::RELEASE {
                    fs.release(&ctx, ino, flags, fh)
                } else {
                    fs.releasedir(&ctx, ino, flags, fh)
                }
                .map_err(errno)?;
                empty()
            }
            opcode::FSYNC | opcode::FSYNCDIR => {
                let fh = r.u64().map_err(einval)?;
                let datasync = r.u32().map_err(einval)? & abi::FSYNC_FDATASYNC != 0;
                if h.opcode == opcode::FSYNC {
                    fs.fsync(&ctx, ino, datasync, fh)
                } else {
                    fs.fsyncdir(&ctx, ino, datasync, fh)
                }
                .map_err(errno)?;
                empty()
            }
            opcode::FLUSH => {
                let fh = r.u64().map_err(einval)?;
                r.u64().map_err(einval)?;
                let owner = r.u64().map_err(einval)?;
                fs.flush(&ctx, ino, fh, owner).map_err(errno)?;
                empty()
            }
            opcode::SETXATTR => {
                let size = r.u32().map_err(einval)? as usize;
                let flags = r.u32().map_err(einval)?;
                let n = xattr_name(&mut r)?;
                if size > XATTR_SIZE_MAX {
                    return Err(libc::E2BIG);
                }
                let value = r.bytes(size).map_err(einval)?;
                fs.setxattr(&ctx, ino, n, value, flags).map_err(errno)?;
                empty()
            }
            opcode::GETXATTR | opcode::LISTXATTR => {
                let size = r.u32().map_err(einval)?;
                r.u32().map_err(einval)?;
                let value = if h.opcode == opcode::GETXATTR {
                    let n = xattr_name(&mut r)?;
                    fs.getxattr(&ctx, ino, n)
                } else {
                    fs.listxattr(&ctx, ino)
                }
                .map_err(errno)?;
                if size == 0 {
                    let len = u32::try_from(value.len()).map_err(|_| libc::E2BIG)?;
                    body(|b| {
                        b.put_u32(len);
                        b.put_u32(0);
                    })
                } else if value.len() > size as usize {
                    Err(libc::ERANGE)
                } else {
                    Ok(Reply::Body(value))
                }
            }
            opcode::REMOVEXATTR => {
                let n = xattr_name(&mut r)?;
                fs.removexattr(&ctx, ino, n).map_err(errno)?;
                empty()
            }
            opcode::READDIR => {
                let (fh, offset, size) = parse_read(&mut r).map_err(einval)?;
                let limit = size.min(MAX_READ) as usize;
                let mut out = Vec::new();
                fs.readdir(&ctx, ino, fh, offset, &mut |e: DirEntry<'_>| {
                    if out.len() + abi::dirent_size(e.name.len()) > limit {
                        return false;
                    }
                    abi::put_dirent(&mut out, e.ino, e.offset, e.kind, e.name);
                    true
                })
                .map_err(errno)?;
                Ok(Reply::Body(out))
            }
            opcode::READDIRPLUS => {
                let (fh, offset, size) = parse_read(&mut r).map_err(einval)?;
                self.readdirplus(&ctx, ino, fh, offset, size.min(MAX_READ) as usize)
            }
            opcode::ACCESS => {
                let mask = r.u32().map_err(einval)?;
                if self.options.read_only && mask & libc::W_OK as u32 != 0 {
                    return Err(libc::EROFS);
                }
                fs.access(&ctx, ino, mask).map_err(errno)?;
                empty()
            }
            opcode::FALLOCATE => {
                let fh = r.u64().map_err(einval)?;
                let offset = r.u64().map_err(einval)?;
                let length = r.u64().map_err(einval)?;
                let mode = r.u32().map_err(einval)?;
                fs.fallocate(&ctx, ino, fh, mode, offset, length)
                    .map_err(errno)?;
                empty()
            }
            opcode::LSEEK => {
                let fh = r.u64().map_err(einval)?;
                let offset = r.u64().map_err(einval)?;
                let whence = r.u32().map_err(einval)?;
                let off = fs.lseek(&ctx, ino, fh, offset, whence).map_err(errno)?;
                body(|b| b.put_u64(off))
            }
            _ => Err(libc::ENOSYS),
        }
    }

    fn init(&self, args: &[u8]) -> OpResult {
        let mut r = ArgReader::new(args);
        let major = r.u32().map_err(einval)?;
        let minor = r.u32().map_err(einval)?;
        let max_readahead = r.u32().map_err(einval)?;
        let mut flags = u64::from(r.u32().map_err(einval)?);
        if flags & init_flags::INIT_EXT != 0 {
            if let Ok(flags2) = r.u32() {
                flags |= u64::from(flags2) << 32;
            }
        }
        if major != abi::KERNEL_VERSION || minor < abi::MIN_MINOR_VERSION {
            tracing::warn!(
                "fuse: guest speaks FUSE {major}.{minor}; need 7.{} or newer",
                abi::MIN_MINOR_VERSION
            );
            return Err(libc::EPROTO);
        }
        // A second INIT (a remount after the guest dropped the session)
        // starts a new session.
        self.reset();
        self.fs.init().map_err(errno)?;
        let minor = minor.min(abi::KERNEL_MINOR_VERSION);
        self.minor.store(minor, Ordering::Release);
        self.initialized.store(true, Ordering::Release);
        let granted = flags & WANTED_FLAGS;
        body(|b| {
            b.put_u32(abi::KERNEL_VERSION);
            b.put_u32(minor);
            b.put_u32(max_readahead.min(MAX_READ));
            b.put_u32(granted as u32);
            b.put_u16(64); // max_background
            b.put_u16(48); // congestion_threshold
            b.put_u32(MAX_WRITE);
            b.put_u32(1); // time_gran: nanoseconds
            b.put_u16(MAX_PAGES);
            b.put_u16(0); // map_alignment
            b.put_u32(0); // flags2
            b.put_u32(0); // max_stack_depth
            b.resize(abi::INIT_OUT_SIZE, 0);
        })
    }

    fn attr_timeout(&self, t: Duration) -> Duration {
        self.options.attr_timeout.unwrap_or(t)
    }

    fn fix_entry(&self, mut e: Entry) -> Entry {
        e.attr_timeout = self.attr_timeout(e.attr_timeout);
        e.entry_timeout = self.options.entry_timeout.unwrap_or(e.entry_timeout);
        e
    }

    fn entry(&self, e: io::Result<Entry>) -> OpResult {
        let e = self.fix_entry(e.map_err(errno)?);
        body(|b| abi::put_entry(b, &e))
    }

    /// READDIRPLUS as READDIR plus a LOOKUP per entry. The entries are
    /// collected first so the backend is not re-entered from its own
    /// readdir callback (it may hold a lock there). `.` and `..` get an
    /// all-zero entry: the kernel takes no lookup reference for them.
    fn readdirplus(&self, ctx: &Context, ino: u64, fh: u64, offset: u64, limit: usize) -> OpResult {
        let mut found: Vec<(u64, u64, u32, Vec<u8>)> = Vec::new();
        let mut used = 0;
        self.fs
            .readdir(ctx, ino, fh, offset, &mut |e: DirEntry<'_>| {
                let size = abi::ENTRY_OUT_SIZE + abi::dirent_size(e.name.len());
                if used + size > limit {
                    return false;
                }
                used += size;
                found.push((e.ino, e.offset, e.kind, e.name.to_vec()));
                true
            })
            .map_err(errno)?;
        let mut out = Vec::with_capacity(used);
        for (d_ino, off, kind, n) in found {
            let dot = n == b"." || n == b"..";
            let entry = match CStr::from_bytes_with_nul(&[n.as_slice(), &[0]].concat()) {
                Ok(c) if !dot => self.fs.lookup(ctx, ino, c).ok(),
                _ => None,
            };
            // The looked-up mode wins over the listing's type: a backend may
            // present a type the host object does not have (a kept device).
            let kind = entry
                .as_ref()
                .map_or(kind, |e| crate::host_util::dtype(e.attr.mode));
            match entry {
                Some(e) => abi::put_entry(&mut out, &self.fix_entry(e)),
                // Gone since readdir, or a dot entry: no reference taken.
                None => abi::put_empty_entry(&mut out),
            }
            abi::put_dirent(&mut out, d_ino, off, kind, &n);
        }
        Ok(Reply::Body(out))
    }
}

/// `fuse_read_in`'s fh, offset and size (shared by READ and READDIR*).
fn parse_read(r: &mut ArgReader<'_>) -> Result<(u64, u64, u32), abi::Truncated> {
    let fh = r.u64()?;
    let offset = r.u64()?;
    let size = r.u32()?;
    r.bytes(20)?; // read_flags, lock_owner, flags, padding
    Ok((fh, offset, size))
}

fn parse_setattr(r: &mut ArgReader<'_>) -> Result<SetAttr, abi::Truncated> {
    let valid = r.u32()?;
    r.u32()?;
    let fh = r.u64()?;
    let size = r.u64()?;
    r.u64()?; // lock_owner
    let atime = r.u64()? as i64;
    let mtime = r.u64()? as i64;
    r.u64()?; // ctime
    let atime_nsec = r.u32()?;
    let mtime_nsec = r.u32()?;
    r.u32()?; // ctimensec
    let mode = r.u32()?;
    r.u32()?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    r.u32()?;
    let has = |bit: u32| valid & bit != 0;
    let time = |now: u32, set: u32, s: i64, ns: u32| {
        if has(now) {
            Some(TimeSet::Now)
        } else if has(set) {
            Some(TimeSet::At(s, ns.min(999_999_999)))
        } else {
            None
        }
    };
    Ok(SetAttr {
        mode: has(fattr::MODE).then_some(mode),
        uid: has(fattr::UID).then_some(uid),
        gid: has(fattr::GID).then_some(gid),
        size: has(fattr::SIZE).then_some(size),
        atime: time(fattr::ATIME_NOW, fattr::ATIME, atime, atime_nsec),
        mtime: time(fattr::MTIME_NOW, fattr::MTIME, mtime, mtime_nsec),
        handle: has(fattr::FH).then_some(fh),
    })
}
