//! Packing and safely unpacking the tar streams of
//! [`FileRequest::ArchiveOut`](super::FileRequest::ArchiveOut) and
//! [`FileRequest::ArchiveIn`](super::FileRequest::ArchiveIn); the agent and
//! the SDK use the same code, so a copy is equally careful in both
//! directions.
//!
//! An archive is untrusted input on both sides (a guest can be hostile to
//! the host, a host program can be buggy). [`unpack`] therefore refuses an
//! entry that is absolute, has a `..` component, or would be reached
//! through a symlink (one the archive itself just made, or one already in
//! the destination), refuses hard links that point outside the
//! destination, never writes through an existing symlink (it is replaced),
//! and does not create devices or FIFOs. The `tar` crate reads the format
//! (GNU long names, PAX headers); the path checks are ours because its
//! `unpack_in` silently strips absolute prefixes and skips `..` entries
//! where we want a clear refusal, and cannot rename the root entry.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use super::{FileError, FileErrorKind};

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

/// Unpacks the tar archive read from `input` into the existing directory
/// `dest`. With `root_as`, the archive must have a single root (every
/// entry's first component the same) and that root is renamed to `root_as`.
///
/// On an error the entries unpacked so far stay where they are.
pub fn unpack<R: Read>(input: R, dest: &Path, root_as: Option<&OsStr>) -> Result<(), FileError> {
    let meta = fs::metadata(dest)
        .map_err(|e| FileError::from_io(format!("unpacking into {}", dest.display()), &e))?;
    if !meta.is_dir() {
        return Err(FileError::new(
            FileErrorKind::NotADirectory,
            format!("unpacking into {}: not a directory", dest.display()),
        ));
    }
    let mut archive = tar::Archive::new(input);
    let entries = archive
        .entries()
        .map_err(|e| FileError::from_io("reading the archive", &e))?;
    let mut root: Option<OsString> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| FileError::from_io("reading the archive", &e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(rel) = relative(&raw, &shown, root_as, &mut root)? else {
            continue;
        };
        let target = dest.join(&rel);
        let fail = |e: io::Error| FileError::from_io(format!("unpacking {shown:?}"), &e);
        prepare_parents(dest, &rel, &shown)?;
        let kind = entry.header().entry_type();
        let existing = fs::symlink_metadata(&target).ok();
        if let Some(existing) = &existing {
            if existing.is_dir() && !kind.is_dir() {
                return Err(FileError::new(
                    FileErrorKind::IsADirectory,
                    format!("unpacking {shown:?}: a directory is in the way"),
                ));
            }
            if existing.file_type().is_symlink() {
                // Never write through a link: replace it.
                fs::remove_file(&target).map_err(fail)?;
            } else if kind.is_dir() && !existing.is_dir() {
                return Err(FileError::new(
                    FileErrorKind::NotADirectory,
                    format!("unpacking {shown:?}: a file is in the way of the directory"),
                ));
            }
        }
        if kind.is_hard_link() {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| invalid(&shown, "a hard link without a target"))?
                .into_owned();
            let link_shown = String::from_utf8_lossy(&link).into_owned();
            let link_rel = relative(&link, &link_shown, root_as, &mut root)?
                .ok_or_else(|| invalid(&shown, "a hard link to the archive's root"))?;
            prepare_parents(dest, &link_rel, &link_shown)?;
            let source = dest.join(&link_rel);
            if existing.is_some() {
                fs::remove_file(&target).map_err(fail)?;
            }
            fs::hard_link(&source, &target).map_err(fail)?;
        } else if kind.is_file() || kind.is_contiguous() || kind.is_dir() || kind.is_symlink() {
            entry.unpack(&target).map_err(fail)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(invalid(&shown, "devices and FIFOs are not unpacked"));
        } else {
            return Err(invalid(
                &shown,
                &format!("unsupported entry type {:?}", kind.as_byte() as char),
            ));
        }
    }
    Ok(())
}

fn invalid(shown: &str, why: &str) -> FileError {
    FileError::new(
        FileErrorKind::InvalidInput,
        format!("refusing archive entry {shown:?}: {why}"),
    )
}

/// The entry's path relative to the destination, with the root renamed;
/// `None` for an entry naming the destination itself (`./`).
fn relative(
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

/// Makes sure every directory between `dest` and the entry exists and is a
/// real directory, creating missing ones; a symlink on the way is refused.
fn prepare_parents(dest: &Path, rel: &Path, shown: &str) -> Result<(), FileError> {
    let mut dir = dest.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for part in &parents[..parents.len().saturating_sub(1)] {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(shown, "a parent directory is a symlink"))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(FileError::new(
                    FileErrorKind::NotADirectory,
                    format!("unpacking {shown:?}: {} is not a directory", dir.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)
                .map_err(|e| FileError::from_io(format!("creating {}", dir.display()), &e))?,
            Err(e) => return Err(FileError::from_io(format!("unpacking {shown:?}"), &e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// An archive with one entry of `kind` at the raw path `name` (written
    /// byte by byte, since the builder itself refuses `..` and `/`).
    fn hostile(name: &[u8], kind: tar::EntryType, link: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header, data).unwrap();
        b.into_inner().unwrap()
    }

    fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
        // Each part ends with two zero blocks; only the last one may.
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let end = if i + 1 == parts.len() {
                p.len()
            } else {
                p.len() - 1024
            };
            out.extend_from_slice(&p[..end]);
        }
        out
    }

    #[test]
    fn a_tree_roundtrips_with_modes_and_symlinks() {
        let src = tempdir();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        fs::write(tree.join("a.txt"), b"alpha").unwrap();
        fs::write(tree.join("sub/deeper/big"), vec![7u8; 300_000]).unwrap();
        fs::write(tree.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a.txt", tree.join("link")).unwrap();
        let tar = pack(&tree, OsStr::new("tree"), Vec::new()).unwrap();

        let dst = tempdir();
        unpack(&tar[..], dst.path(), Some(OsStr::new("copy"))).unwrap();
        let copy = dst.path().join("copy");
        assert_eq!(fs::read(copy.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(
            fs::read(copy.join("sub/deeper/big")).unwrap().len(),
            300_000
        );
        let mode = fs::metadata(copy.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(copy.join("link")).unwrap(),
            Path::new("a.txt")
        );

        // Without renaming, the root keeps its name; a second unpack over
        // the first replaces files.
        unpack(&tar[..], dst.path(), None).unwrap();
        unpack(&tar[..], dst.path(), None).unwrap();
        assert_eq!(fs::read(dst.path().join("tree/a.txt")).unwrap(), b"alpha");
    }

    #[test]
    fn a_single_file_packs_under_the_root_name() {
        let src = tempdir();
        fs::write(src.path().join("f"), b"data").unwrap();
        let tar = pack(&src.path().join("f"), OsStr::new("g"), Vec::new()).unwrap();
        let dst = tempdir();
        unpack(&tar[..], dst.path(), None).unwrap();
        assert_eq!(fs::read(dst.path().join("g")).unwrap(), b"data");
    }

    #[test]
    fn absolute_and_dotdot_entries_are_refused() {
        let dst = tempdir();
        let inner = dst.path().join("inner");
        fs::create_dir(&inner).unwrap();
        for name in [&b"/etc/evil"[..], b"../evil", b"a/../../evil"] {
            let tar = hostile(name, tar::EntryType::Regular, None, b"x");
            let e = unpack(&tar[..], &inner, None).unwrap_err();
            assert_eq!(e.kind, FileErrorKind::InvalidInput, "{e}");
        }
        assert!(!dst.path().join("evil").exists());
    }

    #[test]
    fn entries_through_a_symlink_are_refused() {
        let outside = tempdir();
        let dst = tempdir();
        // The archive makes a link to outside, then writes through it.
        let link = hostile(
            b"escape",
            tar::EntryType::Symlink,
            Some(outside.path().as_os_str().as_encoded_bytes()),
            b"",
        );
        let file = hostile(b"escape/owned", tar::EntryType::Regular, None, b"x");
        let e = unpack(&concat(&[link, file])[..], dst.path(), None).unwrap_err();
        assert_eq!(e.kind, FileErrorKind::InvalidInput, "{e}");
        assert!(!outside.path().join("owned").exists());

        // A link already in the destination is not followed either.
        let dst = tempdir();
        symlink(outside.path(), dst.path().join("pre")).unwrap();
        let file = hostile(b"pre/owned", tar::EntryType::Regular, None, b"x");
        assert!(unpack(&file[..], dst.path(), None).is_err());
        assert!(!outside.path().join("owned").exists());
    }

    #[test]
    fn a_file_entry_replaces_a_symlink_instead_of_writing_through_it() {
        let outside = tempdir();
        fs::write(outside.path().join("victim"), b"safe").unwrap();
        let dst = tempdir();
        symlink(outside.path().join("victim"), dst.path().join("f")).unwrap();
        let file = hostile(b"f", tar::EntryType::Regular, None, b"new");
        unpack(&file[..], dst.path(), None).unwrap();
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"safe");
        assert_eq!(fs::read(dst.path().join("f")).unwrap(), b"new");
        assert!(!fs::symlink_metadata(dst.path().join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn hard_links_outside_and_devices_are_refused() {
        let dst = tempdir();
        let link = hostile(b"h", tar::EntryType::Link, Some(b"/etc/passwd"), b"");
        let e = unpack(&link[..], dst.path(), None).unwrap_err();
        assert_eq!(e.kind, FileErrorKind::InvalidInput, "{e}");
        let link = hostile(b"h", tar::EntryType::Link, Some(b"../x"), b"");
        assert!(unpack(&link[..], dst.path(), None).is_err());
        let dev = hostile(b"d", tar::EntryType::Char, None, b"");
        let e = unpack(&dev[..], dst.path(), None).unwrap_err();
        assert!(e.message.contains("devices"), "{e}");
        // A hard link within the archive works.
        let file = hostile(b"f", tar::EntryType::Regular, None, b"same");
        let link = hostile(b"g", tar::EntryType::Link, Some(b"f"), b"");
        unpack(&concat(&[file, link])[..], dst.path(), None).unwrap();
        assert_eq!(fs::read(dst.path().join("g")).unwrap(), b"same");
    }

    #[test]
    fn renaming_requires_a_single_root() {
        let dst = tempdir();
        let a = hostile(b"a/x", tar::EntryType::Regular, None, b"1");
        let b = hostile(b"b/y", tar::EntryType::Regular, None, b"2");
        let e = unpack(&concat(&[a, b])[..], dst.path(), Some(OsStr::new("r"))).unwrap_err();
        assert!(e.message.contains("more than one root"), "{e}");
        assert_eq!(fs::read(dst.path().join("r/x")).unwrap(), b"1");
    }

    #[test]
    fn garbage_and_truncated_archives_fail_cleanly() {
        let dst = tempdir();
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        assert!(unpack(&junk[..], dst.path(), None).is_err());
        let file = hostile(b"f", tar::EntryType::Regular, None, &[1u8; 5000]);
        assert!(unpack(&file[..1000], dst.path(), None).is_err());
        let e = unpack(&file[..], &dst.path().join("missing"), None).unwrap_err();
        assert_eq!(e.kind, FileErrorKind::NotFound);
    }
}
