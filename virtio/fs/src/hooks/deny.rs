//! [`DenyPaths`]: guest paths the guest may not touch.
//!
//! Every operation whose path (or rename/link target) is one of the listed
//! paths or lies under one fails with EACCES, lookups included, so the
//! guest cannot open, create, stat or rename into them. Names still show up
//! in directory listings: hiding them needs the listing rewritten, which
//! this hook does not do. Operations on an inode whose path is unknown (the
//! guest never looked it up through this server) are let through.

use std::io;
use std::path::PathBuf;

use super::{Hook, Op};
use crate::filesystem::FileSystem;

/// The deny hook. See the module docs.
pub struct DenyPaths {
    prefixes: Vec<PathBuf>,
}

impl DenyPaths {
    /// Denies each of `paths` (absolute guest paths) and everything below.
    pub fn new(paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        Self {
            prefixes: paths.into_iter().map(Into::into).collect(),
        }
    }
}

impl Hook for DenyPaths {
    fn before(&self, _backend: &dyn FileSystem, op: &Op<'_>) -> io::Result<()> {
        let denied = [&op.path, &op.new_path]
            .into_iter()
            .flatten()
            .any(|p| self.prefixes.iter().any(|d| p.starts_with(d)));
        if denied {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(())
    }
}
