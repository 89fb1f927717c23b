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
//!
//! Snapshots: [`Server::save_state`] and [`Server::restore_state`] carry a
//! FUSE session (the INIT negotiation and the backend's inodes and handles)
//! into a fresh server in another process; see [`ServerState`].

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::abi::{self, init_flags, opcode, ArgReader, InHeader, PutLe};
use crate::filesystem::{Context, DirEntry, Entry, FileSystem, Inode};

mod ops;
mod state;
#[cfg(test)]
mod tests;

pub use state::{ServerState, STATE_VERSION};

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

/// One request being decoded: who asked, the opcode and inode from its
/// header, and the part of its body not read yet.
struct Request<'a> {
    op: u32,
    ctx: Context,
    ino: Inode,
    args: ArgReader<'a>,
}

/// What an operation answers: a body after the header, or nothing at all.
enum Reply {
    Body(Vec<u8>),
    /// The whole reply, its first [`abi::OUT_HEADER_SIZE`] bytes left for
    /// the header: READ's data is read in place, not copied after a header.
    Framed(Vec<u8>),
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
            Ok(Reply::Framed(mut framed)) => {
                abi::frame_reply(&mut framed, h.unique);
                *reply = framed;
            }
            Ok(Reply::None) => {}
            Err(e) => reply.extend_from_slice(&abi::error_reply(h.unique, e)),
        }
        Ok(())
    }

    fn dispatch(&self, h: &InHeader, args: &[u8]) -> OpResult {
        if h.opcode == opcode::INIT {
            return self.init(args);
        }
        if !self.initialized.load(Ordering::Acquire) {
            let no_reply = matches!(
                h.opcode,
                opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT
            );
            return if no_reply {
                Ok(Reply::None)
            } else {
                Err(libc::EIO)
            };
        }
        if self.options.read_only && mutates(h.opcode) {
            return Err(libc::EROFS);
        }
        let r = &mut Request {
            op: h.opcode,
            ctx: Context {
                uid: h.uid,
                gid: h.gid,
                pid: h.pid,
            },
            ino: h.nodeid,
            args: ArgReader::new(args),
        };
        match h.opcode {
            opcode::DESTROY => self.do_destroy(),
            opcode::LOOKUP => self.do_lookup(r),
            opcode::FORGET => self.do_forget(r),
            opcode::BATCH_FORGET => self.do_batch_forget(r),
            opcode::INTERRUPT => Ok(Reply::None),
            opcode::GETATTR => self.do_getattr(r),
            opcode::SETATTR => self.do_setattr(r),
            opcode::READLINK => self.do_readlink(r),
            opcode::SYMLINK => self.do_symlink(r),
            opcode::MKNOD => self.do_mknod(r),
            opcode::MKDIR => self.do_mkdir(r),
            opcode::UNLINK | opcode::RMDIR => self.do_remove(r),
            opcode::RENAME => self.do_rename(r),
            opcode::RENAME2 => self.do_rename2(r),
            opcode::LINK => self.do_link(r),
            opcode::OPEN | opcode::OPENDIR => self.do_open(r),
            opcode::CREATE => self.do_create(r),
            opcode::READ => self.do_read(r),
            opcode::WRITE => self.do_write(r),
            opcode::STATFS => self.do_statfs(r),
            opcode::RELEASE | opcode::RELEASEDIR => self.do_release(r),
            opcode::FSYNC | opcode::FSYNCDIR => self.do_fsync(r),
            opcode::FLUSH => self.do_flush(r),
            opcode::SETXATTR => self.do_setxattr(r),
            opcode::GETXATTR | opcode::LISTXATTR => self.do_getxattr(r),
            opcode::REMOVEXATTR => self.do_removexattr(r),
            opcode::READDIR => self.do_readdir(r),
            opcode::READDIRPLUS => self.do_readdirplus(r),
            opcode::ACCESS => self.do_access(r),
            opcode::FALLOCATE => self.do_fallocate(r),
            opcode::LSEEK => self.do_lseek(r),
            _ => Err(libc::ENOSYS),
        }
    }

    fn init(&self, args: &[u8]) -> OpResult {
        let mut r = ArgReader::new(args);
        let abi::InitIn {
            major,
            minor,
            max_readahead,
            flags,
        } = r.arg().map_err(einval)?;
        let mut flags = u64::from(flags);
        // flags2 follows in the 7.36+ struct; older kernels send less.
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
