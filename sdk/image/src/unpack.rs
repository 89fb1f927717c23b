//! Unpacking one layer archive into a layer directory (`rootfs/` + `meta.json`), safely.
//!
//! Layer archives come from the network and are hostile until proven otherwise. Every entry
//! path is normalized (a leading `/` is dropped, `..` is refused), every parent directory is
//! checked with `lstat` before anything is created below it (a symlink or non-directory
//! parent is refused, so nothing is ever written through a symlink), files are created with
//! `O_NOFOLLOW | O_EXCL`, hard links may only point at earlier entries of the same archive,
//! and the archive's size, entry count and path lengths are bounded. Checking components
//! instead of `openat`-walking is enough here because the destination is a private
//! directory nobody else writes to while we unpack; the tar crate's own `unpack` is not used
//! because it cannot record ownership and modes for an unprivileged unpacker.
//!
//! The host tree gets the unpacking user's ownership and safe permissions (files at least
//! `rw` for the owner, directories `rwx`, no set-id bits); the image's real owner, mode,
//! device numbers and xattrs go to [`LayerMeta`]. Device nodes become empty regular files.
//! Whiteouts (`.wh.*`) are ordinary files in the archive and stay as they are.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use msbvm_layer_meta::{EntryMeta, LayerMeta, ROOTFS_DIR};
use tar::EntryType;

use crate::digest::HashingReader;
use crate::error::{io_err, Error, Result};

/// Bounds for one layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Uncompressed archive bytes (also caps file contents, sparse files included).
    pub max_bytes: u64,
    /// Entries in the archive.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 1 << 20,
        }
    }
}

/// Longest entry path, in bytes (Linux `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// Most xattrs recorded per entry, and the largest value.
const MAX_XATTRS: usize = 128;
const MAX_XATTR_VALUE: usize = 64 << 10;

/// Unpacks the layer blob at `blob` (gzip, zstd or plain tar; sniffed) into the empty
/// directory `dest`, creating `dest/rootfs/` and `dest/meta.json`. Returns the diff_id:
/// the sha256 of the uncompressed stream.
pub(crate) fn unpack_layer(blob: &Path, dest: &Path, limits: Limits) -> Result<String> {
    let file =
        fs::File::open(blob).map_err(io_err(format!("opening layer blob {}", blob.display())))?;
    let reader = decompressor(BufReader::new(file))
        .map_err(io_err(format!("reading layer blob {}", blob.display())))?;
    unpack_stream(reader, dest, limits)
}

/// Picks the decompressor from the stream's magic bytes: media types lie (docker archives
/// call gzip layers plain tars and vice versa), magic bytes do not.
fn decompressor<'a>(mut r: BufReader<fs::File>) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpacks an uncompressed tar stream; see [`unpack_layer`].
pub(crate) fn unpack_stream(reader: impl Read, dest: &Path, limits: Limits) -> Result<String> {
    let rootfs = dest.join(ROOTFS_DIR);
    fs::create_dir(&rootfs).map_err(io_err(format!("creating {}", rootfs.display())))?;
    let mut hashing = HashingReader::new(reader, limits.max_bytes);
    let mut unpacker = Unpacker {
        rootfs,
        entries: BTreeMap::new(),
        written: 0,
        limits,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(io_err("reading the layer archive"))?;
        for (n, entry) in entries.enumerate() {
            if n as u64 >= limits.max_entries {
                return Err(Error::InvalidImage(format!(
                    "layer has more than {} entries",
                    limits.max_entries
                )));
            }
            let entry = entry.map_err(io_err("reading the layer archive"))?;
            unpacker.entry(entry)?;
        }
    }
    // The diff_id covers the whole stream, including padding after the end-of-archive blocks.
    io::copy(&mut hashing, &mut io::sink()).map_err(io_err("reading the layer archive"))?;
    LayerMeta {
        entries: unpacker.entries,
    }
    .store(dest)
    .map_err(io_err(format!(
        "writing the metadata of {}",
        dest.display()
    )))?;
    Ok(hashing.digest())
}

struct Unpacker {
    rootfs: PathBuf,
    entries: BTreeMap<String, EntryMeta>,
    written: u64,
    limits: Limits,
}

fn refuse(path: &str, reason: impl Into<String>) -> Error {
    Error::UnsafeArchive {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Normalizes an archive path to the relative, `/`-separated key of [`LayerMeta`].
fn normalize(raw: &Path) -> Result<String> {
    let shown = raw.to_string_lossy();
    if raw.as_os_str().len() > MAX_PATH {
        return Err(refuse(&shown, "path is longer than 4096 bytes"));
    }
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(refuse(&shown, "path contains '..'")),
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| refuse(&shown, "path is not valid UTF-8"))?,
            ),
        }
    }
    Ok(parts.join("/"))
}

impl Unpacker {
    fn host_path(&self, rel: &str) -> PathBuf {
        self.rootfs.join(rel)
    }

    /// Creates the missing parents of `rel` and refuses symlinks or files among them.
    fn prepare_parents(&self, rel: &str) -> Result<()> {
        let mut dir = self.rootfs.clone();
        let components: Vec<&str> = rel.split('/').collect();
        for c in &components[..components.len().saturating_sub(1)] {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refuse(rel, "a parent directory is a symlink"))
                }
                Ok(m) if !m.is_dir() => return Err(refuse(rel, "a parent is not a directory")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Parents missing from the archive: plain directories with no metadata
                    // entry, so the layered backend shows the lower layers' version.
                    fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(format!("chmod {}", dir.display())))?;
                }
                Err(e) => return Err(io_err(format!("inspecting {}", dir.display()))(e)),
            }
        }
        Ok(())
    }

    /// Removes what an earlier entry left at `rel` unless both are directories; later
    /// entries replace earlier ones, as in `tar -x`.
    fn clear_target(&mut self, rel: &str, new_is_dir: bool) -> Result<()> {
        let path = self.host_path(rel);
        let existing = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("inspecting {}", path.display()))(e)),
        };
        if existing.is_dir() {
            if new_is_dir {
                return Ok(());
            }
            fs::remove_dir_all(&path).map_err(io_err(format!("removing {}", path.display())))?;
            let prefix = format!("{rel}/");
            self.entries.retain(|k, _| !k.starts_with(&prefix));
        } else {
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry
            .path()
            .map_err(io_err("reading an entry path"))?
            .into_owned();
        let rel = normalize(&raw)?;
        let kind = entry.header().entry_type();
        let (mut meta, perm) = entry_meta(&mut entry, &rel)?;

        if rel.is_empty() {
            // The archive's root ("./"): only its metadata matters.
            if kind.is_dir() {
                meta.mode |= libc::S_IFDIR;
                self.entries.insert(rel, meta);
            }
            return Ok(());
        }
        self.prepare_parents(&rel)?;
        let path = self.host_path(&rel);

        match kind {
            EntryType::Directory => {
                self.clear_target(&rel, true)?;
                if !path.is_dir() {
                    fs::create_dir(&path)
                        .map_err(io_err(format!("creating {}", path.display())))?;
                }
                set_mode(&path, (perm & 0o755) | 0o700)?;
                meta.mode |= libc::S_IFDIR;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular_file(&mut entry, &rel, &path, perm)?;
                meta.mode |= libc::S_IFREG;
            }
            EntryType::Symlink => {
                self.clear_target(&rel, false)?;
                let target = entry
                    .link_name()
                    .map_err(io_err("reading a symlink target"))?
                    .ok_or_else(|| refuse(&rel, "symlink without a target"))?;
                // The target is stored, never followed by the unpacker.
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(io_err(format!("creating symlink {}", path.display())))?;
                meta.mode |= libc::S_IFLNK;
            }
            // Both names are one inode, so they share the target's metadata.
            EntryType::Link => meta = self.hard_link(&entry, &rel, &path)?,
            EntryType::Char | EntryType::Block => {
                self.clear_target(&rel, false)?;
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                create_new(&path)?;
                set_mode(&path, 0o600)?;
                meta.rdev = libc::makedev(major, minor);
                meta.mode |= if kind == EntryType::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
            }
            EntryType::Fifo => {
                self.clear_target(&rel, false)?;
                make_fifo(&rel, &path, perm)?;
                meta.mode |= libc::S_IFIFO;
            }
            other => {
                tracing::debug!(path = %rel, kind = ?other, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        self.entries.insert(rel, meta);
        Ok(())
    }

    /// A regular file's contents, within the layer's size limit.
    fn regular_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &str,
        path: &Path,
        perm: u32,
    ) -> Result<()> {
        self.clear_target(rel, false)?;
        let size = entry.size();
        if self.written.saturating_add(size) > self.limits.max_bytes {
            return Err(refuse(rel, "layer contents exceed the size limit"));
        }
        let mut file = create_new(path)?;
        let copied = io::copy(&mut entry.take(size), &mut file)
            .map_err(io_err(format!("writing {}", path.display())))?;
        self.written += copied;
        set_mode(path, (perm & 0o755) | 0o600)
    }

    /// A hard link to an earlier file of this layer; returns the target's metadata.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &str,
        path: &Path,
    ) -> Result<EntryMeta> {
        let target = entry
            .link_name()
            .map_err(io_err("reading a hard link target"))?
            .ok_or_else(|| refuse(rel, "hard link without a target"))?;
        let target_rel = normalize(&target)?;
        let target_meta = self
            .entries
            .get(&target_rel)
            .filter(|m| m.mode & libc::S_IFMT != libc::S_IFDIR)
            .cloned()
            .ok_or_else(|| {
                refuse(
                    rel,
                    format!(
                        "hard link to {target_rel:?}, which is not an earlier file of this layer"
                    ),
                )
            })?;
        if target_rel == rel {
            return Err(refuse(rel, "hard link to itself"));
        }
        self.prepare_parents(&target_rel)?;
        self.clear_target(rel, false)?;
        fs::hard_link(self.host_path(&target_rel), path)
            .map_err(io_err(format!("creating hard link {}", path.display())))?;
        Ok(target_meta)
    }
}

/// An entry's metadata from its header and PAX records (owner, mode, xattrs), and its
/// permission bits.
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, rel: &str) -> Result<(EntryMeta, u32)> {
    let header = entry.header();
    let perm = header
        .mode()
        .map_err(|e| refuse(rel, format!("bad mode: {e}")))?
        & 0o7777;
    let mut meta = EntryMeta {
        uid: id32(rel, header.uid())?,
        gid: id32(rel, header.gid())?,
        mode: perm,
        rdev: 0,
        xattrs: Vec::new(),
    };
    let Some(exts) = entry
        .pax_extensions()
        .map_err(io_err("reading PAX headers"))?
    else {
        return Ok((meta, perm));
    };
    for ext in exts {
        let ext = ext.map_err(io_err("reading PAX headers"))?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            if meta.xattrs.len() >= MAX_XATTRS || ext.value_bytes().len() > MAX_XATTR_VALUE {
                return Err(refuse(rel, "too many or too large xattrs"));
            }
            meta.xattrs
                .push((name.to_string(), ext.value_bytes().to_vec()));
        } else if key == "uid" || key == "gid" {
            let v = ext
                .value()
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| refuse(rel, format!("bad PAX {key}")))?;
            if key == "uid" {
                meta.uid = v;
            } else {
                meta.gid = v;
            }
        }
    }
    Ok((meta, perm))
}

/// A FIFO at `path` with the entry's permission bits.
fn make_fifo(rel: &str, path: &Path, perm: u32) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| refuse(rel, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io_err(format!("creating FIFO {}", path.display()))(
            io::Error::last_os_error(),
        ));
    }
    set_mode(path, (perm & 0o755) | 0o600)
}

fn id32(rel: &str, id: io::Result<u64>) -> Result<u32> {
    id.ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| refuse(rel, "owner id is malformed or above 2^32"))
}

fn create_new(path: &Path) -> Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests;
