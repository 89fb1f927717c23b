//! Tests of the layered backend over hand-built layer directories.

use super::*;
use crate::filesystem::ROOT_INODE;
use crate::layer_meta::{EntryMeta, LayerMeta};
use crate::test_util::{assert_errno, c, dirent_kinds, errno, mknod, names, CTX};
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};

mod snapshot;

/// What a test layer holds at one path.
enum Item<'a> {
    File(&'a [u8]),
    Link(&'a str),
}

/// Builds a layer directory: `rootfs/` with the items and `meta.json` with
/// the given metadata (paths without metadata get root:root and the host mode).
fn layer(items: &[(&str, Item<'_>)], meta: &[(&str, EntryMeta)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(ROOTFS_DIR);
    std::fs::create_dir(&root).unwrap();
    for (path, item) in items {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match item {
            Item::File(data) => std::fs::write(&p, data).unwrap(),
            Item::Link(target) => symlink(target, &p).unwrap(),
        }
    }
    let entries: BTreeMap<String, EntryMeta> = meta
        .iter()
        .map(|(p, m)| (p.to_string(), m.clone()))
        .collect();
    LayerMeta { entries }.store(dir.path()).unwrap();
    dir
}

fn meta(mode: u32, uid: u32, gid: u32) -> EntryMeta {
    EntryMeta {
        uid,
        gid,
        mode,
        ..Default::default()
    }
}

/// Every name, type, mode and content byte under `dir`, for before/after comparison.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            out.push((p, m.mode(), content));
        }
    }
    out.sort();
    out
}

fn fs_over(layers: &[&tempfile::TempDir], upper: &Path) -> LayeredFs {
    LayeredFs::new(
        layers.iter().map(|l| l.path().to_owned()).collect(),
        upper,
        LayeredConfig::default(),
    )
    .unwrap()
}

fn walk(fs: &LayeredFs, path: &str) -> io::Result<Entry> {
    let mut e = None;
    let mut ino = ROOT_INODE;
    for part in path.split('/') {
        let found = fs.lookup(&CTX, ino, &c(part))?;
        ino = found.inode;
        e = Some(found);
    }
    Ok(e.expect("non-empty path"))
}

fn read_all(fs: &LayeredFs, path: &str) -> Vec<u8> {
    let e = walk(fs, path).unwrap();
    let h = fs
        .open(&CTX, e.inode, libc::O_RDONLY as u32)
        .unwrap()
        .handle;
    let data = fs.read(&CTX, e.inode, h, 0, 1 << 16).unwrap();
    fs.release(&CTX, e.inode, 0, h).unwrap();
    data
}

fn write_at(fs: &LayeredFs, path: &str, data: &[u8], flags: i32) {
    let e = walk(fs, path).unwrap();
    let h = fs.open(&CTX, e.inode, flags as u32).unwrap().handle;
    fs.write(&CTX, e.inode, h, 0, data, 0).unwrap();
    fs.release(&CTX, e.inode, 0, h).unwrap();
}

fn base_and_top() -> (tempfile::TempDir, tempfile::TempDir) {
    let base = layer(
        &[
            ("a", Item::File(b"base a")),
            ("b", Item::File(b"base b")),
            ("d/x", Item::File(b"x")),
            ("d/y", Item::File(b"y")),
            ("keep/k", Item::File(b"k")),
            ("bin/su", Item::File(b"ELF")),
            ("dev/null", Item::File(b"")),
            ("etc/link", Item::Link("/etc/passwd")),
            ("escape", Item::Link("/")),
        ],
        &[
            ("", meta(libc::S_IFDIR | 0o755, 0, 0)),
            (
                "bin/su",
                EntryMeta {
                    xattrs: vec![("security.capability".into(), vec![1, 2])],
                    ..meta(libc::S_IFREG | 0o4755, 0, 0)
                },
            ),
            (
                "dev/null",
                EntryMeta {
                    rdev: libc::makedev(1, 3),
                    ..meta(libc::S_IFCHR | 0o666, 0, 0)
                },
            ),
            ("keep/k", meta(libc::S_IFREG | 0o640, 1000, 100)),
        ],
    );
    let top = layer(
        &[
            ("a", Item::File(b"top a")),
            (".wh.b", Item::File(b"")),
            ("d/.wh..wh..opq", Item::File(b"")),
            ("d/z", Item::File(b"z")),
        ],
        &[],
    );
    (base, top)
}

#[test]
fn upper_layers_shadow_whiteouts_hide_and_opaque_dirs_hide_lower_content() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    assert_eq!(read_all(&fs, "a"), b"top a");
    assert_errno(walk(&fs, "b"), libc::ENOENT);
    assert_errno(walk(&fs, ".wh.b"), libc::ENOENT);
    assert_eq!(
        names(&fs, ROOT_INODE, 2),
        ["a", "bin", "d", "dev", "escape", "etc", "keep"]
    );
    let d = walk(&fs, "d").unwrap();
    assert_eq!(names(&fs, d.inode, 2), ["z"]);
    assert_errno(walk(&fs, "d/x"), libc::ENOENT);
}

#[test]
fn meta_json_owners_setuid_bits_devices_and_xattrs_are_shown() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    let su = walk(&fs, "bin/su").unwrap().attr;
    assert_eq!(
        (su.mode, su.uid, su.gid, su.size),
        (libc::S_IFREG | 0o4755, 0, 0, 3)
    );
    let null = walk(&fs, "dev/null").unwrap();
    assert_eq!(
        (null.attr.mode, null.attr.rdev as u64),
        (libc::S_IFCHR | 0o666, libc::makedev(1, 3))
    );
    assert_errno(
        fs.open(&CTX, null.inode, libc::O_RDONLY as u32),
        libc::ENXIO,
    );
    let k = walk(&fs, "keep/k").unwrap().attr;
    assert_eq!((k.mode, k.uid, k.gid), (libc::S_IFREG | 0o640, 1000, 100));
    let link = walk(&fs, "etc/link").unwrap();
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fs.readlink(&CTX, link.inode).unwrap(), b"/etc/passwd");
    let su_ino = walk(&fs, "bin/su").unwrap().inode;
    assert_eq!(
        fs.getxattr(&CTX, su_ino, &c("security.capability"))
            .unwrap(),
        [1, 2]
    );
    assert_eq!(
        fs.listxattr(&CTX, su_ino).unwrap(),
        b"security.capability\0"
    );
    // The backend never follows a layer's symlink on the host.
    let esc = walk(&fs, "escape").unwrap();
    assert_errno(fs.lookup(&CTX, esc.inode, &c("etc")), libc::ENOTDIR);
    assert_errno(fs.opendir(&CTX, esc.inode, 0), libc::ENOTDIR);
}

#[test]
fn writes_copy_up_with_metadata_and_never_touch_the_layers() {
    let (base, top) = base_and_top();
    let (before_base, before_top) = (snapshot(base.path()), snapshot(top.path()));
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());

    write_at(&fs, "bin/su", b"NEW", libc::O_WRONLY);
    assert_eq!(read_all(&fs, "bin/su"), b"NEW");
    let su = walk(&fs, "bin/su").unwrap();
    assert_eq!(
        (su.attr.mode, su.attr.uid),
        (libc::S_IFREG | 0o4755, 0),
        "copy-up keeps guest metadata"
    );
    assert_eq!(
        fs.getxattr(&CTX, su.inode, &c("security.capability"))
            .unwrap(),
        [1, 2]
    );
    assert_eq!(
        std::fs::read(upper.path().join("rootfs/bin/su")).unwrap(),
        b"NEW"
    );

    let k = walk(&fs, "keep/k").unwrap();
    let (a, _) = fs
        .setattr(
            &CTX,
            k.inode,
            SetAttr {
                uid: Some(7),
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((a.mode, a.uid, a.gid), (libc::S_IFREG | 0o600, 7, 100));
    let null = walk(&fs, "dev/null").unwrap();
    fs.setattr(
        &CTX,
        null.inode,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    let null = walk(&fs, "dev/null").unwrap().attr;
    assert_eq!(
        (null.mode, null.rdev as u64),
        (libc::S_IFCHR | 0o600, libc::makedev(1, 3))
    );
    fs.setxattr(&CTX, k.inode, &c("trusted.x"), b"v", 0)
        .unwrap();
    assert_eq!(fs.getxattr(&CTX, k.inode, &c("trusted.x")).unwrap(), b"v");
    fs.removexattr(&CTX, k.inode, &c("trusted.x")).unwrap();

    let user = Context {
        uid: 1000,
        gid: 1000,
        pid: 1,
    };
    let (f, h) = fs
        .create(
            &user,
            ROOT_INODE,
            &c("new"),
            0o666,
            libc::O_RDWR as u32,
            0o022,
        )
        .unwrap();
    assert_eq!(
        (f.attr.mode, f.attr.uid, f.attr.gid),
        (libc::S_IFREG | 0o644, 1000, 1000)
    );
    fs.write(&user, f.inode, h.handle, 0, b"hello", 0).unwrap();
    assert_eq!(fs.read(&user, f.inode, h.handle, 0, 10).unwrap(), b"hello");
    fs.fallocate(&user, f.inode, h.handle, 0, 0, 8192).unwrap();
    assert_eq!(
        fs.lseek(&user, f.inode, h.handle, 0, libc::SEEK_DATA as u32)
            .unwrap(),
        0
    );
    fs.release(&user, f.inode, 0, h.handle).unwrap();
    let s = fs.symlink(&CTX, &c("../a"), ROOT_INODE, &c("sl")).unwrap();
    assert_eq!(s.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fs.readlink(&CTX, s.inode).unwrap(), b"../a");
    let dev = mknod(
        &fs,
        ROOT_INODE,
        "tty",
        libc::S_IFCHR | 0o620,
        libc::makedev(5, 0) as u32,
    );
    assert_eq!(
        (dev.attr.mode, dev.attr.rdev as u64),
        (libc::S_IFCHR | 0o620, libc::makedev(5, 0))
    );
    let l = fs.link(&CTX, f.inode, ROOT_INODE, &c("new2")).unwrap();
    assert_eq!(l.attr.nlink, 2);
    assert_errno(
        fs.create(&CTX, ROOT_INODE, &c(".wh.a"), 0o644, 0, 0),
        libc::EINVAL,
    );
    assert_errno(
        fs.mkdir(&CTX, ROOT_INODE, &c(".wh..wh..opq"), 0o755, 0),
        libc::EINVAL,
    );
    assert_errno(fs.mkdir(&CTX, ROOT_INODE, &c("a"), 0o755, 0), libc::EEXIST);

    // Renames: a lower file moves (its old name whited out), a lower
    // directory refuses, an upper directory moves.
    fs.rename(&CTX, ROOT_INODE, &c("a"), ROOT_INODE, &c("a2"), 0)
        .unwrap();
    assert_eq!(read_all(&fs, "a2"), b"top a");
    assert_errno(walk(&fs, "a"), libc::ENOENT);
    assert_errno(
        fs.rename(&CTX, ROOT_INODE, &c("keep"), ROOT_INODE, &c("keep2"), 0),
        libc::EXDEV,
    );
    let nd = fs.mkdir(&CTX, ROOT_INODE, &c("nd"), 0o755, 0).unwrap();
    fs.create(&CTX, nd.inode, &c("f"), 0o644, libc::O_WRONLY as u32, 0)
        .unwrap();
    fs.rename(&CTX, ROOT_INODE, &c("nd"), ROOT_INODE, &c("nd2"), 0)
        .unwrap();
    assert_eq!(names(&fs, nd.inode, 2), ["f"]);
    assert_eq!(
        errno(fs.rename(
            &CTX,
            ROOT_INODE,
            &c("new"),
            ROOT_INODE,
            &c("a2"),
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    assert_eq!(
        names(&fs, ROOT_INODE, 2),
        ["a2", "bin", "d", "dev", "escape", "etc", "keep", "nd2", "new", "new2", "sl", "tty"]
    );

    assert_eq!(snapshot(base.path()), before_base, "the base layer changed");
    assert_eq!(snapshot(top.path()), before_top, "the top layer changed");
}

#[test]
fn deleted_lower_entries_stay_deleted_and_can_be_recreated() {
    let (base, top) = base_and_top();
    let before = snapshot(base.path());
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());

    fs.unlink(&CTX, ROOT_INODE, &c("a")).unwrap();
    assert_errno(walk(&fs, "a"), libc::ENOENT);
    assert!(!names(&fs, ROOT_INODE, 2).contains(&"a".to_string()));
    assert!(upper.path().join("rootfs/.wh.a").exists());
    let (e, h) = fs
        .create(&CTX, ROOT_INODE, &c("a"), 0o600, libc::O_RDWR as u32, 0)
        .unwrap();
    assert_eq!(
        fs.read(&CTX, e.inode, h.handle, 0, 10).unwrap(),
        b"",
        "recreated file is new, not the lower one"
    );
    fs.release(&CTX, e.inode, 0, h.handle).unwrap();
    assert!(!upper.path().join("rootfs/.wh.a").exists());

    let keep = walk(&fs, "keep").unwrap();
    assert_errno(fs.rmdir(&CTX, ROOT_INODE, &c("keep")), libc::ENOTEMPTY);
    assert_errno(fs.unlink(&CTX, ROOT_INODE, &c("keep")), libc::EISDIR);
    fs.unlink(&CTX, keep.inode, &c("k")).unwrap();
    assert_eq!(names(&fs, keep.inode, 2), Vec::<String>::new());
    fs.rmdir(&CTX, ROOT_INODE, &c("keep")).unwrap();
    assert_errno(walk(&fs, "keep"), libc::ENOENT);
    let again = fs.mkdir(&CTX, ROOT_INODE, &c("keep"), 0o700, 0).unwrap();
    assert_eq!(
        names(&fs, again.inode, 2),
        Vec::<String>::new(),
        "lower content must stay hidden"
    );
    assert_errno(walk(&fs, "keep/k"), libc::ENOENT);
    assert_eq!(snapshot(base.path()), before);
}

#[test]
fn sandboxes_sharing_layers_do_not_see_each_others_writes() {
    let (base, top) = base_and_top();
    let (u1, u2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fs1 = fs_over(&[&base, &top], u1.path());
    let fs2 = fs_over(&[&base, &top], u2.path());
    write_at(&fs1, "a", b"one", libc::O_WRONLY | libc::O_TRUNC);
    fs1.unlink(&CTX, walk(&fs1, "keep").unwrap().inode, &c("k"))
        .unwrap();
    fs1.mkdir(&CTX, ROOT_INODE, &c("only1"), 0o755, 0).unwrap();
    assert_eq!(read_all(&fs1, "a"), b"one");
    assert_eq!(read_all(&fs2, "a"), b"top a");
    assert_eq!(read_all(&fs2, "keep/k"), b"k");
    assert_errno(walk(&fs2, "only1"), libc::ENOENT);
    // A fresh instance over the same upper sees what the first one left.
    let again = fs_over(&[&base, &top], u1.path());
    assert_eq!(read_all(&again, "a"), b"one");
    assert_errno(walk(&again, "keep/k"), libc::ENOENT);
    assert!(walk(&again, "only1").is_ok());
}

/// Every host object under `dir` that is a set-id file or a device node.
fn host_set_id_or_devices(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir)
        .into_iter()
        .filter(|(_, mode, _)| {
            let kind = mode & libc::S_IFMT;
            mode & (libc::S_ISUID | libc::S_ISGID) != 0
                || kind == libc::S_IFCHR
                || kind == libc::S_IFBLK
        })
        .map(|(p, _, _)| p)
        .collect()
}

#[test]
fn the_upper_never_gets_set_id_bits_or_device_nodes_on_the_host() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    let (f, open) = fs
        .create(&CTX, ROOT_INODE, &c("suid"), 0o4755, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.release(&CTX, f.inode, 0, open.handle).unwrap();
    let d = fs.mkdir(&CTX, ROOT_INODE, &c("sgid"), 0o2775, 0).unwrap();
    let blk = mknod(&fs, d.inode, "blk", libc::S_IFBLK | 0o6660, 0x0801);
    let chr = mknod(&fs, ROOT_INODE, "chr", libc::S_IFCHR | 0o666, 0x0103);
    let a = walk(&fs, "a").unwrap();
    let set = SetAttr {
        mode: Some(0o6755),
        ..Default::default()
    };
    fs.setattr(&CTX, a.inode, set).unwrap();
    // Copy-up of a lower set-id file and a lower device node.
    write_at(&fs, "bin/su", b"NEW", libc::O_WRONLY);
    let null = walk(&fs, "dev/null").unwrap();
    fs.setxattr(&CTX, null.inode, &c("user.x"), b"1", 0)
        .unwrap();
    fs.rename(&CTX, ROOT_INODE, &c("chr"), d.inode, &c("chr2"), 0)
        .unwrap();

    let guest = |path: &str| {
        let e = walk(&fs, path).unwrap();
        (e.attr.mode, e.attr.rdev)
    };
    assert_eq!(guest("suid").0, libc::S_IFREG | 0o4755);
    assert_eq!(guest("sgid").0, libc::S_IFDIR | 0o2775);
    assert_eq!(guest("sgid/blk"), (libc::S_IFBLK | 0o6660, 0x0801));
    assert_eq!(guest("sgid/chr2"), (libc::S_IFCHR | 0o666, 0x0103));
    assert_eq!(guest("a").0, libc::S_IFREG | 0o6755);
    assert_eq!(guest("bin/su").0, libc::S_IFREG | 0o4755);
    assert_eq!(guest("dev/null").0 & libc::S_IFMT, libc::S_IFCHR);
    let _ = (blk, chr);
    assert_eq!(host_set_id_or_devices(upper.path()), Vec::<PathBuf>::new());
}

#[test]
fn plain_readdir_reports_the_guest_types_of_upper_and_lower_devices() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    let dev = walk(&fs, "dev").unwrap().inode;
    mknod(&fs, dev, "chr", libc::S_IFCHR | 0o666, 0x0103);
    mknod(&fs, dev, "blk", libc::S_IFBLK | 0o660, 0x0801);
    mknod(&fs, dev, "fifo", libc::S_IFIFO | 0o644, 0);
    mknod(&fs, dev, "sock", libc::S_IFSOCK | 0o644, 0);
    mknod(&fs, dev, "plain", libc::S_IFREG | 0o644, 0);
    let dt = host::dtype;
    let want = vec![
        ("blk".to_string(), dt(libc::S_IFBLK)),
        ("chr".to_string(), dt(libc::S_IFCHR)),
        ("fifo".to_string(), dt(libc::S_IFIFO)),
        ("null".to_string(), dt(libc::S_IFCHR)),
        ("plain".to_string(), dt(libc::S_IFREG)),
        ("sock".to_string(), dt(libc::S_IFSOCK)),
    ];
    // A lower device, then the same one copied up into the upper.
    assert_eq!(dirent_kinds(&fs, dev), want);
    let null = walk(&fs, "dev/null").unwrap();
    fs.setxattr(&CTX, null.inode, &c("user.x"), b"1", 0)
        .unwrap();
    assert_eq!(dirent_kinds(&fs, dev), want);
    for (name, kind) in want {
        let e = walk(&fs, &format!("dev/{name}")).unwrap();
        assert_eq!(dt(e.attr.mode), kind, "{name}");
        let host = std::fs::symlink_metadata(upper.path().join(UPPER_TREE).join("dev").join(&name))
            .unwrap();
        assert!(host.is_file(), "{name} is a regular file on the host");
    }
}

#[test]
fn removing_or_renaming_a_copied_up_or_recreated_name_keeps_the_lower_one_hidden() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    let dev = walk(&fs, "dev").unwrap().inode;
    // Copied up (upper file over the lower one), then removed.
    let null = walk(&fs, "dev/null").unwrap();
    fs.setxattr(&CTX, null.inode, &c("user.x"), b"1", 0)
        .unwrap();
    fs.unlink(&CTX, dev, &c("null")).unwrap();
    assert_errno(walk(&fs, "dev/null"), libc::ENOENT);
    assert!(!names(&fs, dev, 10).contains(&"null".to_string()));
    // Removed, created again in the upper, then renamed away.
    mknod(&fs, dev, "null", libc::S_IFREG | 0o644, 0);
    fs.rename(&CTX, dev, &c("null"), ROOT_INODE, &c("moved"), 0)
        .unwrap();
    assert_errno(walk(&fs, "dev/null"), libc::ENOENT);
    // Copied up, then renamed away.
    write_at(&fs, "bin/su", b"NEW", libc::O_WRONLY);
    let bin = walk(&fs, "bin").unwrap().inode;
    fs.rename(&CTX, bin, &c("su"), ROOT_INODE, &c("su2"), 0)
        .unwrap();
    assert_errno(walk(&fs, "bin/su"), libc::ENOENT);
    assert!(!names(&fs, bin, 10).contains(&"su".to_string()));
    // A new server over the same upper sees the same.
    let again = fs_over(&[&base, &top], upper.path());
    assert_errno(walk(&again, "dev/null"), libc::ENOENT);
    assert_errno(walk(&again, "bin/su"), libc::ENOENT);
    assert_eq!(read_all(&again, "su2"), b"NEW");
}

fn fs_with_limit(layers: &[&tempfile::TempDir], upper: &Path, bytes: u64, names: u64) -> LayeredFs {
    let config = LayeredConfig {
        max_upper_bytes: bytes,
        max_upper_names: Some(names),
        ..LayeredConfig::default()
    };
    LayeredFs::new(
        layers.iter().map(|l| l.path().to_owned()).collect(),
        upper,
        config,
    )
    .unwrap()
}

/// Bytes the host allocates under `dir`, as `du` counts them.
fn du(dir: &Path) -> u64 {
    snapshot(dir)
        .iter()
        .map(|(p, _, _)| std::fs::symlink_metadata(p).unwrap().blocks() * 512)
        .sum()
}

#[test]
fn the_upper_is_limited_in_bytes_and_statfs_reports_the_limit() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let fs = fs_with_limit(&[&base, &top], upper.path(), limit, 1000);
    let s = fs.statfs(&CTX, ROOT_INODE).unwrap();
    assert_eq!((s.blocks * u64::from(s.frsize), s.files), (limit, 1000));
    let (f, open) = fs
        .create(&CTX, ROOT_INODE, &c("big"), 0o644, libc::O_RDWR as u32, 0)
        .unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0u64;
    let enospc = loop {
        match fs.write(&CTX, f.inode, open.handle, written, &chunk, 0) {
            Ok(n) => written += u64::from(n),
            Err(e) => break e.raw_os_error(),
        }
        assert!(written <= limit, "wrote past the limit");
    };
    assert_eq!(enospc, Some(libc::ENOSPC));
    assert!(written >= limit - (128 << 10), "only {written} bytes fit");
    let s = fs.statfs(&CTX, ROOT_INODE).unwrap();
    assert!(s.bavail * u64::from(s.frsize) < 128 << 10);
    // Every other way to grow is refused too.
    let errno_of = |r: io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno_of(fs.fallocate(&CTX, f.inode, open.handle, 0, 0, limit * 2)),
        Some(libc::ENOSPC)
    );
    let grow = SetAttr {
        size: Some(limit * 4),
        ..Default::default()
    };
    assert_errno(fs.setattr(&CTX, f.inode, grow), libc::ENOSPC);
    assert_errno(
        fs.write(&CTX, f.inode, open.handle, 1 << 40, b"x", 0),
        libc::ENOSPC,
    );
    fs.release(&CTX, f.inode, 0, open.handle).unwrap();
    assert!(du(upper.path()) <= limit, "du {}", du(upper.path()));

    // Freeing space lets writes through again; truncating through open counts.
    let h = fs
        .open(&CTX, f.inode, (libc::O_WRONLY | libc::O_TRUNC) as u32)
        .unwrap()
        .handle;
    fs.write(&CTX, f.inode, h, 0, &chunk, 0).unwrap();
    fs.release(&CTX, f.inode, 0, h).unwrap();
    fs.unlink(&CTX, ROOT_INODE, &c("big")).unwrap();
    // Copy-up of a lower file is charged; deleting lower files always works.
    write_at(&fs, "bin/su", b"NEW", libc::O_WRONLY);
    fs.unlink(&CTX, walk(&fs, "keep").unwrap().inode, &c("k"))
        .unwrap();

    // The usage of an existing upper is counted when it is opened again.
    let (f, open) = fs
        .create(&CTX, ROOT_INODE, &c("half"), 0o644, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.fallocate(&CTX, f.inode, open.handle, 0, 0, limit / 2)
        .unwrap();
    fs.release(&CTX, f.inode, 0, open.handle).unwrap();
    let used = |fs: &LayeredFs| {
        let s = fs.statfs(&CTX, ROOT_INODE).unwrap();
        (s.blocks - s.bfree, s.files - s.ffree)
    };

    let before = used(&fs);
    drop(fs);
    let fs = fs_with_limit(&[&base, &top], upper.path(), limit, 1000);
    assert_eq!(used(&fs), before);
    let (f, open) = fs
        .create(&CTX, ROOT_INODE, &c("more"), 0o644, libc::O_RDWR as u32, 0)
        .unwrap();
    assert_eq!(
        errno_of(fs.fallocate(&CTX, f.inode, open.handle, 0, 0, limit / 2)),
        Some(libc::ENOSPC)
    );
}

#[test]
fn a_flood_of_names_ends_with_enospc_and_removing_them_frees_room() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_with_limit(&[&base, &top], upper.path(), 1 << 30, 50);
    let d = fs.mkdir(&CTX, ROOT_INODE, &c("flood"), 0o755, 0).unwrap();
    let mut made = 0;
    let err = loop {
        let name = c(&format!("f{made}"));
        let r = match made % 4 {
            0 => fs.mknod(&CTX, d.inode, &name, libc::S_IFREG | 0o644, 0, 0),
            1 => fs.mkdir(&CTX, d.inode, &name, 0o755, 0),
            2 => fs.symlink(&CTX, &c("target"), d.inode, &name),
            _ => fs.link(&CTX, walk(&fs, "flood/f0").unwrap().inode, d.inode, &name),
        };
        match r {
            Ok(_) => made += 1,
            Err(e) => break e.raw_os_error(),
        }
        assert!(made < 100, "no limit");
    };
    assert_eq!(err, Some(libc::ENOSPC));
    assert!(made >= 45, "{made} names");
    let s = fs.statfs(&CTX, ROOT_INODE).unwrap();
    assert_eq!(s.ffree, 0);
    fs.unlink(&CTX, d.inode, &c("f0")).unwrap();
    fs.mknod(&CTX, d.inode, &c("again"), libc::S_IFREG | 0o644, 0, 0)
        .unwrap();
}

#[test]
fn handles_on_one_directory_share_one_listing_dropped_with_the_last() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    let big = fs.mkdir(&CTX, ROOT_INODE, &c("big"), 0o755, 0).unwrap();
    for i in 0..2000 {
        let name = c(&format!("a-rather-long-file-name-number-{i}"));
        fs.mknod(&CTX, big.inode, &name, libc::S_IFREG | 0o644, 0, 0)
            .unwrap();
    }
    assert_eq!(fs.listing_bytes(), 0);
    let first = fs.opendir(&CTX, big.inode, 0).unwrap().handle;
    let one = fs.listing_bytes();
    assert!(one > 2000 * 30, "{one} bytes for 2000 names");
    let mut handles = vec![first];
    for _ in 0..999 {
        handles.push(fs.opendir(&CTX, big.inode, 0).unwrap().handle);
    }
    assert_eq!(fs.listing_bytes(), one, "1000 handles, one listing");
    assert_eq!(names(&fs, big.inode, 2).len(), 2000);
    // A change makes the next handle list afresh; older handles keep theirs.
    fs.mknod(&CTX, big.inode, &c("new"), libc::S_IFREG | 0o644, 0, 0)
        .unwrap();
    let fresh = fs.opendir(&CTX, big.inode, 0).unwrap().handle;
    assert!(fs.listing_bytes() > one);
    let mut count = 0;
    fs.readdir(&CTX, big.inode, fresh, 0, &mut |_| {
        count += 1;
        true
    })
    .unwrap();
    assert_eq!(count, 2 + 2001);
    fs.releasedir(&CTX, big.inode, 0, fresh).unwrap();
    for h in handles {
        fs.releasedir(&CTX, big.inode, 0, h).unwrap();
    }
    assert_eq!(fs.listing_bytes(), 0, "the last close drops the listing");
}

#[test]
fn the_guest_may_cache_names_misses_pages_and_listings_and_a_hook_chain_opts_out() {
    use crate::abi::fopen::{CACHE_DIR, KEEP_CACHE, NOFLUSH};
    use crate::hooks::{DenyPaths, Hooked};

    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = std::sync::Arc::new(fs_over(&[&base, &top], upper.path()));
    assert_eq!(fs.negative_timeout(), Some(DEFAULT_CACHE_TIMEOUT));
    let a = walk(&fs, "a").unwrap();
    assert_eq!(a.entry_timeout, DEFAULT_CACHE_TIMEOUT);
    assert_eq!(a.attr_timeout, DEFAULT_CACHE_TIMEOUT);
    let file = fs.open(&CTX, a.inode, libc::O_RDONLY as u32).unwrap();
    assert_eq!(file.open_flags, KEEP_CACHE | NOFLUSH);
    let d = walk(&fs, "d").unwrap();
    let dir = fs.opendir(&CTX, d.inode, 0).unwrap();
    assert_eq!(dir.open_flags, KEEP_CACHE | CACHE_DIR);

    // Behind hooks every open starts afresh and misses are not remembered.
    let hooked = Hooked::new(
        fs.clone(),
        vec![std::sync::Arc::new(DenyPaths::new(["/nothing"]))],
    );
    assert_eq!(hooked.negative_timeout(), None);
    let a = hooked.lookup(&CTX, ROOT_INODE, &c("a")).unwrap();
    let file = hooked.open(&CTX, a.inode, libc::O_RDONLY as u32).unwrap();
    assert_eq!(file.open_flags, 0);
    let d = hooked.lookup(&CTX, ROOT_INODE, &c("d")).unwrap();
    let dir = hooked.opendir(&CTX, d.inode, 0).unwrap();
    assert_eq!(dir.open_flags, 0);

    // Configured off: the kernel's defaults.
    let quiet = LayeredFs::new(
        vec![base.path().to_owned(), top.path().to_owned()],
        tempfile::tempdir().unwrap().path(),
        LayeredConfig {
            negative_timeout: Duration::ZERO,
            keep_cache: false,
            ..LayeredConfig::default()
        },
    )
    .unwrap();
    assert_eq!(quiet.negative_timeout(), None);
    let a = walk(&quiet, "a").unwrap();
    assert_eq!(
        quiet
            .open(&CTX, a.inode, libc::O_RDONLY as u32)
            .unwrap()
            .open_flags,
        NOFLUSH
    );
}

/// LOOKUP builds its attributes from what resolving the name read; GETATTR
/// reads them afresh. Both must agree for every kind of entry: lower files,
/// devices and symlinks, merged and opaque directories, copied-up and new
/// upper entries, a kept device in the upper.
#[test]
fn lookup_attributes_agree_with_getattr_for_every_kind_of_entry() {
    let (base, top) = base_and_top();
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base, &top], upper.path());
    write_at(&fs, "keep/k", b"changed", libc::O_WRONLY);
    let d = walk(&fs, "d").unwrap();
    let (f, open) = fs
        .create(&CTX, d.inode, &c("new"), 0o640, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.release(&CTX, f.inode, 0, open.handle).unwrap();
    fs.mkdir(&CTX, ROOT_INODE, &c("newdir"), 0o750, 0).unwrap();
    mknod(&fs, ROOT_INODE, "blk", libc::S_IFBLK | 0o600, 0x0801);
    fs.symlink(&CTX, &c("a"), ROOT_INODE, &c("newlink"))
        .unwrap();
    let paths = [
        "a", "bin", "bin/su", "d", "d/z", "d/new", "dev", "dev/null", "etc", "etc/link", "escape",
        "keep", "keep/k", "newdir", "blk", "newlink",
    ];
    // A second backend over the same upper knows it from the disk only.
    let fresh = fs_over(&[&base, &top], upper.path());
    for fs in [&fs, &fresh] {
        for path in paths {
            // Reading a symlink's target (for its size) touches its atime.
            let no_atime = |a: Attr| Attr {
                atime: 0,
                atime_nsec: 0,
                ..a
            };
            let e = walk(fs, path).unwrap();
            let (attr, _) = fs.getattr(&CTX, e.inode, None).unwrap();
            assert_eq!(no_atime(e.attr), no_atime(attr), "{path}");
        }
    }
    let kept = walk(&fs, "blk").unwrap().attr;
    assert_eq!((kept.mode, kept.rdev), (libc::S_IFBLK | 0o600, 0x0801));
    let su = walk(&fs, "bin/su").unwrap().attr;
    assert_eq!(su.mode, libc::S_IFREG | 0o4755);
    let link = walk(&fs, "etc/link").unwrap().attr;
    assert_eq!(link.size, "/etc/passwd".len() as u64);
}
