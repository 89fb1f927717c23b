//! The file API: reading, writing and managing files in the guest, and
//! copying whole trees in and out as tar streams.
//!
//! Like an exec, every file operation has a connection of its own: after the
//! hello the host sends one [`HostMessage::File`](crate::HostMessage::File)
//! with a [`FileRequest`], the exchange below follows, and the agent closes
//! the connection. Any failure is answered with
//! [`GuestMessage::FileError`](crate::GuestMessage::FileError), which ends
//! the exchange.
//!
//! | request        | agent                                        | host                       |
//! |----------------|----------------------------------------------|----------------------------|
//! | `ReadFile`     | `FileMeta`, `FileChunk`*, `FileEnd`          |                            |
//! | `WriteFile`    | `FileReady`, then after the host: `FileDone` | `FileChunk`*, `FileEnd`    |
//! | `ListDir`      | `DirEntries`*, `FileEnd`                     |                            |
//! | `Stat`         | `FileMeta`                                   |                            |
//! | `Mkdir`, `Remove`, `Rename` | `FileDone`                      |                            |
//! | `ArchiveOut`   | `FileChunk`* (a tar stream), `FileEnd`       |                            |
//! | `ArchiveIn`    | `FileReady`, then after the host: `FileDone` | `FileChunk`* (tar), `FileEnd` |
//!
//! Data travels in chunks of at most [`MAX_CHUNK_LEN`](crate::MAX_CHUNK_LEN)
//! bytes, so neither side ever holds a whole file. The agent sends
//! `FileReady` before the host streams, so a refused upload costs one round
//! trip instead of the whole upload.
//!
//! Paths are strings; a relative path is taken relative to the guest's `/`.
//! Archives hold one root entry named after the copied file or directory
//! (what `tar -C parent name` makes); `ArchiveIn` unpacks into an existing
//! directory and refuses entries that would land outside it
//! ([`archive`]).

use serde::{Deserialize, Serialize};

pub mod archive;

/// Directory entries put in one [`GuestMessage::DirEntries`](crate::GuestMessage::DirEntries)
/// message at most. With names (255 bytes) and link targets (4096 bytes) at
/// their limits, 128 entries stay well under the frame limit.
pub const MAX_DIR_ENTRIES_PER_MESSAGE: usize = 128;

/// A file operation; the one request of its connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileRequest {
    /// Stream a regular file's contents out.
    ReadFile {
        /// The file (symlinks are followed).
        path: String,
    },
    /// Replace (or append to) a file with the bytes the host streams. A
    /// replacement is atomic: the data goes to a temporary file next to the
    /// target, renamed over it only at `FileEnd`, so a broken connection
    /// leaves the old file as it was.
    WriteFile {
        /// The file.
        path: String,
        /// Permission bits (e.g. `0o755`); default: the replaced file's, or
        /// `0o644` for a new file.
        mode: Option<u32>,
        /// Create missing parent directories.
        create_parents: bool,
        /// Append to the file instead of replacing it (not atomic).
        append: bool,
    },
    /// List a directory (without `.` and `..`).
    ListDir {
        /// The directory.
        path: String,
    },
    /// Describe one path.
    Stat {
        /// The path.
        path: String,
        /// Describe the symlink's target rather than the link itself.
        follow_symlinks: bool,
    },
    /// Create a directory.
    Mkdir {
        /// The directory.
        path: String,
        /// Create missing parents too, and accept an existing directory.
        parents: bool,
        /// Permission bits (default `0o755`).
        mode: Option<u32>,
    },
    /// Remove a file, a symlink or an empty directory.
    Remove {
        /// The path.
        path: String,
        /// Remove a directory with everything in it.
        recursive: bool,
    },
    /// Rename (move) a path within the guest.
    Rename {
        /// The current path.
        from: String,
        /// The new path; an existing file there is replaced.
        to: String,
    },
    /// Stream a tar archive of a file or directory tree out. Symlinks are
    /// archived as links, never followed.
    ArchiveOut {
        /// The file or directory; the archive's root entry has its name.
        path: String,
    },
    /// Unpack the tar archive the host streams into a directory.
    ArchiveIn {
        /// The existing directory to unpack into.
        dest: String,
    },
}

impl FileRequest {
    /// The path the request is about (the source of a rename), for messages.
    pub fn path(&self) -> &str {
        match self {
            FileRequest::ReadFile { path }
            | FileRequest::WriteFile { path, .. }
            | FileRequest::ListDir { path }
            | FileRequest::Stat { path, .. }
            | FileRequest::Mkdir { path, .. }
            | FileRequest::Remove { path, .. }
            | FileRequest::ArchiveOut { path } => path,
            FileRequest::Rename { from, .. } => from,
            FileRequest::ArchiveIn { dest } => dest,
        }
    }
}

/// What kind of file a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// What a path is; [`GuestMessage::FileMeta`](crate::GuestMessage::FileMeta)
/// and part of every [`DirEntry`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: i64,
    /// Where a symlink points (only for [`FileKind::Symlink`]).
    pub symlink_target: Option<String>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name within the directory (bytes that are not UTF-8 are replaced
    /// with U+FFFD).
    pub name: String,
    /// What it is (symlinks are not followed).
    pub stat: FileStat,
}

/// Why a file operation failed, coarsely, so callers can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileErrorKind {
    /// The path (or a parent) does not exist.
    NotFound,
    /// The agent may not do it.
    PermissionDenied,
    /// Something is already there.
    AlreadyExists,
    /// A directory was expected.
    NotADirectory,
    /// A directory was found where it is not allowed.
    IsADirectory,
    /// A directory to remove is not empty.
    DirectoryNotEmpty,
    /// The request or an archive was refused as unsafe or malformed.
    InvalidInput,
    /// Anything else (see the message and errno).
    Other,
    /// A limit on what one operation may read or create was reached (an
    /// archive's entries or bytes, an extension header's size).
    LimitExceeded,
}

/// A failed file operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    /// What kind of failure.
    pub kind: FileErrorKind,
    /// What went wrong, for a person (it names the path).
    pub message: String,
    /// The guest's errno, when a system call failed.
    pub errno: Option<i32>,
}

impl FileKind {
    /// The kind as one word ("file", "dir", "symlink", "other"), as the SDKs of other
    /// languages show it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
    }
}

impl FileErrorKind {
    /// The kind as one snake-case word ("not_found"), as the SDKs of other languages show it.
    pub fn snake_case(self) -> &'static str {
        match self {
            FileErrorKind::NotFound => "not_found",
            FileErrorKind::PermissionDenied => "permission_denied",
            FileErrorKind::AlreadyExists => "already_exists",
            FileErrorKind::NotADirectory => "not_a_directory",
            FileErrorKind::IsADirectory => "is_a_directory",
            FileErrorKind::DirectoryNotEmpty => "directory_not_empty",
            FileErrorKind::InvalidInput => "invalid_input",
            FileErrorKind::Other => "other",
            FileErrorKind::LimitExceeded => "limit_exceeded",
        }
    }

    /// The kind for an errno.
    pub fn from_errno(errno: i32) -> FileErrorKind {
        // Linux errno numbers, the same on every architecture msbvm runs;
        // spelled out so this crate needs no libc.
        match errno {
            2 => FileErrorKind::NotFound,                   // ENOENT
            1 | 13 | 30 => FileErrorKind::PermissionDenied, // EPERM, EACCES, EROFS
            17 => FileErrorKind::AlreadyExists,             // EEXIST
            20 => FileErrorKind::NotADirectory,             // ENOTDIR
            21 => FileErrorKind::IsADirectory,              // EISDIR
            39 => FileErrorKind::DirectoryNotEmpty,         // ENOTEMPTY
            22 | 36 | 40 => FileErrorKind::InvalidInput,    // EINVAL, ENAMETOOLONG, ELOOP
            _ => FileErrorKind::Other,
        }
    }
}

impl FileError {
    /// An error of `kind` with no errno.
    pub fn new(kind: FileErrorKind, message: impl Into<String>) -> FileError {
        FileError {
            kind,
            message: message.into(),
            errno: None,
        }
    }

    /// An error from an I/O error, the message prefixed with `context`
    /// (which names the path).
    pub fn from_io(context: impl std::fmt::Display, e: &std::io::Error) -> FileError {
        let errno = e.raw_os_error();
        let kind = match errno {
            Some(n) => FileErrorKind::from_errno(n),
            None => match e.kind() {
                std::io::ErrorKind::NotFound => FileErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => FileErrorKind::PermissionDenied,
                std::io::ErrorKind::AlreadyExists => FileErrorKind::AlreadyExists,
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                    FileErrorKind::InvalidInput
                }
                _ => FileErrorKind::Other,
            },
        };
        FileError {
            kind,
            message: format!("{context}: {e}"),
            errno,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_by_errno() {
        let e = std::io::Error::from_raw_os_error(2);
        let f = FileError::from_io("reading /x", &e);
        assert_eq!(f.kind, FileErrorKind::NotFound);
        assert_eq!(f.errno, Some(2));
        assert!(f.message.starts_with("reading /x: "), "{}", f.message);
        assert_eq!(
            FileErrorKind::from_errno(39),
            FileErrorKind::DirectoryNotEmpty
        );
        assert_eq!(FileErrorKind::from_errno(5), FileErrorKind::Other);
        let plain = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad tar");
        assert_eq!(
            FileError::from_io("x", &plain).kind,
            FileErrorKind::InvalidInput
        );
    }

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(m: T) {
        let frame = crate::encode(&m).unwrap();
        let mut d = crate::FrameDecoder::new();
        d.push(&frame);
        assert_eq!(d.next_message::<T>().unwrap(), Some(m));
        assert_eq!(d.buffered(), 0);
    }

    fn stat(kind: FileKind) -> FileStat {
        FileStat {
            kind,
            size: u64::MAX,
            mode: 0o4755,
            uid: 1000,
            gid: 100,
            mtime: -1,
            symlink_target: (kind == FileKind::Symlink).then(|| "/t".repeat(2048)),
        }
    }

    #[test]
    fn every_file_message_roundtrips() {
        use crate::{GuestMessage as G, HostMessage as H};
        let p = || "/a/b".to_string();
        for r in [
            FileRequest::ReadFile { path: p() },
            FileRequest::WriteFile {
                path: p(),
                mode: Some(0o600),
                create_parents: true,
                append: false,
            },
            FileRequest::ListDir { path: p() },
            FileRequest::Stat {
                path: p(),
                follow_symlinks: true,
            },
            FileRequest::Mkdir {
                path: p(),
                parents: true,
                mode: None,
            },
            FileRequest::Remove {
                path: p(),
                recursive: true,
            },
            FileRequest::Rename { from: p(), to: p() },
            FileRequest::ArchiveOut { path: p() },
            FileRequest::ArchiveIn { dest: p() },
        ] {
            roundtrip(H::File(r));
        }
        roundtrip(H::FileChunk(vec![1; crate::MAX_CHUNK_LEN]));
        roundtrip(H::FileEnd);
        roundtrip(G::FileMeta(stat(FileKind::File)));
        roundtrip(G::FileChunk(vec![2; crate::MAX_CHUNK_LEN]));
        roundtrip(G::FileEnd);
        roundtrip(G::FileReady);
        roundtrip(G::FileDone);
        roundtrip(G::FileError(FileError {
            kind: FileErrorKind::IsADirectory,
            message: "m".into(),
            errno: Some(21),
        }));
        // A full listing message at the limits still fits in one frame.
        let entries = (0..MAX_DIR_ENTRIES_PER_MESSAGE)
            .map(|i| DirEntry {
                name: format!("{i:0>255}"),
                stat: stat(FileKind::Symlink),
            })
            .collect();
        roundtrip(G::DirEntries(entries));
    }

    #[test]
    fn request_names_its_path() {
        let r = FileRequest::Rename {
            from: "/a".into(),
            to: "/b".into(),
        };
        assert_eq!(r.path(), "/a");
        assert_eq!(FileRequest::ArchiveIn { dest: "/d".into() }.path(), "/d");
    }
}
