//! Freezing the upper directory into a read-only layer, for VM snapshots
//! and forks.
//!
//! A frozen upper is an ordinary lower layer directory (`rootfs/` plus
//! [`crate::layer_meta::META_FILE`]), so a fork of a sandbox is served by
//! `LayeredFs::new(image_layers + [frozen], fresh_upper, config)` with no
//! special case anywhere: the merge rules that made the upper hide and
//! extend the image layers make the frozen copy do the same. The upper's
//! own format is translated into the lower one: guest metadata kept in
//! xattrs (see [`super::upper_meta`]) becomes `meta.json` entries, guest
//! symlinks (upper files holding the target) become host symlinks, guest
//! devices, FIFOs and sockets stay empty regular files described by their
//! entry, and whiteouts and opaque markers are copied as the empty files
//! OCI layers keep them as. Hard links within the upper stay hard links.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::upper_meta::GuestMeta;
use super::{is_reserved, join, LayeredFs, OpenObject};
use crate::filesystem::{Inode, ROOT_INODE};
use crate::host_util::{self as host, CONFINED};
use crate::layer_meta::{EntryMeta, LayerMeta, ROOTFS_DIR};

/// Where a frozen upper keeps a copy of each file the guest held open after its last name
/// went away (unlinked or replaced while open), named by the guest's inode number: beside
/// `rootfs/`, so no merged tree ever shows it. A fork over the frozen layer reopens the
/// guest's handles on private copies of them (see [`LayeredFs::restore_state`]).
pub const DETACHED_DIR: &str = "detached";

/// Tells apart the temporary directories of freezes running at once.
static FREEZE_SEQ: AtomicU64 = AtomicU64::new(0);

/// An empty regular file `name` in `dir`, open for writing.
fn create_file(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
    host::openat2(dir, name, flags, 0o644, CONFINED)
}

/// The access and modification times of `st`, as `futimens` takes them.
pub(super) fn times_of(st: &libc::stat64) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

impl LayeredFs {
    /// Writes a copy of the current upper tree to the new directory `dest`
    /// as a lower layer [`LayeredFs::new`] accepts (see the
    /// module docs of [`crate::layered`]). The copy is built in `dest.tmp-*` beside it
    /// and renamed into place, so a half-written layer is never seen; on
    /// error the partial copy is removed. File data is copied with
    /// `copy_file_range` (a reflink where the filesystem has them).
    ///
    /// The caller pauses the guest first; concurrent changes are held off
    /// for the duration anyway. This backend's upper stays as it is (a
    /// superset of the frozen layer from then on). Metadata of a path that
    /// is not UTF-8 cannot be keyed in `meta.json`: such an entry gets its
    /// host mode and owner root in the frozen layer.
    pub fn freeze_upper(&self, dest: &Path) -> io::Result<()> {
        let _r = self.tree.read().expect("tree lock");
        if dest.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", dest.display()),
            ));
        }
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no directory", dest.display()),
            )
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            FREEZE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dest.with_file_name(tmp_name);
        std::fs::create_dir(&tmp)?;
        let result = self
            .freeze_into(&tmp)
            .and_then(|()| std::fs::rename(&tmp, dest));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// The body of [`Self::freeze_upper`]: fills the empty directory `dir`.
    fn freeze_into(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir.join(ROOTFS_DIR))?;
        let dst_root = host::open_root(&dir.join(ROOTFS_DIR))?;
        let mut meta = LayerMeta::default();
        // The upper root has guest metadata only once the guest changed it;
        // until then the guest sees the top layer's root.
        let root = self.upper_fd(b"")?;
        let root_meta = match GuestMeta::load(self.xattr_ns, root.as_raw_fd())? {
            Some(m) => Some(EntryMeta {
                uid: m.uid,
                gid: m.gid,
                mode: m.mode,
                rdev: m.rdev,
                xattrs: Vec::new(),
            }),
            None => {
                let lowers = {
                    let t = self.table.lock().expect("layered table lock");
                    t.get(ROOT_INODE)?.data.lowers.clone()
                };
                lowers
                    .first()
                    .and_then(|&li| self.lower_meta(li, b""))
                    .cloned()
            }
        };
        if let Some(mut m) = root_meta {
            m.xattrs = self.guest_xattrs(root.as_raw_fd())?;
            meta.entries.insert(String::new(), m);
        }
        // Host (dev, ino) of upper files with several links -> the first
        // frozen path, so later names become links to it.
        let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        // Directory times are set last: adding entries changes them.
        let mut dir_times = Vec::new();
        let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(dir_path) = pending.pop() {
            let src = self.upper_fd(&dir_path)?;
            let dst = host::open_beneath(dst_root.as_raw_fd(), &dir_path)?;
            let (src, dst) = (src.as_raw_fd(), dst.as_raw_fd());
            for (_, _, name) in host::list_dir(src)? {
                let cname = host::cstring(&name)?;
                let path = join(&dir_path, &name);
                if is_reserved(&name) {
                    // Whiteouts and opaque markers, as OCI layers keep them.
                    create_file(dst, &cname)?;
                    continue;
                }
                let st = host::statat(src, &cname)?;
                let fd = host::open_child(src, &cname)?;
                let guest = GuestMeta::load(self.xattr_ns, fd.as_raw_fd())?.unwrap_or(GuestMeta {
                    mode: st.st_mode,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                });
                let kind = guest.mode & libc::S_IFMT;
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => {
                        host::mkdirat(dst, &cname, 0o755)?;
                        dir_times.push((path.clone(), times_of(&st)));
                        pending.push(path.clone());
                    }
                    libc::S_IFREG if kind == libc::S_IFLNK => {
                        let file = host::reopen(fd.as_raw_fd(), libc::O_RDONLY)?;
                        let target = host::pread_full(file.as_raw_fd(), 0, libc::PATH_MAX as u32)?;
                        host::symlinkat(&host::cstring(&target)?, dst, &cname)?;
                    }
                    libc::S_IFREG => {
                        let key = (st.st_dev, st.st_ino);
                        match links.get(&key) {
                            Some(first) if st.st_nlink > 1 => {
                                let first = host::open_beneath(dst_root.as_raw_fd(), first)?;
                                host::link_fd(first.as_raw_fd(), dst, &cname)?;
                            }
                            _ => {
                                let out = create_file(dst, &cname)?;
                                if kind == libc::S_IFREG {
                                    let input = host::reopen(fd.as_raw_fd(), libc::O_RDONLY)?;
                                    host::copy_file(input.as_raw_fd(), out.as_raw_fd())?;
                                }
                                host::futimens(out.as_raw_fd(), &times_of(&st))?;
                                if st.st_nlink > 1 {
                                    links.insert(key, path.clone());
                                }
                            }
                        }
                    }
                    _ => {
                        // The upper tree holds only files and directories;
                        // anything else was put there behind our back.
                        tracing::warn!(
                            "freeze: skipping {:?}, not a file or directory",
                            String::from_utf8_lossy(&path)
                        );
                        continue;
                    }
                }
                if let Ok(key) = String::from_utf8(path) {
                    let entry = EntryMeta {
                        uid: guest.uid,
                        gid: guest.gid,
                        mode: guest.mode,
                        rdev: guest.rdev,
                        xattrs: self.guest_xattrs(fd.as_raw_fd())?,
                    };
                    meta.entries.insert(key, entry);
                }
            }
        }
        for (path, times) in dir_times.iter().rev() {
            let fd = host::open_beneath(dst_root.as_raw_fd(), path)?;
            host::utimens(fd.as_raw_fd(), times)?;
        }
        self.freeze_detached(dir)?;
        meta.store(dir)
    }

    /// Copies into `dir/`[`DETACHED_DIR`] the data of every file the guest holds open
    /// whose inode lost its last name: the guest still reads and writes it through its
    /// handles, and nothing in the tree leads to it.
    fn freeze_detached(&self, dir: &Path) -> io::Result<()> {
        let held: Vec<(Inode, crate::filesystem::Handle)> = {
            let t = self.table.lock().expect("layered table lock");
            self.handles
                .save()
                .into_iter()
                .filter(|h| !h.dir && t.path(h.inode).is_err())
                .map(|h| (h.inode, h.handle))
                .collect()
        };
        let mut done = HashSet::new();
        let mut out_dir = None;
        for (inode, handle) in held {
            if !done.insert(inode) {
                continue;
            }
            let Ok(obj) = self.handles.get(handle) else {
                continue; // Closed meanwhile: nothing to keep.
            };
            let OpenObject::File(fd) = &*obj else {
                continue;
            };
            let step = |what: &'static str| {
                move |e: io::Error| {
                    io::Error::new(e.kind(), format!("{what} of inode {inode}: {e}"))
                }
            };
            let out_dir = match &out_dir {
                Some(d) => d,
                None => {
                    std::fs::create_dir(dir.join(DETACHED_DIR))
                        .map_err(step("creating the directory for the unlinked files"))?;
                    out_dir.insert(host::open_root(&dir.join(DETACHED_DIR))?)
                }
            };
            // A readable handle is read from its start (the server reads and writes at
            // explicit offsets, so moving its file offset changes nothing); a write-only one
            // is opened again for reading.
            let reopened;
            let input = if host::access_mode(fd.as_raw_fd())? == libc::O_WRONLY {
                match host::reopen(fd.as_raw_fd(), libc::O_RDONLY) {
                    Ok(f) => {
                        reopened = f;
                        reopened.as_raw_fd()
                    }
                    Err(e) => {
                        // The snapshot is still good; its forks get EBADF for these handles.
                        tracing::warn!("freeze: cannot keep unlinked inode {inode}: {e}");
                        continue;
                    }
                }
            } else {
                fd.as_raw_fd()
            };
            host::rewind(input).map_err(step("rewinding"))?;
            let name = host::cstring(inode.to_string().as_bytes())?;
            let out = create_file(out_dir.as_raw_fd(), &name).map_err(step("creating the copy"))?;
            host::copy_file(input, out.as_raw_fd()).map_err(step("copying"))?;
            // Its guest metadata goes with it, where this filesystem keeps xattrs.
            if let Ok(Some(meta)) = GuestMeta::load(self.xattr_ns, fd.as_raw_fd()) {
                let _ = meta.store(self.xattr_ns, out.as_raw_fd());
            }
        }
        Ok(())
    }

    /// The guest xattrs of the upper entry behind `fd`, named as the guest
    /// names them (names that are not UTF-8 cannot be stored in a layer's
    /// metadata and are left out).
    fn guest_xattrs(&self, fd: RawFd) -> io::Result<Vec<(String, Vec<u8>)>> {
        let prefix = self.xattr_ns.guest_xattr_prefix();
        let mut out = Vec::new();
        for n in host::listxattr(fd)?.split(|&b| b == 0) {
            let Some(guest) = n.strip_prefix(prefix) else {
                continue;
            };
            let Ok(guest) = std::str::from_utf8(guest) else {
                continue;
            };
            let value = host::getxattr(fd, &host::cstring(n)?)?;
            out.push((guest.to_string(), value));
        }
        out.sort();
        Ok(out)
    }
}
