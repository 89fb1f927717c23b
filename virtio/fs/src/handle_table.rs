//! Open file and directory handles of a host-backed backend, capped so a
//! guest that opens without closing runs into `EMFILE` instead of
//! exhausting the host process's descriptors or memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::io;

use crate::filesystem::Handle;
use crate::host_util::err;

/// Handles by number; numbers are never reused.
pub(crate) struct HandleTable<T> {
    cap: usize,
    next: AtomicU64,
    map: Mutex<HashMap<Handle, Arc<T>>>,
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

    /// Stores `value` under a new handle, `EMFILE` when the table is full.
    pub fn insert(&self, value: T) -> io::Result<Handle> {
        let mut map = self.map.lock().expect("handle table lock");
        if map.len() >= self.cap {
            return Err(err(libc::EMFILE));
        }
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        map.insert(h, Arc::new(value));
        Ok(h)
    }

    /// The value of `handle`, `EBADF` for unknown handles.
    pub fn get(&self, handle: Handle) -> io::Result<Arc<T>> {
        self.map
            .lock()
            .expect("handle table lock")
            .get(&handle)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
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

    #[test]
    fn full_table_answers_emfile_and_unknown_handles_ebadf() {
        let t = HandleTable::new(2);
        let a = t.insert(1).unwrap();
        t.insert(2).unwrap();
        assert_eq!(t.insert(3).unwrap_err().raw_os_error(), Some(libc::EMFILE));
        t.remove(a).unwrap();
        assert_eq!(*t.get(t.insert(4).unwrap()).unwrap(), 4);
        assert_eq!(t.get(a).unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(t.remove(a).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }
}
