//! Fixtures the backends' unit tests share.

use std::ffi::CString;
use std::io;

use crate::filesystem::{Context, Entry, FileSystem, Inode};

/// A request from guest root.
pub(crate) const CTX: Context = Context {
    uid: 0,
    gid: 0,
    pid: 1,
};

/// A name for the FileSystem calls.
pub(crate) fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// The errno of a call that must fail.
pub(crate) fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

/// A node made by guest root with MKNOD (umask 0), which must succeed.
pub(crate) fn mknod(fs: &dyn FileSystem, parent: Inode, name: &str, mode: u32, rdev: u32) -> Entry {
    fs.mknod(&CTX, parent, &c(name), mode, rdev, 0).unwrap()
}

/// Asserts that `r` failed with errno `want`.
#[track_caller]
pub(crate) fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32) {
    assert_eq!(errno(r), want);
}

/// The sorted names in directory `ino` (without `.` and `..`), listed
/// `batch` entries per READDIR as the kernel pages through a large
/// directory, each resuming at the offset the last entry gave.
pub(crate) fn names(fs: &dyn FileSystem, ino: Inode, batch: usize) -> Vec<String> {
    let h = fs.opendir(&CTX, ino, 0).unwrap().handle;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let mut got = Vec::new();
        fs.readdir(&CTX, ino, h, offset, &mut |e| {
            if got.len() == batch {
                return false;
            }
            got.push((String::from_utf8(e.name.to_vec()).unwrap(), e.offset, e.ino));
            true
        })
        .unwrap();
        let Some(last) = got.last() else { break };
        offset = last.1;
        assert!(
            got.iter().all(|(_, _, ino)| *ino != 0),
            "glibc hides d_ino 0"
        );
        out.extend(got.into_iter().map(|(n, _, _)| n));
    }
    fs.releasedir(&CTX, ino, 0, h).unwrap();
    out.retain(|n| n != "." && n != "..");
    out.sort();
    out
}

/// Every entry of directory `ino` (without `.` and `..`) with the `DT_*`
/// type plain READDIR gives it, sorted by name.
pub(crate) fn dirent_kinds(fs: &dyn FileSystem, ino: Inode) -> Vec<(String, u32)> {
    let h = fs.opendir(&CTX, ino, 0).unwrap().handle;
    let mut out = Vec::new();
    fs.readdir(&CTX, ino, h, 0, &mut |e| {
        out.push((String::from_utf8(e.name.to_vec()).unwrap(), e.kind));
        true
    })
    .unwrap();
    fs.releasedir(&CTX, ino, 0, h).unwrap();
    out.retain(|(n, _)| n != "." && n != "..");
    out.sort();
    out
}

/// A temporary host directory holding `files` (path, contents), with the
/// directories above them.
pub(crate) fn host_tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

/// Number of open file descriptors of this process.
pub(crate) fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
