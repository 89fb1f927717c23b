//! The inode table both host-backed backends share: each inode remembers
//! its parent inode and name instead of a host fd, so a backend can rebuild
//! the inode's path beneath its root at any time and keep only a bounded
//! number of host descriptors open.
//!
//! An inode lives while the kernel holds lookups on it or while a child
//! inode names it as parent (a child's path goes through its parent). When
//! both reach zero it is freed and its parent loses one child reference,
//! which may free the parent in turn. Removing or replacing a name detaches
//! the inode that had it: it lives on until forgotten, but has no path.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;

use crate::filesystem::{Inode, ROOT_INODE};
use crate::host_util::err;
use crate::saved_state::SavedNode;

/// Deepest path rebuilt; deeper means a cycle, which the table refuses to
/// create, so this only guards against a bug turning into a hang.
const MAX_DEPTH: usize = 4096;

/// One inode of a [`PathTable`].
pub(crate) struct Node<T> {
    /// The directory the inode was found in.
    pub parent: Inode,
    /// Its name there.
    pub name: CString,
    /// Whether `(parent, name)` still refers to this inode.
    pub attached: bool,
    /// The FUSE generation of this inode number (numbers are never reused,
    /// so this is constant).
    pub generation: u64,
    /// Backend data.
    pub data: T,
    lookups: u64,
    children: u64,
}

/// Inodes by number, and attached inodes by `(parent, name)`.
pub(crate) struct PathTable<T> {
    nodes: HashMap<Inode, Node<T>>,
    names: HashMap<(Inode, CString), Inode>,
    next: Inode,
}

impl<T> PathTable<T> {
    /// A table holding only the root.
    pub fn new(root: T) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INODE,
            Node {
                parent: ROOT_INODE,
                name: CString::default(),
                attached: true,
                generation: 0,
                data: root,
                lookups: 1,
                children: 0,
            },
        );
        PathTable {
            nodes,
            names: HashMap::new(),
            next: ROOT_INODE + 1,
        }
    }

    /// The inode, or `ESTALE` for an unknown (forgotten or forged) number.
    pub fn get(&self, ino: Inode) -> io::Result<&Node<T>> {
        self.nodes.get(&ino).ok_or_else(|| err(libc::ESTALE))
    }

    /// Mutable access to an inode.
    pub fn get_mut(&mut self, ino: Inode) -> io::Result<&mut Node<T>> {
        self.nodes.get_mut(&ino).ok_or_else(|| err(libc::ESTALE))
    }

    /// The attached inode named `name` in `parent`, if the table has one.
    pub fn child(&self, parent: Inode, name: &CStr) -> Option<Inode> {
        self.names.get(&(parent, name.to_owned())).copied()
    }

    /// Adds a new inode at `(parent, name)` with one lookup, detaching any
    /// inode that had that name.
    pub fn insert(&mut self, parent: Inode, name: &CStr, data: T) -> io::Result<Inode> {
        self.get(parent)?;
        let ino = self.next;
        self.next += 1;
        self.detach(parent, name);
        self.attach(ino, parent, name, ino, 1, data);
        Ok(ino)
    }

    /// Puts the new inode `ino` under `parent` (known to exist) as `name`
    /// (known to be free).
    fn attach(
        &mut self,
        ino: Inode,
        parent: Inode,
        name: &CStr,
        generation: u64,
        lookups: u64,
        data: T,
    ) {
        self.nodes.get_mut(&parent).expect("checked above").children += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
                attached: true,
                generation,
                data,
                lookups,
                children: 0,
            },
        );
        self.names.insert((parent, name.to_owned()), ino);
    }

    /// One more kernel lookup on `ino`.
    pub fn add_lookup(&mut self, ino: Inode) -> io::Result<()> {
        self.get_mut(ino)?.lookups += 1;
        Ok(())
    }

    /// The path of `ino` relative to the root (empty for the root), or
    /// `ESTALE` when it or a directory above it lost its name.
    pub fn path(&self, ino: Inode) -> io::Result<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INODE {
            let node = self.get(cur)?;
            if !node.attached || parts.len() >= MAX_DEPTH {
                return Err(err(libc::ESTALE));
            }
            parts.push(node.name.to_bytes());
            cur = node.parent;
        }
        let mut out = Vec::new();
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(p);
        }
        Ok(out)
    }

    /// The name in `parent` went away (unlink, rmdir, replaced by rename).
    pub fn detach(&mut self, parent: Inode, name: &CStr) -> Option<Inode> {
        let ino = self.names.remove(&(parent, name.to_owned()))?;
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.attached = false;
        }
        Some(ino)
    }

    /// `ino` is now known as `name` in `newparent` (a rename, or a hard
    /// link found under another name). `ELOOP` if that would put a
    /// directory inside itself. Returns the inodes freed because the old
    /// parent lost its last reference.
    pub fn move_to(
        &mut self,
        ino: Inode,
        newparent: Inode,
        name: &CStr,
    ) -> io::Result<Vec<(Inode, T)>> {
        if ino == ROOT_INODE {
            return Err(err(libc::ELOOP));
        }
        let mut cur = newparent;
        for _ in 0..MAX_DEPTH {
            if cur == ino {
                return Err(err(libc::ELOOP));
            }
            if cur == ROOT_INODE {
                break;
            }
            cur = self.get(cur)?.parent;
        }
        self.get(newparent)?;
        let (old_parent, old_name, attached) = {
            let n = self.get(ino)?;
            (n.parent, n.name.clone(), n.attached)
        };
        if attached && self.names.get(&(old_parent, old_name.clone())) == Some(&ino) {
            self.names.remove(&(old_parent, old_name));
        }
        self.detach(newparent, name);
        self.nodes
            .get_mut(&newparent)
            .expect("checked above")
            .children += 1;
        let node = self.nodes.get_mut(&ino).expect("checked above");
        node.parent = newparent;
        node.name = name.to_owned();
        node.attached = true;
        self.names.insert((newparent, name.to_owned()), ino);
        Ok(self.drop_child(old_parent))
    }

    /// The kernel gave back `count` lookups; returns the data of every inode
    /// this freed so the backend can drop what it keeps beside the table.
    pub fn forget(&mut self, ino: Inode, count: u64) -> Vec<(Inode, T)> {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return Vec::new();
        };
        if ino == ROOT_INODE {
            return Vec::new();
        }
        node.lookups = node.lookups.saturating_sub(count);
        self.collect(ino)
    }

    fn drop_child(&mut self, parent: Inode) -> Vec<(Inode, T)> {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.collect(parent)
    }

    fn collect(&mut self, mut ino: Inode) -> Vec<(Inode, T)> {
        let mut freed = Vec::new();
        while ino != ROOT_INODE {
            let Some(node) = self.nodes.get(&ino) else {
                break;
            };
            if node.lookups > 0 || node.children > 0 {
                break;
            }
            let node = self.nodes.remove(&ino).expect("present");
            if node.attached && self.names.get(&(node.parent, node.name.clone())) == Some(&ino) {
                self.names.remove(&(node.parent, node.name));
            }
            if let Some(p) = self.nodes.get_mut(&node.parent) {
                p.children = p.children.saturating_sub(1);
            }
            freed.push((ino, node.data));
            ino = node.parent;
        }
        freed
    }

    /// Every inode, the root included, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Inode, &Node<T>)> {
        self.nodes.iter().map(|(&ino, n)| (ino, n))
    }

    /// Whether the table holds nothing but the root (a fresh backend).
    pub fn is_fresh(&self) -> bool {
        self.nodes.len() == 1
    }

    /// The number the next new inode gets.
    pub fn next_inode(&self) -> Inode {
        self.next
    }

    /// Makes new inode numbers start at `next` or above, so they never meet
    /// restored ones; never lowers the counter.
    pub fn reserve_below(&mut self, next: Inode) {
        self.next = self.next.max(next);
    }

    /// Every inode but the root: its number, path (`None` once it or a
    /// directory above it lost its name), lookups and generation.
    pub fn save(&self) -> Vec<SavedNode> {
        self.nodes
            .iter()
            .filter(|(&ino, _)| ino != ROOT_INODE)
            .map(|(&ino, n)| SavedNode {
                inode: ino,
                path: self.path(ino).ok(),
                lookups: n.lookups,
                generation: n.generation,
            })
            .collect()
    }

    /// Adds inode `ino` (a number saved earlier) at `(parent, name)` with
    /// `lookups` kernel lookups. Refuses (`EEXIST`) a number or a name
    /// already in the table and the root's number, `ESTALE` an unknown
    /// parent.
    pub fn insert_as(
        &mut self,
        ino: Inode,
        parent: Inode,
        name: &CStr,
        generation: u64,
        lookups: u64,
        data: T,
    ) -> io::Result<()> {
        self.get(parent)?;
        if ino <= ROOT_INODE
            || self.nodes.contains_key(&ino)
            || self.names.contains_key(&(parent, name.to_owned()))
        {
            return Err(err(libc::EEXIST));
        }
        self.attach(ino, parent, name, generation, lookups, data);
        self.next = self.next.max(ino.saturating_add(1));
        Ok(())
    }

    /// Restores `saved` inodes into a fresh table: each path is resolved
    /// from the root one component at a time with `resolve` (the parent's
    /// data, the parent's path and the name; `Ok(None)` when the name is
    /// not there), so the data is what the backend finds now. A directory
    /// on the way that was not saved is added with a new number and no
    /// lookups. Inodes without a path, whose path no longer resolves or
    /// whose name another saved inode took, are left out; returns how many.
    /// Call [`Self::reserve_below`] with the saved counter first, so the
    /// numbers given to unsaved directories are new.
    pub fn restore(
        &mut self,
        saved: &[SavedNode],
        mut resolve: impl FnMut(&T, &[u8], &CStr) -> io::Result<Option<T>>,
    ) -> usize {
        let mut order: Vec<(&SavedNode, &[u8])> = saved
            .iter()
            .filter_map(|n| n.path.as_deref().map(|p| (n, p)))
            .collect();
        let mut lost = saved.len() - order.len();
        // Parents first: a saved parent is shallower than its children.
        order.sort_by_key(|(_, p)| p.iter().filter(|&&b| b == b'/').count());
        for (node, path) in order {
            if self.restore_one(node, path, &mut resolve).is_err() {
                lost += 1;
            }
        }
        // Directories added on the way to inodes that then failed.
        let ids: Vec<Inode> = self.nodes.keys().copied().collect();
        for ino in ids {
            self.collect(ino);
        }
        lost
    }

    fn restore_one(
        &mut self,
        node: &SavedNode,
        path: &[u8],
        resolve: &mut impl FnMut(&T, &[u8], &CStr) -> io::Result<Option<T>>,
    ) -> io::Result<()> {
        let mut cur = ROOT_INODE;
        let mut start = 0;
        let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let name = CString::new(*part).map_err(|_| err(libc::EINVAL))?;
            let parent_path = &path[..start.max(1) - 1];
            start += part.len() + 1;
            if let Some(child) = self.child(cur, &name) {
                if last {
                    return Err(err(libc::EEXIST));
                }
                cur = child;
                continue;
            }
            let data = resolve(&self.get(cur)?.data, parent_path, &name)?
                .ok_or_else(|| err(libc::ENOENT))?;
            if last {
                self.insert_as(node.inode, cur, &name, node.generation, node.lookups, data)?;
            } else {
                let ino = self.next;
                self.insert_as(ino, cur, &name, ino, 0, data)?;
                cur = ino;
            }
        }
        Ok(())
    }

    /// Number of live inodes, the root included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_forget_frees_parents() {
        let mut t = PathTable::new(());
        let a = t.insert(ROOT_INODE, c"a", ()).unwrap();
        let b = t.insert(a, c"b", ()).unwrap();
        let c = t.insert(ROOT_INODE, c"c", ()).unwrap();
        assert_eq!(t.path(b).unwrap(), b"a/b");
        t.move_to(a, c, c"a2").unwrap();
        assert_eq!(t.path(b).unwrap(), b"c/a2/b");
        assert_eq!(
            t.move_to(c, b, c"loop").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert!(t.forget(a, 1).is_empty(), "a still has child b");
        let freed: Vec<Inode> = t.forget(b, 1).into_iter().map(|(i, _)| i).collect();
        assert_eq!(freed, vec![b, a]);
        assert_eq!(t.len(), 2);
        t.detach(ROOT_INODE, c"c");
        assert_eq!(t.path(c).unwrap_err().raw_os_error(), Some(libc::ESTALE));
        assert_eq!(t.get(999).err().unwrap().raw_os_error(), Some(libc::ESTALE));
    }

    fn saved(inode: Inode, path: Option<&str>, lookups: u64) -> SavedNode {
        SavedNode {
            inode,
            path: path.map(|p| p.as_bytes().to_vec()),
            lookups,
            generation: inode + 100,
        }
    }

    #[test]
    fn save_lists_paths_counts_and_detached_inodes() {
        let mut t = PathTable::new(());
        let a = t.insert(ROOT_INODE, c"a", ()).unwrap();
        let b = t.insert(a, c"b", ()).unwrap();
        t.add_lookup(b).unwrap();
        let gone = t.insert(ROOT_INODE, c"gone", ()).unwrap();
        t.detach(ROOT_INODE, c"gone");
        t.forget(a, 1);
        let mut s = t.save();
        s.sort_by_key(|n| n.inode);
        let want = |inode, path: Option<&[u8]>, lookups| SavedNode {
            inode,
            path: path.map(<[u8]>::to_vec),
            lookups,
            generation: inode,
        };
        assert_eq!(
            s,
            vec![
                want(a, Some(b"a"), 0),
                want(b, Some(b"a/b"), 2),
                want(gone, None, 1)
            ]
        );
        assert_eq!(t.next_inode(), gone + 1);
    }

    #[test]
    fn restore_keeps_ids_adds_unsaved_parents_and_leaves_out_what_fails() {
        let mut t = PathTable::new(0u32);
        assert!(t.is_fresh());
        t.reserve_below(50);
        let nodes = [
            saved(7, Some("a/b/c"), 1),
            saved(5, Some("a"), 0),
            saved(9, Some("x/missing"), 1),
            saved(10, Some("x/y/missing"), 1),
            saved(11, None, 2),
            saved(12, Some("a"), 1),
            saved(13, Some("d"), 1),
        ];
        let mut asked = Vec::new();
        let lost = t.restore(&nodes, |parent, parent_path, name| {
            asked.push((*parent, parent_path.to_vec(), name.to_owned()));
            Ok((name.to_bytes() != b"missing").then_some(parent + 1))
        });
        // 9 and 10 do not resolve, 11 had no path, 12's name was taken by 5.
        assert_eq!(lost, 4);
        assert!(!t.is_fresh());
        assert_eq!(t.path(7).unwrap(), b"a/b/c");
        assert_eq!(t.get(7).unwrap().generation, 107);
        assert_eq!(
            t.get(7).unwrap().data,
            3,
            "resolved under its parents' data"
        );
        assert_eq!(t.path(13).unwrap(), b"d");
        // "a/b" was not saved: it got a new number, no lookups, and lives
        // while 7 does.
        let b = t.child(5, c"b").unwrap();
        assert!(b >= 50);
        assert!(asked.contains(&(2, b"a/b".to_vec(), c"c".to_owned())));
        // x and x/y were only on the way to inodes that failed: pruned.
        assert_eq!(t.child(ROOT_INODE, c"x"), None);
        for lost in [9, 10, 11, 12] {
            assert_eq!(
                t.get(lost).err().unwrap().raw_os_error(),
                Some(libc::ESTALE)
            );
        }
        assert_eq!(t.len(), 5, "root, a, a/b, a/b/c, d");
        // Forgetting 7 frees it and then the unsaved a/b; a (lookups 0) goes too.
        let freed: Vec<Inode> = t.forget(7, 1).into_iter().map(|(i, _)| i).collect();
        assert_eq!(freed, vec![7, b, 5]);
        assert!(t.forget(999, 1).is_empty(), "unknown ids are harmless");
        let new = t.insert(ROOT_INODE, c"n", 0).unwrap();
        assert!(new > b);
    }

    #[test]
    fn insert_as_refuses_taken_numbers_and_names() {
        let mut t = PathTable::new(());
        t.insert_as(5, ROOT_INODE, c"a", 5, 1, ()).unwrap();
        let e = |r: io::Result<()>| r.unwrap_err().raw_os_error();
        assert_eq!(
            e(t.insert_as(5, ROOT_INODE, c"b", 5, 1, ())),
            Some(libc::EEXIST)
        );
        assert_eq!(
            e(t.insert_as(6, ROOT_INODE, c"a", 6, 1, ())),
            Some(libc::EEXIST)
        );
        assert_eq!(
            e(t.insert_as(ROOT_INODE, 5, c"r", 1, 1, ())),
            Some(libc::EEXIST)
        );
        assert_eq!(e(t.insert_as(7, 99, c"c", 7, 1, ())), Some(libc::ESTALE));
        assert_eq!(t.next_inode(), 6);
    }
}
