//! Open file and directory handles of a host-backed backend, capped so a
//! guest that opens without closing runs into `EMFILE` instead of
//! exhausting the host process's descriptors or memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::io;

use crate::filesystem::{Handle, Inode};
use crate::host_util::err;
use crate::saved_state::{reopen_flags, SavedHandle};

/// What a handle was opened on and how, kept so that a snapshot can reopen
/// it in a fresh backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The inode opened.
    pub inode: Inode,
    /// The guest's open flags.
    pub flags: u32,
    /// OPENDIR rather than OPEN or CREATE.
    pub dir: bool,
}

/// Handles by number; numbers are never reused.
pub(crate) struct HandleTable<T> {
    cap: usize,
    next: AtomicU64,
    map: Mutex<HashMap<Handle, (Arc<T>, Opened)>>,
}

impl<T> HandleTable<T> {
    /// An empty table admitting at most `cap` (at least one) open handles.
    pub fn new(cap: usize) -> Self {
        HandleTable {
            cap: cap.max(1),
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `value`, opened as `opened`, under a new handle; `EMFILE`
    /// when the table is full.
    pub fn insert(&self, value: T, opened: Opened) -> io::Result<Handle> {
        let mut map = self.map.lock().expect("handle table lock");
        if map.len() >= self.cap {
            return Err(err(libc::EMFILE));
        }
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        map.insert(h, (Arc::new(value), opened));
        Ok(h)
    }

    /// Stores `value` under `handle`, a number saved earlier: `EEXIST` if
    /// it is taken (or 0), `EMFILE` when the table is full. New handles
    /// are numbered above it.
    pub fn insert_as(&self, handle: Handle, value: T, opened: Opened) -> io::Result<()> {
        let mut map = self.map.lock().expect("handle table lock");
        if handle == 0 || map.contains_key(&handle) {
            return Err(err(libc::EEXIST));
        }
        if map.len() >= self.cap {
            return Err(err(libc::EMFILE));
        }
        map.insert(handle, (Arc::new(value), opened));
        self.reserve_below(handle.saturating_add(1));
        Ok(())
    }

    /// Makes new handle numbers start at `next` or above; never lowers the
    /// counter.
    pub fn reserve_below(&self, next: Handle) {
        self.next.fetch_max(next, Ordering::Relaxed);
    }

    /// The number the next new handle gets.
    pub fn next_handle(&self) -> Handle {
        self.next.load(Ordering::Relaxed)
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.map.lock().expect("handle table lock").is_empty()
    }

    /// Every open handle and what it was opened as, by number.
    pub fn save(&self) -> Vec<SavedHandle> {
        let map = self.map.lock().expect("handle table lock");
        let mut out: Vec<SavedHandle> = map
            .iter()
            .map(|(&handle, (_, o))| SavedHandle {
                handle,
                inode: o.inode,
                flags: o.flags,
                dir: o.dir,
            })
            .collect();
        out.sort_by_key(|h| h.handle);
        out
    }

    /// Reopens the `saved` handles under their numbers, each with `reopen`
    /// (whose flags have `O_CREAT`, `O_EXCL` and `O_TRUNC` already dropped);
    /// returns how many could not be (the guest gets `EBADF` for those).
    pub fn restore(
        &self,
        saved: &[SavedHandle],
        mut reopen: impl FnMut(&SavedHandle, u32) -> io::Result<T>,
    ) -> usize {
        let mut lost = 0;
        for h in saved {
            let opened = Opened {
                inode: h.inode,
                flags: h.flags,
                dir: h.dir,
            };
            if reopen(h, reopen_flags(h.flags))
                .and_then(|value| self.insert_as(h.handle, value, opened))
                .is_err()
            {
                lost += 1;
            }
        }
        lost
    }

    /// The value of `handle`, `EBADF` for unknown handles.
    pub fn get(&self, handle: Handle) -> io::Result<Arc<T>> {
        self.map
            .lock()
            .expect("handle table lock")
            .get(&handle)
            .map(|(v, _)| v.clone())
            .ok_or_else(|| err(libc::EBADF))
    }

    /// The value of a file (not directory) handle open on `inode`, if any.
    pub fn any_file_on(&self, inode: Inode) -> Option<Arc<T>> {
        self.map
            .lock()
            .expect("handle table lock")
            .values()
            .find(|(_, o)| o.inode == inode && !o.dir)
            .map(|(v, _)| v.clone())
    }

    /// Closes `handle`, `EBADF` if unknown.
    pub fn remove(&self, handle: Handle) -> io::Result<()> {
        self.map
            .lock()
            .expect("handle table lock")
            .remove(&handle)
            .map(|_| ())
            .ok_or_else(|| err(libc::EBADF))
    }

    /// Closes every handle.
    pub fn clear(&self) {
        self.map.lock().expect("handle table lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Opened = Opened {
        inode: 5,
        flags: 2,
        dir: false,
    };

    #[test]
    fn full_table_answers_emfile_and_unknown_handles_ebadf() {
        let t = HandleTable::new(2);
        let a = t.insert(1, O).unwrap();
        t.insert(2, O).unwrap();
        assert_eq!(
            t.insert(3, O).unwrap_err().raw_os_error(),
            Some(libc::EMFILE)
        );
        t.remove(a).unwrap();
        assert_eq!(*t.get(t.insert(4, O).unwrap()).unwrap(), 4);
        assert_eq!(t.get(a).unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(t.remove(a).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn saved_handles_come_back_under_their_numbers_and_new_ones_above() {
        let t = HandleTable::new(4);
        t.insert("a", O).unwrap();
        let dir = Opened {
            inode: 9,
            flags: 0,
            dir: true,
        };
        let b = t.insert("b", dir).unwrap();
        let saved = t.save();
        assert_eq!(saved.len(), 2);
        assert_eq!(
            saved[1],
            SavedHandle {
                handle: b,
                inode: 9,
                flags: 0,
                dir: true
            }
        );

        let fresh = HandleTable::new(4);
        assert!(fresh.is_empty());
        fresh.reserve_below(t.next_handle());
        fresh.insert_as(b, "b2", dir).unwrap();
        assert_eq!(*fresh.get(b).unwrap(), "b2");
        assert_eq!(
            fresh.insert_as(b, "x", O).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(
            fresh.insert_as(0, "x", O).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(fresh.insert("c", O).unwrap() > b);
        fresh.insert_as(100, "d", O).unwrap();
        assert_eq!(fresh.next_handle(), 101);
        fresh.reserve_below(5);
        assert_eq!(fresh.next_handle(), 101, "never lowered");
        fresh.insert_as(200, "e", O).unwrap();
        assert_eq!(
            fresh.insert_as(300, "f", O).unwrap_err().raw_os_error(),
            Some(libc::EMFILE)
        );
    }
}
