//! The guest path of each inode, learned from the replies that hand the
//! kernel an inode (lookup, create, mkdir, mknod, symlink, link) and kept up
//! to date through rename and forget.
//!
//! Hooks decide by path, but FUSE speaks inodes: this map is how a hook learns
//! that inode 42 is `/work/notes.txt`. An inode with several hard links
//! carries the name it was last reached by. An entry lives while the kernel
//! holds lookup references to it (the kernel keeps a parent referenced while
//! any child is, so ancestors outlive descendants).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::filesystem::{Inode, ROOT_INODE};
use crate::saved_state::FsState;

/// Deeper paths are reported as unknown, which also stops any cycle.
const MAX_DEPTH: usize = 4096;

struct Link {
    parent: Inode,
    name: Vec<u8>,
    lookups: u64,
}

/// inode -> (parent, name). See the module docs.
#[derive(Default)]
pub struct PathMap {
    links: Mutex<HashMap<Inode, Link>>,
}

impl PathMap {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<Inode, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest path of `inode` ("/" for the root), if known.
    pub fn path(&self, inode: Inode) -> Option<PathBuf> {
        let links = self.links();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut ino = inode;
        while ino != ROOT_INODE {
            let link = links.get(&ino)?;
            parts.push(&link.name);
            if parts.len() > MAX_DEPTH {
                return None;
            }
            ino = link.parent;
        }
        let mut p = PathBuf::from("/");
        for part in parts.iter().rev() {
            p.push(OsStr::from_bytes(part));
        }
        Some(p)
    }

    /// Whether the guest holds `inode` but it lost its name to a rename.
    pub fn is_detached(&self, inode: Inode) -> bool {
        self.links()
            .get(&inode)
            .is_some_and(|l| l.parent == Inode::MAX)
    }

    /// The guest path of `name` inside directory `parent`, if known.
    pub fn child(&self, parent: Inode, name: &[u8]) -> Option<PathBuf> {
        let mut p = self.path(parent)?;
        p.push(OsStr::from_bytes(name));
        Some(p)
    }

    /// The kernel got one more reference to `inode`, reached as `name` in `parent`.
    pub fn record(&self, parent: Inode, name: &[u8], inode: Inode) {
        if inode == ROOT_INODE {
            return;
        }
        let mut links = self.links();
        let link = links.entry(inode).or_insert_with(|| Link {
            parent,
            name: Vec::new(),
            lookups: 0,
        });
        link.parent = parent;
        link.name = name.to_vec();
        link.lookups += 1;
    }

    /// Learns the inodes of a restored snapshot: each saved inode with a
    /// path is recorded under its parent, found by the parent's saved path
    /// (an inode whose parent was not saved stays unknown).
    pub fn restore(&self, state: &FsState) {
        let by_path: HashMap<&[u8], Inode> = state
            .nodes
            .iter()
            .filter_map(|n| n.path.as_deref().map(|p| (p, n.inode)))
            .collect();
        let mut links = self.links();
        for n in &state.nodes {
            let Some(path) = n.path.as_deref() else {
                continue;
            };
            let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
                Some(i) => match by_path.get(&path[..i]) {
                    Some(&p) => (p, &path[i + 1..]),
                    None => continue,
                },
                None => (ROOT_INODE, path),
            };
            links.insert(
                n.inode,
                Link {
                    parent,
                    name: name.to_vec(),
                    lookups: n.lookups,
                },
            );
        }
    }

    /// The kernel dropped `count` references to `inode`.
    pub fn forget(&self, inode: Inode, count: u64) {
        let mut links = self.links();
        if let Some(link) = links.get_mut(&inode) {
            link.lookups = link.lookups.saturating_sub(count);
            if link.lookups == 0 {
                links.remove(&inode);
            }
        }
    }

    /// `old` in `olddir` is now `new` in `newdir`; with `exchange`, the
    /// other way round as well. A linear scan: renames are rare next to
    /// reads and writes, and a reverse index would double the memory.
    pub fn rename(&self, olddir: Inode, old: &[u8], newdir: Inode, new: &[u8], exchange: bool) {
        let mut links = self.links();
        let find = |links: &HashMap<Inode, Link>, dir: Inode, name: &[u8]| {
            links
                .iter()
                .find(|(_, l)| l.parent == dir && l.name == name)
                .map(|(i, _)| *i)
        };
        let src = find(&links, olddir, old);
        let dst = find(&links, newdir, new);
        if let Some(l) = src.and_then(|i| links.get_mut(&i)) {
            (l.parent, l.name) = (newdir, new.to_vec());
        }
        if let Some(l) = dst.and_then(|i| links.get_mut(&i)) {
            if exchange {
                (l.parent, l.name) = (olddir, old.to_vec());
            } else {
                // Replaced: it has no name any more until looked up again.
                l.name = b"(deleted)".to_vec();
                l.parent = Inode::MAX;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_lookups_renames_and_forgets() {
        let m = PathMap::default();
        assert_eq!(m.path(ROOT_INODE), Some(PathBuf::from("/")));
        m.record(ROOT_INODE, b"a", 2);
        m.record(2, b"f", 3);
        assert_eq!(m.path(3), Some(PathBuf::from("/a/f")));
        m.rename(2, b"f", ROOT_INODE, b"g", false);
        assert_eq!(m.path(3), Some(PathBuf::from("/g")));
        m.record(ROOT_INODE, b"h", 4);
        m.rename(ROOT_INODE, b"g", ROOT_INODE, b"h", true);
        assert_eq!(m.path(3), Some(PathBuf::from("/h")));
        assert_eq!(m.path(4), Some(PathBuf::from("/g")));
        m.forget(3, 1);
        assert_eq!(m.path(3), None);
        assert_eq!(m.child(2, b"x"), Some(PathBuf::from("/a/x")));
    }
}
