//! Packing and safely unpacking the tar streams of
//! [`FileRequest::ArchiveOut`](super::FileRequest::ArchiveOut) and
//! [`FileRequest::ArchiveIn`](super::FileRequest::ArchiveIn); the agent and
//! the SDK use the same code, so a copy is equally careful in both
//! directions.
//!
//! An archive is untrusted input on both sides (a guest can be hostile to
//! the host, a host program can be buggy), and the destination may be a
//! directory the other side changes while the archive is unpacked (a shared
//! volume). [`unpack`] therefore:
//!
//! - opens the destination once and does everything else relative to that
//!   directory fd: parents are opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` one level at a time, so a symlink anywhere on the
//!   way (one the archive made, one already there, or one swapped in while
//!   unpacking) is refused, never followed;
//! - refuses entries that are absolute or have a `..` component;
//! - creates files with `O_CREAT | O_EXCL | O_NOFOLLOW` under a temporary
//!   name and renames them into place (`renameat` in the same directory fd):
//!   an existing file or symlink is *replaced*, never written through; a
//!   directory in the way is an error; an existing directory is merged into
//!   and keeps its mode;
//! - creates symlinks as symlinks (`symlinkat`) and never follows them;
//! - makes hard links only to files this unpack created (checked by device
//!   and inode after linking);
//! - keeps only the permission bits (`0o777`) of an entry's mode, and
//!   creates with them so the process umask applies: no set-user-ID,
//!   set-group-ID or sticky bit comes from an archive; ownership is never
//!   set; devices and FIFOs are refused;
//! - reads with bounded memory: the `tar` crate reads only 512-byte headers
//!   (raw mode), and GNU long names/links and PAX headers are read here,
//!   each refused above [`MAX_EXTENSION_LEN`] before a byte of it is read;
//!   GNU sparse members are refused; [`UnpackLimits`] caps the number of
//!   headers and the bytes of file data.
//!
//! A directory the other side *moves* (rather than replaces by a symlink)
//! between the moment its fd is opened and the moment a file is created in
//! it still receives that file: it is the other side's own directory, and
//! nothing is ever reached through a link.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use super::{FileError, FileErrorKind};

mod members;
mod unpack;

pub use unpack::{unpack, unpack_with};

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

/// Largest GNU long name, long link or PAX extension block accepted, in
/// bytes; a header announcing more is refused before its data is read.
pub const MAX_EXTENSION_LEN: u64 = 64 * 1024;
/// Default of [`UnpackLimits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Default of [`UnpackLimits::max_bytes`]: 8 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// What one [`unpack_with`] may create at most; exceeding a limit fails
/// with [`FileErrorKind::LimitExceeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most tar headers read (every member and extension header counts);
    /// default [`DEFAULT_MAX_ENTRIES`].
    pub max_entries: u64,
    /// Most bytes of file data written, checked against each member's size
    /// before it is written; default [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Writes a tar archive of `src` to `out`, its root entry named
/// `root_name`; symlinks are archived as links, never followed. Returns
/// `out` after the archive's end marker.
pub fn pack<W: Write>(src: &Path, root_name: &OsStr, out: W) -> Result<W, FileError> {
    let context = || format!("archiving {}", src.display());
    let meta = fs::symlink_metadata(src).map_err(|e| FileError::from_io(context(), &e))?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let appended = if meta.is_dir() {
        builder.append_dir_all(root_name, src)
    } else {
        builder.append_path_with_name(src, root_name)
    };
    appended
        .and_then(|()| builder.into_inner())
        .map_err(|e| FileError::from_io(context(), &e))
}

pub(crate) fn invalid(shown: &str, why: &str) -> FileError {
    FileError::new(
        FileErrorKind::InvalidInput,
        format!("refusing archive entry {shown:?}: {why}"),
    )
}

/// The entry's path relative to the destination, with the root renamed;
/// `None` for an entry naming the destination itself (`./`).
pub(crate) fn relative(
    raw: &[u8],
    shown: &str,
    root_as: Option<&OsStr>,
    root: &mut Option<OsString>,
) -> Result<Option<PathBuf>, FileError> {
    use std::os::unix::ffi::OsStrExt;
    let mut parts = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid(shown, "it contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(shown, "it is an absolute path"))
            }
        }
    }
    let Some(first) = parts.first().copied() else {
        return Ok(None);
    };
    let mut rel = PathBuf::new();
    match root_as {
        None => rel.push(first),
        Some(new_root) => {
            match root {
                Some(r) if r != first => {
                    return Err(invalid(shown, "the archive has more than one root entry"))
                }
                Some(_) => {}
                None => *root = Some(first.to_os_string()),
            }
            rel.push(new_root);
        }
    }
    rel.extend(&parts[1..]);
    Ok(Some(rel))
}

#[cfg(test)]
mod tests;
