//! The archive code against hostile and ordinary archives, on temporary directories.

use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

use super::testing::one_entry as hostile;

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

/// A reader of `len` zero bytes after `head`, counting what was read.
struct Counting<'a> {
    head: Vec<u8>,
    pos: u64,
    len: u64,
    read: &'a std::cell::Cell<u64>,
}

impl<'a> Counting<'a> {
    /// A header of a `kind` entry `name` claiming `size` bytes, then `len` zero bytes.
    fn after_header(
        (name, kind, size): (&[u8], tar::EntryType, u64),
        len: u64,
        read: &'a std::cell::Cell<u64>,
    ) -> Self {
        Counting {
            head: header_only(name, kind, size),
            pos: 0,
            len,
            read,
        }
    }
}

impl std::io::Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let total = self.head.len() as u64 + self.len;
        let n = (buf.len() as u64).min(total - self.pos) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.pos as usize + i;
            *b = self.head.get(at).copied().unwrap_or(0);
        }
        self.pos += n as u64;
        self.read.set(self.pos);
        Ok(n)
    }
}

/// A header block of `kind` named `name` claiming `size` bytes.
fn header_only(name: &[u8], kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header.as_bytes().to_vec()
}

#[test]
fn huge_extension_headers_are_refused_before_they_are_read() {
    // Fails before the bounded reader: the tar crate read the whole block.
    for kind in [
        tar::EntryType::XHeader,
        tar::EntryType::GNULongName,
        tar::EntryType::GNULongLink,
        tar::EntryType::XGlobalHeader,
    ] {
        let dst = tempdir();
        let read = std::cell::Cell::new(0);
        let input = Counting::after_header((b"pax", kind, 8 << 30), 64 << 20, &read);
        let e = unpack(input, dst.path(), None).unwrap_err();
        assert_eq!(e.kind, FileErrorKind::LimitExceeded, "{kind:?}: {e}");
        assert!(e.message.contains("65536"), "{e}");
        assert!(read.get() < 1 << 20, "{kind:?}: read {} bytes", read.get());
    }
}

#[test]
fn a_file_past_the_byte_limit_is_refused_before_its_data() {
    let dst = tempdir();
    let read = std::cell::Cell::new(0);
    let input =
        Counting::after_header((b"big", tar::EntryType::Regular, 10 << 30), 64 << 20, &read);
    let limits = UnpackLimits {
        max_entries: 10,
        max_bytes: 1 << 30,
    };
    let e = unpack_with(input, dst.path(), None, &limits).unwrap_err();
    assert_eq!(e.kind, FileErrorKind::LimitExceeded, "{e}");
    assert!(read.get() < 1 << 20, "read {} bytes", read.get());
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);

    let files: Vec<_> = (0..5)
        .map(|i| {
            hostile(
                format!("f{i}").as_bytes(),
                tar::EntryType::Regular,
                None,
                b"x",
            )
        })
        .collect();
    let limits = UnpackLimits {
        max_entries: 3,
        max_bytes: 100,
    };
    let e = unpack_with(&concat(&files)[..], dst.path(), None, &limits).unwrap_err();
    assert_eq!(e.kind, FileErrorKind::LimitExceeded, "{e}");
    assert!(e.message.contains("entries"), "{e}");
    assert!(!dst.path().join("f3").exists());
}

#[test]
fn a_truncated_file_is_an_error_and_leaves_no_temporary_file() {
    let dst = tempdir();
    let read = std::cell::Cell::new(0);
    let input = Counting::after_header((b"claims", tar::EntryType::Regular, 10 << 20), 4096, &read);
    let e = unpack(input, dst.path(), None).unwrap_err();
    assert!(e.message.contains("claims"), "{e}");
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);
}

#[test]
fn set_id_bits_are_dropped_and_the_umask_applies() {
    let dst = tempdir();
    let mut parts = Vec::new();
    for (name, mode) in [("suid", 0o4755), ("sgid", 0o2777), ("sticky", 0o1777)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(1);
        h.set_mode(mode);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        parts.push(b.into_inner().unwrap());
    }
    unpack(&concat(&parts)[..], dst.path(), None).unwrap();
    // The test process's umask, read without changing it for other threads.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    for (name, mode) in [("suid", 0o755), ("sgid", 0o777), ("sticky", 0o777)] {
        let got = fs::metadata(dst.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(got & 0o7777, mode & !umask, "{name}");
    }
}

#[test]
fn hard_links_only_reach_files_this_archive_created() {
    let dst = tempdir();
    fs::write(dst.path().join("pre"), b"secret").unwrap();
    let link = hostile(b"h", tar::EntryType::Link, Some(b"pre"), b"");
    let e = unpack(&link[..], dst.path(), None).unwrap_err();
    assert!(e.message.contains("did not create"), "{e}");
    assert!(!dst.path().join("h").exists());
}

#[test]
fn sparse_members_and_disagreeing_pax_sizes_are_refused() {
    let dst = tempdir();
    let sparse = header_only(b"s", tar::EntryType::GNUSparse, 0);
    let e = unpack(&[sparse, vec![0; 1024]].concat()[..], dst.path(), None).unwrap_err();
    assert!(e.message.contains("sparse"), "{e}");

    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("size", &b"999"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("f").unwrap();
    h.set_size(1);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let e = unpack(&tar[..], dst.path(), None).unwrap_err();
    assert!(e.message.contains("PAX size"), "{e}");
}

#[test]
fn long_names_within_the_cap_work() {
    let src = tempdir();
    let long = "n".repeat(200);
    let deep = src.path().join("t").join(&long).join(&long);
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(&long), b"deep").unwrap();
    symlink(&long, src.path().join("t").join("l")).unwrap();
    let tar = pack(&src.path().join("t"), OsStr::new("t"), Vec::new()).unwrap();
    let dst = tempdir();
    unpack(&tar[..], dst.path(), None).unwrap();
    let got = dst.path().join("t").join(&long).join(&long).join(&long);
    assert_eq!(fs::read(got).unwrap(), b"deep");
}

#[test]
fn a_read_only_directory_is_filled_then_gets_its_mode() {
    let src = tempdir();
    let ro = src.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::write(ro.join("f"), b"1").unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let tar = pack(&ro, OsStr::new("ro"), Vec::new()).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    let dst = tempdir();
    unpack(&tar[..], dst.path(), None).unwrap();
    let copy = dst.path().join("ro");
    assert_eq!(fs::read(copy.join("f")).unwrap(), b"1");
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o555
    );
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Another thread keeps swapping a directory inside the destination for a
/// symlink to a directory outside while thousands of files are unpacked
/// into it: nothing may land outside. (Before the fd-based unpacker the
/// check of the parents and the write were separate path walks, and files
/// landed in the outside directory.)
#[test]
fn a_symlink_swapped_in_during_unpacking_is_never_followed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let outside = tempdir();
    let dst = tempdir();
    let mut parts = vec![hostile(b"d/", tar::EntryType::Directory, None, b"")];
    for i in 0..3000 {
        let name = format!("d/f{i}");
        parts.push(hostile(
            name.as_bytes(),
            tar::EntryType::Regular,
            None,
            b"x",
        ));
    }
    let tar = concat(&parts);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (d, aside, target) = (
            dst.path().join("d"),
            dst.path().join("aside"),
            outside.path().to_path_buf(),
        );
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&d, &aside).is_ok() {
                    let _ = symlink(&target, &d);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&d);
                    let _ = fs::rename(&aside, &d);
                }
                std::thread::yield_now();
            }
        })
    };
    // Errors are expected (a refused symlink); escapes are not. Each refusal
    // ends a round, so many rounds give the race its chances.
    let began = std::time::Instant::now();
    while began.elapsed() < std::time::Duration::from_secs(3) {
        let _ = unpack(&tar[..], dst.path(), None);
        if fs::read_dir(outside.path()).unwrap().next().is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let escaped: Vec<_> = fs::read_dir(outside.path()).unwrap().collect();
    assert!(escaped.is_empty(), "{} files escaped", escaped.len());
}
