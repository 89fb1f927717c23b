//! OCI image layers under a per-sandbox copy-on-write upper directory.
//!
//! Semantics follow overlayfs: a name is looked up in the upper directory,
//! then in the layers from the top down; `.wh.<name>` in a layer hides
//! `<name>` in the layers below it, `.wh..wh..opq` in a directory hides
//! everything below it in that directory, and neither is ever shown to the
//! guest (guest names starting with `.wh.` are refused with `EINVAL`, and
//! looking one up answers `ENOENT`). Lower entries take mode, owner and
//! device number from the layer's `meta.json` and size and times from the
//! file on disk.
//!
//! Changes go to the upper directory: `<upper>/rootfs` holds the tree and
//! `<upper>/work` the temporary files of copy-ups, which are renamed into
//! place so a half-copied file is never visible. Entries are copied up
//! (with their parents) on the first open for writing, setattr, xattr
//! change, link or rename; deleting a lower entry leaves a `.wh.<name>`
//! regular file in the upper directory, and a directory created where a
//! lower one was deleted gets an opaque marker. Guest metadata of upper
//! entries is stored as described in [`upper_meta`]; the upper tree holds
//! only regular files and directories.
//!
//! Snapshots and forks: [`LayeredFs::freeze_upper`] copies the upper tree
//! into a new directory in the lower-layer format (see `freeze`). A frozen
//! snapshot layer is an ordinary lower layer: a fork is
//! `LayeredFs::new(image_layers + [frozen], fresh_upper, config)`, and its
//! [`FileSystem::restore_state`] takes the inodes and handles the source
//! saved (see `persist`), resolving them in the merged tree it serves.
//!
//! Layer directories are only ever read. Every host path is resolved
//! beneath a layer's or the upper's root with `openat2` and no symlinks
//! (see [`crate::host_util`]); the guest kernel resolves symlinks itself.
//!
//! Size: the upper tree is limited to [`LayeredConfig::max_upper_bytes`]
//! and [`LayeredConfig::max_upper_names`]; changes past either get
//! `ENOSPC` and STATFS reports the limit and the usage (see [`quota`]).
//!
//! Limits: renaming a directory that has lower content answers `EXDEV`
//! (as overlayfs without `redirect_dir`; `mv` then copies); hard links
//! inside a lower layer appear as separate inodes; `st_ino` is this
//! backend's inode number (stable while the guest holds the inode, and
//! across copy-up); a file opened read-only before another handle copies it
//! up keeps reading the lower copy; upper and work must be on a
//! filesystem with `user.*` xattrs.

mod freeze;
mod persist;
mod quota;
#[cfg(test)]
mod tests;
mod upper_meta;

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::backend_common::check_access;
use crate::backend_common::{entry_bytes, ListEntry, Snapshot, SnapshotRegistry};
use crate::filesystem::{
    Attr, Context, DirEntry, Entry, FileSystem, Handle, Inode, OpenReply, SetAttr, StatFs,
};
use crate::handle_table::{HandleTable, Opened};
use crate::host_util::{self as host, err, CONFINED};
use crate::layer_meta::{EntryMeta, LayerMeta, OPAQUE_MARKER, ROOTFS_DIR, WHITEOUT_PREFIX};
use crate::path_table::PathTable;
use crate::saved_state::FsState;

use quota::{data_cost, round_up, Quota, NAME_COST};
use upper_meta::{GuestMeta, XattrNs};

/// Default size limit of a sandbox's writable layer: room for package
/// installs and builds, small next to a host disk, and the figure common
/// container sandboxes default to.
pub const DEFAULT_MAX_UPPER_BYTES: u64 = 10 << 30;
/// Most names the upper tree may hold when no limit is given: 1 Mi, or
/// fewer if the size limit pays for fewer (each name costs 4 KiB).
pub const DEFAULT_MAX_UPPER_NAMES: u64 = 1 << 20;

/// The name limit that goes with a size limit of `max_bytes` by default.
pub fn default_max_names(max_bytes: u64) -> u64 {
    (max_bytes / NAME_COST).clamp(1, DEFAULT_MAX_UPPER_NAMES)
}

/// Name of the tree inside the upper directory.
pub const UPPER_TREE: &str = "rootfs";
/// Name of the copy-up scratch directory inside the upper directory.
pub const UPPER_WORK: &str = "work";

/// How long the guest may cache what a [`LayeredFs`] tells it, by default: a day. The merged
/// tree changes only through the guest's own requests (the layers are never written, the
/// upper tree is this sandbox's and the host reaches it only through the guest agent), so the
/// guest's caches cannot go stale; a bound is kept only so that nothing is cached forever.
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How a [`LayeredFs`] serves its layers.
#[derive(Clone, Debug)]
pub struct LayeredConfig {
    /// Most open file and directory handles; past it opens fail with `EMFILE`.
    pub max_open_handles: usize,
    /// How long the guest may cache attributes.
    pub attr_timeout: Duration,
    /// How long the guest may cache names.
    pub entry_timeout: Duration,
    /// How long the guest may remember that a name does not exist; zero: not at all.
    pub negative_timeout: Duration,
    /// Whether the guest keeps a file's pages and a directory's listing across opens
    /// (`FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`). Sound because the tree changes only
    /// through the guest (see [`DEFAULT_CACHE_TIMEOUT`]).
    pub keep_cache: bool,
    /// Size limit of the upper tree in bytes (see [`quota`]).
    pub max_upper_bytes: u64,
    /// Most names in the upper tree; `None`: [`default_max_names`].
    pub max_upper_names: Option<u64>,
}

impl Default for LayeredConfig {
    fn default() -> Self {
        LayeredConfig {
            max_open_handles: 4096,
            attr_timeout: DEFAULT_CACHE_TIMEOUT,
            entry_timeout: DEFAULT_CACHE_TIMEOUT,
            negative_timeout: DEFAULT_CACHE_TIMEOUT,
            keep_cache: true,
            max_upper_bytes: DEFAULT_MAX_UPPER_BYTES,
            max_upper_names: None,
        }
    }
}

struct Layer {
    root: OwnedFd,
    meta: LayerMeta,
}

/// Where one merged name exists.
#[derive(Clone, Debug)]
struct Node {
    /// Present in the upper tree.
    upper: bool,
    /// Layers (indexes into `LayeredFs::layers`, top first) holding it: the
    /// visible one first, then for a directory every lower one merged in.
    lowers: Vec<usize>,
    /// Guest-visible `S_IFMT` type.
    kind: u32,
}

/// What resolving a name read about the entry it found (its host stat and
/// guest metadata): enough for its attributes without opening it again.
struct Seen {
    st: libc::stat64,
    meta: GuestMeta,
}

enum OpenObject {
    File(OwnedFd),
    Dir(std::sync::Arc<Snapshot>),
}

/// OCI layers under a copy-on-write upper directory. See the module docs.
pub struct LayeredFs {
    /// Top layer first.
    layers: Vec<Layer>,
    upper: OwnedFd,
    work: OwnedFd,
    config: LayeredConfig,
    /// Changes to the merged tree take it for writing, lookups and listings
    /// for reading, so a lookup never sees half of a copy-up or whiteout.
    tree: RwLock<()>,
    table: Mutex<PathTable<Node>>,
    handles: HandleTable<OpenObject>,
    tmp_seq: AtomicU64,
    quota: Quota,
    /// Where this instance's upper directory keeps guest metadata.
    xattr_ns: XattrNs,
    /// Bumped by every change to the merged tree: a directory listing is
    /// shared by the handles opened while it stays the same.
    changes: AtomicU64,
    dirs: SnapshotRegistry<(Inode, u64, u64)>,
    /// The top lower layer's [`freeze::DETACHED_DIR`], when it is a frozen upper that kept
    /// files the guest held open without a name (a fork restores its handles on them).
    detached: Option<OwnedFd>,
}

fn is_reserved(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX.as_bytes())
}

fn whiteout_name(name: &CStr) -> io::Result<CString> {
    let mut v = WHITEOUT_PREFIX.as_bytes().to_vec();
    v.extend_from_slice(name.to_bytes());
    if v.len() > 255 {
        return Err(err(libc::ENAMETOOLONG));
    }
    host::cstring(&v)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn exists_at(dirfd: RawFd, name: &CStr) -> bool {
    host::statat(dirfd, name).is_ok()
}

fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

impl LayeredFs {
    /// Serves `lowers` (layer directories holding `rootfs/` and `meta.json`,
    /// lowest first) under the copy-on-write directory `upper`, created if
    /// missing.
    pub fn new(lowers: Vec<PathBuf>, upper: &Path, config: LayeredConfig) -> io::Result<Self> {
        let mut layers = Vec::with_capacity(lowers.len());
        for dir in lowers.iter().rev() {
            let root = host::open_root(&dir.join(ROOTFS_DIR))?;
            layers.push(Layer {
                root,
                meta: LayerMeta::load(dir)?,
            });
        }
        for sub in [UPPER_TREE, UPPER_WORK] {
            std::fs::create_dir_all(upper.join(sub))?;
        }
        let upper_fd = host::open_root(&upper.join(UPPER_TREE))?;
        let work = host::open_root(&upper.join(UPPER_WORK))?;
        // Copy-ups a previous run left half done are garbage.
        for e in std::fs::read_dir(upper.join(UPPER_WORK))? {
            std::fs::remove_file(e?.path())?;
        }
        let usage = quota::count_tree(&upper.join(UPPER_TREE))?;
        let max_names = config
            .max_upper_names
            .unwrap_or_else(|| default_max_names(config.max_upper_bytes));
        let quota = Quota::new(config.max_upper_bytes, max_names, usage);
        // Fail now, with a clear message, rather than at the first write.
        let xattr_ns = XattrNs::select(work.as_raw_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the upper directory {} needs user xattrs (or trusted ones, as root): {e}",
                    upper.display()
                ),
            )
        })?;
        let mut root_lowers = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            root_lowers.push(i);
            if exists_at(
                l.root.as_raw_fd(),
                &host::cstring(OPAQUE_MARKER.as_bytes())?,
            ) {
                break;
            }
        }
        if exists_at(
            upper_fd.as_raw_fd(),
            &host::cstring(OPAQUE_MARKER.as_bytes())?,
        ) {
            root_lowers.clear();
        }
        let root = Node {
            upper: true,
            lowers: root_lowers,
            kind: libc::S_IFDIR,
        };
        let detached = match lowers.last().map(|top| top.join(freeze::DETACHED_DIR)) {
            Some(dir) if dir.is_dir() => Some(host::open_root(&dir)?),
            _ => None,
        };
        Ok(LayeredFs {
            layers,
            upper: upper_fd,
            work,
            handles: HandleTable::new(config.max_open_handles),
            config,
            tree: RwLock::new(()),
            table: Mutex::new(PathTable::new(root)),
            tmp_seq: AtomicU64::new(0),
            quota,
            xattr_ns,
            changes: AtomicU64::new(0),
            dirs: SnapshotRegistry::new(),
            detached,
        })
    }

    /// The tree lock for a change; the change makes new listings.
    fn write_tree(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        let guard = self.tree.write().expect("tree lock");
        self.changes.fetch_add(1, Ordering::AcqRel);
        guard
    }

    /// Bytes of host memory the directory listings open on this backend
    /// hold (shared listings counted once).
    pub fn listing_bytes(&self) -> usize {
        self.dirs.held_bytes()
    }

    /// Runs an xattr change on the upper entry `fd`: a regular file's
    /// charge follows the blocks its xattrs take on the host.
    fn settle_xattrs(
        &self,
        node: &Node,
        fd: RawFd,
        op: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        if node.kind == libc::S_IFREG {
            self.resize(fd, |_| None, op)
        } else {
            op()
        }
    }

    fn node(&self, ino: Inode) -> io::Result<(Node, Vec<u8>)> {
        let t = self.table.lock().expect("layered table lock");
        let n = t.get(ino)?;
        Ok((n.data.clone(), t.path(ino)?))
    }

    fn upper_fd(&self, path: &[u8]) -> io::Result<OwnedFd> {
        host::open_beneath(self.upper.as_raw_fd(), path)
    }

    fn lower_fd(&self, layer: usize, path: &[u8]) -> io::Result<OwnedFd> {
        host::open_beneath(self.layers[layer].root.as_raw_fd(), path)
    }

    fn lower_meta(&self, layer: usize, path: &[u8]) -> Option<&EntryMeta> {
        let key = std::str::from_utf8(path).ok()?;
        self.layers[layer].meta.entries.get(key)
    }

    /// Guest view of a lower entry: meta.json where it speaks, else the
    /// host file (owned by root).
    fn lower_guest_meta(&self, layer: usize, path: &[u8], st: &libc::stat64) -> GuestMeta {
        match self.lower_meta(layer, path) {
            Some(m) if m.mode & libc::S_IFMT != 0 => GuestMeta {
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                rdev: m.rdev,
            },
            _ => GuestMeta {
                mode: st.st_mode,
                uid: 0,
                gid: 0,
                rdev: 0,
            },
        }
    }

    /// Resolves `name` in the merged directory `parent` (at `parent_path`).
    fn resolve(&self, parent: &Node, parent_path: &[u8], name: &CStr) -> io::Result<Option<Node>> {
        Ok(self
            .resolve_seen(parent, parent_path, name)?
            .map(|(node, _)| node))
    }

    /// [`Self::resolve`], with what it read about the entry where that gives
    /// its attributes (see [`Self::attr_seen`]).
    fn resolve_seen(
        &self,
        parent: &Node,
        parent_path: &[u8],
        name: &CStr,
    ) -> io::Result<Option<(Node, Option<Seen>)>> {
        if parent.kind != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        let wh = whiteout_name(name)?;
        let opaque = host::cstring(OPAQUE_MARKER.as_bytes())?;
        let mut node = Node {
            upper: false,
            lowers: Vec::new(),
            kind: 0,
        };
        let mut search_lowers = true;
        let mut seen = None;
        if parent.upper {
            let pfd = self.upper_fd(parent_path)?;
            match host::open_child(pfd.as_raw_fd(), name) {
                Ok(fd) => {
                    let st = host::fstat(fd.as_raw_fd())?;
                    node.upper = true;
                    node.kind = match GuestMeta::load(self.xattr_ns, fd.as_raw_fd())? {
                        Some(meta) => {
                            // Without it the attributes come from a lower
                            // layer (see `attr_of`): not seen here.
                            seen = Some(Seen { st, meta });
                            meta.mode & libc::S_IFMT
                        }
                        None => st.st_mode & libc::S_IFMT,
                    };
                    search_lowers =
                        node.kind == libc::S_IFDIR && !exists_at(fd.as_raw_fd(), &opaque);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    search_lowers = !exists_at(pfd.as_raw_fd(), &wh);
                }
                Err(e) => return Err(e),
            }
        }
        if search_lowers {
            let first = self.search_lowers(parent, parent_path, name, &mut node)?;
            if !node.upper {
                seen = first;
            }
        }
        Ok((node.kind != 0).then_some((node, seen)))
    }

    /// Adds to `node` the lower layers of `parent` that show `name`
    /// (the first one's guest type too, where `node` has none yet). Returns
    /// what it read of the first layer that shows it.
    fn search_lowers(
        &self,
        parent: &Node,
        parent_path: &[u8],
        name: &CStr,
        node: &mut Node,
    ) -> io::Result<Option<Seen>> {
        let path = join(parent_path, name.to_bytes());
        let wh = whiteout_name(name)?;
        let opaque = host::cstring(OPAQUE_MARKER.as_bytes())?;
        let mut first = None;
        for &li in &parent.lowers {
            let Ok(pfd) = self.lower_fd(li, parent_path) else {
                break;
            };
            match host::statat(pfd.as_raw_fd(), name) {
                Ok(st) => {
                    let meta = self.lower_guest_meta(li, &path, &st);
                    let kind = meta.mode & libc::S_IFMT;
                    if first.is_none() {
                        first = Some(Seen { st, meta });
                    }
                    if node.kind == 0 {
                        node.kind = kind;
                    } else if node.kind != libc::S_IFDIR || kind != libc::S_IFDIR {
                        break;
                    }
                    node.lowers.push(li);
                    if kind != libc::S_IFDIR || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                        break;
                    }
                    let dfd = self.lower_fd(li, &path)?;
                    if exists_at(dfd.as_raw_fd(), &opaque) {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if exists_at(pfd.as_raw_fd(), &wh) {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(first)
    }

    /// Whether a lower layer of `parent` shows `name`, even where an upper
    /// entry hides it (which [`Self::resolve`] does not look past): removing
    /// or renaming that upper entry must leave a whiteout.
    fn lower_shows(&self, parent: &Node, parent_path: &[u8], name: &CStr) -> io::Result<bool> {
        let mut node = Node {
            upper: false,
            lowers: Vec::new(),
            kind: 0,
        };
        self.search_lowers(parent, parent_path, name, &mut node)?;
        Ok(!node.lowers.is_empty())
    }

    /// The attributes of `node` from what resolving it read, where that is
    /// all [`Self::attr_of`] would read (not for a lower symlink, whose size
    /// it reads from the link).
    fn attr_seen(ino: Inode, node: &Node, seen: &Seen) -> Option<Attr> {
        let kind = seen.meta.mode & libc::S_IFMT;
        if kind == libc::S_IFLNK && !node.upper {
            return None;
        }
        let mut a = guest_attr(ino, &seen.st, &seen.meta);
        if kind != libc::S_IFREG && kind != libc::S_IFDIR && kind != libc::S_IFLNK {
            a.size = 0;
        }
        Some(a)
    }

    fn attr_of(&self, ino: Inode, node: &Node, path: &[u8]) -> io::Result<Attr> {
        let (st, meta) = if node.upper {
            let fd = self.upper_fd(path)?;
            let st = host::fstat(fd.as_raw_fd())?;
            let meta = match GuestMeta::load(self.xattr_ns, fd.as_raw_fd())? {
                Some(m) => m,
                None => match node.lowers.first() {
                    Some(&li) => self.lower_guest_meta(
                        li,
                        path,
                        &host::fstat(self.lower_fd(li, path)?.as_raw_fd())?,
                    ),
                    None => GuestMeta {
                        mode: st.st_mode,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                    },
                },
            };
            (st, meta)
        } else {
            let li = *node.lowers.first().ok_or_else(|| err(libc::ESTALE))?;
            let st = host::fstat(self.lower_fd(li, path)?.as_raw_fd())?;
            let meta = self.lower_guest_meta(li, path, &st);
            (st, meta)
        };
        let mut a = guest_attr(ino, &st, &meta);
        let kind = meta.mode & libc::S_IFMT;
        if kind == libc::S_IFLNK && !node.upper {
            a.size =
                host::readlink_fd(self.lower_fd(node.lowers[0], path)?.as_raw_fd())?.len() as u64;
        } else if kind != libc::S_IFREG && kind != libc::S_IFDIR && kind != libc::S_IFLNK {
            a.size = 0;
        }
        Ok(a)
    }

    /// The attributes of an inode with no name left, from a file the guest holds open on it
    /// (a deleted temporary file): the guest's kernel asks for them before it reads such a
    /// file, and for `fstat`. `ESTALE` when no handle holds it.
    fn detached_attr(&self, ino: Inode) -> io::Result<Attr> {
        let obj = self
            .handles
            .any_file_on(ino)
            .ok_or_else(|| err(libc::ESTALE))?;
        let OpenObject::File(fd) = &*obj else {
            return Err(err(libc::ESTALE));
        };
        let st = host::fstat(fd.as_raw_fd())?;
        // An upper file keeps its guest metadata; a lower one's was in its layer's entry,
        // which no longer has a path to find it by: its host mode, owned by root.
        let meta = GuestMeta::load(self.xattr_ns, fd.as_raw_fd())
            .ok()
            .flatten()
            .unwrap_or(GuestMeta {
                mode: st.st_mode,
                uid: 0,
                gid: 0,
                rdev: 0,
            });
        Ok(guest_attr(ino, &st, &meta))
    }

    fn entry(&self, ino: Inode, generation: u64, attr: Attr) -> Entry {
        Entry {
            inode: ino,
            generation,
            attr,
            attr_timeout: self.config.attr_timeout,
            entry_timeout: self.config.entry_timeout,
        }
    }

    fn register(&self, parent: Inode, name: &CStr, node: Node) -> io::Result<Entry> {
        self.register_seen(parent, name, node, None)
    }

    /// [`Self::register`], the attributes from `seen` where it gives them.
    fn register_seen(
        &self,
        parent: Inode,
        name: &CStr,
        node: Node,
        seen: Option<Seen>,
    ) -> io::Result<Entry> {
        let path = {
            let t = self.table.lock().expect("layered table lock");
            join(&t.path(parent)?, name.to_bytes())
        };
        let mut t = self.table.lock().expect("layered table lock");
        let ino = match t.child(parent, name) {
            Some(ino) => {
                t.add_lookup(ino)?;
                t.get_mut(ino)?.data = node.clone();
                ino
            }
            None => t.insert(parent, name, node.clone())?,
        };
        let generation = t.get(ino)?.generation;
        drop(t);
        let attr = match seen.and_then(|seen| Self::attr_seen(ino, &node, &seen)) {
            Some(attr) => attr,
            None => self.attr_of(ino, &node, &path)?,
        };
        Ok(self.entry(ino, generation, attr))
    }

    fn new_tmp_name(&self) -> CString {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("copyup-{}-{n}", std::process::id())).expect("no NUL")
    }

    /// A new empty file in the work directory, read-write, and its name there.
    fn new_work_file(&self) -> io::Result<(CString, OwnedFd)> {
        let tmp = self.new_tmp_name();
        let fd = host::openat2(
            self.work.as_raw_fd(),
            &tmp,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
            0o600,
            CONFINED,
        )?;
        Ok((tmp, fd))
    }

    /// Copies the merged entry `name` of `parent` into the upper tree if it
    /// is not there yet (parents first), keeping its guest metadata.
    fn copy_up_entry(
        &self,
        parent: Inode,
        parent_path: &[u8],
        name: &CStr,
        node: &Node,
    ) -> io::Result<()> {
        if node.upper {
            return Ok(());
        }
        self.copy_up(parent)?;
        let path = join(parent_path, name.to_bytes());
        let li = *node.lowers.first().ok_or_else(|| err(libc::ESTALE))?;
        let lfd = self.lower_fd(li, &path)?;
        let st = host::fstat(lfd.as_raw_fd())?;
        let meta = self.lower_guest_meta(li, &path, &st);
        let upf = self.upper_fd(parent_path)?;
        let xattrs = self
            .lower_meta(li, &path)
            .map(|m| m.xattrs.clone())
            .unwrap_or_default();
        let data = match node.kind {
            libc::S_IFREG if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                round_up(st.st_size as u64)
            }
            libc::S_IFLNK => round_up(st.st_size as u64),
            _ => 0,
        };
        self.charge_name(data)?;
        let result = self.copy_up_into(&upf, name, node, &lfd, &st, meta, &xattrs);
        match &result {
            Err(_) => self.uncharge_name(data),
            // What the host allocated (an xattr block, say) replaces the estimate.
            Ok(()) if node.kind != libc::S_IFDIR => {
                if let Ok(st) = host::statat(upf.as_raw_fd(), name) {
                    Quota::settle(&mut self.quota.lock(), data, data_cost(&st));
                }
            }
            Ok(()) => {}
        }
        result
    }

    /// The host part of [`Self::copy_up_entry`]: `name` in the upper
    /// directory `upf` becomes a copy of the lower entry `lfd`.
    #[allow(clippy::too_many_arguments)]
    fn copy_up_into(
        &self,
        upf: &OwnedFd,
        name: &CStr,
        node: &Node,
        lfd: &OwnedFd,
        st: &libc::stat64,
        meta: GuestMeta,
        xattrs: &[(String, Vec<u8>)],
    ) -> io::Result<()> {
        let times = freeze::times_of(st);
        let finish = |fd: RawFd| -> io::Result<()> {
            meta.store(self.xattr_ns, fd)?;
            for (k, v) in xattrs {
                host::setxattr(
                    fd,
                    &self
                        .xattr_ns
                        .host_xattr_name(&host::cstring(k.as_bytes())?)?,
                    v,
                    0,
                )?;
            }
            Ok(())
        };
        if node.kind == libc::S_IFDIR {
            host::mkdirat(upf.as_raw_fd(), name, 0o700)?;
            let dfd = host::open_child(upf.as_raw_fd(), name)?;
            finish(dfd.as_raw_fd())?;
            let _ = host::utimens(dfd.as_raw_fd(), &times);
        } else {
            let (tmp, tfd) = self.new_work_file()?;
            let result = (|| {
                let mut out = std::fs::File::from(tfd.try_clone()?);
                if node.kind == libc::S_IFLNK {
                    std::io::Write::write_all(&mut out, &host::readlink_fd(lfd.as_raw_fd())?)?;
                } else if node.kind == libc::S_IFREG && st.st_mode & libc::S_IFMT == libc::S_IFREG {
                    let mut input =
                        std::fs::File::from(host::reopen(lfd.as_raw_fd(), libc::O_RDONLY)?);
                    std::io::copy(&mut input, &mut out)?;
                }
                finish(tfd.as_raw_fd())?;
                host::futimens(tfd.as_raw_fd(), &times)?;
                host::renameat2(
                    self.work.as_raw_fd(),
                    &tmp,
                    upf.as_raw_fd(),
                    name,
                    libc::RENAME_NOREPLACE,
                )
            })();
            if let Err(e) = result {
                let _ = host::unlinkat(self.work.as_raw_fd(), &tmp, 0);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Copies inode `ino` (and its parents) up; updates the table.
    fn copy_up(&self, ino: Inode) -> io::Result<()> {
        let (node, parent, name, parent_path) = {
            let t = self.table.lock().expect("layered table lock");
            let n = t.get(ino)?;
            if n.data.upper {
                return Ok(());
            }
            (n.data.clone(), n.parent, n.name.clone(), t.path(n.parent)?)
        };
        t_check_attached(&self.table, ino)?;
        self.copy_up_entry(parent, &parent_path, &name, &node)?;
        self.table
            .lock()
            .expect("layered table lock")
            .get_mut(ino)?
            .data
            .upper = true;
        Ok(())
    }

    /// The merged listing of a directory: host inode or 0, `DT_*`, name;
    /// `ENOMEM` past the registry's per-listing cap.
    fn merged_list(&self, dir: Inode, node: &Node, path: &[u8]) -> io::Result<Vec<ListEntry>> {
        let budget = self.dirs.max_one();
        let mut used = 0usize;
        let mut out = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let mut sources: Vec<(Option<usize>, OwnedFd)> = Vec::new();
        if node.upper {
            sources.push((None, self.upper_fd(path)?));
        }
        for &li in &node.lowers {
            sources.push((Some(li), self.lower_fd(li, path)?));
        }
        for (layer, fd) in sources {
            let list = host::list_dir_capped(fd.as_raw_fd(), budget)?;
            for (_, dt, name) in &list {
                if is_reserved(name) || seen.contains(name) || hidden.contains(name) {
                    continue;
                }
                let kind = match layer {
                    None => {
                        let cname = host::cstring(name)?;
                        let cfd = host::open_child(fd.as_raw_fd(), &cname)?;
                        match GuestMeta::load(self.xattr_ns, cfd.as_raw_fd())? {
                            Some(m) => host::dtype(m.mode),
                            None => u32::from(*dt),
                        }
                    }
                    Some(li) => match self.lower_meta(li, &join(path, name)) {
                        Some(m) if m.mode & libc::S_IFMT != 0 => host::dtype(m.mode),
                        _ => u32::from(*dt),
                    },
                };
                used = used.saturating_add(entry_bytes(name.len()));
                if used > budget {
                    return Err(err(libc::ENOMEM));
                }
                seen.insert(name.clone());
                out.push((0, kind, name.clone()));
            }
            for (_, _, name) in list {
                if name != OPAQUE_MARKER.as_bytes() && is_reserved(&name) {
                    hidden.insert(name[WHITEOUT_PREFIX.len()..].to_vec());
                }
            }
        }
        let t = self.table.lock().expect("layered table lock");
        for (ino, _, name) in out.iter_mut() {
            *ino = host::cstring(name)
                .ok()
                .and_then(|c| t.child(dir, &c))
                .unwrap_or_else(|| name_ino(dir, name));
        }
        Ok(out)
    }

    fn child_of(&self, parent: Inode, name: &CStr) -> io::Result<(Node, Vec<u8>, Node)> {
        let (pnode, ppath) = self.node(parent)?;
        let child = self
            .resolve(&pnode, &ppath, name)?
            .ok_or_else(|| err(libc::ENOENT))?;
        Ok((pnode, ppath, child))
    }

    fn check_new_name(name: &CStr) -> io::Result<()> {
        host::check_name(name)?;
        if is_reserved(name.to_bytes()) {
            return Err(err(libc::EINVAL));
        }
        Ok(())
    }

    /// Removes whiteouts and opaque markers left in an upper directory the
    /// guest sees as empty, so the host lets it be removed or replaced.
    fn clear_upper_dir(&self, path: &[u8]) -> io::Result<()> {
        let fd = self.upper_fd(path)?;
        for (_, _, name) in host::list_dir(fd.as_raw_fd())? {
            if !is_reserved(&name) {
                return Err(err(libc::ENOTEMPTY));
            }
            self.remove_marker(fd.as_raw_fd(), &host::cstring(&name)?)?;
        }
        Ok(())
    }

    /// Creates a whiteout or opaque marker; never refused for space (see [`quota`]).
    fn make_marker(&self, dirfd: RawFd, name: &CStr) -> io::Result<()> {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
        match host::openat2(dirfd, name, flags, 0o600, CONFINED) {
            Ok(_) => {
                Quota::force(&mut self.quota.lock(), NAME_COST, 1);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn remove_marker(&self, dirfd: RawFd, name: &CStr) -> io::Result<()> {
        match host::unlinkat(dirfd, name, 0) {
            Ok(_) => {
                Quota::release(&mut self.quota.lock(), NAME_COST, 1);
                Ok(())
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            Err(_) => Ok(()),
        }
    }

    /// Charges a new upper name holding `data` bytes; `ENOSPC` past the limit.
    fn charge_name(&self, data: u64) -> io::Result<()> {
        let mut u = self.quota.lock();
        self.quota.charge(&mut u, NAME_COST + data, 1)
    }

    /// Gives back what [`Self::charge_name`] took.
    fn uncharge_name(&self, data: u64) {
        Quota::release(&mut self.quota.lock(), NAME_COST + data, 1);
    }

    /// What removing the upper name `name` in `dirfd` gives back beyond
    /// [`NAME_COST`]: a regular file's data when this is its last link.
    fn upper_data_charge(dirfd: RawFd, name: &CStr) -> u64 {
        match host::statat(dirfd, name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink <= 1 => {
                data_cost(&st)
            }
            _ => 0,
        }
    }

    /// Runs `op`, which may change the size or allocation of the upper
    /// file behind `fd` (up to the apparent size `end` gives for the
    /// current size, checked first), and settles its data charge to what
    /// the host then holds.
    fn resize<T>(
        &self,
        fd: RawFd,
        end: impl FnOnce(u64) -> Option<u64>,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let mut u = self.quota.lock();
        let st = host::fstat(fd)?;
        let old = data_cost(&st);
        if let Some(end) = end(st.st_size.max(0) as u64) {
            self.quota.check_growth(&u, old, round_up(end))?;
        }
        let result = op();
        if let Ok(st) = host::fstat(fd) {
            Quota::settle(&mut u, old, data_cost(&st));
        }
        result
    }

    /// Creates a new upper entry `name` in `parent` and returns its entry
    /// and, for regular files, an fd opened with `open_flags`.
    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u64,
        content: Option<&[u8]>,
        open_flags: Option<i32>,
    ) -> io::Result<(Entry, Option<OwnedFd>)> {
        Self::check_new_name(name)?;
        let _w = self.write_tree();
        let (pnode, ppath) = self.node(parent)?;
        if self.resolve(&pnode, &ppath, name)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        self.copy_up(parent)?;
        let upf = self.upper_fd(&ppath)?;
        let wh = whiteout_name(name)?;
        let replaces_deleted = exists_at(upf.as_raw_fd(), &wh);
        let pattr = self.attr_of(
            parent,
            &Node {
                upper: true,
                ..pnode.clone()
            },
            &ppath,
        )?;
        let kind = mode & libc::S_IFMT;
        let mut perm = mode & 0o7777;
        let mut gid = ctx.gid;
        if pattr.mode & libc::S_ISGID != 0 {
            gid = pattr.gid;
            if kind == libc::S_IFDIR {
                perm |= libc::S_ISGID;
            }
        }
        let meta = GuestMeta {
            mode: kind | perm,
            uid: ctx.uid,
            gid,
            rdev,
        };
        let data = content.map_or(0, |c| round_up(c.len() as u64));
        self.charge_name(data)?;
        let uncharge = |e: io::Error| {
            self.uncharge_name(data);
            e
        };
        let mut file = None;
        if kind == libc::S_IFDIR {
            host::mkdirat(upf.as_raw_fd(), name, 0o700).map_err(uncharge)?;
            let dfd = host::open_child(upf.as_raw_fd(), name)?;
            meta.store(self.xattr_ns, dfd.as_raw_fd())?;
            if replaces_deleted {
                self.make_marker(dfd.as_raw_fd(), &host::cstring(OPAQUE_MARKER.as_bytes())?)?;
            }
        } else {
            let flags = libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOFOLLOW
                | open_flags.unwrap_or(libc::O_WRONLY);
            let fd =
                host::openat2(upf.as_raw_fd(), name, flags, 0o600, CONFINED).map_err(uncharge)?;
            if let Some(c) = content {
                std::io::Write::write_all(&mut std::fs::File::from(fd.try_clone()?), c)?;
            }
            meta.store(self.xattr_ns, fd.as_raw_fd())?;
            if open_flags.is_some() {
                file = Some(fd);
            }
        }
        if replaces_deleted {
            self.remove_marker(upf.as_raw_fd(), &wh)?;
        }
        let entry = self.register(
            parent,
            name,
            Node {
                upper: true,
                lowers: Vec::new(),
                kind,
            },
        )?;
        Ok((entry, file))
    }

    fn remove(&self, parent: Inode, name: &CStr, dir: bool) -> io::Result<()> {
        host::check_name(name)?;
        let _w = self.write_tree();
        let (pnode, ppath, child) = self.child_of(parent, name)?;
        let is_dir = child.kind == libc::S_IFDIR;
        if dir && !is_dir {
            return Err(err(libc::ENOTDIR));
        }
        if !dir && is_dir {
            return Err(err(libc::EISDIR));
        }
        let path = join(&ppath, name.to_bytes());
        if is_dir && !self.merged_list(0, &child, &path)?.is_empty() {
            return Err(err(libc::ENOTEMPTY));
        }
        let hides_lower =
            !child.lowers.is_empty() || (child.upper && self.lower_shows(&pnode, &ppath, name)?);
        self.copy_up(parent)?;
        let upf = self.upper_fd(&ppath)?;
        if child.upper {
            if is_dir {
                self.clear_upper_dir(&path)?;
            }
            let data = Self::upper_data_charge(upf.as_raw_fd(), name);
            let flag = if is_dir { libc::AT_REMOVEDIR } else { 0 };
            host::unlinkat(upf.as_raw_fd(), name, flag)?;
            self.uncharge_name(data);
        }
        if hides_lower {
            self.make_marker(upf.as_raw_fd(), &whiteout_name(name)?)?;
        }
        self.table
            .lock()
            .expect("layered table lock")
            .detach(parent, name);
        Ok(())
    }

    /// The host fd OPEN of `inode` with the guest's `flags` gives (copied
    /// up first when opened for writing).
    fn open_file(&self, inode: Inode, flags: u32) -> io::Result<OwnedFd> {
        let write = host::wants_write(flags);
        let _w = if write { Some(self.write_tree()) } else { None };
        let _r = if write {
            None
        } else {
            Some(self.tree.read().expect("tree lock"))
        };
        if write {
            self.copy_up(inode)?;
        }
        let (node, path) = self.node(inode)?;
        match node.kind {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(err(libc::EISDIR)),
            _ => return Err(err(libc::ENXIO)),
        }
        let pfd = if node.upper {
            self.upper_fd(&path)?
        } else {
            self.lower_fd(node.lowers[0], &path)?
        };
        if host::fstat(pfd.as_raw_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(err(libc::ENXIO));
        }
        let host_flags = host::host_open_flags(flags);
        if write && host_flags & libc::O_TRUNC != 0 {
            self.resize(
                pfd.as_raw_fd(),
                |_| None,
                || host::reopen(pfd.as_raw_fd(), host_flags),
            )
        } else {
            host::reopen(pfd.as_raw_fd(), host_flags)
        }
    }

    /// The listing OPENDIR of `inode` shares or takes.
    fn open_dir(&self, inode: Inode) -> io::Result<std::sync::Arc<Snapshot>> {
        let _r = self.tree.read().expect("tree lock");
        let (node, path) = self.node(inode)?;
        if node.kind != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        let generation = {
            let t = self.table.lock().expect("layered table lock");
            t.get(inode)?.generation
        };
        let key = (inode, generation, self.changes.load(Ordering::Acquire));
        self.dirs
            .open(key, || self.merged_list(inode, &node, &path))
    }

    fn handle_fd(&self, handle: Handle) -> io::Result<(std::sync::Arc<OpenObject>, RawFd)> {
        let obj = self.handles.get(handle)?;
        let fd = match &*obj {
            OpenObject::File(fd) => fd.as_raw_fd(),
            OpenObject::Dir(_) => return Err(err(libc::EISDIR)),
        };
        Ok((obj, fd))
    }
}

/// The attributes the guest sees for inode `ino`: the host's `st` with the guest's `meta`.
fn guest_attr(ino: Inode, st: &libc::stat64, meta: &GuestMeta) -> Attr {
    let mut a = host::attr_from_stat(st);
    a.ino = ino;
    a.mode = meta.mode;
    a.uid = meta.uid;
    a.gid = meta.gid;
    a.rdev = meta.rdev as u32;
    a
}

fn t_check_attached(table: &Mutex<PathTable<Node>>, ino: Inode) -> io::Result<()> {
    table
        .lock()
        .expect("layered table lock")
        .path(ino)
        .map(drop)
}

/// A stable nonzero `d_ino` for a listed name the guest has not looked up
/// (glibc skips entries with `d_ino == 0`): FNV-1a of the directory inode
/// and name, top bit set so it never meets a real inode number.
fn name_ino(dir: Inode, name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_le_bytes().iter().chain(name) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h | (1 << 63)
}

impl LayeredFs {
    /// The reply to an open of a file or (`dir`) a directory through `handle`.
    fn open_reply(&self, handle: Handle, dir: bool) -> OpenReply {
        use crate::abi::fopen;
        let mut reply = OpenReply::new(handle);
        if self.config.keep_cache {
            reply.open_flags = fopen::KEEP_CACHE | if dir { fopen::CACHE_DIR } else { 0 };
        }
        if !dir {
            // This backend has no FLUSH to do (writes go straight to the host file, and there
            // are no POSIX locks to drop): spare the guest a round trip on every close.
            reply.open_flags |= fopen::NOFLUSH;
        }
        reply
    }
}

impl FileSystem for LayeredFs {
    fn destroy(&self) {
        self.handles.clear();
    }

    fn negative_timeout(&self) -> Option<Duration> {
        Some(self.config.negative_timeout).filter(|t| !t.is_zero())
    }

    fn lookup(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        if host::check_name(name).is_err() || is_reserved(name.to_bytes()) {
            return Err(err(libc::ENOENT));
        }
        let _r = self.tree.read().expect("tree lock");
        let (pnode, ppath) = self.node(parent)?;
        let (child, seen) = self
            .resolve_seen(&pnode, &ppath, name)?
            .ok_or_else(|| err(libc::ENOENT))?;
        self.register_seen(parent, name, child, seen)
    }

    fn forget(&self, inode: Inode, count: u64) {
        self.table
            .lock()
            .expect("layered table lock")
            .forget(inode, count);
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(Attr, Duration)> {
        let _r = self.tree.read().expect("tree lock");
        let (node, path) = match self.node(inode) {
            Ok(found) => found,
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                return Ok((self.detached_attr(inode)?, self.config.attr_timeout));
            }
            Err(e) => return Err(e),
        };
        let mut attr = self.attr_of(inode, &node, &path)?;
        if let Some((_, fd)) = handle.and_then(|h| self.handle_fd(h).ok()) {
            let st = host::fstat(fd)?;
            attr.size = st.st_size as u64;
            attr.blocks = st.st_blocks as u64;
        }
        Ok((attr, self.config.attr_timeout))
    }

    fn setattr(&self, ctx: &Context, inode: Inode, attr: SetAttr) -> io::Result<(Attr, Duration)> {
        {
            let _w = self.write_tree();
            self.copy_up(inode)?;
            let (node, path) = self.node(inode)?;
            let fd = self.upper_fd(&path)?;
            if attr.mode.is_some() || attr.uid.is_some() || attr.gid.is_some() {
                let cur = self.attr_of(inode, &node, &path)?;
                let meta = GuestMeta {
                    mode: (cur.mode & libc::S_IFMT)
                        | attr.mode.map_or(cur.mode & 0o7777, |m| m & 0o7777),
                    uid: attr.uid.unwrap_or(cur.uid),
                    gid: attr.gid.unwrap_or(cur.gid),
                    rdev: u64::from(cur.rdev),
                };
                meta.store(self.xattr_ns, fd.as_raw_fd())?;
            }
            if let Some(size) = attr.size {
                if node.kind != libc::S_IFREG {
                    return Err(err(libc::EINVAL));
                }
                let size = i64::try_from(size).map_err(|_| err(libc::EFBIG))?;
                let wfd = host::reopen(fd.as_raw_fd(), libc::O_WRONLY)?;
                self.resize(
                    wfd.as_raw_fd(),
                    |_| Some(size as u64),
                    || host::ftruncate(wfd.as_raw_fd(), size),
                )?;
            }
            host::set_times(fd.as_raw_fd(), attr.atime, attr.mtime)?;
        }
        self.getattr(ctx, inode, attr.handle)
    }

    fn readlink(&self, _ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        let _r = self.tree.read().expect("tree lock");
        let (node, path) = self.node(inode)?;
        if node.kind != libc::S_IFLNK {
            return Err(err(libc::EINVAL));
        }
        if node.upper {
            let fd = host::reopen(self.upper_fd(&path)?.as_raw_fd(), libc::O_RDONLY)?;
            host::pread_full(fd.as_raw_fd(), 0, libc::PATH_MAX as u32)
        } else {
            host::readlink_fd(self.lower_fd(node.lowers[0], &path)?.as_raw_fd())
        }
    }

    fn symlink(
        &self,
        ctx: &Context,
        target: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        let mode = libc::S_IFLNK | 0o777;
        Ok(self
            .create_node(ctx, parent, name, mode, 0, Some(target.to_bytes()), None)?
            .0)
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
        Ok(self
            .create_node(ctx, parent, name, mode, u64::from(rdev), None, None)?
            .0)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mode = libc::S_IFDIR | (mode & 0o7777 & !umask);
        Ok(self.create_node(ctx, parent, name, mode, 0, None, None)?.0)
    }

    fn unlink(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, true)
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
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(err(libc::EINVAL));
        }
        host::check_name(oldname)?;
        Self::check_new_name(newname)?;
        let _w = self.write_tree();
        let (opnode, opath, src) = self.child_of(olddir, oldname)?;
        let src_is_dir = src.kind == libc::S_IFDIR;
        if src_is_dir && !src.lowers.is_empty() {
            return Err(err(libc::EXDEV));
        }
        let src_hides_lower =
            !src.lowers.is_empty() || (src.upper && self.lower_shows(&opnode, &opath, oldname)?);
        let (npnode, npath) = self.node(newdir)?;
        let dst = self.resolve(&npnode, &npath, newname)?;
        let dst_path = join(&npath, newname.to_bytes());
        if let Some(dst) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EEXIST));
            }
            let dst_is_dir = dst.kind == libc::S_IFDIR;
            if dst_is_dir && !src_is_dir {
                return Err(err(libc::EISDIR));
            }
            if !dst_is_dir && src_is_dir {
                return Err(err(libc::ENOTDIR));
            }
            if dst_is_dir && !self.merged_list(0, dst, &dst_path)?.is_empty() {
                return Err(err(libc::ENOTEMPTY));
            }
        }
        self.copy_up(olddir)?;
        self.copy_up_entry(olddir, &opath, oldname, &src)?;
        self.copy_up(newdir)?;
        let ofd = self.upper_fd(&opath)?;
        let nfd = self.upper_fd(&npath)?;
        let mut replaced_data = None;
        if let Some(dst) = &dst {
            if dst.upper && dst.kind == libc::S_IFDIR {
                self.clear_upper_dir(&dst_path)?;
            }
            if dst.upper {
                replaced_data = Some(Self::upper_data_charge(nfd.as_raw_fd(), newname));
            }
            if !dst.lowers.is_empty() && src_is_dir {
                let sfd = self.upper_fd(&join(&opath, oldname.to_bytes()))?;
                self.make_marker(sfd.as_raw_fd(), &host::cstring(OPAQUE_MARKER.as_bytes())?)?;
            }
        }
        host::renameat2(ofd.as_raw_fd(), oldname, nfd.as_raw_fd(), newname, flags)?;
        if let Some(data) = replaced_data {
            self.uncharge_name(data);
        }
        self.remove_marker(nfd.as_raw_fd(), &whiteout_name(newname)?)?;
        if src_hides_lower {
            self.make_marker(ofd.as_raw_fd(), &whiteout_name(oldname)?)?;
        }
        let mut t = self.table.lock().expect("layered table lock");
        match t.child(olddir, oldname) {
            Some(ino) => {
                t.move_to(ino, newdir, newname)?;
                let n = &mut t.get_mut(ino)?.data;
                n.upper = true;
                n.lowers.clear();
            }
            None => {
                t.detach(newdir, newname);
            }
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
        Self::check_new_name(newname)?;
        let _w = self.write_tree();
        let (node, path) = self.node(inode)?;
        if node.kind == libc::S_IFDIR {
            return Err(err(libc::EPERM));
        }
        let (npnode, npath) = self.node(newparent)?;
        if self.resolve(&npnode, &npath, newname)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        self.copy_up(inode)?;
        self.copy_up(newparent)?;
        let (opath, oname) = split_path(&path);
        let ofd = self.upper_fd(opath)?;
        let nfd = self.upper_fd(&npath)?;
        let oname = host::cstring(oname)?;
        self.charge_name(0)?;
        host::linkat(ofd.as_raw_fd(), &oname, nfd.as_raw_fd(), newname)
            .inspect_err(|_| self.uncharge_name(0))?;
        self.remove_marker(nfd.as_raw_fd(), &whiteout_name(newname)?)?;
        self.register(
            newparent,
            newname,
            Node {
                upper: true,
                lowers: Vec::new(),
                kind: node.kind,
            },
        )
    }

    fn open(&self, _ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        let fd = self.open_file(inode, flags)?;
        let opened = Opened {
            inode,
            flags,
            dir: false,
        };
        Ok(self.open_reply(self.handles.insert(OpenObject::File(fd), opened)?, false))
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
        let mode = libc::S_IFREG | (mode & 0o7777 & !umask);
        let open_flags = host::host_open_flags(flags) & !libc::O_TRUNC;
        let (entry, fd) = self.create_node(ctx, parent, name, mode, 0, None, Some(open_flags))?;
        let fd = fd.ok_or_else(|| err(libc::EIO))?;
        let opened = Opened {
            inode: entry.inode,
            flags,
            dir: false,
        };
        Ok((
            entry,
            self.open_reply(self.handles.insert(OpenObject::File(fd), opened)?, false),
        ))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        size: u32,
    ) -> io::Result<Vec<u8>> {
        let (_obj, fd) = self.handle_fd(handle)?;
        host::pread_full(fd, offset, size)
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
        let (_obj, fd) = self.handle_fd(handle)?;
        host::pread_append(fd, offset, size, out)
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
        let (_obj, fd) = self.handle_fd(handle)?;
        let end = offset.saturating_add(data.len() as u64);
        self.resize(fd, |_| Some(end), || host::pwrite(fd, offset, data))
    }

    fn fsync(
        &self,
        _ctx: &Context,
        _inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        let (_obj, fd) = self.handle_fd(handle)?;
        host::fsync(fd, datasync)
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

    fn statfs(&self, _ctx: &Context, _inode: Inode) -> io::Result<StatFs> {
        Ok(self.quota.statfs(&host::statfs(self.upper.as_raw_fd())?))
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let hname = self.xattr_ns.host_xattr_name(name)?;
        let _w = self.write_tree();
        self.copy_up(inode)?;
        let (node, path) = self.node(inode)?;
        let fd = self.upper_fd(&path)?;
        self.settle_xattrs(&node, fd.as_raw_fd(), || {
            host::setxattr(fd.as_raw_fd(), &hname, value, flags as i32)
        })
    }

    fn getxattr(&self, _ctx: &Context, inode: Inode, name: &CStr) -> io::Result<Vec<u8>> {
        let _r = self.tree.read().expect("tree lock");
        let (node, path) = self.node(inode)?;
        if node.upper {
            return host::getxattr(
                self.upper_fd(&path)?.as_raw_fd(),
                &self.xattr_ns.host_xattr_name(name)?,
            );
        }
        let meta = self.lower_meta(node.lowers[0], &path);
        let found = meta.and_then(|m| {
            m.xattrs
                .iter()
                .find(|(k, _)| k.as_bytes() == name.to_bytes())
        });
        found
            .map(|(_, v)| v.clone())
            .ok_or_else(|| err(libc::ENODATA))
    }

    fn listxattr(&self, _ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        let _r = self.tree.read().expect("tree lock");
        let (node, path) = self.node(inode)?;
        let mut out = Vec::new();
        if node.upper {
            let all = host::listxattr(self.upper_fd(&path)?.as_raw_fd())?;
            for n in all
                .split(|&b| b == 0)
                .filter(|n| n.starts_with(self.xattr_ns.guest_xattr_prefix()))
            {
                out.extend_from_slice(&n[self.xattr_ns.guest_xattr_prefix().len()..]);
                out.push(0);
            }
        } else if let Some(m) = self.lower_meta(node.lowers[0], &path) {
            for (k, _) in &m.xattrs {
                out.extend_from_slice(k.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    fn removexattr(&self, _ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        let hname = self.xattr_ns.host_xattr_name(name)?;
        let _w = self.write_tree();
        self.copy_up(inode)?;
        let (node, path) = self.node(inode)?;
        let fd = self.upper_fd(&path)?;
        self.settle_xattrs(&node, fd.as_raw_fd(), || {
            host::removexattr(fd.as_raw_fd(), &hname)
        })
    }

    fn opendir(&self, _ctx: &Context, inode: Inode, flags: u32) -> io::Result<OpenReply> {
        let snapshot = self.open_dir(inode)?;
        let opened = Opened {
            inode,
            flags,
            dir: true,
        };
        Ok(self.open_reply(
            self.handles.insert(OpenObject::Dir(snapshot), opened)?,
            true,
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
        let OpenObject::Dir(snapshot) = &*obj else {
            return Err(err(libc::ENOTDIR));
        };
        crate::backend_common::list_snapshot(inode, snapshot.entries.iter(), offset, add);
        Ok(())
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
        let (_obj, fd) = self.handle_fd(handle)?;
        let shrinks = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_COLLAPSE_RANGE) as u32;
        let end = |size: u64| {
            if mode & shrinks != 0 {
                None
            } else if mode & libc::FALLOC_FL_INSERT_RANGE as u32 != 0 {
                Some(size.saturating_add(length))
            } else {
                Some(offset.saturating_add(length))
            }
        };
        self.resize(fd, end, || host::fallocate(fd, mode, offset, length))
    }

    fn lseek(
        &self,
        _ctx: &Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let (_obj, fd) = self.handle_fd(handle)?;
        host::lseek(fd, offset, whence)
    }

    fn save_state(&self) -> io::Result<FsState> {
        self.save()
    }

    fn restore_state(&self, state: &FsState) -> io::Result<()> {
        self.restore(state)
    }
}
