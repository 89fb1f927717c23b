//! What a backend saves for a VM snapshot, so that a *fresh* backend in the
//! restored VM answers for the node ids and file handles the guest kernel
//! still holds.
//!
//! The guest kernel keeps FUSE node ids (with lookup counts) and open file
//! handles across a snapshot; the process that serves them does not. A
//! backend therefore saves, for every live inode, the path it had beneath
//! the share root and its counts, and for every open handle the inode and
//! the open flags. The restoring backend resolves each path again with its
//! own lookup logic (so whatever it keeps per inode, such as which layers
//! hold a name, is its own) and reopens each handle by path (the layered
//! backend also reopens handles on files unlinked while open, from copies
//! its freeze kept). What no longer resolves is left out: the server answers
//! `ESTALE` for unknown inodes and `EBADF` for unknown handles, as it would
//! for any forgotten one.
//!
//! The state comes from a snapshot file, which may be damaged or forged:
//! [`FsState::check`] bounds every count and path before a backend acts on
//! it, and restoring never panics.

use std::collections::HashSet;
use std::io;

use serde::{Deserialize, Serialize};

use crate::filesystem::{Handle, Inode, ROOT_INODE};

/// Most inodes a state may hold: the kernel rarely holds more than a few
/// hundred thousand, and this bounds the work a forged state can ask for.
pub const MAX_SAVED_NODES: usize = 1 << 20;
/// Most open handles a state may hold (above every backend's handle cap).
pub const MAX_SAVED_HANDLES: usize = 1 << 20;
/// Longest saved path (Linux's `PATH_MAX`, NUL excluded).
pub const MAX_SAVED_PATH: usize = 4095;
/// Inode and handle numbers must stay below this: the layered backend sets
/// the top bit for listed names the guest never looked up, and counting
/// past it would overflow.
pub const MAX_SAVED_ID: u64 = 1 << 62;

/// One live inode of a saved backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNode {
    /// The inode number the guest knows.
    pub inode: Inode,
    /// Its path from the share root (components joined by `/`, no leading
    /// `/`), or `None` when it had lost its name (unlinked or replaced):
    /// such an inode cannot be found again and is not restored.
    pub path: Option<Vec<u8>>,
    /// Lookups the guest kernel holds on it (0 for a directory kept only
    /// because an inode below it is held).
    pub lookups: u64,
    /// Its FUSE generation.
    pub generation: u64,
}

/// One open file or directory handle of a saved backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHandle {
    /// The handle number the guest knows.
    pub handle: Handle,
    /// The inode it was opened on.
    pub inode: Inode,
    /// The open flags as the guest gave them (`O_CREAT`, `O_EXCL` and
    /// `O_TRUNC` are dropped when reopening: the file exists by then and
    /// its data must survive).
    pub flags: u32,
    /// A directory handle (OPENDIR) rather than a file one.
    pub dir: bool,
}

/// Everything a backend needs to answer for the ids of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// Every live inode except the root, in any order.
    pub nodes: Vec<SavedNode>,
    /// Every open handle.
    pub handles: Vec<SavedHandle>,
    /// The next inode number the backend would hand out, so new inodes
    /// never collide with restored ones.
    pub next_inode: Inode,
    /// The next handle number the backend would hand out.
    pub next_handle: Handle,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Whether `path` is a plain relative path: at most [`MAX_SAVED_PATH`]
/// bytes, no NUL, no empty, `.` or `..` component, components of at most
/// 255 bytes.
pub(crate) fn valid_path(path: &[u8]) -> bool {
    path.len() <= MAX_SAVED_PATH
        && !path.is_empty()
        && !path.contains(&0)
        && path
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".." && c.len() <= 255)
}

impl FsState {
    /// Refuses a state no backend could have saved: too many nodes or
    /// handles, ids or lookup counts out of range, repeated ids, ids at or
    /// above the next counters, or a path that is not plain (see
    /// [`MAX_SAVED_PATH`]).
    pub fn check(&self) -> io::Result<()> {
        if self.nodes.len() > MAX_SAVED_NODES {
            return Err(invalid(format!("{} saved inodes", self.nodes.len())));
        }
        if self.handles.len() > MAX_SAVED_HANDLES {
            return Err(invalid(format!("{} saved handles", self.handles.len())));
        }
        if self.next_inode > MAX_SAVED_ID || self.next_handle > MAX_SAVED_ID {
            return Err(invalid("saved id counters out of range".into()));
        }
        let mut seen = HashSet::with_capacity(self.nodes.len());
        for n in &self.nodes {
            if n.inode <= ROOT_INODE || n.inode >= self.next_inode || !seen.insert(n.inode) {
                return Err(invalid(format!("saved inode {} is invalid", n.inode)));
            }
            // Counting on from a forged huge count would overflow.
            if n.lookups > MAX_SAVED_ID {
                return Err(invalid(format!(
                    "saved inode {} has {} lookups",
                    n.inode, n.lookups
                )));
            }
            if n.path.as_deref().is_some_and(|p| !valid_path(p)) {
                return Err(invalid(format!("saved inode {} has a bad path", n.inode)));
            }
        }
        let mut seen = HashSet::with_capacity(self.handles.len());
        for h in &self.handles {
            if h.handle == 0 || h.handle >= self.next_handle || !seen.insert(h.handle) {
                return Err(invalid(format!("saved handle {} is invalid", h.handle)));
            }
        }
        Ok(())
    }
}

/// The open flags a saved handle is reopened with.
pub(crate) fn reopen_flags(flags: u32) -> u32 {
    flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32)
}

/// The error a backend's restore gives when it is not fresh.
pub(crate) fn not_fresh() -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        "a snapshot can only be restored into a fresh backend (no inodes or handles in use)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(inode: Inode, path: &[u8]) -> SavedNode {
        SavedNode {
            inode,
            path: Some(path.to_vec()),
            lookups: 1,
            generation: inode,
        }
    }

    #[test]
    fn check_refuses_bad_paths_ids_and_counts() {
        let ok = FsState {
            nodes: vec![node(2, b"a"), node(3, b"a/b")],
            handles: vec![SavedHandle {
                handle: 1,
                inode: 3,
                flags: 0,
                dir: false,
            }],
            next_inode: 4,
            next_handle: 2,
        };
        ok.check().unwrap();
        for bad in [
            &b"../x"[..],
            b"a/../b",
            b"/a",
            b"a//b",
            b"a/",
            b"",
            b".",
            b"a\0b",
            &[b'x'; 256],
            &[b'x'; 4096],
        ] {
            let mut s = ok.clone();
            s.nodes[1].path = Some(bad.to_vec());
            assert!(s.check().is_err(), "{bad:?}");
        }
        let mut s = ok.clone();
        s.nodes[1].inode = 2;
        assert!(s.check().is_err(), "duplicate inode");
        let mut s = ok.clone();
        s.nodes[1].inode = ROOT_INODE;
        assert!(s.check().is_err(), "root");
        let mut s = ok.clone();
        s.nodes[1].inode = 9;
        assert!(s.check().is_err(), "at or above next_inode");
        let mut s = ok.clone();
        s.nodes[0].lookups = u64::MAX;
        assert!(s.check().is_err(), "lookups out of range");
        let mut s = ok.clone();
        s.next_inode = u64::MAX;
        assert!(s.check().is_err(), "counter out of range");
        let mut s = ok.clone();
        s.handles.push(s.handles[0].clone());
        assert!(s.check().is_err(), "duplicate handle");
        let mut s = ok;
        s.nodes = vec![node(2, b"a"); MAX_SAVED_NODES + 1];
        assert!(s.check().is_err(), "too many nodes");
    }

    #[test]
    fn reopen_drops_create_exclusive_and_truncate() {
        let f =
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_APPEND) as u32;
        assert_eq!(reopen_flags(f), (libc::O_RDWR | libc::O_APPEND) as u32);
    }
}
