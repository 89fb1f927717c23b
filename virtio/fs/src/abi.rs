//! The FUSE wire format: opcodes, flags and the little-endian structs of the
//! protocol Linux 6.12 speaks (7.41), with bounds-checked decoding.
//!
//! Written by hand rather than taken from `fuse-backend-rs`: its 0.14 release
//! is pinned to vm-memory 0.17 while this workspace uses 0.18, so its virtiofs
//! `Reader`/`Writer` cannot take our guest memory, and its `Server` is tied to
//! its own `FileSystem` trait. The format itself is small and stable.
//!
//! Request bodies are `#[repr(C)]` structs ([`ByteValued`]: plain integers,
//! explicit padding fields, so every bit pattern is a valid value) copied out
//! of the guest's bytes by [`ArgReader::arg`] after a length check: no guest
//! byte is ever reinterpreted in place, so alignment does not matter, and a
//! short body is a [`Truncated`] error, never a panic. Replies are encoded
//! field by field with `to_le_bytes`.

use std::ffi::CStr;
use std::time::Duration;

use vm_memory::ByteValued;

use crate::filesystem::{Attr, Entry, StatFs};

// FUSE structs travel in the host's byte order, and the decoders below copy
// them as they are: the replies' `to_le_bytes` and the request structs agree
// only on a little-endian host (x86_64, aarch64).
#[cfg(not(target_endian = "little"))]
compile_error!("the FUSE server assumes a little-endian host");

/// The major protocol version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The highest minor version we speak (Linux 6.12).
pub const KERNEL_MINOR_VERSION: u32 = 41;
/// The oldest minor version we accept; older kernels get EPROTO.
pub const MIN_MINOR_VERSION: u32 = 27;

/// Size of `fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = 16;
/// Size of `fuse_attr`.
pub const ATTR_SIZE: usize = 88;
/// Size of `fuse_entry_out`.
pub const ENTRY_OUT_SIZE: usize = 40 + ATTR_SIZE;
/// Size of `fuse_dirent` without its name.
pub const DIRENT_SIZE: usize = 24;
/// Size of `fuse_init_out` since 7.23.
pub const INIT_OUT_SIZE: usize = 64;

/// The FUSE opcodes we know by name (`fuse_opcode`).
#[allow(missing_docs)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// FUSE_INIT flags (`flags`, and bits 32.. in `flags2`).
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const INIT_EXT: u64 = 1 << 30;
}

/// `FOPEN_*` flags of an OPEN or OPENDIR reply.
pub mod fopen {
    /// Keep the file's page cache across opens (the kernel otherwise drops it on every open).
    pub const KEEP_CACHE: u32 = 1 << 1;
    /// Cache the directory's READDIR results in the guest.
    pub const CACHE_DIR: u32 = 1 << 3;
    /// Send no FLUSH when the file is closed (for backends whose flush does nothing).
    pub const NOFLUSH: u32 = 1 << 5;
}

/// SETATTR `valid` bits.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// GETATTR flag: `fh` is valid.
pub const GETATTR_FH: u32 = 1;
/// FSYNC flag: fdatasync.
pub const FSYNC_FDATASYNC: u32 = 1;

/// Declares FUSE request structs: `#[repr(C)]`, plain integer fields with
/// the padding spelled out, and [`ByteValued`] so [`ArgReader::arg`] can copy
/// one out of guest bytes.
macro_rules! wire_structs {
    ($($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* })*) => {$(
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty,)* }

        // SAFETY: the struct is `repr(C)` and has only integer fields whose
        // sizes add up to an 8-byte multiple in declaration order (checked by
        // `struct_sizes_match_the_kernel_headers`), so it has no implicit
        // padding and every bit pattern is a valid value.
        #[allow(unsafe_code)]
        unsafe impl ByteValued for $name {}
    )*};
}

wire_structs! {
    /// `fuse_init_in` up to `flags` (the part every 7.x kernel sends).
    pub struct InitIn {
        /// Protocol major version.
        pub major: u32,
        /// Protocol minor version.
        pub minor: u32,
        /// Largest readahead the kernel will do.
        pub max_readahead: u32,
        /// `init_flags` bits 0..32.
        pub flags: u32,
    }

    /// `fuse_forget_in`.
    pub struct ForgetIn {
        /// References dropped.
        pub nlookup: u64,
    }

    /// `fuse_batch_forget_in`, followed by `count` [`ForgetOne`]s.
    pub struct BatchForgetIn {
        /// Number of entries.
        pub count: u32,
        /// Padding.
        pub dummy: u32,
    }

    /// `fuse_forget_one`.
    pub struct ForgetOne {
        /// The inode.
        pub nodeid: u64,
        /// References dropped.
        pub nlookup: u64,
    }

    /// `fuse_getattr_in`.
    pub struct GetattrIn {
        /// [`GETATTR_FH`]: `fh` is valid.
        pub getattr_flags: u32,
        /// Padding.
        pub dummy: u32,
        /// The open handle.
        pub fh: u64,
    }

    /// `fuse_setattr_in`.
    pub struct SetattrIn {
        /// [`fattr`] bits: which fields are set.
        pub valid: u32,
        /// Padding.
        pub padding: u32,
        /// The open handle.
        pub fh: u64,
        /// New size.
        pub size: u64,
        /// Lock owner.
        pub lock_owner: u64,
        /// New access time, seconds.
        pub atime: u64,
        /// New modification time, seconds.
        pub mtime: u64,
        /// Change time (ignored).
        pub ctime: u64,
        /// New access time, nanoseconds.
        pub atimensec: u32,
        /// New modification time, nanoseconds.
        pub mtimensec: u32,
        /// Change time, nanoseconds (ignored).
        pub ctimensec: u32,
        /// New mode.
        pub mode: u32,
        /// Unused.
        pub unused4: u32,
        /// New owner.
        pub uid: u32,
        /// New group.
        pub gid: u32,
        /// Unused.
        pub unused5: u32,
    }

    /// `fuse_mknod_in`, followed by the name.
    pub struct MknodIn {
        /// Type and permission bits.
        pub mode: u32,
        /// Device number.
        pub rdev: u32,
        /// The caller's umask.
        pub umask: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_mkdir_in`, followed by the name.
    pub struct MkdirIn {
        /// Permission bits.
        pub mode: u32,
        /// The caller's umask.
        pub umask: u32,
    }

    /// `fuse_rename_in`, followed by the old and new names.
    pub struct RenameIn {
        /// The new parent directory.
        pub newdir: u64,
    }

    /// `fuse_rename2_in`, followed by the old and new names.
    pub struct Rename2In {
        /// The new parent directory.
        pub newdir: u64,
        /// `RENAME_*` flags.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_link_in`, followed by the new name.
    pub struct LinkIn {
        /// The inode to link.
        pub oldnodeid: u64,
    }

    /// `fuse_open_in` (OPEN and OPENDIR).
    pub struct OpenIn {
        /// open(2) flags.
        pub flags: u32,
        /// `FUSE_OPEN_*` flags.
        pub open_flags: u32,
    }

    /// `fuse_create_in`, followed by the name.
    pub struct CreateIn {
        /// open(2) flags.
        pub flags: u32,
        /// Type and permission bits.
        pub mode: u32,
        /// The caller's umask.
        pub umask: u32,
        /// `FUSE_OPEN_*` flags.
        pub open_flags: u32,
    }

    /// `fuse_read_in` (READ, READDIR and READDIRPLUS).
    pub struct ReadIn {
        /// The open handle.
        pub fh: u64,
        /// Byte (or directory) offset.
        pub offset: u64,
        /// Bytes wanted.
        pub size: u32,
        /// `FUSE_READ_*` flags.
        pub read_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
        /// open(2) flags.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_write_in`, followed by `size` bytes of data.
    pub struct WriteIn {
        /// The open handle.
        pub fh: u64,
        /// Byte offset.
        pub offset: u64,
        /// Payload length.
        pub size: u32,
        /// `FUSE_WRITE_*` flags.
        pub write_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
        /// open(2) flags.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_release_in` (RELEASE and RELEASEDIR).
    pub struct ReleaseIn {
        /// The open handle.
        pub fh: u64,
        /// open(2) flags.
        pub flags: u32,
        /// `FUSE_RELEASE_*` flags.
        pub release_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
    }

    /// `fuse_fsync_in` (FSYNC and FSYNCDIR).
    pub struct FsyncIn {
        /// The open handle.
        pub fh: u64,
        /// [`FSYNC_FDATASYNC`].
        pub fsync_flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_flush_in`.
    pub struct FlushIn {
        /// The open handle.
        pub fh: u64,
        /// Unused.
        pub unused: u32,
        /// Padding.
        pub padding: u32,
        /// Lock owner.
        pub lock_owner: u64,
    }

    /// `fuse_setxattr_in` (without `FUSE_SETXATTR_EXT`), followed by the
    /// name and `size` bytes of value.
    pub struct SetxattrIn {
        /// Value length.
        pub size: u32,
        /// `XATTR_CREATE` / `XATTR_REPLACE`.
        pub flags: u32,
    }

    /// `fuse_getxattr_in` (GETXATTR, followed by the name, and LISTXATTR).
    pub struct GetxattrIn {
        /// Reply buffer size; 0 asks for the size.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_access_in`.
    pub struct AccessIn {
        /// `R_OK | W_OK | X_OK` or `F_OK`.
        pub mask: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_fallocate_in`.
    pub struct FallocateIn {
        /// The open handle.
        pub fh: u64,
        /// Byte offset.
        pub offset: u64,
        /// Length.
        pub length: u64,
        /// fallocate(2) mode.
        pub mode: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `fuse_lseek_in`.
    pub struct LseekIn {
        /// The open handle.
        pub fh: u64,
        /// Offset to seek from.
        pub offset: u64,
        /// `SEEK_DATA` / `SEEK_HOLE`.
        pub whence: u32,
        /// Padding.
        pub padding: u32,
    }
}

/// The request header (`fuse_in_header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    /// Total request length, header included.
    pub len: u32,
    /// Operation.
    pub opcode: u32,
    /// Request id the reply must carry.
    pub unique: u64,
    /// Inode the operation applies to.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Length of request extensions at the end, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    /// Decodes the first [`IN_HEADER_SIZE`] bytes; None if there are fewer.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let mut r = ArgReader::new(buf);
        let len = r.u32().ok()?;
        let opcode = r.u32().ok()?;
        let unique = r.u64().ok()?;
        let nodeid = r.u64().ok()?;
        let uid = r.u32().ok()?;
        let gid = r.u32().ok()?;
        let pid = r.u32().ok()?;
        let total_extlen = r.u16().ok()?;
        r.u16().ok()?;
        Some(Self {
            len,
            opcode,
            unique,
            nodeid,
            uid,
            gid,
            pid,
            total_extlen,
        })
    }

    /// Encodes the header (for tests and fuzzers that build requests).
    pub fn to_bytes(&self) -> [u8; IN_HEADER_SIZE] {
        let mut b = Vec::with_capacity(IN_HEADER_SIZE);
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&self.opcode.to_le_bytes());
        b.extend_from_slice(&self.unique.to_le_bytes());
        b.extend_from_slice(&self.nodeid.to_le_bytes());
        b.extend_from_slice(&self.uid.to_le_bytes());
        b.extend_from_slice(&self.gid.to_le_bytes());
        b.extend_from_slice(&self.pid.to_le_bytes());
        b.extend_from_slice(&self.total_extlen.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        let mut out = [0u8; IN_HEADER_SIZE];
        out.copy_from_slice(&b);
        out
    }
}

/// Builds a whole request as the kernel would (uid, gid and pid 0): for
/// tests, fuzzers and host-side tools that speak FUSE to a [`Server`].
///
/// [`Server`]: crate::server::Server
pub fn request(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (IN_HEADER_SIZE + args.len()) as u32,
        opcode,
        unique,
        nodeid,
        ..InHeader::default()
    };
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(args);
    v
}

/// A request argument was shorter than its struct, or a string lacked its NUL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

/// Reads little-endian fields off the front of a byte slice, never past its end.
#[derive(Clone, Copy, Debug)]
pub struct ArgReader<'a> {
    buf: &'a [u8],
}

impl<'a> ArgReader<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if n > self.buf.len() {
            return Err(Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next request struct, copied out (guest bytes need no alignment).
    pub fn arg<T: ByteValued + Default>(&mut self) -> Result<T, Truncated> {
        let mut v = T::default();
        v.as_mut_slice()
            .copy_from_slice(self.bytes(std::mem::size_of::<T>())?);
        Ok(v)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    /// The next NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Result<&'a [u8], Truncated> {
        let nul = self.buf.iter().position(|&b| b == 0).ok_or(Truncated)?;
        let s = self.bytes(nul)?;
        self.bytes(1)?;
        Ok(s)
    }

    /// The next NUL-terminated string as a `CStr` (NUL kept).
    pub fn c_str(&mut self) -> Result<&'a CStr, Truncated> {
        let nul = self.buf.iter().position(|&b| b == 0).ok_or(Truncated)?;
        let s = self.bytes(nul + 1)?;
        CStr::from_bytes_with_nul(s).map_err(|_| Truncated)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Appends little-endian fields to a reply.
pub trait PutLe {
    /// Appends a u16.
    fn put_u16(&mut self, v: u16);
    /// Appends a u32.
    fn put_u32(&mut self, v: u32);
    /// Appends a u64.
    fn put_u64(&mut self, v: u64);
}

impl PutLe for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends `fuse_attr`.
pub fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    out.put_u64(a.ino);
    out.put_u64(a.size);
    out.put_u64(a.blocks);
    // Times are signed on the wire's consumer side; the kernel casts back.
    out.put_u64(a.atime as u64);
    out.put_u64(a.mtime as u64);
    out.put_u64(a.ctime as u64);
    out.put_u32(a.atime_nsec);
    out.put_u32(a.mtime_nsec);
    out.put_u32(a.ctime_nsec);
    out.put_u32(a.mode);
    out.put_u32(a.nlink);
    out.put_u32(a.uid);
    out.put_u32(a.gid);
    out.put_u32(a.rdev);
    out.put_u32(a.blksize);
    out.put_u32(0); // flags
}

/// Appends `fuse_entry_out`.
pub fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    out.put_u64(e.inode);
    out.put_u64(e.generation);
    out.put_u64(e.entry_timeout.as_secs());
    out.put_u64(e.attr_timeout.as_secs());
    out.put_u32(e.entry_timeout.subsec_nanos());
    out.put_u32(e.attr_timeout.subsec_nanos());
    put_attr(out, &e.attr);
}

/// Appends an all-zero `fuse_entry_out`: READDIRPLUS's "no entry" marker,
/// which makes the kernel take no lookup reference.
pub fn put_empty_entry(out: &mut Vec<u8>) {
    out.resize(out.len() + ENTRY_OUT_SIZE, 0);
}

/// Appends `fuse_attr_out`.
pub fn put_attr_out(out: &mut Vec<u8>, a: &Attr, timeout: Duration) {
    out.put_u64(timeout.as_secs());
    out.put_u32(timeout.subsec_nanos());
    out.put_u32(0);
    put_attr(out, a);
}

/// Appends `fuse_open_out`.
pub fn put_open_out(out: &mut Vec<u8>, handle: u64, open_flags: u32) {
    out.put_u64(handle);
    out.put_u32(open_flags);
    out.put_u32(0); // backing_id
}

/// Appends `fuse_kstatfs` (the body of `fuse_statfs_out`).
pub fn put_statfs(out: &mut Vec<u8>, s: &StatFs) {
    out.put_u64(s.blocks);
    out.put_u64(s.bfree);
    out.put_u64(s.bavail);
    out.put_u64(s.files);
    out.put_u64(s.ffree);
    out.put_u32(s.bsize);
    out.put_u32(s.namelen);
    out.put_u32(s.frsize);
    out.resize(out.len() + 4 + 6 * 4, 0); // padding, spare[6]
}

/// Bytes a `fuse_dirent` with a `name_len`-byte name takes (8-byte aligned).
pub fn dirent_size(name_len: usize) -> usize {
    (DIRENT_SIZE + name_len + 7) & !7
}

/// Appends a `fuse_dirent`, padded to 8 bytes.
pub fn put_dirent(out: &mut Vec<u8>, ino: u64, off: u64, kind: u32, name: &[u8]) {
    let start = out.len();
    out.put_u64(ino);
    out.put_u64(off);
    out.put_u32(name.len() as u32);
    out.put_u32(kind);
    out.extend_from_slice(name);
    out.resize(start + dirent_size(name.len()), 0);
}

/// Builds a whole reply: header (with the final length) plus `body`.
pub fn reply(out: &mut Vec<u8>, unique: u64, error: i32, body: &[u8]) {
    out.clear();
    out.put_u32((OUT_HEADER_SIZE + body.len()) as u32);
    out.put_u32(error as u32);
    out.put_u64(unique);
    out.extend_from_slice(body);
}

/// Writes the success header of request `unique` into the first
/// [`OUT_HEADER_SIZE`] bytes of `framed`, a reply whose body follows them.
pub fn frame_reply(framed: &mut [u8], unique: u64) {
    let len = framed.len() as u32;
    framed[0..4].copy_from_slice(&len.to_le_bytes());
    framed[4..8].copy_from_slice(&0u32.to_le_bytes());
    framed[8..16].copy_from_slice(&unique.to_le_bytes());
}

/// The 16-byte error reply for request `unique`: `errno` is positive.
pub fn error_reply(unique: u64, errno: i32) -> [u8; OUT_HEADER_SIZE] {
    let mut b = [0u8; OUT_HEADER_SIZE];
    b[0..4].copy_from_slice(&(OUT_HEADER_SIZE as u32).to_le_bytes());
    b[4..8].copy_from_slice(&(-errno).to_le_bytes());
    b[8..16].copy_from_slice(&unique.to_le_bytes());
    b
}

/// A decoded reply header, for tests and for the device's logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutHeader {
    /// Reply length, header included.
    pub len: u32,
    /// 0 or a negative errno.
    pub error: i32,
    /// The request id answered.
    pub unique: u64,
}

impl OutHeader {
    /// Decodes the first [`OUT_HEADER_SIZE`] bytes; None if there are fewer.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let mut r = ArgReader::new(buf);
        Some(Self {
            len: r.u32().ok()?,
            error: r.u32().ok()? as i32,
            unique: r.u64().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_to_read_past_the_end() {
        let mut r = ArgReader::new(&[1, 0, 0, 0, 2]);
        assert_eq!(r.u32(), Ok(1));
        assert_eq!(r.u32(), Err(Truncated));
        assert_eq!(r.bytes(1), Ok(&[2u8][..]));
        assert_eq!(r.u16(), Err(Truncated));
    }

    #[test]
    fn cstr_needs_its_nul() {
        assert_eq!(ArgReader::new(b"abc").cstr(), Err(Truncated));
        let mut r = ArgReader::new(b"ab\0cd\0");
        assert_eq!(r.cstr(), Ok(&b"ab"[..]));
        assert_eq!(r.cstr(), Ok(&b"cd"[..]));
        assert_eq!(r.rest(), b"");
    }

    #[test]
    fn header_round_trips_and_short_header_is_none() {
        let h = InHeader {
            len: 40,
            opcode: 26,
            unique: 7,
            nodeid: 1,
            uid: 2,
            gid: 3,
            pid: 4,
            total_extlen: 0,
        };
        assert_eq!(InHeader::parse(&h.to_bytes()), Some(h));
        assert_eq!(InHeader::parse(&h.to_bytes()[..39]), None);
    }

    #[test]
    fn struct_sizes_match_the_kernel_headers() {
        let mut v = Vec::new();
        put_attr(&mut v, &Attr::default());
        assert_eq!(v.len(), ATTR_SIZE);
        v.clear();
        put_statfs(&mut v, &StatFs::default());
        assert_eq!(v.len(), 80);
        v.clear();
        put_dirent(&mut v, 1, 2, 4, b"abc");
        assert_eq!(v.len(), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(OutHeader::parse(&error_reply(9, 2)).unwrap().error, -2);
        use std::mem::size_of;
        let sizes = [
            (size_of::<InitIn>(), 16),
            (size_of::<ForgetIn>(), 8),
            (size_of::<BatchForgetIn>(), 8),
            (size_of::<ForgetOne>(), 16),
            (size_of::<GetattrIn>(), 16),
            (size_of::<SetattrIn>(), 88),
            (size_of::<MknodIn>(), 16),
            (size_of::<MkdirIn>(), 8),
            (size_of::<RenameIn>(), 8),
            (size_of::<Rename2In>(), 16),
            (size_of::<LinkIn>(), 8),
            (size_of::<OpenIn>(), 8),
            (size_of::<CreateIn>(), 16),
            (size_of::<ReadIn>(), 40),
            (size_of::<WriteIn>(), 40),
            (size_of::<ReleaseIn>(), 24),
            (size_of::<FsyncIn>(), 16),
            (size_of::<FlushIn>(), 24),
            (size_of::<SetxattrIn>(), 8),
            (size_of::<GetxattrIn>(), 8),
            (size_of::<AccessIn>(), 8),
            (size_of::<FallocateIn>(), 32),
            (size_of::<LseekIn>(), 24),
        ];
        for (i, (got, want)) in sizes.into_iter().enumerate() {
            assert_eq!(got, want, "request struct #{i}");
        }
    }

    #[test]
    fn typed_args_are_copied_unaligned_and_refuse_short_bodies() {
        let mut b = vec![0xffu8];
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&9u32.to_le_bytes());
        let mut r = ArgReader::new(&b);
        r.bytes(1).unwrap();
        assert_eq!(r.arg(), Ok(MkdirIn { mode: 7, umask: 9 }));
        assert_eq!(ArgReader::new(&b[1..8]).arg::<MkdirIn>(), Err(Truncated));
    }
}
