//! Pieces the host-backed backends (passthrough and layered) share: the
//! node types MKNOD accepts, access(2) against guest-visible attributes, and
//! listing a directory snapshot taken at OPENDIR with offsets that stay valid
//! for the handle's life. Their host syscalls are in [`crate::host_util`].
//!
//! Snapshots are shared: every handle open on the same directory in the
//! same state (a key the backend chooses: the directory and a counter of
//! changes) holds the one [`Snapshot`] in a [`SnapshotRegistry`], which
//! drops it when the last handle closes. One snapshot may hold at most
//! [`MAX_SNAPSHOT_BYTES`] (about a million names) and all of them together
//! [`MAX_TOTAL_SNAPSHOT_BYTES`]; past either, OPENDIR fails with `ENOMEM`
//! and nothing is kept. So a guest that opens one huge directory thousands
//! of times costs one listing, and `ls` keeps working on any directory up
//! to that size.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::filesystem::{Attr, Context, DirEntry, Inode};
use crate::host_util::err;
pub(crate) use crate::host_util::{entry_bytes, ListEntry};

/// Most bytes one directory snapshot may hold.
pub(crate) const MAX_SNAPSHOT_BYTES: usize = 64 << 20;
/// Most bytes all snapshots of one backend may hold together.
pub(crate) const MAX_TOTAL_SNAPSHOT_BYTES: usize = 256 << 20;

/// A directory listing shared by the handles open on it; gives its bytes
/// back to the registry's total when the last handle drops it.
pub(crate) struct Snapshot {
    /// The entries, `.` and `..` excluded.
    pub entries: Vec<ListEntry>,
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The live snapshots of one backend, by key. See the module docs.
pub(crate) struct SnapshotRegistry<K> {
    live: Mutex<HashMap<K, Weak<Snapshot>>>,
    total: Arc<AtomicUsize>,
    max_one: usize,
    max_total: usize,
}

impl<K: Eq + Hash + Clone> SnapshotRegistry<K> {
    /// A registry with the default caps.
    pub fn new() -> Self {
        Self::with_caps(MAX_SNAPSHOT_BYTES, MAX_TOTAL_SNAPSHOT_BYTES)
    }

    /// A registry with explicit caps (tests use small ones).
    pub fn with_caps(max_one: usize, max_total: usize) -> Self {
        SnapshotRegistry {
            live: Mutex::new(HashMap::new()),
            total: Arc::new(AtomicUsize::new(0)),
            max_one,
            max_total,
        }
    }

    /// Most bytes one snapshot may hold: the budget to give `list`.
    pub fn max_one(&self) -> usize {
        self.max_one
    }

    /// Bytes all live snapshots hold.
    pub fn held_bytes(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// The snapshot for `key`: the live one, or a new one from `list`
    /// (which must fail with `ENOMEM` past [`Self::max_one`] bytes).
    pub fn open(
        &self,
        key: K,
        list: impl FnOnce() -> io::Result<Vec<ListEntry>>,
    ) -> io::Result<Arc<Snapshot>> {
        if let Some(s) = self.live_one(&key) {
            return Ok(s);
        }
        let entries = list()?;
        let bytes: usize = entries.iter().map(|(_, _, n)| entry_bytes(n.len())).sum();
        if bytes > self.max_one {
            return Err(err(libc::ENOMEM));
        }
        let mut live = self.live.lock().expect("snapshot registry lock");
        if let Some(s) = live.get(&key).and_then(Weak::upgrade) {
            return Ok(s);
        }
        live.retain(|_, w| w.strong_count() > 0);
        let total = self.total.load(Ordering::Acquire);
        if total.saturating_add(bytes) > self.max_total {
            return Err(err(libc::ENOMEM));
        }
        self.total.fetch_add(bytes, Ordering::AcqRel);
        let snap = Arc::new(Snapshot {
            entries,
            bytes,
            total: self.total.clone(),
        });
        live.insert(key, Arc::downgrade(&snap));
        Ok(snap)
    }

    fn live_one(&self, key: &K) -> Option<Arc<Snapshot>> {
        let live = self.live.lock().expect("snapshot registry lock");
        live.get(key).and_then(Weak::upgrade)
    }
}

/// The full mode of a MKNOD request: its type (regular file, FIFO, socket,
/// character or block device; anything else is EINVAL) with the permission
/// bits the umask leaves.
pub(crate) fn mknod_mode(mode: u32, umask: u32) -> io::Result<u32> {
    let kind = mode & libc::S_IFMT;
    let allowed = [
        libc::S_IFREG,
        libc::S_IFIFO,
        libc::S_IFSOCK,
        libc::S_IFCHR,
        libc::S_IFBLK,
    ];
    if !allowed.contains(&kind) {
        return Err(err(libc::EINVAL));
    }
    Ok(kind | (mode & 0o7777 & !umask))
}

/// Hands `add` the entries of directory `inode` after `offset`: `.` and
/// `..` first, then `entries` (inode, `DT_*` kind, name) in order. Offsets
/// index that sequence (1 after `.`, 2 after `..`, 2 + i after the i-th
/// entry), so a snapshot kept with the handle resumes exactly.
pub(crate) fn list_snapshot<'a, K: Copy + Into<u32> + 'a>(
    inode: Inode,
    entries: impl Iterator<Item = &'a (u64, K, Vec<u8>)>,
    offset: u64,
    add: &mut dyn FnMut(DirEntry<'_>) -> bool,
) {
    let dot_dir = libc::DT_DIR as u32;
    let dots = [(inode, dot_dir, &b"."[..]), (inode, dot_dir, &b".."[..])];
    let all = dots
        .into_iter()
        .chain(entries.map(|(i, k, n)| (*i, (*k).into(), n.as_slice())));
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    for (idx, (ino, kind, name)) in all.enumerate().skip(skip) {
        let entry = DirEntry {
            ino,
            offset: idx as u64 + 1,
            kind,
            name,
        };
        if !add(entry) {
            break;
        }
    }
}

/// access(2) against guest-visible attributes: root passes read/write and
/// passes execute if anyone may execute (or it is a directory).
pub(crate) fn check_access(attr: &Attr, ctx: &Context, mask: u32) -> io::Result<()> {
    let mask = mask & 7;
    if mask == 0 {
        return Ok(());
    }
    if ctx.uid == 0 {
        let any_x = attr.mode & 0o111 != 0 || attr.mode & libc::S_IFMT == libc::S_IFDIR;
        return if mask & 1 == 0 || any_x {
            Ok(())
        } else {
            Err(err(libc::EACCES))
        };
    }
    let bits = if ctx.uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if ctx.gid == attr.gid {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(err(libc::EACCES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mknod_accepts_only_node_types_and_applies_the_umask() {
        assert_eq!(
            mknod_mode(libc::S_IFIFO | 0o666, 0o022).unwrap(),
            libc::S_IFIFO | 0o644
        );
        for bad in [libc::S_IFDIR | 0o755, libc::S_IFLNK | 0o777, 0o644] {
            assert_eq!(
                mknod_mode(bad, 0).unwrap_err().raw_os_error(),
                Some(libc::EINVAL)
            );
        }
    }

    #[test]
    fn snapshots_are_shared_by_key_capped_and_dropped_with_the_last_holder() {
        let reg = SnapshotRegistry::with_caps(1000, 1500);
        let list = |n: usize| move || Ok(vec![(1, 8, vec![b'x'; n])]);
        let a = reg.open(1, list(100)).unwrap();
        let held = reg.held_bytes();
        assert_eq!(held, entry_bytes(100));
        let a2 = reg.open(1, || panic!("a live snapshot is shared")).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(reg.held_bytes(), held);
        let too_big = reg.open(2, list(2000)).err().expect("over one cap");
        assert_eq!(too_big.raw_os_error(), Some(libc::ENOMEM));
        let b = reg.open(3, list(900)).unwrap();
        let over_total = reg.open(4, list(900)).err().expect("over the total");
        assert_eq!(over_total.raw_os_error(), Some(libc::ENOMEM));
        drop((a, a2));
        assert_eq!(reg.held_bytes(), entry_bytes(900));
        drop(b);
        assert_eq!(reg.held_bytes(), 0);
        reg.open(4, list(900)).unwrap();
    }

    #[test]
    fn snapshot_listing_resumes_at_any_offset() {
        let entries: Vec<(u64, u8, Vec<u8>)> = vec![
            (5, libc::DT_REG, b"a".to_vec()),
            (6, libc::DT_DIR, b"b".to_vec()),
        ];
        let names = |offset| {
            let mut out = Vec::new();
            list_snapshot(1, entries.iter(), offset, &mut |e| {
                out.push((String::from_utf8_lossy(e.name).into_owned(), e.offset));
                true
            });
            out
        };
        let all = names(0);
        assert_eq!(
            all,
            [
                (".".into(), 1),
                ("..".into(), 2),
                ("a".into(), 3),
                ("b".into(), 4)
            ]
        );
        assert_eq!(names(3), [("b".to_string(), 4)]);
        assert!(names(9).is_empty());
        let mut taken = 0;
        list_snapshot(1, entries.iter(), 0, &mut |_| {
            taken += 1;
            taken < 2
        });
        assert_eq!(taken, 2, "a full buffer stops the listing");
    }
}
