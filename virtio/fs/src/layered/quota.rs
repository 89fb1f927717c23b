//! The size limit of a sandbox's writable layer.
//!
//! Every name in the upper tree (file, directory, symlink, device, hard
//! link, whiteout or opaque marker) costs [`NAME_COST`] bytes, for its
//! inode and directory entry, and counts against the name limit; a regular
//! file's data costs its size or allocation, whichever is larger, rounded
//! up to [`BLOCK`] (so a sparse file costs its apparent size: the host may
//! fill it later). The charge is therefore never below what `du` reports
//! for the upper tree, and a change that would take it past either limit
//! fails with `ENOSPC` before it touches the host. Removing a whiteout
//! marker is never refused (so `rm` works on a full disk); they are bounded
//! by the lower layers' names.
//!
//! The usage of an existing upper tree is counted when the backend opens
//! it. Data written through a handle whose file was already unlinked stays
//! charged until the backend is opened again (the host keeps it until the
//! handle closes).

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::filesystem::StatFs;
use crate::host_util::err;

/// Charge of one name in the upper tree.
pub(crate) const NAME_COST: u64 = 4096;
/// Data is charged in units of this many bytes (also STATFS's block size).
pub(crate) const BLOCK: u64 = 4096;

/// Bytes and names charged so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes charged.
    pub bytes: u64,
    /// Names in the upper tree.
    pub names: u64,
}

/// The limits and the running usage.
pub(crate) struct Quota {
    max_bytes: u64,
    max_names: u64,
    usage: Mutex<Usage>,
}

/// Data charge of a regular file with this stat.
pub(crate) fn data_cost(st: &libc::stat64) -> u64 {
    let size = (st.st_size.max(0) as u64).max(st.st_blocks.max(0) as u64 * 512);
    round_up(size)
}

/// `n` rounded up to [`BLOCK`].
pub(crate) fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK).saturating_mul(BLOCK)
}

impl Quota {
    /// A quota of `max_bytes` and `max_names` starting from `usage`.
    pub fn new(max_bytes: u64, max_names: u64, usage: Usage) -> Self {
        Quota {
            max_bytes,
            max_names,
            usage: Mutex::new(usage),
        }
    }

    /// The usage, locked: size-changing operations hold it across the host
    /// call so two of them cannot both fit in the same room.
    pub fn lock(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().expect("quota lock")
    }

    /// Charges `bytes` and `names`, or `ENOSPC` if either limit would be passed.
    pub fn charge(&self, u: &mut Usage, bytes: u64, names: u64) -> io::Result<()> {
        let b = u.bytes.saturating_add(bytes);
        let n = u.names.saturating_add(names);
        if b > self.max_bytes || n > self.max_names {
            return Err(err(libc::ENOSPC));
        }
        *u = Usage { bytes: b, names: n };
        Ok(())
    }

    /// Charges without checking (whiteouts: see the module docs).
    pub fn force(u: &mut Usage, bytes: u64, names: u64) {
        u.bytes = u.bytes.saturating_add(bytes);
        u.names = u.names.saturating_add(names);
    }

    /// Gives back `bytes` and `names`.
    pub fn release(u: &mut Usage, bytes: u64, names: u64) {
        u.bytes = u.bytes.saturating_sub(bytes);
        u.names = u.names.saturating_sub(names);
    }

    /// Checks that a file's data charge may go from `old` to `new`.
    pub fn check_growth(&self, u: &Usage, old: u64, new: u64) -> io::Result<()> {
        if new > old && u.bytes.saturating_add(new - old) > self.max_bytes {
            return Err(err(libc::ENOSPC));
        }
        Ok(())
    }

    /// Replaces a data charge of `old` with `new`.
    pub fn settle(u: &mut Usage, old: u64, new: u64) {
        u.bytes = u.bytes.saturating_sub(old).saturating_add(new);
    }

    /// STATFS: the limits and the usage, free space also capped by what the
    /// host filesystem has left.
    pub fn statfs(&self, host: &StatFs) -> StatFs {
        let u = *self.lock();
        let blocks = self.max_bytes / BLOCK;
        let host_free = host.bavail.saturating_mul(u64::from(host.frsize.max(1))) / BLOCK;
        let free = (self.max_bytes.saturating_sub(u.bytes) / BLOCK).min(host_free);
        let files_free = self.max_names.saturating_sub(u.names).min(host.ffree);
        StatFs {
            blocks,
            bfree: free,
            bavail: free,
            files: self.max_names,
            ffree: files_free,
            bsize: BLOCK as u32,
            namelen: host.namelen,
            frsize: BLOCK as u32,
        }
    }
}

/// Counts the usage of the tree under `dir` (never following symlinks;
/// data of a hard-linked file once).
pub(crate) fn count_tree(dir: &Path) -> io::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let m = std::fs::symlink_metadata(entry.path())?;
            usage.names += 1;
            usage.bytes += NAME_COST;
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() && (m.nlink() < 2 || seen.insert((m.dev(), m.ino()))) {
                let size = m.size().max(m.blocks() * 512);
                usage.bytes += round_up(size);
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_either_limit_and_statfs_reports_them() {
        let q = Quota::new(10 * BLOCK, 3, Usage::default());
        let mut u = q.lock();
        q.charge(&mut u, 4 * BLOCK, 1).unwrap();
        assert_eq!(
            q.charge(&mut u, 7 * BLOCK, 1).unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
        q.charge(&mut u, BLOCK, 2).unwrap();
        assert_eq!(
            q.charge(&mut u, 0, 1).unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
        assert!(q.check_growth(&u, BLOCK, 6 * BLOCK).is_ok());
        assert!(q.check_growth(&u, BLOCK, 7 * BLOCK).is_err());
        drop(u);
        let host = StatFs {
            blocks: 1000,
            bfree: 1000,
            bavail: 1000,
            files: 1000,
            ffree: 1000,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        };
        let s = q.statfs(&host);
        assert_eq!((s.blocks, s.bavail, s.files, s.ffree), (10, 5, 3, 0));
    }
}
