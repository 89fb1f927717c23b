//! Hooks: host code that sees every filesystem operation the guest makes,
//! and may deny it, rewrite its data, or answer it itself.
//!
//! [`Hooked`] wraps any backend with an ordered list of [`Hook`]s and is
//! itself a [`FileSystem`], so hooks stack under the FUSE server without
//! either side knowing. For each operation:
//!
//! 1. every hook's [`Hook::before`] runs in list order; the first error
//!    denies the operation with that error (later hooks are not asked);
//! 2. for WRITE, every hook's [`Hook::rewrite_write`] may change the
//!    payload, in list order; for READ, the first hook whose
//!    [`Hook::answer_read`] answers replaces the backend;
//! 3. the backend runs;
//! 4. for READ, GETXATTR, LISTXATTR and READLINK, every hook's
//!    [`Hook::rewrite_reply`] may change the returned bytes, in reverse
//!    order (so the hook nearest the backend undoes its transformation
//!    first);
//! 5. every hook whose `before` ran sees [`Hook::after`] with the outcome,
//!    in reverse order.
//!
//! Hooks get the guest path of what an operation touches ([`Op::path`]):
//! FUSE speaks inode numbers, so [`Hooked`] keeps an inode -> (parent, name)
//! map ([`paths::PathMap`]) from the replies that hand out inodes.
//!
//! Shipped hooks: [`AuditLog`] (a record of reads, writes and namespace
//! changes), [`EncryptAtRest`] (file contents encrypted in the backing store)
//! and [`DenyPaths`] (paths the guest may not touch).

use std::ffi::CStr;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::filesystem::{
    Attr, Context, DirEntry, Entry, FileSystem, Handle, Inode, OpenReply, SetAttr, StatFs,
};
use crate::saved_state::FsState;

mod audit;
mod deny;
mod encrypt;
mod op;
pub mod paths;

#[cfg(test)]
mod tests;

pub use audit::{AuditLog, AuditRecord};
pub use deny::DenyPaths;
pub use encrypt::EncryptAtRest;
pub use op::{Hook, Op, OpKind};

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A backend wrapped with hooks. See the module docs.
pub struct Hooked<F: FileSystem> {
    inner: F,
    hooks: Vec<Arc<dyn Hook>>,
    paths: paths::PathMap,
}

impl<F: FileSystem> Hooked<F> {
    /// Wraps `inner`; `hooks` run in this order before, in reverse after.
    pub fn new(inner: F, hooks: Vec<Arc<dyn Hook>>) -> Self {
        Self {
            inner,
            hooks,
            paths: paths::PathMap::default(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The guest path of `inode`, as far as the guest has looked it up.
    pub fn path_of(&self, inode: Inode) -> Option<PathBuf> {
        self.paths.path(inode)
    }

    fn op(&self, kind: OpKind, ctx: &Context, inode: Inode) -> Op<'_> {
        Op {
            backend: &self.inner,
            kind,
            ctx: *ctx,
            inode,
            handle: None,
            path: self.paths.path(inode),
            new_path: None,
            detached: self.paths.is_detached(inode),
            offset: 0,
            size: 0,
            xattr: None,
            setattr: None,
            flags: 0,
        }
    }

    /// An operation through the open handle `handle`.
    fn with_handle(&self, kind: OpKind, ctx: &Context, inode: Inode, handle: Handle) -> Op<'_> {
        Op {
            handle: Some(handle),
            ..self.op(kind, ctx, inode)
        }
    }

    fn named(&self, kind: OpKind, ctx: &Context, parent: Inode, name: &CStr) -> Op<'_> {
        Op {
            path: self.paths.child(parent, name.to_bytes()),
            ..self.op(kind, ctx, parent)
        }
    }

    /// Steps 1, 3 and 5 of the module docs around `f`; `size` says how
    /// many bytes a successful result moved.
    fn run<T>(
        &self,
        op: &Op<'_>,
        f: impl FnOnce() -> io::Result<T>,
        size: impl Fn(&T) -> u64,
    ) -> io::Result<T> {
        let mut ran = 0;
        let mut result = Ok(());
        for h in &self.hooks {
            ran += 1;
            if let Err(e) = h.before(op) {
                result = Err(e);
                break;
            }
        }
        let result = result.and_then(|()| f());
        let outcome = match &result {
            Ok(t) => Ok(size(t)),
            Err(e) => Err(errno(e)),
        };
        for h in self.hooks[..ran].iter().rev() {
            h.after(op, outcome);
        }
        result
    }

    fn simple<T>(&self, op: &Op<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.run(op, f, |_| 0)
    }

    fn rewrite_reply(&self, op: &Op<'_>, mut data: Vec<u8>) -> io::Result<Vec<u8>> {
        for h in self.hooks.iter().rev() {
            h.rewrite_reply(op, &mut data)?;
        }
        Ok(data)
    }

    fn entry(
        &self,
        op: &Op<'_>,
        parent: Inode,
        name: &CStr,
        e: io::Result<Entry>,
    ) -> io::Result<Entry> {
        let e = e?;
        self.check_entry(op, &e)?;
        self.paths.record(parent, name.to_bytes(), e.inode);
        Ok(e)
    }

    /// Every hook's [`Hook::check_entry`]; on a refusal the backend's
    /// reference is given back.
    fn check_entry(&self, op: &Op<'_>, e: &Entry) -> io::Result<()> {
        for h in &self.hooks {
            if let Err(err) = h.check_entry(op, e) {
                self.inner.forget(e.inode, 1);
                return Err(err);
            }
        }
        Ok(())
    }
}

/// Generates the methods of `Hooked`'s [`FileSystem`] impl. Most operations
/// are the [`Op`] hooks see and how the backend's answer is handled:
/// `plain` (as is), `reply` (hooks may rewrite the returned bytes) or
/// `entry(parent, name)` (hooks check the inode handed out, and its path is
/// recorded); operations with a flow of their own give a body. `$this` is
/// `self`, passed in so that the expressions written at the call site can
/// use it.
macro_rules! hooked_methods {
    ($this:ident;) => {};
    ($this:ident; fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty
        = $op:expr => $flow:ident $(($($p:expr),*))?; $($rest:tt)*) => {
        fn $name(&$this, $($arg: $ty),*) -> $ret {
            let op = $op;
            hooked_methods!(@$flow $this, op $(, $($p),*)?; $name($($arg),*))
        }
        hooked_methods!($this; $($rest)*);
    };
    ($this:ident; fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block
        $($rest:tt)*) => {
        fn $name(&$this, $($arg: $ty),*) $(-> $ret)? $body
        hooked_methods!($this; $($rest)*);
    };
    (@plain $this:ident, $op:ident; $name:ident($($arg:ident),*)) => {
        $this.simple(&$op, || $this.inner.$name($($arg),*))
    };
    (@reply $this:ident, $op:ident; $name:ident($($arg:ident),*)) => {
        $this.simple(&$op, || {
            let data = $this.inner.$name($($arg),*)?;
            $this.rewrite_reply(&$op, data)
        })
    };
    (@entry $this:ident, $op:ident, $parent:expr, $child:expr; $name:ident($($arg:ident),*)) => {{
        let e = $this.simple(&$op, || $this.inner.$name($($arg),*));
        $this.entry(&$op, $parent, $child, e)
    }};
}

/// An open reply without the backend's caching flags: a hook may answer or rewrite reads
/// differently from one open to the next, so every open starts from what the hooks say now,
/// and hooks see every close's FLUSH. (For the same reason [`Hooked`] has no negative lookup
/// timeout: a hook's refusal may change.)
fn uncached(mut reply: OpenReply) -> OpenReply {
    use crate::abi::fopen::{CACHE_DIR, KEEP_CACHE, NOFLUSH};
    reply.open_flags &= !(KEEP_CACHE | CACHE_DIR | NOFLUSH);
    reply
}

impl<F: FileSystem> FileSystem for Hooked<F> {
    hooked_methods! { self;
        fn init() -> io::Result<()> {
            self.inner.init()
        }

        fn destroy() {
            self.inner.destroy()
        }

        fn lookup(ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry>
            = self.named(OpKind::Lookup, ctx, parent, name) => entry(parent, name);

        fn forget(inode: Inode, count: u64) {
            self.paths.forget(inode, count);
            self.inner.forget(inode, count)
        }

        fn getattr(ctx: &Context, inode: Inode, handle: Option<Handle>) -> io::Result<(Attr, Duration)>
            = Op { handle, ..self.op(OpKind::Getattr, ctx, inode) } => plain;

        fn setattr(ctx: &Context, inode: Inode, attr: SetAttr) -> io::Result<(Attr, Duration)>
            = Op {
                handle: attr.handle,
                setattr: Some(attr),
                size: attr.size.unwrap_or(0),
                ..self.op(OpKind::Setattr, ctx, inode)
            } => plain;

        fn readlink(ctx: &Context, inode: Inode) -> io::Result<Vec<u8>>
            = self.op(OpKind::Readlink, ctx, inode) => reply;

        fn symlink(ctx: &Context, target: &CStr, parent: Inode, name: &CStr) -> io::Result<Entry>
            = self.named(OpKind::Symlink, ctx, parent, name) => entry(parent, name);

        fn mknod(ctx: &Context, parent: Inode, name: &CStr, mode: u32, rdev: u32, umask: u32) -> io::Result<Entry>
            = self.named(OpKind::Mknod, ctx, parent, name) => entry(parent, name);

        fn mkdir(ctx: &Context, parent: Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry>
            = self.named(OpKind::Mkdir, ctx, parent, name) => entry(parent, name);

        fn unlink(ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()>
            = self.named(OpKind::Unlink, ctx, parent, name) => plain;

        fn rmdir(ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()>
            = self.named(OpKind::Rmdir, ctx, parent, name) => plain;

        fn rename(ctx: &Context, olddir: Inode, oldname: &CStr, newdir: Inode, newname: &CStr, flags: u32) -> io::Result<()> {
            let op = Op {
                new_path: self.paths.child(newdir, newname.to_bytes()),
                flags,
                ..self.named(OpKind::Rename, ctx, olddir, oldname)
            };
            self.simple(&op, || {
                self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
            })?;
            let exchange = flags & libc::RENAME_EXCHANGE != 0;
            let (old, new) = (oldname.to_bytes(), newname.to_bytes());
            self.paths.rename(olddir, old, newdir, new, exchange);
            Ok(())
        }

        fn link(ctx: &Context, inode: Inode, newparent: Inode, newname: &CStr) -> io::Result<Entry>
            = Op {
                new_path: self.paths.child(newparent, newname.to_bytes()),
                ..self.op(OpKind::Link, ctx, inode)
            } => entry(newparent, newname);

        fn open(ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
            let op = Op { flags, ..self.op(OpKind::Open, ctx, inode) };
            self.simple(&op, || self.inner.open(ctx, inode, flags).map(uncached))
        }

        fn create(ctx: &Context, parent: Inode, name: &CStr, mode: u32, flags: u32, umask: u32) -> io::Result<(Entry, OpenReply)> {
            let op = Op {
                flags,
                ..self.named(OpKind::Create, ctx, parent, name)
            };
            let r = self.simple(&op, || {
                self.inner.create(ctx, parent, name, mode, flags, umask)
            });
            let (e, open) = r?;
            if let Err(err) = self.check_entry(&op, &e) {
                let _ = self.inner.release(ctx, e.inode, flags, open.handle);
                return Err(err);
            }
            self.paths.record(parent, name.to_bytes(), e.inode);
            Ok((e, uncached(open)))
        }

        fn read(ctx: &Context, inode: Inode, handle: Handle, offset: u64, size: u32) -> io::Result<Vec<u8>> {
            let op = Op {
                offset,
                size: u64::from(size),
                ..self.with_handle(OpKind::Read, ctx, inode, handle)
            };
            self.run(
                &op,
                || {
                    let mut first_hook = self.hooks.len();
                    let mut answer = None;
                    for (i, h) in self.hooks.iter().enumerate() {
                        if let Some(a) = h.answer_read(&op) {
                            (first_hook, answer) = (i, Some(a));
                            break;
                        }
                    }
                    let mut data = match answer {
                        Some(a) => a?,
                        None => self.inner.read(ctx, inode, handle, offset, size)?,
                    };
                    // Only the hooks above the one that answered undo their
                    // transformation.
                    for h in self.hooks[..first_hook].iter().rev() {
                        h.rewrite_reply(&op, &mut data)?;
                    }
                    Ok(data)
                },
                |d| d.len() as u64,
            )
        }

        fn write(ctx: &Context, inode: Inode, handle: Handle, offset: u64, data: &[u8], flags: u32) -> io::Result<u32> {
            let op = Op {
                offset,
                size: data.len() as u64,
                flags,
                ..self.with_handle(OpKind::Write, ctx, inode, handle)
            };
            self.run(
                &op,
                || {
                    let mut buf = data.to_vec();
                    for h in &self.hooks {
                        h.rewrite_write(&op, &mut buf)?;
                    }
                    let n = self.inner.write(ctx, inode, handle, offset, &buf, flags)?;
                    Ok(if n as usize >= buf.len() {
                        data.len() as u32
                    } else {
                        n.min(data.len() as u32)
                    })
                },
                |n| u64::from(*n),
            )
        }

        fn flush(ctx: &Context, inode: Inode, handle: Handle, lock_owner: u64) -> io::Result<()>
            = self.with_handle(OpKind::Flush, ctx, inode, handle) => plain;

        fn fsync(ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()>
            = self.with_handle(OpKind::Fsync, ctx, inode, handle) => plain;

        fn release(ctx: &Context, inode: Inode, flags: u32, handle: Handle) -> io::Result<()>
            = self.with_handle(OpKind::Release, ctx, inode, handle) => plain;

        fn statfs(ctx: &Context, inode: Inode) -> io::Result<StatFs>
            = self.op(OpKind::Statfs, ctx, inode) => plain;

        fn setxattr(ctx: &Context, inode: Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()>
            = Op {
                xattr: Some(name),
                size: value.len() as u64,
                flags,
                ..self.op(OpKind::Setxattr, ctx, inode)
            } => plain;

        fn getxattr(ctx: &Context, inode: Inode, name: &CStr) -> io::Result<Vec<u8>>
            = Op { xattr: Some(name), ..self.op(OpKind::Getxattr, ctx, inode) } => reply;

        fn listxattr(ctx: &Context, inode: Inode) -> io::Result<Vec<u8>>
            = self.op(OpKind::Listxattr, ctx, inode) => reply;

        fn removexattr(ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()>
            = Op { xattr: Some(name), ..self.op(OpKind::Removexattr, ctx, inode) } => plain;

        fn opendir(ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
            let op = self.op(OpKind::Opendir, ctx, inode);
            self.simple(&op, || self.inner.opendir(ctx, inode, flags).map(uncached))
        }

        fn readdir(ctx: &Context, inode: Inode, handle: Handle, offset: u64, add: &mut dyn FnMut(DirEntry<'_>) -> bool) -> io::Result<()>
            = Op { offset, ..self.with_handle(OpKind::Readdir, ctx, inode, handle) } => plain;

        fn releasedir(ctx: &Context, inode: Inode, flags: u32, handle: Handle) -> io::Result<()>
            = self.with_handle(OpKind::Releasedir, ctx, inode, handle) => plain;

        fn fsyncdir(ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()>
            = self.with_handle(OpKind::Fsyncdir, ctx, inode, handle) => plain;

        fn access(ctx: &Context, inode: Inode, mask: u32) -> io::Result<()>
            = Op { flags: mask, ..self.op(OpKind::Access, ctx, inode) } => plain;

        fn fallocate(ctx: &Context, inode: Inode, handle: Handle, mode: u32, offset: u64, length: u64) -> io::Result<()>
            = Op {
                offset,
                size: length,
                flags: mode,
                ..self.with_handle(OpKind::Fallocate, ctx, inode, handle)
            } => plain;

        fn lseek(ctx: &Context, inode: Inode, handle: Handle, offset: u64, whence: u32) -> io::Result<u64>
            = Op { offset, ..self.with_handle(OpKind::Lseek, ctx, inode, handle) } => plain;

        // Not operations of the guest: hooks do not see them. The path map
        // is rebuilt from the saved paths so hooks keep deciding by path
        // after a restore.
        fn save_state() -> io::Result<FsState> {
            self.inner.save_state()
        }

        fn restore_state(state: &FsState) -> io::Result<()> {
            self.inner.restore_state(state)?;
            self.paths.restore(state);
            Ok(())
        }
    }
}
