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
        self.nodes.get_mut(&parent).expect("checked above").children += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
                attached: true,
                generation: ino,
                data,
                lookups: 1,
                children: 0,
            },
        );
        self.names.insert((parent, name.to_owned()), ino);
        Ok(ino)
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
}
