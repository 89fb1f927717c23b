//! Snapshot state of a [`LayeredFs`] (see [`crate::saved_state`]).
//!
//! Saving records the path of every inode and the inode and flags of every
//! handle. Restoring happens in a fresh backend built over the same layers
//! with the source's upper frozen on top of them (see
//! [`LayeredFs::freeze_upper`]) and a fresh upper: each path is resolved by
//! the normal merge rules, so what the fresh backend keeps per inode (upper
//! or not, which layers hold the name) describes its own tree, and each
//! handle is reopened as OPEN would, so a handle open for writing copies
//! its file up into the fresh upper. A handle on a file that had lost its
//! last name (unlinked while open) is reopened on a private copy of what
//! the freeze kept of it (see [`super::freeze::DETACHED_DIR`]); its inode
//! stays unknown, as in the source, where it resolves to no path either.

use std::collections::hash_map::{Entry, HashMap};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::upper_meta::GuestMeta;
use super::{is_reserved, LayeredFs, OpenObject};
use crate::filesystem::Inode;
use crate::host_util::{self as host, err, CONFINED};
use crate::saved_state::{not_fresh, FsState};

impl LayeredFs {
    /// [`crate::FileSystem::save_state`]: the table and the handles.
    pub(super) fn save(&self) -> io::Result<FsState> {
        let _r = self.tree.read().expect("tree lock");
        let t = self.table.lock().expect("layered table lock");
        Ok(FsState {
            nodes: t.save(),
            handles: self.handles.save(),
            next_inode: t.next_inode(),
            next_handle: self.handles.next_handle(),
        })
    }

    /// [`crate::FileSystem::restore_state`], on a fresh backend only.
    pub(super) fn restore(&self, state: &FsState) -> io::Result<()> {
        state.check()?;
        let lost_nodes = {
            let _r = self.tree.read().expect("tree lock");
            let mut t = self.table.lock().expect("layered table lock");
            if !t.is_fresh() || !self.handles.is_empty() {
                return Err(not_fresh());
            }
            t.reserve_below(state.next_inode);
            t.restore(&state.nodes, |parent, parent_path, name| {
                // A whiteout or marker is a file in the tree, never a name
                // the guest could have held.
                if is_reserved(name.to_bytes()) {
                    return Ok(None);
                }
                self.resolve(parent, parent_path, name)
            })
        };
        self.handles.reserve_below(state.next_handle);
        let mut copies = HashMap::new();
        let lost_handles = self.handles.restore(&state.handles, |h, flags| {
            if h.dir {
                return self.open_dir(h.inode).map(OpenObject::Dir);
            }
            let named = {
                let t = self.table.lock().expect("layered table lock");
                t.path(h.inode).is_ok()
            };
            if named {
                self.open_file(h.inode, flags).map(OpenObject::File)
            } else {
                self.reopen_detached(h.inode, flags, &mut copies)
                    .map(OpenObject::File)
            }
        });
        // Inodes that had no name (files unlinked while open) were never to be found again;
        // their handles are what the guest uses.
        let unnamed = state.nodes.iter().filter(|n| n.path.is_none()).count();
        let lost_nodes = lost_nodes.saturating_sub(unnamed);
        if lost_nodes > 0 || lost_handles > 0 {
            tracing::warn!(
                "layered fs restore: {lost_nodes} of {} inodes and {lost_handles} of {} handles \
                 no longer resolve; the guest gets ESTALE/EBADF for them",
                state.nodes.len(),
                state.handles.len()
            );
        }
        Ok(())
    }

    /// A handle the snapshot's guest held on a file with no name left: reopened on this
    /// backend's own copy of what the freeze kept (`detached/INODE` beside the top lower
    /// layer's tree; see [`super::freeze::DETACHED_DIR`]). The copy is an unlinked file in
    /// the work directory, shared by the inode's handles (`copies`) and by nothing else:
    /// writes through them change neither the snapshot nor another fork.
    fn reopen_detached(
        &self,
        inode: Inode,
        flags: u32,
        copies: &mut HashMap<Inode, OwnedFd>,
    ) -> io::Result<OwnedFd> {
        let dir = self.detached.as_ref().ok_or_else(|| err(libc::ESTALE))?;
        let copy = match copies.entry(inode) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let name = host::cstring(inode.to_string().as_bytes())?;
                let src = host::openat2(
                    dir.as_raw_fd(),
                    &name,
                    libc::O_RDONLY | libc::O_NOFOLLOW,
                    0,
                    CONFINED,
                )
                .map_err(|_| err(libc::ESTALE))?;
                if host::fstat(src.as_raw_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(err(libc::ESTALE));
                }
                let (tmp, copy) = self.new_work_file()?;
                host::unlinkat(self.work.as_raw_fd(), &tmp, 0)?;
                host::copy_file(src.as_raw_fd(), copy.as_raw_fd())?;
                if let Ok(Some(meta)) = GuestMeta::load(self.xattr_ns, src.as_raw_fd()) {
                    let _ = meta.store(self.xattr_ns, copy.as_raw_fd());
                }
                e.insert(copy)
            }
        };
        host::reopen(copy.as_raw_fd(), host::host_open_flags(flags))
    }
}
