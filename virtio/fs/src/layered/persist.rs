//! Snapshot state of a [`LayeredFs`] (see [`crate::saved_state`]).
//!
//! Saving records the path of every inode and the inode and flags of every
//! handle. Restoring happens in a fresh backend built over the same layers
//! with the source's upper frozen on top of them (see
//! [`LayeredFs::freeze_upper`]) and a fresh upper: each path is resolved by
//! the normal merge rules, so what the fresh backend keeps per inode (upper
//! or not, which layers hold the name) describes its own tree, and each
//! handle is reopened as OPEN would, so a handle open for writing copies
//! its file up into the fresh upper.

use std::io;

use super::{is_reserved, LayeredFs, OpenObject};
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
        let lost_handles = self.handles.restore(&state.handles, |h, flags| {
            if h.dir {
                self.open_dir(h.inode).map(OpenObject::Dir)
            } else {
                self.open_file(h.inode, flags).map(OpenObject::File)
            }
        });
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
}
