//! [`DenyPaths`]: guest paths the guest may not touch.
//!
//! Every operation whose path (or rename/link target) is one of the listed
//! paths or lies under one fails with EACCES, lookups included, so the
//! guest cannot open, create, stat or rename into them.
//!
//! Paths are not enough on their own: renaming an ancestor (`mv /a /b`
//! when `/a/secret` is denied) or reaching the same object through another
//! hard link would uncover it under a name no rule lists. So the hook also
//! decides by the object: when first used (and again before each rename or
//! link, for listed paths that did not exist yet) it looks each listed path
//! up in the backend, holds a lookup reference to what it found so its
//! node id stays the same through renames, and then refuses
//! every operation on those nodes and every reply that would hand one to
//! the guest (lookup, create, link, ...), whatever name it came by.
//! Operations on a node whose path the hook cannot establish (the guest
//! never looked it up through this server) are denied too; a node that
//! lost its last name to a rename while the guest held it is judged by
//! identity alone.
//!
//! Limits: names still show up in directory listings (hiding them needs the
//! listing rewritten); what is below a denied directory is protected by the
//! directory (the guest cannot look anything up in it), so a hard link the
//! host made to a file inside it is only refused if that file is listed
//! itself; backends that give each hard link its own node id (the layered
//! backend's lower layers) are judged by path for those links.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use super::op::{Hook, Op, OpKind};
use crate::filesystem::{Context, Entry, FileSystem, Inode, ROOT_INODE};

/// The deny hook. See the module docs.
pub struct DenyPaths {
    prefixes: Vec<PathBuf>,
    /// Per prefix: the backend node found for it, once found.
    nodes: Mutex<Vec<Option<Inode>>>,
    /// Whether the first resolution ran.
    started: std::sync::atomic::AtomicBool,
}

fn eacces() -> io::Error {
    io::Error::from_raw_os_error(libc::EACCES)
}

/// The caller the hook looks paths up as: root, so permissions never hide
/// a denied object from it.
const HOOK_CTX: Context = Context {
    uid: 0,
    gid: 0,
    pid: 0,
};

impl DenyPaths {
    /// Denies each of `paths` (absolute guest paths) and everything below.
    pub fn new(paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        let prefixes: Vec<PathBuf> = paths.into_iter().map(Into::into).collect();
        Self {
            nodes: Mutex::new(vec![None; prefixes.len()]),
            prefixes,
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Looks up the listed paths not found yet; keeps one lookup reference
    /// to each node found (forgets the directories walked through).
    fn resolve(&self, backend: &dyn FileSystem) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for (prefix, node) in self.prefixes.iter().zip(nodes.iter_mut()) {
            if node.is_none() {
                *node = walk(backend, prefix);
            }
        }
    }

    fn denied_nodes(&self) -> HashSet<Inode> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.iter().flatten().copied().collect()
    }

    fn ensure_started(&self, backend: &dyn FileSystem) {
        use std::sync::atomic::Ordering;
        if !self.started.swap(true, Ordering::AcqRel) {
            self.resolve(backend);
        }
    }

    fn path_denied(&self, path: &Path) -> bool {
        self.prefixes.iter().any(|d| path.starts_with(d))
    }
}

/// The backend node at `path`, one lookup reference kept; `None` if it
/// does not exist (or is the root, which is never a node of its own here).
fn walk(backend: &dyn FileSystem, path: &Path) -> Option<Inode> {
    let mut ino = ROOT_INODE;
    let mut walked: Vec<Inode> = Vec::new();
    for part in path.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        let Ok(cname) = CString::new(name.as_bytes()) else {
            break;
        };
        match backend.lookup(&HOOK_CTX, ino, &cname) {
            Ok(e) => {
                walked.push(e.inode);
                ino = e.inode;
            }
            Err(_) => {
                ino = ROOT_INODE;
                break;
            }
        }
    }
    let found = (ino != ROOT_INODE).then_some(ino);
    // Keep the reference to the node itself, give back the ones taken on
    // the way (the backend keeps the path of a node it still knows).
    if found.is_some() {
        walked.pop();
    }
    for w in walked {
        backend.forget(w, 1);
    }
    found
}

impl Hook for DenyPaths {
    fn before(&self, op: &Op<'_>) -> io::Result<()> {
        self.ensure_started(op.backend);
        if matches!(op.kind, OpKind::Rename | OpKind::Link) {
            self.resolve(op.backend);
        }
        if matches!(op.kind, OpKind::Release | OpKind::Releasedir) {
            return Ok(());
        }
        let by_path = [&op.path, &op.new_path]
            .into_iter()
            .flatten()
            .any(|p| self.path_denied(p));
        if by_path || (op.path.is_none() && !op.detached) {
            return Err(eacces());
        }
        if self.denied_nodes().contains(&op.inode) {
            return Err(eacces());
        }
        Ok(())
    }

    fn check_entry(&self, op: &Op<'_>, entry: &Entry) -> io::Result<()> {
        self.ensure_started(op.backend);
        if self.denied_nodes().contains(&entry.inode) {
            return Err(eacces());
        }
        Ok(())
    }
}
