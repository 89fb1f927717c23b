//! A least-recently-used set of `O_PATH` descriptors, one per inode.
//!
//! Written by hand because it is a few lines over std maps and the crates
//! that do LRU are not available offline to this workspace. Descriptors
//! are `Arc`s: an operation that took one keeps it valid while it runs even
//! if another operation evicts it meanwhile, so the process briefly holds at
//! most `cap` plus the number of operations in flight.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::filesystem::Inode;

/// At most `cap` descriptors, evicting the least recently used.
pub(crate) struct FdCache {
    cap: usize,
    tick: u64,
    by_inode: HashMap<Inode, (Arc<OwnedFd>, u64)>,
    by_age: BTreeMap<u64, Inode>,
}

impl FdCache {
    /// An empty cache holding at most `cap` (at least one) descriptors.
    pub fn new(cap: usize) -> Self {
        FdCache {
            cap: cap.max(1),
            tick: 0,
            by_inode: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// The descriptor of `ino`, marked as just used.
    pub fn get(&mut self, ino: Inode) -> Option<Arc<OwnedFd>> {
        let (fd, age) = self.by_inode.get_mut(&ino)?;
        self.by_age.remove(age);
        self.tick += 1;
        *age = self.tick;
        self.by_age.insert(self.tick, ino);
        Some(fd.clone())
    }

    /// Stores (or replaces) the descriptor of `ino`, evicting the oldest
    /// beyond the cap.
    pub fn put(&mut self, ino: Inode, fd: Arc<OwnedFd>) {
        self.remove(ino);
        self.tick += 1;
        self.by_inode.insert(ino, (fd, self.tick));
        self.by_age.insert(self.tick, ino);
        while self.by_inode.len() > self.cap {
            let Some((_, old)) = self.by_age.pop_first() else {
                break;
            };
            self.by_inode.remove(&old);
        }
    }

    /// Drops the descriptor of `ino`, if cached.
    pub fn remove(&mut self, ino: Inode) {
        if let Some((_, age)) = self.by_inode.remove(&ino) {
            self.by_age.remove(&age);
        }
    }

    /// Drops every descriptor.
    pub fn clear(&mut self) {
        self.by_inode.clear();
        self.by_age.clear();
    }

    /// Number of cached descriptors.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/").unwrap().into())
    }

    #[test]
    fn evicts_least_recently_used_beyond_cap() {
        let mut c = FdCache::new(2);
        c.put(1, fd());
        c.put(2, fd());
        assert!(c.get(1).is_some());
        c.put(3, fd());
        assert_eq!(c.len(), 2);
        assert!(c.get(2).is_none(), "2 was the least recently used");
        assert!(c.get(1).is_some() && c.get(3).is_some());
        c.remove(1);
        assert_eq!(c.len(), 1);
    }
}
