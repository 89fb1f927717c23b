//! An in-memory filesystem backend: a complete POSIX-ish tree that lives in
//! the runtime process and vanishes with it.
//!
//! Regular files, directories, symlinks, hard links, device nodes, FIFOs and
//! sockets (the last three as metadata only), extended attributes, rename
//! with `RENAME_NOREPLACE`/`RENAME_EXCHANGE`, and `nlink` accounting. An
//! inode lives while it has a name, a kernel lookup reference or an open
//! handle, so an unlinked file stays readable through open descriptors.
//! Inode numbers are never reused, so generation is always 0. An optional
//! byte limit on file contents turns growth past it into ENOSPC.
//!
//! Permission checks are the guest kernel's job (virtiofs mounts with
//! `default_permissions`); this backend only keeps the metadata.
//!
//! [`MemoryFs::add_file`] and friends seed the tree from host code.
//!
//! Snapshots: the tree lives only in this process, so a fork could not
//! find it again; the backend keeps [`FileSystem::save_state`]'s default
//! refusal, and a VM serving one cannot be snapshotted.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::filesystem::{
    Attr, Context, DirEntry, Entry, FileSystem, Handle, Inode, OpenReply, SetAttr, StatFs, TimeSet,
    ROOT_INODE,
};

/// How long the guest may cache names and attributes: nobody but the guest
/// changes this tree (host seeding happens before boot), so a long timeout
/// is safe.
const TIMEOUT: Duration = Duration::from_secs(86400);
/// Largest file size we allow (also bounds `size` from SETATTR).
const MAX_FILE_SIZE: u64 = 1 << 40;
const BLOCK: u32 = 4096;

fn err<T>(errno: i32) -> io::Result<T> {
    Err(io::Error::from_raw_os_error(errno))
}

enum Content {
    File(Vec<u8>),
    Dir {
        entries: BTreeMap<Vec<u8>, Inode>,
        parent: Inode,
    },
    Symlink(Vec<u8>),
    /// Device node, FIFO or socket: metadata only.
    Special,
}

struct Node {
    attr: Attr,
    content: Content,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    lookups: u64,
    opens: u64,
}

/// What a node about to be made is: its mode (type bits included), device
/// number and contents.
struct NewNode {
    mode: u32,
    rdev: u32,
    content: Content,
}

impl NewNode {
    /// An empty directory in `parent` with permission bits `perms`.
    fn dir(parent: Inode, perms: u32) -> Self {
        let entries = BTreeMap::new();
        Self {
            mode: libc::S_IFDIR | perms,
            rdev: 0,
            content: Content::Dir { entries, parent },
        }
    }

    /// An empty regular file with permission bits `perms`.
    fn file(perms: u32) -> Self {
        Self {
            mode: libc::S_IFREG | perms,
            rdev: 0,
            content: Content::File(Vec::new()),
        }
    }

    /// A symlink to `target`.
    fn symlink(target: Vec<u8>) -> Self {
        Self {
            mode: libc::S_IFLNK | 0o777,
            rdev: 0,
            content: Content::Symlink(target),
        }
    }
}

impl Node {
    /// A node made now by `ctx`: size and link count follow from `content`.
    fn new(ino: Inode, mode: u32, ctx: &Context, rdev: u32, content: Content) -> Self {
        let size = match &content {
            Content::Symlink(t) => t.len() as u64,
            Content::Dir { .. } => u64::from(BLOCK),
            _ => 0,
        };
        let (s, ns) = now();
        let attr = Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: s,
            atime_nsec: ns,
            mtime: s,
            mtime_nsec: ns,
            ctime: s,
            ctime_nsec: ns,
            mode,
            nlink: if matches!(content, Content::Dir { .. }) {
                2
            } else {
                1
            },
            uid: ctx.uid,
            gid: ctx.gid,
            rdev,
            blksize: BLOCK,
        };
        Node {
            attr,
            content,
            xattrs: BTreeMap::new(),
            lookups: 0,
            opens: 0,
        }
    }
}

/// A directory listing frozen at OPENDIR, so offsets stay stable while the
/// directory changes.
struct DirSnapshot {
    inode: Inode,
    entries: Vec<(u64, u32, Vec<u8>)>,
}

enum Open {
    File(Inode),
    Dir(DirSnapshot),
}

struct State {
    nodes: HashMap<Inode, Node>,
    handles: HashMap<Handle, Open>,
    next_inode: Inode,
    next_handle: Handle,
    used_bytes: u64,
}

/// The in-memory backend. See the module docs.
pub struct MemoryFs {
    state: Mutex<State>,
    byte_limit: Option<u64>,
}

impl Default for MemoryFs {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

fn dtype(mode: u32) -> u32 {
    (mode & libc::S_IFMT) >> 12
}

fn touch_mtime(a: &mut Attr) {
    let (s, ns) = now();
    a.mtime = s;
    a.mtime_nsec = ns;
    a.ctime = s;
    a.ctime_nsec = ns;
}

fn touch_ctime(a: &mut Attr) {
    let (s, ns) = now();
    a.ctime = s;
    a.ctime_nsec = ns;
}

impl State {
    fn node(&self, ino: Inode) -> io::Result<&Node> {
        self.nodes.get(&ino).map_or_else(|| err(libc::ENOENT), Ok)
    }

    fn node_mut(&mut self, ino: Inode) -> io::Result<&mut Node> {
        self.nodes
            .get_mut(&ino)
            .map_or_else(|| err(libc::ENOENT), Ok)
    }

    fn dir(&self, ino: Inode) -> io::Result<&BTreeMap<Vec<u8>, Inode>> {
        match &self.node(ino)?.content {
            Content::Dir { entries, .. } => Ok(entries),
            _ => err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Inode) -> io::Result<&mut BTreeMap<Vec<u8>, Inode>> {
        match &mut self.node_mut(ino)?.content {
            Content::Dir { entries, .. } => Ok(entries),
            _ => err(libc::ENOTDIR),
        }
    }

    fn child(&self, parent: Inode, name: &[u8]) -> io::Result<Inode> {
        self.dir(parent)?
            .get(name)
            .copied()
            .map_or_else(|| err(libc::ENOENT), Ok)
    }

    fn entry(&mut self, ino: Inode) -> io::Result<Entry> {
        let node = self.node_mut(ino)?;
        node.lookups += 1;
        Ok(Entry {
            inode: ino,
            generation: 0,
            attr: node.attr,
            attr_timeout: TIMEOUT,
            entry_timeout: TIMEOUT,
        })
    }

    /// Drops the node if nothing refers to it any more.
    fn maybe_free(&mut self, ino: Inode) {
        if ino == ROOT_INODE {
            return;
        }
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.attr.nlink == 0 && n.lookups == 0 && n.opens == 0 {
            if let Some(Node {
                content: Content::File(data),
                ..
            }) = self.nodes.remove(&ino)
            {
                self.used_bytes -= data.len() as u64;
            }
        }
    }

    /// Creates `node` named `name` in `parent` (which must not have it).
    fn insert(
        &mut self,
        ctx: &Context,
        parent: Inode,
        name: &[u8],
        node: NewNode,
    ) -> io::Result<Inode> {
        if self.dir(parent)?.contains_key(name) {
            return err(libc::EEXIST);
        }
        let ino = self.next_inode;
        self.next_inode += 1;
        let is_dir = matches!(node.content, Content::Dir { .. });
        let node = Node::new(ino, node.mode, ctx, node.rdev, node.content);
        self.nodes.insert(ino, node);
        self.dir_mut(parent)?.insert(name.to_vec(), ino);
        let p = self.node_mut(parent)?;
        if is_dir {
            p.attr.nlink += 1;
        }
        touch_mtime(&mut p.attr);
        Ok(ino)
    }

    /// Changes a file's length, charging the byte limit.
    fn resize(&mut self, ino: Inode, len: u64, limit: Option<u64>) -> io::Result<()> {
        if len > MAX_FILE_SIZE {
            return err(libc::EFBIG);
        }
        let used = self.used_bytes;
        let node = self.node_mut(ino)?;
        let Content::File(data) = &mut node.content else {
            return err(libc::EISDIR);
        };
        let old = data.len() as u64;
        let new_used = used - old + len;
        if len > old && limit.is_some_and(|l| new_used > l) {
            return err(libc::ENOSPC);
        }
        let len_usize =
            usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        data.try_reserve(len_usize.saturating_sub(data.len()))
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOSPC))?;
        data.resize(len_usize, 0);
        node.attr.size = len;
        node.attr.blocks = len.div_ceil(512);
        self.used_bytes = new_used;
        Ok(())
    }

    /// Removes `name` from `parent`; `dir` says which kind the caller expects.
    fn remove(&mut self, parent: Inode, name: &[u8], dir: bool) -> io::Result<()> {
        let ino = self.child(parent, name)?;
        let node = self.node(ino)?;
        match (&node.content, dir) {
            (Content::Dir { entries, .. }, true) if !entries.is_empty() => {
                return err(libc::ENOTEMPTY)
            }
            (Content::Dir { .. }, false) => return err(libc::EISDIR),
            (Content::Dir { .. }, true) => {}
            (_, true) => return err(libc::ENOTDIR),
            (_, false) => {}
        }
        self.dir_mut(parent)?.remove(name);
        let p = self.node_mut(parent)?;
        touch_mtime(&mut p.attr);
        if dir {
            p.attr.nlink -= 1;
        }
        let n = self.node_mut(ino)?;
        n.attr.nlink = if dir { 0 } else { n.attr.nlink - 1 };
        touch_ctime(&mut n.attr);
        self.maybe_free(ino);
        Ok(())
    }

    /// Whether `ancestor` is `ino` or one of the directories above it.
    fn is_ancestor(&self, ancestor: Inode, mut ino: Inode) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).map(|n| &n.content) {
                Some(Content::Dir { parent, .. }) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
    }

    fn set_parent(&mut self, ino: Inode, new_parent: Inode) {
        if let Some(Node {
            content: Content::Dir { parent, .. },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            *parent = new_parent;
        }
    }

    fn is_dir(&self, ino: Inode) -> bool {
        matches!(
            self.nodes.get(&ino).map(|n| &n.content),
            Some(Content::Dir { .. })
        )
    }

    fn rename(
        &mut self,
        olddir: Inode,
        oldname: &[u8],
        newdir: Inode,
        newname: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return err(libc::EINVAL);
        }
        let src = self.child(olddir, oldname)?;
        self.dir(newdir)?;
        let dst = self.dir(newdir)?.get(newname).copied();
        if self.is_dir(src) && self.is_ancestor(src, newdir) {
            return err(libc::EINVAL);
        }
        if exchange {
            let Some(dst) = dst else {
                return err(libc::ENOENT);
            };
            if self.is_dir(dst) && self.is_ancestor(dst, olddir) {
                return err(libc::EINVAL);
            }
            self.dir_mut(olddir)?.insert(oldname.to_vec(), dst);
            self.dir_mut(newdir)?.insert(newname.to_vec(), src);
            let (sd, dd) = (self.is_dir(src), self.is_dir(dst));
            self.set_parent(src, newdir);
            self.set_parent(dst, olddir);
            if sd != dd && olddir != newdir {
                let (gain, lose) = if sd {
                    (newdir, olddir)
                } else {
                    (olddir, newdir)
                };
                self.node_mut(gain)?.attr.nlink += 1;
                self.node_mut(lose)?.attr.nlink -= 1;
            }
        } else {
            if let Some(dst) = dst {
                if noreplace {
                    return err(libc::EEXIST);
                }
                if dst == src {
                    return Ok(());
                }
                match (self.is_dir(src), self.is_dir(dst)) {
                    (true, false) => return err(libc::ENOTDIR),
                    (false, true) => return err(libc::EISDIR),
                    _ => {}
                }
                self.remove(newdir, newname, self.is_dir(dst))?;
            }
            self.dir_mut(olddir)?.remove(oldname);
            self.dir_mut(newdir)?.insert(newname.to_vec(), src);
            if self.is_dir(src) {
                self.set_parent(src, newdir);
                self.node_mut(olddir)?.attr.nlink -= 1;
                self.node_mut(newdir)?.attr.nlink += 1;
            }
        }
        for ino in [olddir, newdir, src] {
            touch_mtime(&mut self.node_mut(ino)?.attr);
        }
        Ok(())
    }

    fn new_handle(&mut self, open: Open) -> Handle {
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(h, open);
        h
    }

    fn file_handle(&self, handle: Handle, ino: Inode) -> io::Result<()> {
        match self.handles.get(&handle) {
            Some(Open::File(i)) if *i == ino => Ok(()),
            _ => err(libc::EBADF),
        }
    }
}

impl MemoryFs {
    /// An empty tree: a root directory owned by root, mode 0755.
    pub fn new() -> Self {
        let root = Node::new(
            ROOT_INODE,
            libc::S_IFDIR | 0o755,
            &Context::default(),
            0,
            Content::Dir {
                entries: BTreeMap::new(),
                parent: ROOT_INODE,
            },
        );
        Self {
            state: Mutex::new(State {
                nodes: HashMap::from([(ROOT_INODE, root)]),
                handles: HashMap::new(),
                next_inode: ROOT_INODE + 1,
                next_handle: 1,
                used_bytes: 0,
            }),
            byte_limit: None,
        }
    }

    /// An empty tree whose file contents may total at most `bytes`.
    pub fn with_byte_limit(bytes: u64) -> Self {
        Self {
            byte_limit: Some(bytes),
            ..Self::new()
        }
    }

    /// Bytes of file contents stored now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the tree half-updated in a way
        // that matters more than refusing all further service would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Walks `path` ('/'-separated, relative to the root) to its parent
    /// directory, creating missing directories (mode 0755) on the way when
    /// `create` is set. Returns the parent and the last component.
    fn walk<'p>(st: &mut State, path: &'p str, create: bool) -> io::Result<(Inode, &'p [u8])> {
        let mut parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let Some(last) = parts.pop() else {
            return err(libc::EINVAL);
        };
        if parts
            .iter()
            .chain([&last])
            .any(|p| *p == ".." || p.len() > 255)
        {
            return err(libc::EINVAL);
        }
        let mut dir = ROOT_INODE;
        let root = Context::default();
        for p in parts {
            dir = match st.child(dir, p.as_bytes()) {
                Ok(d) => d,
                Err(_) if create => {
                    st.insert(&root, dir, p.as_bytes(), NewNode::dir(dir, 0o755))?
                }
                Err(e) => return Err(e),
            };
        }
        Ok((dir, last.as_bytes()))
    }

    /// Creates (or replaces the contents of) the regular file at `path` with
    /// permission bits `mode`, owned by root, creating parent directories.
    pub fn add_file(&self, path: &str, bytes: &[u8], mode: u32) -> io::Result<Inode> {
        let mut st = self.lock();
        let (dir, name) = Self::walk(&mut st, path, true)?;
        let ino = match st.child(dir, name) {
            Ok(ino) => ino,
            Err(_) => st.insert(&Context::default(), dir, name, NewNode::file(mode & 0o7777))?,
        };
        st.resize(ino, 0, None)?;
        st.resize(ino, bytes.len() as u64, self.byte_limit)?;
        if let Content::File(data) = &mut st.node_mut(ino)?.content {
            data.copy_from_slice(bytes);
        }
        Ok(ino)
    }

    /// Creates the directory at `path` and any missing parents (mode 0755
    /// for parents, `mode` for the last one); an existing directory is kept.
    pub fn add_dir(&self, path: &str, mode: u32) -> io::Result<Inode> {
        let mut st = self.lock();
        let (dir, name) = Self::walk(&mut st, path, true)?;
        if let Ok(ino) = st.child(dir, name) {
            return if st.is_dir(ino) {
                Ok(ino)
            } else {
                err(libc::ENOTDIR)
            };
        }
        st.insert(
            &Context::default(),
            dir,
            name,
            NewNode::dir(dir, mode & 0o7777),
        )
    }

    /// Creates a symlink at `path` pointing at `target`.
    pub fn add_symlink(&self, path: &str, target: &str) -> io::Result<Inode> {
        let mut st = self.lock();
        let (dir, name) = Self::walk(&mut st, path, true)?;
        let node = NewNode::symlink(target.as_bytes().to_vec());
        st.insert(&Context::default(), dir, name, node)
    }

    /// The contents of the regular file at `path` (what the backing store
    /// holds, e.g. to check what a guest wrote).
    pub fn read_file(&self, path: &str) -> io::Result<Vec<u8>> {
        let mut st = self.lock();
        let (dir, name) = Self::walk(&mut st, path, false)?;
        let ino = st.child(dir, name)?;
        match &st.node(ino)?.content {
            Content::File(data) => Ok(data.clone()),
            Content::Dir { .. } => err(libc::EISDIR),
            _ => err(libc::EINVAL),
        }
    }

    fn make(&self, ctx: &Context, parent: Inode, name: &CStr, node: NewNode) -> io::Result<Entry> {
        let mut st = self.lock();
        let ino = st.insert(ctx, parent, name.to_bytes(), node)?;
        st.entry(ino)
    }
}

impl FileSystem for MemoryFs {
    fn lookup(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        let mut st = self.lock();
        let ino = st.child(parent, name.to_bytes())?;
        st.entry(ino)
    }

    fn forget(&self, inode: Inode, count: u64) {
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(&inode) {
            n.lookups = n.lookups.saturating_sub(count);
            st.maybe_free(inode);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: Inode,
        _h: Option<Handle>,
    ) -> io::Result<(Attr, Duration)> {
        Ok((self.lock().node(inode)?.attr, TIMEOUT))
    }

    fn setattr(&self, _ctx: &Context, inode: Inode, set: SetAttr) -> io::Result<(Attr, Duration)> {
        let mut st = self.lock();
        if let Some(size) = set.size {
            st.resize(inode, size, self.byte_limit)?;
            touch_mtime(&mut st.node_mut(inode)?.attr);
        }
        let a = &mut st.node_mut(inode)?.attr;
        if let Some(mode) = set.mode {
            a.mode = (a.mode & libc::S_IFMT) | (mode & 0o7777);
        }
        if let Some(uid) = set.uid {
            a.uid = uid;
        }
        if let Some(gid) = set.gid {
            a.gid = gid;
        }
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now(),
            TimeSet::At(s, ns) => (s, ns),
        };
        if let Some(t) = set.atime {
            (a.atime, a.atime_nsec) = resolve(t);
        }
        if let Some(t) = set.mtime {
            (a.mtime, a.mtime_nsec) = resolve(t);
        }
        touch_ctime(a);
        Ok((*a, TIMEOUT))
    }

    fn readlink(&self, _ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        match &self.lock().node(inode)?.content {
            Content::Symlink(t) => Ok(t.clone()),
            _ => err(libc::EINVAL),
        }
    }

    fn symlink(
        &self,
        ctx: &Context,
        target: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        let node = NewNode::symlink(target.to_bytes().to_vec());
        self.make(ctx, parent, name, node)
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
        let mode = mode & !(umask & 0o777);
        let content = match mode & libc::S_IFMT {
            libc::S_IFREG => Content::File(Vec::new()),
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => Content::Special,
            _ => return err(libc::EINVAL),
        };
        self.make(
            ctx,
            parent,
            name,
            NewNode {
                mode,
                rdev,
                content,
            },
        )
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make(
            ctx,
            parent,
            name,
            NewNode::dir(parent, mode & 0o7777 & !umask),
        )
    }

    fn unlink(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.lock().remove(parent, name.to_bytes(), false)
    }

    fn rmdir(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.lock().remove(parent, name.to_bytes(), true)
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
        self.lock().rename(
            olddir,
            oldname.to_bytes(),
            newdir,
            newname.to_bytes(),
            flags,
        )
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let mut st = self.lock();
        if st.is_dir(inode) {
            return err(libc::EPERM);
        }
        st.node(inode)?;
        if st.dir(newparent)?.contains_key(newname.to_bytes()) {
            return err(libc::EEXIST);
        }
        st.dir_mut(newparent)?
            .insert(newname.to_bytes().to_vec(), inode);
        touch_mtime(&mut st.node_mut(newparent)?.attr);
        let n = st.node_mut(inode)?;
        n.attr.nlink += 1;
        touch_ctime(&mut n.attr);
        st.entry(inode)
    }

    fn open(&self, _ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        let mut st = self.lock();
        match st.node(inode)?.content {
            Content::File(_) => {}
            Content::Dir { .. } => return err(libc::EISDIR),
            _ => return err(libc::ENXIO),
        }
        if flags as i32 & libc::O_TRUNC != 0 && flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            st.resize(inode, 0, None)?;
            touch_mtime(&mut st.node_mut(inode)?.attr);
        }
        st.node_mut(inode)?.opens += 1;
        let handle = st.new_handle(Open::File(inode));
        Ok(OpenReply::new(handle))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        _flags: u32,
        umask: u32,
    ) -> io::Result<(Entry, OpenReply)> {
        let mut st = self.lock();
        let node = NewNode::file(mode & 0o7777 & !umask);
        let ino = st.insert(ctx, parent, name.to_bytes(), node)?;
        let entry = st.entry(ino)?;
        st.node_mut(ino)?.opens += 1;
        let handle = st.new_handle(Open::File(ino));
        Ok((entry, OpenReply::new(handle)))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        size: u32,
    ) -> io::Result<Vec<u8>> {
        let st = self.lock();
        st.file_handle(handle, inode)?;
        let Content::File(data) = &st.node(inode)?.content else {
            return err(libc::EISDIR);
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        data: &[u8],
        _flags: u32,
    ) -> io::Result<u32> {
        let mut st = self.lock();
        st.file_handle(handle, inode)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        if end > st.node(inode)?.attr.size {
            st.resize(inode, end, self.byte_limit)?;
        }
        let node = st.node_mut(inode)?;
        if let Content::File(buf) = &mut node.content {
            // resize guaranteed end <= len, which fits usize.
            buf[offset as usize..end as usize].copy_from_slice(data);
        }
        touch_mtime(&mut node.attr);
        Ok(data.len() as u32)
    }

    fn release(&self, _ctx: &Context, inode: Inode, _flags: u32, handle: Handle) -> io::Result<()> {
        let mut st = self.lock();
        st.file_handle(handle, inode)?;
        st.handles.remove(&handle);
        if let Some(n) = st.nodes.get_mut(&inode) {
            n.opens = n.opens.saturating_sub(1);
        }
        st.maybe_free(inode);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: Inode) -> io::Result<StatFs> {
        let st = self.lock();
        let bsize = u64::from(BLOCK);
        let used = st.used_bytes.div_ceil(bsize);
        let total = self.byte_limit.map_or(1 << 30, |l| l / bsize).max(used);
        Ok(StatFs {
            blocks: total,
            bfree: total - used,
            bavail: total - used,
            files: 1 << 20,
            ffree: (1u64 << 20).saturating_sub(st.nodes.len() as u64),
            bsize: BLOCK,
            namelen: 255,
            frsize: BLOCK,
        })
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let mut st = self.lock();
        let n = st.node_mut(inode)?;
        let exists = n.xattrs.contains_key(name.to_bytes());
        if flags as i32 & libc::XATTR_CREATE != 0 && exists {
            return err(libc::EEXIST);
        }
        if flags as i32 & libc::XATTR_REPLACE != 0 && !exists {
            return err(libc::ENODATA);
        }
        n.xattrs.insert(name.to_bytes().to_vec(), value.to_vec());
        touch_ctime(&mut n.attr);
        Ok(())
    }

    fn getxattr(&self, _ctx: &Context, inode: Inode, name: &CStr) -> io::Result<Vec<u8>> {
        let st = self.lock();
        st.node(inode)?
            .xattrs
            .get(name.to_bytes())
            .cloned()
            .map_or_else(|| err(libc::ENODATA), Ok)
    }

    fn listxattr(&self, _ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let mut out = Vec::new();
        for k in st.node(inode)?.xattrs.keys() {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    fn removexattr(&self, _ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        let mut st = self.lock();
        let n = st.node_mut(inode)?;
        if n.xattrs.remove(name.to_bytes()).is_none() {
            return err(libc::ENODATA);
        }
        touch_ctime(&mut n.attr);
        Ok(())
    }

    fn opendir(&self, _ctx: &Context, inode: Inode, _flags: u32) -> io::Result<OpenReply> {
        let mut st = self.lock();
        let Content::Dir { entries, parent } = &st.node(inode)?.content else {
            return err(libc::ENOTDIR);
        };
        let mut list = vec![
            (inode, libc::DT_DIR as u32, b".".to_vec()),
            (*parent, libc::DT_DIR as u32, b"..".to_vec()),
        ];
        for (name, ino) in entries {
            let mode = st.nodes.get(ino).map_or(0, |n| n.attr.mode);
            list.push((*ino, dtype(mode), name.clone()));
        }
        let handle = st.new_handle(Open::Dir(DirSnapshot {
            inode,
            entries: list,
        }));
        Ok(OpenReply::new(handle))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        add: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> io::Result<()> {
        // Copy the page out so `add` runs without our lock held.
        let page: Vec<(u64, u32, Vec<u8>)> = {
            let st = self.lock();
            match st.handles.get(&handle) {
                Some(Open::Dir(d)) if d.inode == inode => d
                    .entries
                    .iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(1024)
                    .cloned()
                    .collect(),
                _ => return err(libc::EBADF),
            }
        };
        for (i, (ino, kind, name)) in page.iter().enumerate() {
            let entry = DirEntry {
                ino: *ino,
                offset: offset + i as u64 + 1,
                kind: *kind,
                name,
            };
            if !add(entry) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(
        &self,
        _ctx: &Context,
        inode: Inode,
        _flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        let mut st = self.lock();
        match st.handles.get(&handle) {
            Some(Open::Dir(d)) if d.inode == inode => {
                st.handles.remove(&handle);
                Ok(())
            }
            _ => err(libc::EBADF),
        }
    }

    fn access(&self, _ctx: &Context, inode: Inode, _mask: u32) -> io::Result<()> {
        self.lock().node(inode).map(|_| ())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let mut st = self.lock();
        st.file_handle(handle, inode)?;
        if mode != 0 && mode as i32 != libc::FALLOC_FL_KEEP_SIZE {
            return err(libc::EOPNOTSUPP);
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        if mode == 0 && end > st.node(inode)?.attr.size {
            st.resize(inode, end, self.byte_limit)?;
        }
        Ok(())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let st = self.lock();
        st.file_handle(handle, inode)?;
        let size = st.node(inode)?.attr.size;
        // No holes are tracked: all data, one hole at the end.
        match whence as i32 {
            libc::SEEK_DATA if offset < size => Ok(offset),
            libc::SEEK_HOLE if offset < size => Ok(size),
            libc::SEEK_DATA | libc::SEEK_HOLE => err(libc::ENXIO),
            _ => err(libc::EINVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{c, CTX};

    #[test]
    fn seeding_creates_parents_and_replaces_contents() {
        let fs = MemoryFs::new();
        fs.add_file("a/b/c.txt", b"one", 0o600).unwrap();
        fs.add_file("/a/b/c.txt", b"second", 0o600).unwrap();
        assert_eq!(fs.read_file("a/b/c.txt").unwrap(), b"second");
        assert_eq!(fs.used_bytes(), 6);
        assert_eq!(
            fs.add_dir("a/b/c.txt/d", 0o755).unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        assert_eq!(
            fs.add_file("../x", b"", 0o644).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        fs.add_symlink("a/link", "b/c.txt").unwrap();
        let a = fs.lookup(&CTX, ROOT_INODE, &c("a")).unwrap();
        assert_eq!(a.attr.nlink, 3, "a holds one subdirectory");
        let l = fs.lookup(&CTX, a.inode, &c("link")).unwrap();
        assert_eq!(fs.readlink(&CTX, l.inode).unwrap(), b"b/c.txt");
    }

    #[test]
    fn exchanging_a_directory_with_a_file_across_parents_moves_nlink() {
        let fs = MemoryFs::new();
        fs.add_dir("p/sub", 0o755).unwrap();
        fs.add_file("q/file", b"", 0o644).unwrap();
        let p = fs.lookup(&CTX, ROOT_INODE, &c("p")).unwrap().inode;
        let q = fs.lookup(&CTX, ROOT_INODE, &c("q")).unwrap().inode;
        fs.rename(&CTX, p, &c("sub"), q, &c("file"), libc::RENAME_EXCHANGE)
            .unwrap();
        assert_eq!(fs.getattr(&CTX, p, None).unwrap().0.nlink, 2);
        assert_eq!(fs.getattr(&CTX, q, None).unwrap().0.nlink, 3);
        assert!(fs.read_file("p/sub").is_ok());
        assert_eq!(
            fs.read_file("q/file").unwrap_err().raw_os_error(),
            Some(libc::EISDIR)
        );
        let bad = fs.rename(
            &CTX,
            p,
            &c("sub"),
            q,
            &c("x"),
            libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE,
        );
        assert_eq!(bad.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn snapshots_are_refused() {
        let e = MemoryFs::new().save_state().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("cannot be saved in a snapshot"));
    }
}
