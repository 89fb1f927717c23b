//! What the file API reports about guest paths.

use msbvm_sdk as sdk;
use pyo3::prelude::*;

/// An entry of a guest directory, or what a guest path is.
#[pyclass(frozen, get_all, module = "msbvm._native")]
pub(crate) struct DirEntry {
    /// The name in its directory (or the path asked about).
    pub(crate) name: String,
    /// "file", "dir", "symlink" or "other".
    pub(crate) kind: &'static str,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub(crate) mode: u32,
    /// Owner.
    pub(crate) uid: u32,
    /// Group.
    pub(crate) gid: u32,
    /// Last modification, seconds since the Unix epoch.
    pub(crate) mtime: i64,
}

impl DirEntry {
    pub(crate) fn new(name: String, stat: &sdk::FileStat) -> Self {
        DirEntry {
            name,
            kind: stat.kind.as_str(),
            size: stat.size,
            mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            mtime: stat.mtime,
        }
    }
}

#[pymethods]
impl DirEntry {
    fn __repr__(&self) -> String {
        format!(
            "DirEntry(name={:?}, kind={:?}, size={}, mode={:#o})",
            self.name, self.kind, self.size, self.mode
        )
    }
}
