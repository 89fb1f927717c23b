//! Which kernel file a snapshot's kernel hash was taken of, so that a restore
//! of the same, unchanged file need not read and hash it again.
//!
//! A restore checks that the guest kernel it is given is the one the snapshot
//! was taken with (its SHA-256 against the header's). Hashing the 15 MiB
//! image costs every fork a few hundred milliseconds in an emulated machine,
//! though forks almost always name the very file the snapshot hashed. So the
//! snapshot also records that file's identity (device, inode, size,
//! modification and change times) next to its hash in [`STAMP_FILE`]; a
//! restore whose kernel has that identity takes the recorded hash. Any write
//! to the file, or a rename of another file over it, changes the change time
//! or the inode, so a changed kernel is hashed again. The stamp is an
//! optimisation only: missing, unreadable or foreign, it is ignored.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The stamp's name inside a snapshot directory.
pub const STAMP_FILE: &str = "kernel.stamp";

/// Larger stamps are not msbvm's and are ignored unread.
const MAX_STAMP_BYTES: u64 = 512;

/// What identifies one version of a file on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A kernel's hash and, where known, the identity of the file it was read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStamp {
    /// The file hashed, taken before the hash (see [`stamp_open`]).
    pub identity: Option<FileIdentity>,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Hashes the open kernel `file` (named `path` in errors), with its identity.
pub fn stamp_open(file: &File, path: &Path) -> Result<KernelStamp, super::Error> {
    // The identity first: a write during the hash then leaves a stamp that no
    // later restore matches, never one that vouches for the new contents.
    let identity = file.metadata().ok().map(|m| FileIdentity::of(&m));
    let sha256 = super::sha256_open(file, path)?;
    Ok(KernelStamp { identity, sha256 })
}

/// Writes `stamp` into the snapshot directory `dir` when its identity is
/// known. Best effort: without a stamp, restores hash the kernel.
pub fn write(dir: &Path, stamp: &KernelStamp) {
    if stamp.identity.is_none() {
        return;
    }
    let path = dir.join(STAMP_FILE);
    match postcard::to_allocvec(stamp) {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(&path, bytes) {
                tracing::debug!("cannot write {}: {e}", path.display());
            }
        }
        Err(e) => tracing::debug!("cannot encode the kernel stamp: {e}"),
    }
}

/// The hash recorded in `dir`'s stamp when `kernel` is still the file it was
/// taken of; `None` when it must be hashed.
pub fn known_hash(dir: &Path, kernel: &Path) -> Option<String> {
    let stamp = read(&dir.join(STAMP_FILE))?;
    let here = FileIdentity::of(&std::fs::metadata(kernel).ok()?);
    (stamp.identity == Some(here)).then_some(stamp.sha256)
}

/// The stamp at `path`, if it is one.
fn read(path: &Path) -> Option<KernelStamp> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_STAMP_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_STAMP_BYTES {
        return None;
    }
    let stamp: KernelStamp = postcard::from_bytes(&bytes).ok()?;
    // A hash is 64 hex digits; anything else cannot match a header anyway.
    (stamp.sha256.len() == 64 && stamp.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(dir: &Path, contents: &[u8]) -> std::path::PathBuf {
        let path = dir.join("vmlinux");
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn the_unchanged_kernel_is_known_and_a_changed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = kernel(dir.path(), b"kernel one");
        let stamp = stamp_open(&File::open(&path).unwrap(), &path).unwrap();
        assert_eq!(stamp.sha256, super::super::sha256_file(&path).unwrap());
        write(dir.path(), &stamp);
        assert_eq!(known_hash(dir.path(), &path), Some(stamp.sha256.clone()));

        // Rewritten with other contents of the same size: its change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"kernel two").unwrap();
        assert_eq!(known_hash(dir.path(), &path), None);
        // Replaced by another file renamed over it: another inode.
        let other = dir.path().join("other");
        std::fs::write(&other, b"kernel one").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(known_hash(dir.path(), &path), None);
    }

    #[test]
    fn a_missing_or_foreign_stamp_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = kernel(dir.path(), b"kernel");
        assert_eq!(known_hash(dir.path(), &path), None);
        std::fs::write(dir.path().join(STAMP_FILE), b"not a stamp at all").unwrap();
        assert_eq!(known_hash(dir.path(), &path), None);
        std::fs::write(dir.path().join(STAMP_FILE), vec![7u8; 4096]).unwrap();
        assert_eq!(known_hash(dir.path(), &path), None);
        // A stamp whose "hash" is not one.
        let meta = std::fs::metadata(&path).unwrap();
        let forged = KernelStamp {
            identity: Some(FileIdentity::of(&meta)),
            sha256: "../../x".into(),
        };
        std::fs::write(
            dir.path().join(STAMP_FILE),
            postcard::to_allocvec(&forged).unwrap(),
        )
        .unwrap();
        assert_eq!(known_hash(dir.path(), &path), None);
    }

    #[test]
    fn a_stamp_without_identity_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &KernelStamp {
                identity: None,
                sha256: "ab".repeat(32),
            },
        );
        assert!(!dir.path().join(STAMP_FILE).exists());
    }
}
