//! What hooks see: the operation ([`Op`], [`OpKind`]) and the [`Hook`]
//! trait they implement. Its own module so the shipped hooks and the
//! [`Hooked`](super::Hooked) wrapper both build on it without importing
//! each other.

use std::ffi::CStr;
use std::io;
use std::path::PathBuf;

use crate::filesystem::{Context, Entry, FileSystem, Handle, Inode, SetAttr};

/// Which operation a hook is looking at.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Symlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Open,
    Create,
    Read,
    Write,
    Flush,
    Fsync,
    Release,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Access,
    Fallocate,
    Lseek,
}

impl OpKind {
    /// The operation's name in lower case (`"read"`, `"rename"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Lookup => "lookup",
            OpKind::Getattr => "getattr",
            OpKind::Setattr => "setattr",
            OpKind::Readlink => "readlink",
            OpKind::Symlink => "symlink",
            OpKind::Mknod => "mknod",
            OpKind::Mkdir => "mkdir",
            OpKind::Unlink => "unlink",
            OpKind::Rmdir => "rmdir",
            OpKind::Rename => "rename",
            OpKind::Link => "link",
            OpKind::Open => "open",
            OpKind::Create => "create",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::Fsync => "fsync",
            OpKind::Release => "release",
            OpKind::Statfs => "statfs",
            OpKind::Setxattr => "setxattr",
            OpKind::Getxattr => "getxattr",
            OpKind::Listxattr => "listxattr",
            OpKind::Removexattr => "removexattr",
            OpKind::Opendir => "opendir",
            OpKind::Readdir => "readdir",
            OpKind::Releasedir => "releasedir",
            OpKind::Fsyncdir => "fsyncdir",
            OpKind::Access => "access",
            OpKind::Fallocate => "fallocate",
            OpKind::Lseek => "lseek",
        }
    }
}

/// One operation as hooks see it.
#[derive(Clone)]
pub struct Op<'a> {
    /// The filesystem under all hooks, for hooks that keep state there
    /// (xattrs) or answer themselves.
    pub backend: &'a dyn FileSystem,
    /// What is being done.
    pub kind: OpKind,
    /// Who in the guest asked.
    pub ctx: Context,
    /// The inode operated on; for operations on a name (lookup, create,
    /// unlink, rename, ...) the directory holding it.
    pub inode: Inode,
    /// The open handle, for operations through one.
    pub handle: Option<Handle>,
    /// Guest path of the object (for name operations: of the named entry;
    /// for rename: the old name). None if the inode's path is not known.
    pub path: Option<PathBuf>,
    /// Rename's new name, link's new name.
    pub new_path: Option<PathBuf>,
    /// The inode is held by the guest but lost its name to a rename (so
    /// `path` is None although the inode is known).
    pub detached: bool,
    /// Byte offset (read, write, fallocate).
    pub offset: u64,
    /// Bytes asked for (read), given (write), allocated (fallocate).
    pub size: u64,
    /// The xattr name (setxattr, getxattr, removexattr).
    pub xattr: Option<&'a CStr>,
    /// Attribute changes (setattr).
    pub setattr: Option<SetAttr>,
    /// Rename flags.
    pub flags: u32,
}

// By hand, since the backend has no `Debug`: what the operation is and
// where; the rest is left out.
impl std::fmt::Debug for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("kind", &self.kind)
            .field("ctx", &self.ctx)
            .field("inode", &self.inode)
            .field("path", &self.path)
            .field("new_path", &self.new_path)
            .finish_non_exhaustive()
    }
}

/// Host code that sees operations; see the module docs for the order.
/// Every method has a pass-through default; [`Op::backend`] is the
/// filesystem under all hooks.
#[allow(unused_variables)]
pub trait Hook: Send + Sync {
    /// Runs before the operation; an error denies it with that error.
    fn before(&self, op: &Op<'_>) -> io::Result<()> {
        Ok(())
    }

    /// May rewrite a WRITE's payload before it reaches the backend. The
    /// guest is told the length it sent was written if the backend took the
    /// whole rewritten payload.
    fn rewrite_write(&self, op: &Op<'_>, data: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    /// May answer a READ itself (`Some`), skipping the backend and the hooks
    /// after this one.
    fn answer_read(&self, op: &Op<'_>) -> Option<io::Result<Vec<u8>>> {
        None
    }

    /// May rewrite what READ, GETXATTR, LISTXATTR or READLINK returns.
    fn rewrite_reply(&self, op: &Op<'_>, data: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    /// Sees the outcome: bytes moved (read, write) or 0, or the errno.
    fn after(&self, op: &Op<'_>, result: Result<u64, i32>) {}

    /// Sees the inode a successful reply is about to hand the guest
    /// (lookup, create, mkdir, mknod, symlink, link); an error withholds
    /// it (the backend's lookup reference is given back) and is the reply.
    fn check_entry(&self, op: &Op<'_>, entry: &Entry) -> io::Result<()> {
        Ok(())
    }
}
