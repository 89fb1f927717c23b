//! The backend contract of the FUSE server.
//!
//! The trait mirrors the FUSE low-level API (inode numbers chosen by the
//! backend, kernel-side reference counts released through
//! [`FileSystem::forget`]) so the server stays a thin, checkable translation
//! of the wire format. Names are `&CStr` because FUSE names are bytes without
//! an interior NUL; the server has already rejected names that contain `/`,
//! are empty, or are longer than 255 bytes, but backends must still treat
//! `.` and `..` with care (the server never forwards them to `lookup`).
//!
//! Errors are `io::Error`s; the server answers `-raw_os_error()` and `EIO`
//! for errors without an errno. Every method that a backend does not support
//! defaults to `ENOSYS`, which the kernel remembers for some operations
//! (xattr, fallocate, lseek) and then stops asking.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use crate::saved_state::FsState;

/// A backend-chosen inode number. [`ROOT_INODE`] is the root of the share.
pub type Inode = u64;
/// A backend-chosen open file or directory handle.
pub type Handle = u64;
/// The inode number FUSE uses for the root of the filesystem.
pub const ROOT_INODE: Inode = 1;

/// Who issued a request, from the FUSE request header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The caller's effective user id in the guest.
    pub uid: u32,
    /// The caller's effective group id in the guest.
    pub gid: u32,
    /// The caller's thread group id in the guest (0 for kernel requests).
    pub pid: u32,
}

/// File attributes as the guest sees them (after any uid/gid/mode mapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    /// Inode number reported to the guest (`st_ino`).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last access, seconds since the epoch.
    pub atime: i64,
    /// Nanoseconds part of `atime`.
    pub atime_nsec: u32,
    /// Last modification, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of `mtime`.
    pub mtime_nsec: u32,
    /// Last status change, seconds since the epoch.
    pub ctime: i64,
    /// Nanoseconds part of `ctime`.
    pub ctime_nsec: u32,
    /// File type and permission bits (`st_mode`, `S_IF*` included).
    pub mode: u32,
    /// Hard link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for character and block devices.
    pub rdev: u32,
    /// Preferred I/O block size.
    pub blksize: u32,
}

/// The answer to a lookup or to an operation that creates a name.
///
/// Each `Entry` returned adds one to the kernel's lookup count of `inode`,
/// which the kernel gives back through [`FileSystem::forget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The inode the name refers to.
    pub inode: Inode,
    /// Generation number; (inode, generation) must be unique over the
    /// filesystem's lifetime.
    pub generation: u64,
    /// Its attributes.
    pub attr: Attr,
    /// How long the guest may cache `attr`.
    pub attr_timeout: Duration,
    /// How long the guest may cache the name -> inode mapping.
    pub entry_timeout: Duration,
}

impl Entry {
    /// The answer that a name does not exist and the guest may remember so for `timeout`:
    /// node id 0, which adds no lookup reference.
    pub fn negative(timeout: Duration) -> Self {
        Entry {
            inode: 0,
            generation: 0,
            attr: Attr::default(),
            attr_timeout: Duration::ZERO,
            entry_timeout: timeout,
        }
    }
}

/// A time to set in [`SetAttr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The host's current time.
    Now,
    /// This time: seconds and nanoseconds since the epoch.
    At(i64, u32),
}

/// Attribute changes requested by SETATTR; `None` means unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (the type bits are ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The open handle the change was made through, if any (ftruncate).
    pub handle: Option<Handle>,
}

/// An open file or directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReply {
    /// The handle later requests carry.
    pub handle: Handle,
    /// `FOPEN_*` flags for the kernel (e.g. `FOPEN_KEEP_CACHE`).
    pub open_flags: u32,
}

impl OpenReply {
    /// `handle` with no `FOPEN_*` flags: the kernel's default caching.
    pub fn new(handle: Handle) -> Self {
        Self {
            handle,
            open_flags: 0,
        }
    }
}

/// One directory entry produced by [`FileSystem::readdir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// Inode number reported to the guest (`d_ino`).
    pub ino: u64,
    /// Offset of the *next* entry: passing it back to `readdir` resumes after
    /// this one.
    pub offset: u64,
    /// `DT_*` type of the entry.
    pub kind: u32,
    /// The name (no `/`, no NUL).
    pub name: &'a [u8],
}

/// Filesystem statistics (statfs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of `frsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

fn enosys<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The answer of a backend that keeps no snapshot state: `ENOTSUP` with a
/// message saying so, so the VMM can tell the user which device blocked
/// the snapshot.
fn not_saveable<T>() -> io::Result<T> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this backend cannot be saved in a snapshot",
    ))
}

/// Defines [`FileSystem`] and its pointer forwarders from one list of
/// methods, so every signature is written once: each entry is a method
/// without its `&self` receiver, ending in `;` (backends must implement
/// it) or in its default body. The list is collected one method at a time
/// (a `;` or a block after the return type cannot be told apart in a
/// single repetition).
macro_rules! filesystem_trait {
    (@collect [$($ptr:ty),*] $this:ident $done:tt) => {
        filesystem_trait!(@trait $done);
        $(filesystem_trait!(@forward $ptr $done);)*
    };
    (@trait [$($done:tt)*]) => {
        /// A filesystem the FUSE server can serve to the guest.
        ///
        /// Implementations must be safe to call from several threads at once (the
        /// device may serve several request queues) and must never trust their
        /// arguments: inode numbers and handles come from the guest and may be stale
        /// or forged (answer `EBADF`/`ENOENT`, never panic).
        #[allow(unused_variables)]
        pub trait FileSystem: Send + Sync {
            $($done)*
        }
    };
    // `$this` is the caller's `self`, so that default bodies may use it (a
    // `self` written here would not be the one in a body passed in).
    (@collect $ptrs:tt $this:ident [$($done:tt)*]
        $(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?; $($rest:tt)*) => {
        filesystem_trait!(@collect $ptrs $this
            [$($done)* $(#[$m])* fn $name(&$this, $($arg: $ty),*) $(-> $ret)?;] $($rest)*);
    };
    (@collect $ptrs:tt $this:ident [$($done:tt)*]
        $(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block
        $($rest:tt)*) => {
        filesystem_trait!(@collect $ptrs $this
            [$($done)* $(#[$m])* fn $name(&$this, $($arg: $ty),*) $(-> $ret)? $body] $($rest)*);
    };
    // `Box<dyn FileSystem>` and `Arc<T>` are backends too (the server takes
    // a backend by value).
    (@forward $ptr:ty [$(
        $(#[$m:meta])* fn $name:ident(&$this:ident, $($arg:ident: $ty:ty),*) $(-> $ret:ty)? $(;)? $($body:block)?
    )*]) => {
        impl<T: FileSystem + ?Sized> FileSystem for $ptr {
            $(fn $name(&$this, $($arg: $ty),*) $(-> $ret)? {
                (**$this).$name($($arg),*)
            })*
        }
    };
    (forwarded by $ptrs:tt; $this:ident; $($methods:tt)*) => {
        filesystem_trait!(@collect $ptrs $this [] $($methods)*);
    };
}

filesystem_trait! {
    forwarded by [Box<T>, std::sync::Arc<T>]; self;

    /// Called once for FUSE_INIT; returns nothing to negotiate beyond what
    /// the server decides. A backend may prepare its root here.
    fn init() -> io::Result<()> {
        Ok(())
    }

    /// Called when the guest unmounts (FUSE_DESTROY) or the device resets.
    fn destroy() {}

    /// Looks up `name` in directory `parent`.
    fn lookup(ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry>;

    /// How long the guest may remember that a name does not exist (a LOOKUP that failed
    /// with `ENOENT`); `None` (the default): not at all. Only a backend whose tree changes
    /// only through the guest's own requests can say more, since the guest then learns of
    /// every name that appears.
    fn negative_timeout() -> Option<Duration> {
        None
    }

    /// The kernel dropped `count` references to `inode`.
    fn forget(inode: Inode, count: u64) {}

    /// Attributes of `inode` and how long they may be cached.
    fn getattr(ctx: &Context, inode: Inode, handle: Option<Handle>) -> io::Result<(Attr, Duration)>;

    /// Changes attributes; returns the new ones.
    fn setattr(ctx: &Context, inode: Inode, attr: SetAttr) -> io::Result<(Attr, Duration)> {
        enosys()
    }

    /// Target of a symlink.
    fn readlink(ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        enosys()
    }

    /// Creates symlink `name` in `parent` pointing at `target`.
    fn symlink(ctx: &Context, target: &CStr, parent: Inode, name: &CStr) -> io::Result<Entry> {
        enosys()
    }

    /// Creates a device node, FIFO, socket or regular file (`mode` includes the type).
    fn mknod(ctx: &Context, parent: Inode, name: &CStr, mode: u32, rdev: u32, umask: u32) -> io::Result<Entry> {
        enosys()
    }

    /// Creates a directory.
    fn mkdir(ctx: &Context, parent: Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        enosys()
    }

    /// Removes a non-directory name.
    fn unlink(ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        enosys()
    }

    /// Removes an empty directory.
    fn rmdir(ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        enosys()
    }

    /// Renames; `flags` are `RENAME_NOREPLACE` / `RENAME_EXCHANGE` / `RENAME_WHITEOUT`.
    fn rename(ctx: &Context, olddir: Inode, oldname: &CStr, newdir: Inode, newname: &CStr, flags: u32) -> io::Result<()> {
        enosys()
    }

    /// Creates hard link `newname` in `newparent` to `inode`.
    fn link(ctx: &Context, inode: Inode, newparent: Inode, newname: &CStr) -> io::Result<Entry> {
        enosys()
    }

    /// Opens a file; `flags` are the guest's open(2) flags.
    fn open(ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        enosys()
    }

    /// Creates and opens a regular file.
    fn create(ctx: &Context, parent: Inode, name: &CStr, mode: u32, flags: u32, umask: u32) -> io::Result<(Entry, OpenReply)> {
        enosys()
    }

    /// Reads up to `size` bytes at `offset`; fewer means end of file.
    fn read(ctx: &Context, inode: Inode, handle: Handle, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        enosys()
    }

    /// [`read`](Self::read), the data appended to `out` (which holds the
    /// reply's header already). A backend that reads into `out` directly
    /// saves the server a copy of every byte read; one that transforms the
    /// data (the hooks) keeps this default, which calls its `read`.
    fn read_into(ctx: &Context, inode: Inode, handle: Handle, offset: u64, size: u32, out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(&self.read(ctx, inode, handle, offset, size)?);
        Ok(())
    }

    /// Writes `data` at `offset`; returns the bytes written.
    fn write(ctx: &Context, inode: Inode, handle: Handle, offset: u64, data: &[u8], flags: u32) -> io::Result<u32> {
        enosys()
    }

    /// close(2) of one file descriptor referring to the handle.
    fn flush(ctx: &Context, inode: Inode, handle: Handle, lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    /// fsync(2)/fdatasync(2).
    fn fsync(ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        Ok(())
    }

    /// The last reference to an open file went away.
    fn release(ctx: &Context, inode: Inode, flags: u32, handle: Handle) -> io::Result<()> {
        Ok(())
    }

    /// Filesystem statistics.
    fn statfs(ctx: &Context, inode: Inode) -> io::Result<StatFs> {
        Ok(StatFs { bsize: 4096, frsize: 4096, namelen: 255, ..StatFs::default() })
    }

    /// Sets an extended attribute.
    fn setxattr(ctx: &Context, inode: Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        enosys()
    }

    /// The value of an extended attribute (the server handles size probes and `ERANGE`).
    fn getxattr(ctx: &Context, inode: Inode, name: &CStr) -> io::Result<Vec<u8>> {
        enosys()
    }

    /// Extended attribute names, each followed by a NUL.
    fn listxattr(ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        enosys()
    }

    /// Removes an extended attribute.
    fn removexattr(ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        enosys()
    }

    /// Opens a directory for reading.
    fn opendir(ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        enosys()
    }

    /// Lists directory entries starting after `offset` (0 = from the start,
    /// `.` and `..` included), calling `add` for each until it returns
    /// `false` (the reply buffer is full; that entry was not taken).
    fn readdir(ctx: &Context, inode: Inode, handle: Handle, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> io::Result<()> {
        enosys()
    }

    /// Closes a directory handle.
    fn releasedir(ctx: &Context, inode: Inode, flags: u32, handle: Handle) -> io::Result<()> {
        Ok(())
    }

    /// fsync(2) of a directory.
    fn fsyncdir(ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        Ok(())
    }

    /// access(2) check; `mask` is `R_OK|W_OK|X_OK` or `F_OK`.
    fn access(ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        enosys()
    }

    /// fallocate(2).
    fn fallocate(ctx: &Context, inode: Inode, handle: Handle, mode: u32, offset: u64, length: u64) -> io::Result<()> {
        enosys()
    }

    /// lseek(2) with `SEEK_DATA`/`SEEK_HOLE`; returns the new offset.
    fn lseek(ctx: &Context, inode: Inode, handle: Handle, offset: u64, whence: u32) -> io::Result<u64> {
        enosys()
    }

    /// The inodes and handles the guest holds, for a VM snapshot (see
    /// [`crate::saved_state`]). The guest is paused: no request runs
    /// meanwhile. By default the backend cannot be saved.
    fn save_state() -> io::Result<FsState> {
        not_saveable()
    }

    /// Makes this fresh backend answer for the inodes and handles of
    /// `state` (saved by [`FileSystem::save_state`] of a backend over the
    /// same tree, or its frozen copy). What no longer resolves is left out.
    /// By default the backend cannot be restored.
    fn restore_state(state: &FsState) -> io::Result<()> {
        not_saveable()
    }
}
