//! One method per FUSE opcode: each reads its typed request struct (and
//! any names or payload after it) from a [`Request`], calls the backend and
//! encodes the reply. `Server::dispatch` picks the method; the checks the
//! module docs of [`super`] promise live in [`Request`]'s readers (here).

use std::ffi::CStr;

use vm_memory::ByteValued;

use super::{
    body, einval, empty, errno, OpResult, Reply, Request, Server, MAX_READ, MAX_WRITE, NAME_MAX,
    PATH_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};
use crate::abi::{self, fattr, opcode, PutLe};
use crate::filesystem::{DirEntry, Entry, FileSystem, Inode, SetAttr, TimeSet};

impl<'a> Request<'a> {
    /// The next request struct; a body too short for it is EINVAL.
    fn arg<T: ByteValued + Default>(&mut self) -> Result<T, i32> {
        self.args.arg().map_err(einval)
    }

    /// The next `n` bytes (a payload); fewer is EINVAL.
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], i32> {
        self.args.bytes(n).map_err(einval)
    }

    /// A path component: NUL-terminated, non-empty, no `/`, not `.`/`..`,
    /// at most [`NAME_MAX`] bytes.
    fn name(&mut self) -> Result<&'a CStr, i32> {
        let n = self.args.c_str().map_err(einval)?;
        let b = n.to_bytes();
        if b.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(libc::EINVAL);
        }
        Ok(n)
    }

    /// An xattr name: NUL-terminated, non-empty, at most [`XATTR_NAME_MAX`].
    fn xattr_name(&mut self) -> Result<&'a CStr, i32> {
        let n = self.args.c_str().map_err(einval)?;
        match n.to_bytes().len() {
            0 => Err(libc::EINVAL),
            l if l > XATTR_NAME_MAX => Err(libc::ERANGE),
            _ => Ok(n),
        }
    }
}

/// SETATTR's struct as the backend's [`SetAttr`]: only the fields `valid`
/// names, nanoseconds clamped.
fn setattr_from(a: &abi::SetattrIn) -> SetAttr {
    let has = |bit: u32| a.valid & bit != 0;
    let time = |now: u32, set: u32, s: u64, ns: u32| {
        if has(now) {
            Some(TimeSet::Now)
        } else if has(set) {
            Some(TimeSet::At(s as i64, ns.min(999_999_999)))
        } else {
            None
        }
    };
    SetAttr {
        mode: has(fattr::MODE).then_some(a.mode),
        uid: has(fattr::UID).then_some(a.uid),
        gid: has(fattr::GID).then_some(a.gid),
        size: has(fattr::SIZE).then_some(a.size),
        atime: time(fattr::ATIME_NOW, fattr::ATIME, a.atime, a.atimensec),
        mtime: time(fattr::MTIME_NOW, fattr::MTIME, a.mtime, a.mtimensec),
        handle: has(fattr::FH).then_some(a.fh),
    }
}

impl<F: FileSystem> Server<F> {
    pub(super) fn do_destroy(&self) -> OpResult {
        self.reset();
        empty()
    }

    pub(super) fn do_lookup(&self, r: &mut Request<'_>) -> OpResult {
        let n = r.name()?;
        match (self.fs.lookup(&r.ctx, r.ino, n), self.fs.negative_timeout()) {
            // A node id of 0 with a timeout: the guest keeps the miss as a negative entry, so
            // a PATH search or a library probe does not ask again for every exec.
            (Err(e), Some(timeout)) if e.raw_os_error() == Some(libc::ENOENT) => {
                body(|b| abi::put_entry(b, &Entry::negative(timeout)))
            }
            (e, _) => self.entry(e),
        }
    }

    pub(super) fn do_forget(&self, r: &mut Request<'_>) -> OpResult {
        if let Ok(f) = r.arg::<abi::ForgetIn>() {
            self.fs.forget(r.ino, f.nlookup);
        }
        Ok(Reply::None)
    }

    pub(super) fn do_batch_forget(&self, r: &mut Request<'_>) -> OpResult {
        let count = r.arg::<abi::BatchForgetIn>().map_or(0, |b| b.count);
        for _ in 0..count {
            let Ok(one) = r.arg::<abi::ForgetOne>() else {
                break;
            };
            self.fs.forget(one.nodeid, one.nlookup);
        }
        Ok(Reply::None)
    }

    pub(super) fn do_getattr(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::GetattrIn = r.arg()?;
        let handle = (a.getattr_flags & abi::GETATTR_FH != 0).then_some(a.fh);
        let (attr, t) = self.fs.getattr(&r.ctx, r.ino, handle).map_err(errno)?;
        body(|b| abi::put_attr_out(b, &attr, self.attr_timeout(t)))
    }

    pub(super) fn do_setattr(&self, r: &mut Request<'_>) -> OpResult {
        let set = setattr_from(&r.arg()?);
        let (attr, t) = self.fs.setattr(&r.ctx, r.ino, set).map_err(errno)?;
        body(|b| abi::put_attr_out(b, &attr, self.attr_timeout(t)))
    }

    pub(super) fn do_readlink(&self, r: &mut Request<'_>) -> OpResult {
        let target = self.fs.readlink(&r.ctx, r.ino).map_err(errno)?;
        Ok(Reply::Body(target))
    }

    pub(super) fn do_symlink(&self, r: &mut Request<'_>) -> OpResult {
        let n = r.name()?;
        let target = r.args.c_str().map_err(einval)?;
        match target.to_bytes().len() {
            0 => return Err(libc::EINVAL),
            l if l > PATH_MAX => return Err(libc::ENAMETOOLONG),
            _ => {}
        }
        self.entry(self.fs.symlink(&r.ctx, target, r.ino, n))
    }

    pub(super) fn do_mknod(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::MknodIn = r.arg()?;
        let n = r.name()?;
        let e = self.fs.mknod(&r.ctx, r.ino, n, a.mode, a.rdev, a.umask);
        self.entry(e)
    }

    pub(super) fn do_mkdir(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::MkdirIn = r.arg()?;
        let n = r.name()?;
        self.entry(self.fs.mkdir(&r.ctx, r.ino, n, a.mode, a.umask))
    }

    /// UNLINK and RMDIR.
    pub(super) fn do_remove(&self, r: &mut Request<'_>) -> OpResult {
        let n = r.name()?;
        if r.op == opcode::UNLINK {
            self.fs.unlink(&r.ctx, r.ino, n)
        } else {
            self.fs.rmdir(&r.ctx, r.ino, n)
        }
        .map_err(errno)?;
        empty()
    }

    pub(super) fn do_rename(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::RenameIn = r.arg()?;
        self.rename_names(r, a.newdir, 0)
    }

    pub(super) fn do_rename2(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::Rename2In = r.arg()?;
        self.rename_names(r, a.newdir, a.flags)
    }

    /// The old and new names after either rename struct.
    fn rename_names(&self, r: &mut Request<'_>, newdir: Inode, flags: u32) -> OpResult {
        let old = r.name()?;
        let new = r.name()?;
        self.fs
            .rename(&r.ctx, r.ino, old, newdir, new, flags)
            .map_err(errno)?;
        empty()
    }

    pub(super) fn do_link(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::LinkIn = r.arg()?;
        let n = r.name()?;
        self.entry(self.fs.link(&r.ctx, a.oldnodeid, r.ino, n))
    }

    /// OPEN and OPENDIR.
    pub(super) fn do_open(&self, r: &mut Request<'_>) -> OpResult {
        let flags = r.arg::<abi::OpenIn>()?.flags;
        let writes =
            (flags as i32 & libc::O_ACCMODE) != libc::O_RDONLY || flags as i32 & libc::O_TRUNC != 0;
        if self.options.read_only && r.op == opcode::OPEN && writes {
            return Err(libc::EROFS);
        }
        let open = if r.op == opcode::OPEN {
            self.fs.open(&r.ctx, r.ino, flags)
        } else {
            self.fs.opendir(&r.ctx, r.ino, flags)
        }
        .map_err(errno)?;
        body(|b| abi::put_open_out(b, open.handle, open.open_flags))
    }

    pub(super) fn do_create(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::CreateIn = r.arg()?;
        let n = r.name()?;
        let (e, open) = self
            .fs
            .create(&r.ctx, r.ino, n, a.mode, a.flags, a.umask)
            .map_err(errno)?;
        let e = self.fix_entry(e);
        body(|b| {
            abi::put_entry(b, &e);
            abi::put_open_out(b, open.handle, open.open_flags);
        })
    }

    pub(super) fn do_read(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::ReadIn = r.arg()?;
        if a.size > MAX_READ {
            return Err(libc::EINVAL);
        }
        let mut framed = Vec::with_capacity(abi::OUT_HEADER_SIZE + a.size as usize);
        framed.resize(abi::OUT_HEADER_SIZE, 0);
        self.fs
            .read_into(&r.ctx, r.ino, a.fh, a.offset, a.size, &mut framed)
            .map_err(errno)?;
        if framed.len() < abi::OUT_HEADER_SIZE {
            // A backend that took from the header answered nothing sound.
            return Err(libc::EIO);
        }
        // A backend that answers more than asked is cut to the request.
        framed.truncate(abi::OUT_HEADER_SIZE + a.size as usize);
        Ok(Reply::Framed(framed))
    }

    pub(super) fn do_write(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::WriteIn = r.arg()?;
        if a.size > MAX_WRITE {
            return Err(libc::EINVAL);
        }
        let data = r.bytes(a.size as usize)?;
        let n = self
            .fs
            .write(&r.ctx, r.ino, a.fh, a.offset, data, a.write_flags)
            .map_err(errno)?;
        body(|b| {
            b.put_u32(n.min(a.size));
            b.put_u32(0);
        })
    }

    pub(super) fn do_statfs(&self, r: &mut Request<'_>) -> OpResult {
        let s = self.fs.statfs(&r.ctx, r.ino).map_err(errno)?;
        body(|b| abi::put_statfs(b, &s))
    }

    /// RELEASE and RELEASEDIR.
    pub(super) fn do_release(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::ReleaseIn = r.arg()?;
        if r.op == opcode::RELEASE {
            self.fs.release(&r.ctx, r.ino, a.flags, a.fh)
        } else {
            self.fs.releasedir(&r.ctx, r.ino, a.flags, a.fh)
        }
        .map_err(errno)?;
        empty()
    }

    /// FSYNC and FSYNCDIR.
    pub(super) fn do_fsync(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::FsyncIn = r.arg()?;
        let datasync = a.fsync_flags & abi::FSYNC_FDATASYNC != 0;
        if r.op == opcode::FSYNC {
            self.fs.fsync(&r.ctx, r.ino, datasync, a.fh)
        } else {
            self.fs.fsyncdir(&r.ctx, r.ino, datasync, a.fh)
        }
        .map_err(errno)?;
        empty()
    }

    pub(super) fn do_flush(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::FlushIn = r.arg()?;
        self.fs
            .flush(&r.ctx, r.ino, a.fh, a.lock_owner)
            .map_err(errno)?;
        empty()
    }

    pub(super) fn do_setxattr(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::SetxattrIn = r.arg()?;
        let n = r.xattr_name()?;
        let size = a.size as usize;
        if size > XATTR_SIZE_MAX {
            return Err(libc::E2BIG);
        }
        let value = r.bytes(size)?;
        self.fs
            .setxattr(&r.ctx, r.ino, n, value, a.flags)
            .map_err(errno)?;
        empty()
    }

    /// GETXATTR and LISTXATTR: a zero `size` asks for the value's length.
    pub(super) fn do_getxattr(&self, r: &mut Request<'_>) -> OpResult {
        let size = r.arg::<abi::GetxattrIn>()?.size;
        let value = if r.op == opcode::GETXATTR {
            let n = r.xattr_name()?;
            self.fs.getxattr(&r.ctx, r.ino, n)
        } else {
            self.fs.listxattr(&r.ctx, r.ino)
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

    pub(super) fn do_removexattr(&self, r: &mut Request<'_>) -> OpResult {
        let n = r.xattr_name()?;
        self.fs.removexattr(&r.ctx, r.ino, n).map_err(errno)?;
        empty()
    }

    pub(super) fn do_readdir(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::ReadIn = r.arg()?;
        let limit = a.size.min(MAX_READ) as usize;
        let mut out = Vec::new();
        self.fs
            .readdir(&r.ctx, r.ino, a.fh, a.offset, &mut |e: DirEntry<'_>| {
                if out.len() + abi::dirent_size(e.name.len()) > limit {
                    return false;
                }
                abi::put_dirent(&mut out, e.ino, e.offset, e.kind, e.name);
                true
            })
            .map_err(errno)?;
        Ok(Reply::Body(out))
    }

    pub(super) fn do_readdirplus(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::ReadIn = r.arg()?;
        let limit = a.size.min(MAX_READ) as usize;
        self.readdirplus(&r.ctx, r.ino, a.fh, a.offset, limit)
    }

    pub(super) fn do_access(&self, r: &mut Request<'_>) -> OpResult {
        let mask = r.arg::<abi::AccessIn>()?.mask;
        if self.options.read_only && mask & libc::W_OK as u32 != 0 {
            return Err(libc::EROFS);
        }
        self.fs.access(&r.ctx, r.ino, mask).map_err(errno)?;
        empty()
    }

    pub(super) fn do_fallocate(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::FallocateIn = r.arg()?;
        self.fs
            .fallocate(&r.ctx, r.ino, a.fh, a.mode, a.offset, a.length)
            .map_err(errno)?;
        empty()
    }

    pub(super) fn do_lseek(&self, r: &mut Request<'_>) -> OpResult {
        let a: abi::LseekIn = r.arg()?;
        let off = self
            .fs
            .lseek(&r.ctx, r.ino, a.fh, a.offset, a.whence)
            .map_err(errno)?;
        body(|b| b.put_u64(off))
    }
}
