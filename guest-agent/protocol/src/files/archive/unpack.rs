//! The unpacker: every file system change relative to the destination's
//! directory fd (see the parent module for the rules).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::members::{Member, Members};
use super::{invalid, relative, UnpackLimits};
use crate::files::{FileError, FileErrorKind};

/// Unpacks the tar archive read from `input` into the existing directory
/// `dest` with the default [`UnpackLimits`]. With `root_as`, the archive
/// must have a single root (every entry's first component the same) and
/// that root is renamed to `root_as`.
///
/// On an error the entries unpacked so far stay where they are (a file
/// being written is removed).
pub fn unpack<R: Read>(input: R, dest: &Path, root_as: Option<&OsStr>) -> Result<(), FileError> {
    unpack_with(input, dest, root_as, &UnpackLimits::default())
}

/// [`unpack`] with explicit limits.
pub fn unpack_with<R: Read>(
    input: R,
    dest: &Path,
    root_as: Option<&OsStr>,
    limits: &UnpackLimits,
) -> Result<(), FileError> {
    let dest_fd = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        FileError::from_io(
            format!("unpacking into {}", dest.display()),
            &io::Error::from(e),
        )
    })?;
    let mut archive = tar::Archive::new(input);
    let mut members = Members::new(&mut archive, limits.max_entries)?;
    let mut unpacker = Unpacker {
        dest: dest_fd,
        root_as,
        root: None,
        created: HashMap::new(),
        bytes: 0,
        max_bytes: limits.max_bytes,
        restore_modes: Vec::new(),
        temp_counter: 0,
    };
    let result = loop {
        match members.next_member() {
            Ok(Some(m)) => {
                if let Err(e) = unpacker.member(m) {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    unpacker.finish();
    result
}

/// Flags of every directory open: never through a symlink, never outside.
fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Flags of a directory open (`RESOLVE_NO_SYMLINKS` refuses a symlink with
/// `ELOOP`, which `O_NOFOLLOW` with `O_DIRECTORY` would turn into `ENOTDIR`).
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Opens the directory `name` (one component) in `dir`, never through a
/// symlink; `openat` with `O_NOFOLLOW` where the kernel has no `openat2`.
fn open_step(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    match rustix::fs::openat2(dir, name, dir_flags(), Mode::empty(), resolve()) {
        Err(Errno::NOSYS) => {
            rustix::fs::openat(dir, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty())
        }
        other => other,
    }
}

struct Unpacker<'r> {
    dest: OwnedFd,
    root_as: Option<&'r OsStr>,
    root: Option<OsString>,
    /// Regular files this unpack created: relative path to (device, inode).
    created: HashMap<PathBuf, (u64, u64)>,
    bytes: u64,
    max_bytes: u64,
    /// Directories created without owner write or search permission: they
    /// were opened up to be filled and get their mode at the end.
    restore_modes: Vec<(OwnedFd, Mode)>,
    temp_counter: u64,
}

impl Unpacker<'_> {
    fn member<R: Read>(&mut self, mut m: Member<'_, R>) -> Result<(), FileError> {
        let shown = String::from_utf8_lossy(&m.path).into_owned();
        let Some(rel) = relative(&m.path, &shown, self.root_as, &mut self.root)? else {
            return Ok(());
        };
        let (parent_rel, name) = split(&rel);
        let parent = self.open_dir(parent_rel, &shown)?;
        let perm = m.mode & 0o777;
        let kind = m.kind;
        if kind.is_dir() {
            self.make_dir(&parent, name, perm, &shown)
        } else if kind.is_file() || kind.is_contiguous() {
            self.write_file(&parent, &rel, &mut m, perm, &shown)
        } else if kind.is_symlink() {
            let target = m
                .link
                .filter(|t| !t.is_empty())
                .ok_or_else(|| invalid(&shown, "a symlink without a target"))?;
            self.place(&parent, name, &shown, |tmp| {
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, tmp)
            })
            .map(drop)
        } else if kind.is_hard_link() {
            self.hard_link(&parent, &rel, m.link, &shown)
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            Err(invalid(&shown, "devices and FIFOs are not unpacked"))
        } else {
            Err(invalid(
                &shown,
                &format!("unsupported entry type {:?}", kind.as_byte() as char),
            ))
        }
    }

    /// Opens the directory `rel` beneath the destination, creating missing
    /// directories (mode 0777 less the umask) on the way.
    fn open_dir(&self, rel: &Path, shown: &str) -> Result<OwnedFd, FileError> {
        let fail = |e: Errno| dir_error(e, shown);
        if rel.as_os_str().is_empty() {
            return rustix::fs::openat(&self.dest, ".", dir_flags(), Mode::empty()).map_err(fail);
        }
        match rustix::fs::openat2(&self.dest, rel, dir_flags(), Mode::empty(), resolve()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT | Errno::NOSYS) => {}
            Err(e) => return Err(fail(e)),
        }
        let mut dir =
            rustix::fs::openat(&self.dest, ".", dir_flags(), Mode::empty()).map_err(fail)?;
        for part in rel.iter() {
            dir = match open_step(&dir, part) {
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(fail(e)),
                    }
                    open_step(&dir, part).map_err(fail)?
                }
                other => other.map_err(fail)?,
            };
        }
        Ok(dir)
    }

    fn make_dir(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        perm: u32,
        shown: &str,
    ) -> Result<(), FileError> {
        let fail = |e: Errno| dir_error(e, shown);
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_type(st.st_mode, S_IFDIR) => return Ok(()),
            Ok(st) if is_type(st.st_mode, S_IFLNK) => {
                // A link where a directory goes is replaced, never followed.
                rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(fail)?;
            }
            Ok(_) => {
                return Err(FileError::new(
                    FileErrorKind::NotADirectory,
                    format!("unpacking {shown:?}: a file is in the way of the directory"),
                ))
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(fail(e)),
        }
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(perm)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(fail(e)),
        }
        let dir = open_step(parent, name).map_err(fail)?;
        let st = rustix::fs::fstat(&dir).map_err(fail)?;
        let mode = st.st_mode & 0o777;
        if mode & 0o700 != 0o700 {
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode | 0o700)).map_err(fail)?;
            self.restore_modes.push((dir, Mode::from_raw_mode(mode)));
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        parent: &OwnedFd,
        rel: &Path,
        m: &mut Member<'_, R>,
        perm: u32,
        shown: &str,
    ) -> Result<(), FileError> {
        if self.bytes.saturating_add(m.size) > self.max_bytes {
            return Err(FileError::new(
                FileErrorKind::LimitExceeded,
                format!(
                    "unpacking {shown:?}: its {} bytes would pass the limit of {} bytes \
                     for the whole copy",
                    m.size, self.max_bytes
                ),
            ));
        }
        let (size, mtime) = (m.size, m.mtime);
        let data = &mut m.data;
        let id = self.place(parent, split(rel).1, shown, |tmp| {
            let fd = rustix::fs::openat(
                parent,
                tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(perm),
            )?;
            let mut file = File::from(fd);
            let copied = io::copy(&mut data.take(size), &mut file).map_err(to_errno)?;
            if copied != size {
                return Err(Errno::IO);
            }
            if let Some(secs) = mtime {
                let t = rustix::fs::Timespec {
                    tv_sec: secs.min(i64::MAX as u64) as i64,
                    tv_nsec: 0,
                };
                let times = rustix::fs::Timestamps {
                    last_access: t,
                    last_modification: t,
                };
                let _ = rustix::fs::futimens(&file, &times);
            }
            Ok(())
        })?;
        self.bytes += size;
        self.created.insert(rel.to_path_buf(), id);
        Ok(())
    }

    fn hard_link(
        &mut self,
        parent: &OwnedFd,
        rel: &Path,
        link: Option<Vec<u8>>,
        shown: &str,
    ) -> Result<(), FileError> {
        let link = link.ok_or_else(|| invalid(shown, "a hard link without a target"))?;
        let link_shown = String::from_utf8_lossy(&link).into_owned();
        let source = relative(&link, &link_shown, self.root_as, &mut self.root)?
            .ok_or_else(|| invalid(shown, "a hard link to the archive's root"))?;
        let Some(&id) = self.created.get(&source) else {
            return Err(invalid(
                shown,
                &format!("a hard link to {link_shown:?}, a file this archive did not create"),
            ));
        };
        let (source_parent, source_name) = split(&source);
        let source_dir = self.open_dir(source_parent, shown)?;
        self.place(parent, split(rel).1, shown, |tmp| {
            rustix::fs::linkat(&source_dir, source_name, parent, tmp, AtFlags::empty())?;
            // The source may have been swapped since it was created.
            let st = rustix::fs::statat(parent, tmp, AtFlags::SYMLINK_NOFOLLOW)?;
            if (st.st_dev as u64, st.st_ino as u64) != id {
                return Err(Errno::STALE);
            }
            Ok(())
        })
        .map_err(|e| match e.errno {
            Some(n) if n == Errno::STALE.raw_os_error() => {
                invalid(shown, "its target changed while unpacking")
            }
            _ => e,
        })?;
        self.created.insert(rel.to_path_buf(), id);
        Ok(())
    }

    /// Makes an entry under a fresh temporary name in `parent` with `make`,
    /// then renames it to `name` (replacing a file or symlink there). On
    /// failure the temporary entry is removed. Returns the new entry's
    /// (device, inode).
    fn place(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        shown: &str,
        make: impl FnOnce(&OsStr) -> Result<(), Errno>,
    ) -> Result<(u64, u64), FileError> {
        let tmp = self.temp_name(parent, shown)?;
        let made = make(&tmp).and_then(|()| {
            let st = rustix::fs::statat(parent, &tmp, AtFlags::SYMLINK_NOFOLLOW)?;
            rustix::fs::renameat(parent, &tmp, parent, name)?;
            Ok((st.st_dev as u64, st.st_ino as u64))
        });
        made.map_err(|e| {
            let _ = rustix::fs::unlinkat(parent, &tmp, AtFlags::empty());
            match e {
                Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => FileError::new(
                    FileErrorKind::IsADirectory,
                    format!("unpacking {shown:?}: a directory is in the way"),
                ),
                Errno::IO => FileError::new(
                    FileErrorKind::InvalidInput,
                    format!("unpacking {shown:?}: the archive ends inside it"),
                ),
                e => FileError::from_io(format!("unpacking {shown:?}"), &io::Error::from(e)),
            }
        })
    }

    /// A name free in `parent` for a new entry.
    fn temp_name(&mut self, parent: &OwnedFd, shown: &str) -> Result<OsString, FileError> {
        for _ in 0..64 {
            self.temp_counter += 1;
            let name = OsString::from(format!(
                ".msbvm-unpack-{}-{}",
                std::process::id(),
                self.temp_counter
            ));
            match rustix::fs::statat(parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => return Ok(name),
                Ok(_) => continue,
                Err(e) => return Err(dir_error(e, shown)),
            }
        }
        Err(invalid(shown, "no free temporary name in its directory"))
    }

    /// Gives directories opened up for filling their archive mode back.
    fn finish(&mut self) {
        for (dir, mode) in self.restore_modes.drain(..).rev() {
            let _ = rustix::fs::fchmod(&dir, mode);
        }
    }
}

/// The parent and the name of a relative path of at least one component.
fn split(rel: &Path) -> (&Path, &OsStr) {
    (
        rel.parent().unwrap_or(Path::new("")),
        rel.file_name().unwrap_or_default(),
    )
}

fn is_type(mode: u32, kind: u32) -> bool {
    mode & 0o170000 == kind
}

/// `S_IFDIR` and `S_IFLNK` (this crate has no libc).
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

fn to_errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw_os_error(n),
        None => Errno::IO,
    }
}

/// An error opening or creating a directory on an entry's way.
fn dir_error(e: Errno, shown: &str) -> FileError {
    match e {
        Errno::LOOP => invalid(shown, "a directory on its way is a symlink"),
        Errno::XDEV => invalid(shown, "it would leave the destination"),
        Errno::NOTDIR => FileError::new(
            FileErrorKind::NotADirectory,
            format!("unpacking {shown:?}: a file is in the way of a directory"),
        ),
        e => FileError::from_io(format!("unpacking {shown:?}"), &io::Error::from(e)),
    }
}
