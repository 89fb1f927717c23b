//! Snapshot state of a [`PassthroughFs`] (see [`crate::saved_state`]).
//!
//! The shared directory lives on in the host, so a fresh backend over the
//! same directory finds every saved path again, unless the host changed it
//! meanwhile. Each inode is bound to the host object its path names *now*
//! (its `(dev, ino)` is taken afresh, since a fork may see a copy of the
//! directory); handles are reopened by path with their saved flags.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsRawFd;

use super::kept_mode::KeptMode;
use super::{HostId, OpenObject, PassthroughFs};
use crate::host_util as host;
use crate::saved_state::{not_fresh, FsState};
use std::sync::Mutex;

impl PassthroughFs {
    /// [`crate::FileSystem::save_state`]: the table and the handles.
    pub(super) fn save(&self) -> io::Result<FsState> {
        let state = self.lock();
        Ok(FsState {
            nodes: state.table.save(),
            handles: self.handles.save(),
            next_inode: state.table.next_inode(),
            next_handle: self.handles.next_handle(),
        })
    }

    /// [`crate::FileSystem::restore_state`], on a fresh backend only.
    pub(super) fn restore(&self, saved: &FsState) -> io::Result<()> {
        saved.check()?;
        let lost_nodes = {
            let mut state = self.lock();
            if !state.table.is_fresh() || !self.handles.is_empty() {
                return Err(not_fresh());
            }
            let root = host::fstat(self.root.as_raw_fd())?;
            let mut seen = HashSet::from([(root.st_dev, root.st_ino)]);
            state.table.reserve_below(saved.next_inode);
            let lost = state.table.restore(&saved.nodes, |_, parent_path, name| {
                let mut path = parent_path.to_vec();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name.to_bytes());
                let fd = match host::open_beneath(self.root.as_raw_fd(), &path) {
                    Ok(fd) => fd,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let st = host::fstat(fd.as_raw_fd())?;
                // One inode per host object, as lookups keep it: a second
                // saved name of the same object is left out.
                if !seen.insert((st.st_dev, st.st_ino)) {
                    return Ok(None);
                }
                let kind = st.st_mode & libc::S_IFMT;
                Ok(Some(HostId {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind,
                    kept: KeptMode::load(fd.as_raw_fd(), kind),
                }))
            });
            let state = &mut *state;
            for (ino, node) in state.table.iter() {
                state.by_host.insert((node.data.dev, node.data.ino), ino);
            }
            lost
        };
        self.handles.reserve_below(saved.next_handle);
        let lost_handles = self.handles.restore(&saved.handles, |h, flags| {
            if h.dir {
                self.open_dir(h.inode)
                    .map(|fd| OpenObject::Dir(Mutex::new(fd)))
            } else {
                self.open_file(h.inode, flags).map(OpenObject::File)
            }
        });
        if lost_nodes > 0 || lost_handles > 0 {
            tracing::warn!(
                "passthrough fs restore: {lost_nodes} of {} inodes and {lost_handles} of {} \
                 handles no longer resolve; the guest gets ESTALE/EBADF for them",
                saved.nodes.len(),
                saved.handles.len()
            );
        }
        Ok(())
    }
}
