//! A host directory served to the guest, confined to that directory.
//!
//! Confinement: every host path is resolved with `openat2(2)` beneath an
//! `O_PATH` fd of the root with no symlinks allowed anywhere in the walk
//! (see [`crate::host_util`]); names from the guest are single components
//! used with `*at` calls that never follow a final symlink. A symlink
//! planted or swapped in by anyone (guest, host, a racing rename) is
//! therefore either returned as a symlink for the guest kernel to resolve
//! in the guest's own namespace, or refused with `ELOOP`/`ESTALE`; the host
//! never follows it.
//!
//! Descriptors: an inode keeps its parent and name (see
//! [`crate::path_table`]), not a descriptor. At most
//! [`PassthroughConfig::max_open_fds`] `O_PATH` fds are cached (least
//! recently used evicted); an evicted inode is opened again from the root
//! and must still be the same host `(dev, ino)`, else `ESTALE`. Open files
//! are a separate budget, [`PassthroughConfig::max_open_handles`] (each
//! holds one host fd; past it the guest gets `EMFILE`). A directory handle
//! reads the host directory on demand at the guest's offset (the host's
//! own `d_off` cookies), so it holds no copy of the listing however big
//! the directory is or however often it is opened.
//!
//! Permissions are the guest kernel's job: mount with `default_permissions`
//! so it checks the ids and modes this backend reports. The host process
//! only ever acts with its own credentials; as root it additionally gives
//! new files the mapped host owner of the guest caller.
//!
//! Host files the guest must never create: the guest's set-user-ID and
//! set-group-ID bits and its block and character devices never reach the
//! host; they are kept in an xattr and shown to the guest (see
//! [`kept_mode`]), or refused with `EPERM` where the host filesystem has no
//! `user.*` xattrs and the process is unprivileged.
//!
//! Limits: an inode whose last name is removed while its fd is not cached
//! can only be reached through open handles (`ESTALE` otherwise); guest
//! xattrs are limited to the `user.` namespace, because `security.` and
//! `trusted.` ones would act on the host.

mod fd_cache;
mod id_map;
mod kept_mode;
mod persist;
#[cfg(test)]
mod tests;

pub use id_map::{IdMap, IdRange, OVERFLOW_ID};

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;

use crate::backend_common::check_access;
use crate::filesystem::{
    Attr, Context, DirEntry, Entry, FileSystem, Handle, Inode, OpenReply, SetAttr, StatFs,
    ROOT_INODE,
};
use crate::handle_table::{HandleTable, Opened};
use crate::host_util::{self as host, err, CONFINED};
use crate::path_table::PathTable;
use crate::saved_state::FsState;

use fd_cache::FdCache;
use kept_mode::{is_reserved_xattr, KeptMode, ShareMark, SETID};

/// How a [`PassthroughFs`] serves its directory.
#[derive(Clone, Debug)]
pub struct PassthroughConfig {
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// Host <-> guest owner translation.
    pub id_map: IdMap,
    /// Most `O_PATH` descriptors kept for inodes (least recently used evicted).
    pub max_open_fds: usize,
    /// Most open file and directory handles; past it opens fail with `EMFILE`.
    pub max_open_handles: usize,
    /// How long the guest may cache attributes.
    pub attr_timeout: Duration,
    /// How long the guest may cache names.
    pub entry_timeout: Duration,
    /// The guest mounts with writeback caching: the kernel may read through
    /// a write-only handle and does `O_APPEND` itself, so files are opened
    /// read-write and without `O_APPEND`.
    pub writeback: bool,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig {
            read_only: false,
            id_map: IdMap::identity(),
            max_open_fds: 1024,
            max_open_handles: 4096,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            writeback: false,
        }
    }
}

/// What the table keeps per inode: the host identity it must still have.
struct HostId {
    dev: u64,
    ino: u64,
    kind: u32,
    /// What the guest asked for that the host object does not carry.
    kept: Option<KeptMode>,
}

struct State {
    table: PathTable<HostId>,
    by_host: HashMap<(u64, u64), Inode>,
    fds: FdCache,
}

enum OpenObject {
    File(OwnedFd),
    /// A read fd of the directory; the lock keeps seek and read together.
    Dir(Mutex<OwnedFd>),
}

/// A confined passthrough of a host directory. See the module docs.
pub struct PassthroughFs {
    root: Arc<OwnedFd>,
    config: PassthroughConfig,
    state: Mutex<State>,
    handles: HandleTable<OpenObject>,
    host_is_root: bool,
    /// The share may hold kept modes, so LOOKUP reads them (see
    /// [`kept_mode`]).
    modes_kept: AtomicBool,
    /// The share may hold kept devices, so READDIR looks for them.
    devices_kept: AtomicBool,
}

impl PassthroughFs {
    /// Serves the directory `root`.
    pub fn new(root: &Path, config: PassthroughConfig) -> io::Result<Self> {
        let fd = host::open_root(root)?;
        let st = host::fstat(fd.as_raw_fd())?;
        let mut by_host = HashMap::new();
        by_host.insert((st.st_dev, st.st_ino), ROOT_INODE);
        let devices_kept = ShareMark::Devices.on(fd.as_raw_fd());
        // A kept device is a kept mode: a share marked for one before the
        // mark for modes existed holds modes too.
        let modes_kept = devices_kept || ShareMark::Modes.on(fd.as_raw_fd());
        let root_id = HostId {
            dev: st.st_dev,
            ino: st.st_ino,
            kind: libc::S_IFDIR,
            kept: modes_kept
                .then(|| KeptMode::load(fd.as_raw_fd(), libc::S_IFDIR))
                .flatten(),
        };
        Ok(PassthroughFs {
            root: Arc::new(fd),
            state: Mutex::new(State {
                table: PathTable::new(root_id),
                by_host,
                fds: FdCache::new(config.max_open_fds),
            }),
            handles: HandleTable::new(config.max_open_handles),
            // SAFETY: geteuid has no preconditions.
            host_is_root: host::is_root(),
            modes_kept: AtomicBool::new(modes_kept),
            devices_kept: AtomicBool::new(devices_kept),
            config,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("passthrough state lock")
    }

    /// The `O_PATH` fd of `ino`, from the cache or opened again from the
    /// root and checked to still be the same host object.
    fn inode_fd(&self, ino: Inode) -> io::Result<(Arc<OwnedFd>, u32)> {
        if ino == ROOT_INODE {
            return Ok((self.root.clone(), libc::S_IFDIR));
        }
        let (path, dev, hino, kind) = {
            let mut st = self.lock();
            let node = st.table.get(ino)?;
            let (dev, hino, kind) = (node.data.dev, node.data.ino, node.data.kind);
            if let Some(fd) = st.fds.get(ino) {
                return Ok((fd, kind));
            }
            (st.table.path(ino)?, dev, hino, kind)
        };
        let fd = host::open_beneath(self.root.as_raw_fd(), &path).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
                | Some(libc::EXDEV) => err(libc::ESTALE),
                _ => e,
            }
        })?;
        let st = host::fstat(fd.as_raw_fd())?;
        if (st.st_dev, st.st_ino) != (dev, hino) {
            return Err(err(libc::ESTALE));
        }
        let fd = Arc::new(fd);
        let mut state = self.lock();
        if state.table.get(ino).is_ok() {
            state.fds.put(ino, fd.clone());
        }
        Ok((fd, kind))
    }

    fn guest_attr(&self, st: &libc::stat64, kept: Option<&KeptMode>) -> Attr {
        let mut a = host::attr_from_stat(st);
        a.uid = self.config.id_map.guest_uid(st.st_uid);
        a.gid = self.config.id_map.guest_gid(st.st_gid);
        KeptMode::apply(kept, &mut a);
        a
    }

    /// What is kept for `ino` (see [`kept_mode`]).
    fn kept(&self, ino: Inode) -> io::Result<Option<KeptMode>> {
        Ok(self.lock().table.get(ino)?.data.kept)
    }

    fn entry(
        &self,
        ino: Inode,
        generation: u64,
        st: &libc::stat64,
        kept: Option<&KeptMode>,
    ) -> Entry {
        Entry {
            inode: ino,
            generation,
            attr: self.guest_attr(st, kept),
            attr_timeout: self.config.attr_timeout,
            entry_timeout: self.config.entry_timeout,
        }
    }

    /// Before the first kept device: marks the share so that READDIR (of
    /// this server and the next) looks for kept devices. A root that takes
    /// no mark still gets them listed right for this server's lifetime.
    fn mark_devices_kept(&self) {
        self.mark(ShareMark::Devices, &self.devices_kept);
    }

    /// Before the first kept mode is stored: marks the share so that LOOKUP
    /// (of this server and the next) reads what is kept.
    fn mark_modes_kept(&self) {
        self.mark(ShareMark::Modes, &self.modes_kept);
    }

    fn mark(&self, mark: ShareMark, flag: &AtomicBool) {
        if flag.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = mark.set(self.root.as_raw_fd()) {
            tracing::warn!("cannot mark the share ({mark:?}): {e}");
        }
        flag.store(true, Ordering::Release);
    }

    /// Stores what is kept for the object behind `fd`, marking the share
    /// first when something is.
    fn store_kept(&self, fd: RawFd, kept: Option<KeptMode>) -> io::Result<()> {
        if kept.is_some() {
            self.mark_modes_kept();
        }
        KeptMode::store(fd, kept)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.config.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Registers `name` in `parent` (just looked up or created) and returns
    /// its entry, one lookup counted.
    fn register(&self, parent: Inode, name: &CStr, fd: OwnedFd) -> io::Result<Entry> {
        let st = host::fstat(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        let kind = st.st_mode & libc::S_IFMT;
        let marked = self.modes_kept.load(Ordering::Acquire);
        let mut kept = marked
            .then(|| KeptMode::load(fd.as_raw_fd(), kind))
            .flatten();
        let mut state = self.lock();
        if !marked && self.modes_kept.load(Ordering::Acquire) {
            // The share's first kept mode was stored meanwhile (maybe on
            // this very object): read it rather than record none.
            kept = KeptMode::load(fd.as_raw_fd(), kind);
        }
        let state = &mut *state;
        let ino = match state.by_host.get(&key).copied() {
            Some(ino) => {
                state.table.add_lookup(ino)?;
                state.table.get_mut(ino)?.data.kept = kept;
                let node = state.table.get(ino)?;
                if ino != ROOT_INODE
                    && (node.parent != parent || node.name.as_c_str() != name || !node.attached)
                {
                    // Another name of the same object (hard link, host-side
                    // rename): that is the path to reopen it by from now on.
                    let moved = state.table.move_to(ino, parent, name);
                    let freed = match moved {
                        Ok(freed) => freed,
                        Err(e) => {
                            let freed = state.table.forget(ino, 1);
                            Self::drop_freed(state, freed);
                            return Err(e);
                        }
                    };
                    Self::drop_freed(state, freed);
                }
                ino
            }
            None => {
                let id = HostId {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind: st.st_mode & libc::S_IFMT,
                    kept,
                };
                let ino = state.table.insert(parent, name, id)?;
                state.by_host.insert(key, ino);
                ino
            }
        };
        if ino != ROOT_INODE {
            state.fds.put(ino, Arc::new(fd));
        }
        let node = state.table.get(ino)?;
        Ok(self.entry(ino, node.generation, &st, node.data.kept.as_ref()))
    }

    /// The host file OPEN of `inode` with the guest's `flags` gives.
    fn open_file(&self, inode: Inode, flags: u32) -> io::Result<OwnedFd> {
        if host::wants_write(flags) {
            self.check_writable()?;
        }
        let (fd, kind) = self.inode_fd(inode)?;
        match kind {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(err(libc::EISDIR)),
            libc::S_IFLNK => return Err(err(libc::ELOOP)),
            _ => return Err(err(libc::ENXIO)),
        }
        let mut f = host::host_open_flags(flags);
        if self.config.writeback {
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        host::reopen(fd.as_raw_fd(), f)
    }

    /// The directory read fd OPENDIR of `inode` gives.
    fn open_dir(&self, inode: Inode) -> io::Result<OwnedFd> {
        let (fd, kind) = self.inode_fd(inode)?;
        if kind != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        host::openat2(
            fd.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
            CONFINED,
        )
    }

    fn drop_freed(state: &mut State, freed: Vec<(Inode, HostId)>) {
        for (ino, id) in freed {
            state.fds.remove(ino);
            if state.by_host.get(&(id.dev, id.ino)) == Some(&ino) {
                state.by_host.remove(&(id.dev, id.ino));
            }
        }
    }

    /// As root, gives a new name the mapped host owner of the guest caller;
    /// unprivileged, new files stay the process's own.
    fn set_creator(&self, ctx: &Context, dirfd: RawFd, name: &CStr) -> io::Result<()> {
        if !self.host_is_root {
            return Ok(());
        }
        let uid = self
            .config
            .id_map
            .host_uid(ctx.uid)
            .ok_or_else(|| err(libc::EINVAL))?;
        let gid = self
            .config
            .id_map
            .host_gid(ctx.gid)
            .ok_or_else(|| err(libc::EINVAL))?;
        host::fchownat(dirfd, name, uid, gid, 0)
    }

    /// Creates something at `name` in `parent` with `make`, gives it the
    /// owner of `ctx` (none for hard links, which keep theirs) and the
    /// `kept` guest mode, removing it again if that fails, and returns its
    /// entry.
    fn create_with(
        &self,
        ctx: Option<&Context>,
        parent: Inode,
        name: &CStr,
        is_dir: bool,
        kept: Option<KeptMode>,
        make: impl FnOnce(RawFd) -> io::Result<()>,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        host::check_name(name)?;
        let (pfd, _) = self.inode_fd(parent)?;
        make(pfd.as_raw_fd())?;
        let finish = || {
            if let Some(ctx) = ctx {
                self.set_creator(ctx, pfd.as_raw_fd(), name)?;
            }
            if kept.is_some() {
                let fd = host::open_child(pfd.as_raw_fd(), name)?;
                self.store_kept(fd.as_raw_fd(), kept)?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let flag = if is_dir { libc::AT_REMOVEDIR } else { 0 };
            let _ = host::unlinkat(pfd.as_raw_fd(), name, flag);
            return Err(e);
        }
        self.register(parent, name, host::open_child(pfd.as_raw_fd(), name)?)
    }

    /// chmod without ever giving the host object a set-id bit: the host
    /// gets the rest, the set-id bits are kept (see [`kept_mode`]).
    fn chmod(&self, ino: Inode, fd: RawFd, mode: u32) -> io::Result<()> {
        let old = self.kept(ino)?;
        let new = KeptMode {
            setid: mode & SETID,
            ..old.unwrap_or_default()
        };
        let new = (new != KeptMode::default()).then_some(new);
        if new != old {
            self.store_kept(fd, new)?;
            self.lock().table.get_mut(ino)?.data.kept = new;
        }
        host::chmod_fd(fd, mode & 0o7777 & !SETID)
    }

    fn file_fd(&self, handle: Handle) -> io::Result<Arc<OpenObject>> {
        let obj = self.handles.get(handle)?;
        match *obj {
            OpenObject::File(_) => Ok(obj),
            OpenObject::Dir(_) => Err(err(libc::EISDIR)),
        }
    }

    fn handle_raw(obj: &OpenObject) -> RawFd {
        match obj {
            OpenObject::File(fd) => fd.as_raw_fd(),
            OpenObject::Dir(_) => -1,
        }
    }
}

impl FileSystem for PassthroughFs {
    fn destroy(&self) {
        self.handles.clear();
        self.lock().fds.clear();
    }

    fn lookup(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        host::check_name(name).map_err(|_| err(libc::ENOENT))?;
        let (pfd, _) = self.inode_fd(parent)?;
        let fd = host::open_child(pfd.as_raw_fd(), name)?;
        self.register(parent, name, fd)
    }

    fn forget(&self, inode: Inode, count: u64) {
        let mut state = self.lock();
        let freed = state.table.forget(inode, count);
        Self::drop_freed(&mut state, freed);
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(Attr, Duration)> {
        if let Some(obj) = handle.and_then(|h| self.handles.get(h).ok()) {
            if let OpenObject::File(fd) = &*obj {
                let kept = self.kept(inode)?;
                return Ok((
                    self.guest_attr(&host::fstat(fd.as_raw_fd())?, kept.as_ref()),
                    self.config.attr_timeout,
                ));
            }
        }
        let (fd, _) = self.inode_fd(inode)?;
        let kept = self.kept(inode)?;
        Ok((
            self.guest_attr(&host::fstat(fd.as_raw_fd())?, kept.as_ref()),
            self.config.attr_timeout,
        ))
    }

    fn setattr(&self, ctx: &Context, inode: Inode, attr: SetAttr) -> io::Result<(Attr, Duration)> {
        self.check_writable()?;
        let (fd, kind) = self.inode_fd(inode)?;
        let raw = fd.as_raw_fd();
        let is_link = kind == libc::S_IFLNK;
        if attr.uid.is_some() || attr.gid.is_some() {
            let map = &self.config.id_map;
            let uid = match attr.uid {
                Some(u) => map.host_uid(u).ok_or_else(|| err(libc::EINVAL))?,
                None => u32::MAX,
            };
            let gid = match attr.gid {
                Some(g) => map.host_gid(g).ok_or_else(|| err(libc::EINVAL))?,
                None => u32::MAX,
            };
            host::fchownat(raw, c"", uid, gid, libc::AT_EMPTY_PATH)?;
        }
        if let Some(mode) = attr.mode {
            if is_link {
                return Err(err(libc::EOPNOTSUPP));
            }
            self.chmod(inode, raw, mode)?;
        }
        if let Some(size) = attr.size {
            let size = i64::try_from(size).map_err(|_| err(libc::EFBIG))?;
            let via_handle = attr.handle.and_then(|h| self.file_fd(h).ok());
            let owned;
            let tfd = match &via_handle {
                Some(obj) => Self::handle_raw(obj),
                None => {
                    if kind != libc::S_IFREG {
                        return Err(err(libc::EINVAL));
                    }
                    owned = host::reopen(raw, libc::O_WRONLY)?;
                    owned.as_raw_fd()
                }
            };
            host::ftruncate(tfd, size)?;
        }
        if attr.atime.is_some() || attr.mtime.is_some() {
            if is_link {
                let times = [host::timespec(attr.atime), host::timespec(attr.mtime)];
                host::utimens_link(raw, &times)?;
            } else {
                host::set_times(raw, attr.atime, attr.mtime)?;
            }
        }
        self.getattr(ctx, inode, attr.handle)
    }

    fn readlink(&self, _ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        let (fd, kind) = self.inode_fd(inode)?;
        if kind != libc::S_IFLNK {
            return Err(err(libc::EINVAL));
        }
        host::readlink_fd(fd.as_raw_fd())
    }

    fn symlink(
        &self,
        ctx: &Context,
        target: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.create_with(Some(ctx), parent, name, false, None, |dirfd| {
            host::symlinkat(target, dirfd, name)
        })
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mode = crate::backend_common::mknod_mode(mode, umask)?;
        let kept = KeptMode::for_request(mode, u64::from(rdev));
        // A device becomes an empty regular file; set-id bits stay off.
        let host_mode = match kept {
            Some(k) if k.device != 0 => {
                self.check_writable()?;
                self.mark_devices_kept();
                libc::S_IFREG | (mode & 0o1777 & !SETID)
            }
            _ => mode & !SETID,
        };
        self.create_with(Some(ctx), parent, name, false, kept, |dirfd| {
            // Never a device or set-id node.
            host::mknodat(dirfd, name, host_mode)
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mode = mode & 0o7777 & !umask;
        let kept = KeptMode::for_request(libc::S_IFDIR | mode, 0);
        self.create_with(Some(ctx), parent, name, true, kept, |dirfd| {
            host::mkdirat(dirfd, name, mode & !SETID)
        })
    }

    fn unlink(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        host::check_name(name)?;
        let (pfd, _) = self.inode_fd(parent)?;
        host::unlinkat(pfd.as_raw_fd(), name, 0)?;
        self.lock().table.detach(parent, name);
        Ok(())
    }

    fn rmdir(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        host::check_name(name)?;
        let (pfd, _) = self.inode_fd(parent)?;
        host::unlinkat(pfd.as_raw_fd(), name, libc::AT_REMOVEDIR)?;
        self.lock().table.detach(parent, name);
        Ok(())
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        host::check_name(oldname)?;
        host::check_name(newname)?;
        let (ofd, _) = self.inode_fd(olddir)?;
        let (nfd, _) = self.inode_fd(newdir)?;
        host::renameat2(ofd.as_raw_fd(), oldname, nfd.as_raw_fd(), newname, flags)?;
        let mut state = self.lock();
        let state = &mut *state;
        let moved = state.table.child(olddir, oldname);
        let replaced = state.table.child(newdir, newname);
        if let Some(a) = moved {
            let freed = state.table.move_to(a, newdir, newname).unwrap_or_default();
            Self::drop_freed(state, freed);
        } else {
            state.table.detach(newdir, newname);
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Some(b) = replaced {
                let freed = state.table.move_to(b, olddir, oldname).unwrap_or_default();
                Self::drop_freed(state, freed);
            }
        } else if flags & libc::RENAME_WHITEOUT == 0 {
            state.table.detach(olddir, oldname);
        }
        Ok(())
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let (fd, kind) = self.inode_fd(inode)?;
        if kind == libc::S_IFDIR {
            return Err(err(libc::EPERM));
        }
        self.create_with(None, newparent, newname, false, None, |dirfd| {
            host::link_fd(fd.as_raw_fd(), dirfd, newname)
        })
    }

    fn open(&self, _ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        let file = self.open_file(inode, flags)?;
        let opened = Opened {
            inode,
            flags,
            dir: false,
        };
        Ok(OpenReply::new(
            self.handles.insert(OpenObject::File(file), opened)?,
        ))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> io::Result<(Entry, OpenReply)> {
        self.check_writable()?;
        host::check_name(name)?;
        let (pfd, _) = self.inode_fd(parent)?;
        let mut f = host::host_open_flags(flags) | libc::O_CREAT | libc::O_NOFOLLOW;
        f |= (flags as i32) & libc::O_EXCL;
        if self.config.writeback {
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        let mode = mode & 0o7777 & !umask;
        let host_mode = mode & !SETID;
        let kept = KeptMode::for_request(libc::S_IFREG | mode, 0);
        // Set-id bits asked for go to a file this call creates, never to an
        // existing one (which keeps its mode, as open(2) does).
        let (file, created) = match kept {
            Some(_) if f & libc::O_EXCL == 0 => {
                match host::openat2(pfd.as_raw_fd(), name, f | libc::O_EXCL, host_mode, CONFINED) {
                    Ok(file) => (file, true),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        let f = f & !libc::O_CREAT;
                        (host::openat2(pfd.as_raw_fd(), name, f, 0, CONFINED)?, false)
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => (
                host::openat2(pfd.as_raw_fd(), name, f, host_mode, CONFINED)?,
                true,
            ),
        };
        self.set_creator(ctx, pfd.as_raw_fd(), name)?;
        if created && kept.is_some() {
            if let Err(e) = self.store_kept(file.as_raw_fd(), kept) {
                let _ = host::unlinkat(pfd.as_raw_fd(), name, 0);
                return Err(e);
            }
        }
        let entry = host::open_child(pfd.as_raw_fd(), name)
            .and_then(|fd| self.register(parent, name, fd))?;
        let opened = Opened {
            inode: entry.inode,
            flags,
            dir: false,
        };
        let handle = match self.handles.insert(OpenObject::File(file), opened) {
            Ok(h) => h,
            Err(e) => {
                self.forget(entry.inode, 1);
                return Err(e);
            }
        };
        Ok((entry, OpenReply::new(handle)))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        size: u32,
    ) -> io::Result<Vec<u8>> {
        let obj = self.file_fd(handle)?;
        host::pread_full(Self::handle_raw(&obj), offset, size)
    }

    fn read_into(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let obj = self.file_fd(handle)?;
        host::pread_append(Self::handle_raw(&obj), offset, size, out)
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        data: &[u8],
        _flags: u32,
    ) -> io::Result<u32> {
        self.check_writable()?;
        let obj = self.file_fd(handle)?;
        host::pwrite(Self::handle_raw(&obj), offset, data)
    }

    fn fsync(
        &self,
        _ctx: &Context,
        _inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        let obj = self.file_fd(handle)?;
        host::fsync(Self::handle_raw(&obj), datasync)
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.handles.remove(handle)
    }

    fn statfs(&self, _ctx: &Context, inode: Inode) -> io::Result<StatFs> {
        let (fd, _) = self.inode_fd(inode)?;
        host::statfs(fd.as_raw_fd())
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        let (fd, kind) = self.inode_fd(inode)?;
        if !name.to_bytes().starts_with(b"user.")
            || kind == libc::S_IFLNK
            || is_reserved_xattr(name)
        {
            return Err(err(libc::EPERM));
        }
        host::setxattr(fd.as_raw_fd(), name, value, flags as i32)
    }

    fn getxattr(&self, _ctx: &Context, inode: Inode, name: &CStr) -> io::Result<Vec<u8>> {
        let (fd, kind) = self.inode_fd(inode)?;
        if !name.to_bytes().starts_with(b"user.")
            || kind == libc::S_IFLNK
            || is_reserved_xattr(name)
        {
            return Err(err(libc::ENODATA));
        }
        host::getxattr(fd.as_raw_fd(), name)
    }

    fn listxattr(&self, _ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        let (fd, kind) = self.inode_fd(inode)?;
        if kind == libc::S_IFLNK {
            return Ok(Vec::new());
        }
        let all = host::listxattr(fd.as_raw_fd())?;
        let mut out = Vec::new();
        let shown =
            |n: &&[u8]| n.starts_with(b"user.") && !n.starts_with(kept_mode::RESERVED_PREFIX);
        for name in all.split(|&b| b == 0).filter(shown) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    fn removexattr(&self, _ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        let (fd, kind) = self.inode_fd(inode)?;
        if !name.to_bytes().starts_with(b"user.")
            || kind == libc::S_IFLNK
            || is_reserved_xattr(name)
        {
            return Err(err(libc::EPERM));
        }
        host::removexattr(fd.as_raw_fd(), name)
    }

    fn opendir(&self, _ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        let dir = self.open_dir(inode)?;
        let opened = Opened {
            inode,
            flags,
            dir: true,
        };
        Ok(OpenReply::new(
            self.handles
                .insert(OpenObject::Dir(Mutex::new(dir)), opened)?,
        ))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        add: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> io::Result<()> {
        let obj = self.handles.get(handle)?;
        let OpenObject::Dir(dir) = &*obj else {
            return Err(err(libc::ENOTDIR));
        };
        let fd = dir.lock().expect("directory handle lock");
        // Only a regular file can be a kept device; only a marked share has any.
        let devices = self.devices_kept.load(Ordering::Acquire);
        host::seek_set(fd.as_raw_fd(), offset)?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut full = false;
        loop {
            let n = host::read_dirents(fd.as_raw_fd(), &mut buf, &mut |ino, off, kind, name| {
                let dot = name == b"." || name == b"..";
                let kept = (devices && kind == libc::DT_REG && !dot)
                    .then(|| KeptMode::device_at(fd.as_raw_fd(), name))
                    .flatten();
                let kind = kept.map_or(u32::from(kind), host::dtype);
                full = !add(DirEntry {
                    ino: if dot { inode } else { ino },
                    offset: off as u64,
                    kind,
                    name,
                });
                !full
            })?;
            if n == 0 || full {
                return Ok(());
            }
        }
    }

    fn releasedir(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.handles.remove(handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        let (attr, _) = self.getattr(ctx, inode, None)?;
        if mask & libc::W_OK as u32 != 0 && self.config.read_only {
            return Err(err(libc::EROFS));
        }
        check_access(&attr, ctx, mask)
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        let obj = self.file_fd(handle)?;
        host::fallocate(Self::handle_raw(&obj), mode, offset, length)
    }

    fn lseek(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let obj = self.file_fd(handle)?;
        host::lseek(Self::handle_raw(&obj), offset, whence)
    }

    fn save_state(&self) -> io::Result<FsState> {
        self.save()
    }

    fn restore_state(&self, state: &FsState) -> io::Result<()> {
        self.restore(state)
    }
}
