//! Tests of the passthrough backend against real temporary directories.

use super::*;
use crate::test_util::{assert_errno, c, dirent_kinds, errno, mknod, names, open_fd_count, CTX};
use std::os::unix::fs::{symlink, MetadataExt};
use std::sync::atomic::{AtomicBool, Ordering};

/// A backend serving `dir`, its default configuration changed by `set`.
fn fs_with(dir: &Path, set: impl FnOnce(&mut PassthroughConfig)) -> PassthroughFs {
    let mut config = PassthroughConfig::default();
    set(&mut config);
    PassthroughFs::new(dir, config).unwrap()
}

/// An empty share and its initialised backend with the default configuration.
fn fresh_share() -> (tempfile::TempDir, PassthroughFs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_with(dir.path(), |_| {});
    fs.init().unwrap();
    (dir, fs)
}

#[test]
fn every_operation_works_on_a_real_directory() {
    let (dir, fs) = fresh_share();

    let (e, open) = fs
        .create(
            &CTX,
            ROOT_INODE,
            &c("f"),
            libc::S_IFREG | 0o644,
            libc::O_RDWR as u32,
            0o022,
        )
        .unwrap();
    assert_eq!(e.attr.mode, libc::S_IFREG | 0o644);
    assert_eq!(
        fs.write(&CTX, e.inode, open.handle, 0, b"hello world", 0)
            .unwrap(),
        11
    );
    assert_eq!(
        fs.read(&CTX, e.inode, open.handle, 6, 100).unwrap(),
        b"world"
    );
    fs.fsync(&CTX, e.inode, true, open.handle).unwrap();
    fs.fallocate(&CTX, e.inode, open.handle, 0, 0, 1 << 20)
        .unwrap();
    assert_eq!(
        fs.getattr(&CTX, e.inode, Some(open.handle)).unwrap().0.size,
        1 << 20
    );
    fs.setattr(
        &CTX,
        e.inode,
        SetAttr {
            size: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        fs.lseek(&CTX, e.inode, open.handle, 0, libc::SEEK_DATA as u32)
            .unwrap(),
        0
    );
    assert!(
        fs.lseek(&CTX, e.inode, open.handle, 0, libc::SEEK_HOLE as u32)
            .unwrap()
            >= 11
    );
    fs.release(&CTX, e.inode, 0, open.handle).unwrap();
    assert_errno(fs.read(&CTX, e.inode, open.handle, 0, 1), libc::EBADF);

    let (a, _) = fs
        .setattr(
            &CTX,
            e.inode,
            SetAttr {
                mode: Some(0o4750),
                size: Some(5),
                mtime: Some(crate::filesystem::TimeSet::At(1_000_000, 5)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (a.mode, a.size, a.mtime, a.mtime_nsec),
        (libc::S_IFREG | 0o4750, 5, 1_000_000, 5)
    );
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");

    let d = fs.mkdir(&CTX, ROOT_INODE, &c("d"), 0o755, 0).unwrap();
    assert_eq!(d.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let l = fs.symlink(&CTX, &c("../f"), d.inode, &c("link")).unwrap();
    assert_eq!(fs.readlink(&CTX, l.inode).unwrap(), b"../f");
    let fifo = mknod(&fs, d.inode, "fifo", libc::S_IFIFO | 0o600, 0);
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    let hl = fs.link(&CTX, e.inode, d.inode, &c("hard")).unwrap();
    assert_eq!(hl.inode, e.inode, "a hard link is the same inode");
    assert_eq!(hl.attr.nlink, 2);
    assert_eq!(names(&fs, d.inode, 3), ["fifo", "hard", "link"]);

    fs.rename(&CTX, d.inode, &c("hard"), ROOT_INODE, &c("moved"), 0)
        .unwrap();
    assert_eq!(
        errno(fs.rename(
            &CTX,
            ROOT_INODE,
            &c("moved"),
            ROOT_INODE,
            &c("f"),
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    fs.rename(
        &CTX,
        d.inode,
        &c("fifo"),
        d.inode,
        &c("link"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs.lookup(&CTX, d.inode, &c("fifo")).unwrap().inode, l.inode);
    assert_eq!(
        fs.readlink(&CTX, l.inode).unwrap(),
        b"../f",
        "the inode followed its new name"
    );

    fs.setxattr(&CTX, e.inode, &c("user.k"), b"v", 0).unwrap();
    assert_eq!(fs.getxattr(&CTX, e.inode, &c("user.k")).unwrap(), b"v");
    assert!(fs
        .listxattr(&CTX, e.inode)
        .unwrap()
        .windows(7)
        .any(|w| w == b"user.k\0"));
    fs.removexattr(&CTX, e.inode, &c("user.k")).unwrap();
    assert_errno(fs.getxattr(&CTX, e.inode, &c("user.k")), libc::ENODATA);
    assert_errno(
        fs.setxattr(&CTX, e.inode, &c("trusted.k"), b"v", 0),
        libc::EPERM,
    );

    assert!(fs.statfs(&CTX, ROOT_INODE).unwrap().blocks > 0);
    let user = Context {
        uid: 1234,
        gid: 1234,
        pid: 1,
    };
    fs.access(&user, e.inode, libc::R_OK as u32).unwrap_err();
    fs.access(&CTX, e.inode, libc::R_OK as u32 | libc::W_OK as u32)
        .unwrap();

    fs.unlink(&CTX, d.inode, &c("fifo")).unwrap();
    fs.unlink(&CTX, d.inode, &c("link")).unwrap();
    assert_errno(fs.rmdir(&CTX, ROOT_INODE, &c("f")), libc::ENOTDIR);
    fs.rmdir(&CTX, ROOT_INODE, &c("d")).unwrap();
    assert_errno(fs.lookup(&CTX, ROOT_INODE, &c("d")), libc::ENOENT);
    // The removed directory's cached fd still answers, for the inode itself.
    assert_eq!(fs.getattr(&CTX, d.inode, None).unwrap().0.nlink, 0);
    assert_eq!(names(&fs, ROOT_INODE, 3), ["f", "moved"]);
    assert_errno(fs.getattr(&CTX, 987_654, None), libc::ESTALE);
}

#[test]
fn symlinks_and_dotdot_never_reach_outside_the_share() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let share = tempfile::tempdir().unwrap();
    let sub = share.path().join("a/b/c");
    std::fs::create_dir_all(&sub).unwrap();
    symlink("/", share.path().join("root")).unwrap();
    symlink(outside.path(), share.path().join("abs")).unwrap();
    symlink("../../../etc", sub.join("up")).unwrap();
    symlink("../../../../../../..", sub.join("way_up")).unwrap();
    let fs = fs_with(share.path(), |_| {});

    for (dir, link) in [(ROOT_INODE, "root"), (ROOT_INODE, "abs")] {
        let e = fs.lookup(&CTX, dir, &c(link)).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_errno(fs.lookup(&CTX, e.inode, &c("secret")), libc::ENOTDIR);
        assert_errno(fs.lookup(&CTX, e.inode, &c("etc")), libc::ENOTDIR);
        assert_errno(fs.opendir(&CTX, e.inode, 0), libc::ENOTDIR);
        assert_errno(fs.open(&CTX, e.inode, libc::O_RDONLY as u32), libc::ELOOP);
        assert_errno(fs.getxattr(&CTX, e.inode, &c("user.x")), libc::ENODATA);
        // Changing it must act on the link, never on its target.
        let before = std::fs::metadata("/").unwrap().mode();
        fs.setattr(
            &CTX,
            e.inode,
            SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(std::fs::metadata("/").unwrap().mode(), before);
    }
    let mut ino = ROOT_INODE;
    for n in ["a", "b", "c"] {
        ino = fs.lookup(&CTX, ino, &c(n)).unwrap().inode;
    }
    for link in ["up", "way_up"] {
        let e = fs.lookup(&CTX, ino, &c(link)).unwrap();
        assert_errno(fs.lookup(&CTX, e.inode, &c("passwd")), libc::ENOTDIR);
    }
    assert_errno(fs.lookup(&CTX, ino, &c("..")), libc::ENOENT);
    assert_errno(fs.lookup(&CTX, ROOT_INODE, &c("..")), libc::ENOENT);
    assert_errno(fs.mkdir(&CTX, ino, &c(".."), 0o755, 0), libc::EINVAL);
    // Creating through the link name must not create at its target.
    assert_errno(
        fs.create(&CTX, ROOT_INODE, &c("abs"), 0o644, libc::O_RDWR as u32, 0),
        libc::ELOOP,
    );
    assert!(!outside.path().join("abs").exists());
}

#[test]
fn racing_symlink_swaps_never_open_anything_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::create_dir(share.path().join("d")).unwrap();
    std::fs::write(share.path().join("d/secret"), b"inside").unwrap();
    symlink(outside.path(), share.path().join("evil")).unwrap();
    // A tiny cache so lookups of "d" keep going back to the host path.
    let fs = Arc::new(fs_with(share.path(), |c| c.max_open_fds = 1));
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (root, stop) = (share.path().to_owned(), stop.clone());
        std::thread::spawn(move || {
            let d = c(root.join("d").to_str().unwrap());
            let evil = c(root.join("evil").to_str().unwrap());
            while !stop.load(Ordering::Relaxed) {
                let _ = crate::host_util::renameat2(
                    libc::AT_FDCWD,
                    &d,
                    libc::AT_FDCWD,
                    &evil,
                    libc::RENAME_EXCHANGE,
                );
            }
        })
    };
    let mut inside_reads = 0;
    for _ in 0..3000 {
        let Ok(d) = fs.lookup(&CTX, ROOT_INODE, &c("d")) else {
            continue;
        };
        if let Ok(f) = fs.lookup(&CTX, d.inode, &c("secret")) {
            if let Ok(h) = fs.open(&CTX, f.inode, libc::O_RDONLY as u32) {
                let data = fs.read(&CTX, f.inode, h.handle, 0, 64).unwrap();
                assert_eq!(data, b"inside", "read a file outside the share");
                inside_reads += 1;
                fs.release(&CTX, f.inode, 0, h.handle).unwrap();
            }
            fs.forget(f.inode, 1);
        }
        fs.forget(d.inode, 1);
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        inside_reads > 0,
        "the race never let a lookup through; the test proved nothing"
    );
}

#[test]
fn walking_more_entries_than_max_open_fds_keeps_descriptors_bounded() {
    let share = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let d = share.path().join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        for j in 0..20 {
            std::fs::write(d.join(format!("f{j}")), format!("{i}-{j}")).unwrap();
        }
    }
    let fs = fs_with(share.path(), |c| c.max_open_fds = 16);
    let before = open_fd_count();
    let mut files = 0;
    let mut peak = 0;
    // Depth-first like find(1), keeping every inode looked up (never forgotten).
    let mut stack = vec![ROOT_INODE];
    while let Some(dir) = stack.pop() {
        for n in names(&fs, dir, 3) {
            let e = fs.lookup(&CTX, dir, &c(&n)).unwrap();
            if e.attr.mode & libc::S_IFMT == libc::S_IFDIR {
                stack.push(e.inode);
            } else {
                let h = fs
                    .open(&CTX, e.inode, libc::O_RDONLY as u32)
                    .unwrap()
                    .handle;
                assert!(!fs.read(&CTX, e.inode, h, 0, 16).unwrap().is_empty());
                fs.release(&CTX, e.inode, 0, h).unwrap();
                files += 1;
            }
            peak = peak.max(open_fd_count());
        }
    }
    assert_eq!(files, 400);
    // Every inode is still reachable after its fd was evicted.
    let d0 = fs.lookup(&CTX, ROOT_INODE, &c("d0")).unwrap();
    let f0 = fs.lookup(&CTX, d0.inode, &c("f0")).unwrap();
    fs.getattr(&CTX, f0.inode, None).unwrap();
    assert!(
        peak <= before + 16 + 4,
        "fd count peaked at {peak}, started at {before}"
    );
}

#[test]
fn open_handles_are_capped() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"x").unwrap();
    let fs = fs_with(share.path(), |c| c.max_open_handles = 3);
    let f = fs.lookup(&CTX, ROOT_INODE, &c("f")).unwrap();
    let hs: Vec<_> = (0..3)
        .map(|_| {
            fs.open(&CTX, f.inode, libc::O_RDONLY as u32)
                .unwrap()
                .handle
        })
        .collect();
    assert_errno(fs.open(&CTX, f.inode, libc::O_RDONLY as u32), libc::EMFILE);
    assert_errno(fs.opendir(&CTX, ROOT_INODE, 0), libc::EMFILE);
    fs.release(&CTX, f.inode, 0, hs[0]).unwrap();
    fs.opendir(&CTX, ROOT_INODE, 0).unwrap();
}

#[test]
fn read_only_refuses_every_change() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"data").unwrap();
    let fs = fs_with(share.path(), |c| c.read_only = true);
    let f = fs.lookup(&CTX, ROOT_INODE, &c("f")).unwrap();
    let h = fs
        .open(&CTX, f.inode, libc::O_RDONLY as u32)
        .unwrap()
        .handle;
    assert_eq!(fs.read(&CTX, f.inode, h, 0, 10).unwrap(), b"data");
    assert_errno(fs.write(&CTX, f.inode, h, 0, b"x", 0), libc::EROFS);
    assert_errno(fs.open(&CTX, f.inode, libc::O_WRONLY as u32), libc::EROFS);
    assert_errno(
        fs.open(&CTX, f.inode, (libc::O_RDONLY | libc::O_TRUNC) as u32),
        libc::EROFS,
    );
    assert_errno(
        fs.create(&CTX, ROOT_INODE, &c("g"), 0o644, 0, 0),
        libc::EROFS,
    );
    assert_errno(fs.mkdir(&CTX, ROOT_INODE, &c("g"), 0o755, 0), libc::EROFS);
    assert_errno(fs.unlink(&CTX, ROOT_INODE, &c("f")), libc::EROFS);
    assert_errno(
        fs.rename(&CTX, ROOT_INODE, &c("f"), ROOT_INODE, &c("g"), 0),
        libc::EROFS,
    );
    assert_eq!(
        errno(fs.setattr(
            &CTX,
            f.inode,
            SetAttr {
                size: Some(0),
                ..Default::default()
            }
        )),
        libc::EROFS
    );
    assert_errno(
        fs.setxattr(&CTX, f.inode, &c("user.a"), b"", 0),
        libc::EROFS,
    );
    assert_errno(fs.access(&CTX, f.inode, libc::W_OK as u32), libc::EROFS);
    assert_eq!(std::fs::read(share.path().join("f")).unwrap(), b"data");
}

#[test]
fn id_map_presents_host_owner_as_guest_root() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"x").unwrap();
    let meta = std::fs::metadata(share.path().join("f")).unwrap();
    let map = IdMap::host_user_as_root(meta.uid(), meta.gid());
    let fs = fs_with(share.path(), |c| c.id_map = map);
    let f = fs.lookup(&CTX, ROOT_INODE, &c("f")).unwrap();
    assert_eq!((f.attr.uid, f.attr.gid), (0, 0));
    // Owners outside the map show as the overflow id.
    let other = IdMap {
        uids: vec![IdRange {
            host: meta.uid() + 1,
            guest: 0,
            count: 1,
        }],
        gids: vec![],
    };
    let fs2 = fs_with(share.path(), |c| c.id_map = other);
    let f2 = fs2.lookup(&CTX, ROOT_INODE, &c("f")).unwrap();
    assert_eq!((f2.attr.uid, f2.attr.gid), (OVERFLOW_ID, OVERFLOW_ID));
    // A guest chown to an unmapped id is refused; to a mapped one lands on the host id.
    assert_eq!(
        errno(fs.setattr(
            &CTX,
            f.inode,
            SetAttr {
                uid: Some(5),
                ..Default::default()
            }
        )),
        libc::EINVAL
    );
    fs.setattr(
        &CTX,
        f.inode,
        SetAttr {
            uid: Some(0),
            gid: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(share.path().join("f")).unwrap().uid(),
        meta.uid()
    );
    // New files belong to the mapped host owner of the guest caller.
    let g = fs.mkdir(&CTX, ROOT_INODE, &c("g"), 0o755, 0).unwrap();
    assert_eq!((g.attr.uid, g.attr.gid), (0, 0));
    assert_eq!(
        std::fs::metadata(share.path().join("g")).unwrap().uid(),
        meta.uid()
    );
}

/// The host's view of `path`: full `st_mode` without following symlinks.
fn host_mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode()
}

#[test]
fn the_host_never_gets_set_id_bits_or_device_nodes_but_the_guest_sees_them() {
    let (dir, fs) = fresh_share();
    let (f, open) = fs
        .create(&CTX, ROOT_INODE, &c("suid"), 0o4755, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.release(&CTX, f.inode, 0, open.handle).unwrap();
    assert_eq!(
        f.attr.mode,
        libc::S_IFREG | 0o4755,
        "the guest sees its mode"
    );
    let d = fs.mkdir(&CTX, ROOT_INODE, &c("sgid"), 0o2755, 0).unwrap();
    assert_eq!(d.attr.mode, libc::S_IFDIR | 0o2755);
    let blk = mknod(&fs, ROOT_INODE, "blk", libc::S_IFBLK | 0o640, 0x0801);
    assert_eq!(
        (blk.attr.mode, blk.attr.rdev),
        (libc::S_IFBLK | 0o640, 0x0801)
    );
    let chr = mknod(&fs, ROOT_INODE, "chr", libc::S_IFCHR | 0o6644, 0x0103);
    assert_eq!(
        (chr.attr.mode, chr.attr.rdev),
        (libc::S_IFCHR | 0o6644, 0x0103)
    );
    let (plain, open) = fs
        .create(&CTX, ROOT_INODE, &c("plain"), 0o755, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.release(&CTX, plain.inode, 0, open.handle).unwrap();
    let chmod = |ino, mode| {
        let set = SetAttr {
            mode: Some(mode),
            ..Default::default()
        };
        fs.setattr(&CTX, ino, set).unwrap().0.mode
    };
    assert_eq!(chmod(plain.inode, 0o2755), libc::S_IFREG | 0o2755);

    let host = |name: &str| host_mode(&dir.path().join(name));
    for (name, kind, perm) in [
        ("suid", libc::S_IFREG, 0o755),
        ("sgid", libc::S_IFDIR, 0o755),
        ("blk", libc::S_IFREG, 0o640),
        ("chr", libc::S_IFREG, 0o644),
        ("plain", libc::S_IFREG, 0o755),
    ] {
        assert_eq!(host(name), kind | perm, "{name} on the host");
    }

    // The kept mode is the host object's: it survives a rename and a new
    // server, and shows in lookups.
    fs.rename(&CTX, ROOT_INODE, &c("suid"), d.inode, &c("moved"), 0)
        .unwrap();
    let fs2 = fs_with(dir.path(), |_| {});
    let sg = fs2.lookup(&CTX, ROOT_INODE, &c("sgid")).unwrap();
    let moved = fs2.lookup(&CTX, sg.inode, &c("moved")).unwrap();
    assert_eq!(moved.attr.mode, libc::S_IFREG | 0o4755);
    let blk2 = fs2.lookup(&CTX, ROOT_INODE, &c("blk")).unwrap();
    assert_eq!(blk2.attr.mode & libc::S_IFMT, libc::S_IFBLK);
    assert_eq!(host("sgid/moved"), libc::S_IFREG | 0o755);

    // Clearing the bits clears what is kept; the guest cannot reach the xattr.
    assert_eq!(chmod(plain.inode, 0o755), libc::S_IFREG | 0o755);
    assert_eq!(
        fs.lookup(&CTX, ROOT_INODE, &c("plain")).unwrap().attr.mode,
        libc::S_IFREG | 0o755
    );
    assert_errno(
        fs.setxattr(&CTX, plain.inode, &c("user.msbvm.mode"), b"x", 0),
        libc::EPERM,
    );
    assert_errno(
        fs.getxattr(&CTX, blk.inode, &c("user.msbvm.mode")),
        libc::ENODATA,
    );
    assert_errno(
        fs.removexattr(&CTX, blk.inode, &c("user.msbvm.mode")),
        libc::EPERM,
    );
    assert!(fs.listxattr(&CTX, blk.inode).unwrap().is_empty());
}

#[test]
fn plain_readdir_reports_kept_device_types_as_lookup_does() {
    let (dir, fs) = fresh_share();
    let sub = fs.mkdir(&CTX, ROOT_INODE, &c("dev"), 0o755, 0).unwrap();
    for parent in [ROOT_INODE, sub.inode] {
        mknod(&fs, parent, "chr", libc::S_IFCHR | 0o666, 0x0103);
        mknod(&fs, parent, "blk", libc::S_IFBLK | 0o4660, 0x0801);
        mknod(&fs, parent, "fifo", libc::S_IFIFO | 0o644, 0);
        mknod(&fs, parent, "sock", libc::S_IFSOCK | 0o644, 0);
        mknod(&fs, parent, "suid", libc::S_IFREG | 0o4755, 0);
        mknod(&fs, parent, "plain", libc::S_IFREG | 0o644, 0);
    }
    let dt = |mode: u32| host::dtype(mode);
    let files = vec![
        ("blk".to_string(), dt(libc::S_IFBLK)),
        ("chr".to_string(), dt(libc::S_IFCHR)),
        ("fifo".to_string(), dt(libc::S_IFIFO)),
        ("plain".to_string(), dt(libc::S_IFREG)),
        ("sock".to_string(), dt(libc::S_IFSOCK)),
        ("suid".to_string(), dt(libc::S_IFREG)),
    ];
    let mut root = files.clone();
    root.push(("dev".to_string(), dt(libc::S_IFDIR)));
    root.sort();
    assert_eq!(
        host_mode(&dir.path().join("dev/chr")) & libc::S_IFMT,
        libc::S_IFREG
    );
    assert_eq!(
        host_mode(&dir.path().join("blk")) & libc::S_IFMT,
        libc::S_IFREG
    );

    // READDIR agrees with LOOKUP, also for a new server over the same share.
    let fs2 = fs_with(dir.path(), |_| {});
    for fs in [&fs, &fs2] {
        let sub = fs.lookup(&CTX, ROOT_INODE, &c("dev")).unwrap().inode;
        assert_eq!(dirent_kinds(fs, ROOT_INODE), root);
        assert_eq!(dirent_kinds(fs, sub), files);
        for (name, kind) in &files {
            let e = fs.lookup(&CTX, sub, &c(name)).unwrap();
            assert_eq!(dt(e.attr.mode), *kind, "{name}");
        }
    }
}

#[test]
fn only_a_share_that_kept_a_device_is_marked_for_readdir_to_look() {
    let (dir, fs) = fresh_share();
    let marked = || ShareMark::Devices.on(fs.root.as_raw_fd());
    mknod(&fs, ROOT_INODE, "suid", libc::S_IFREG | 0o4755, 0);
    mknod(&fs, ROOT_INODE, "fifo", libc::S_IFIFO | 0o644, 0);
    assert!(!marked() && !fs.devices_kept.load(Ordering::Relaxed));
    let ro = fs_with(dir.path(), |c| c.read_only = true);
    assert_errno(
        ro.mknod(&CTX, ROOT_INODE, &c("chr"), libc::S_IFCHR | 0o666, 1, 0),
        libc::EROFS,
    );
    assert!(!marked());
    mknod(&fs, ROOT_INODE, "chr", libc::S_IFCHR | 0o666, 0x0103);
    assert!(marked() && fs.devices_kept.load(Ordering::Relaxed));
    assert!(fs_with(dir.path(), |_| {})
        .devices_kept
        .load(Ordering::Relaxed));
    // The guest never sees the mark.
    assert!(fs.listxattr(&CTX, ROOT_INODE).unwrap().is_empty());
    assert_errno(
        fs.getxattr(&CTX, ROOT_INODE, kept_mode::DEVICES_XATTR),
        libc::ENODATA,
    );
}

#[test]
fn a_set_id_create_over_an_existing_file_keeps_that_files_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"").unwrap();
    let fs = fs_with(dir.path(), |_| {});
    let (e, open) = fs
        .create(&CTX, ROOT_INODE, &c("f"), 0o4777, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.release(&CTX, e.inode, 0, open.handle).unwrap();
    assert_eq!(e.attr.mode & SETID, 0);
    assert_eq!(host_mode(&dir.path().join("f")) & SETID, 0);
}

#[test]
fn directory_handles_read_on_demand_and_page_through_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        std::fs::write(dir.path().join(format!("entry-{i:05}")), b"").unwrap();
    }
    let fs = fs_with(dir.path(), |_| {});
    // Many handles on the same big directory: one host fd each, no copy.
    let handles: Vec<Handle> = (0..200)
        .map(|_| fs.opendir(&CTX, ROOT_INODE, 0).unwrap().handle)
        .collect();
    // Two handles paged in turns, a few entries at a time, see every name once.
    let mut offsets = [0u64; 2];
    let mut seen = [Vec::new(), Vec::new()];
    loop {
        let mut progressed = false;
        for k in 0..2 {
            let mut batch = 0;
            fs.readdir(&CTX, ROOT_INODE, handles[k], offsets[k], &mut |e| {
                if batch == 7 {
                    return false;
                }
                batch += 1;
                offsets[k] = e.offset;
                seen[k].push(String::from_utf8(e.name.to_vec()).unwrap());
                true
            })
            .unwrap();
            progressed |= batch > 0;
        }
        if !progressed {
            break;
        }
    }
    for s in &mut seen {
        s.retain(|n| n != "." && n != "..");
        s.sort();
        assert_eq!(s.len(), 3000);
        s.dedup();
        assert_eq!(s.len(), 3000);
    }
    for h in handles {
        fs.releasedir(&CTX, ROOT_INODE, 0, h).unwrap();
    }
}

#[test]
fn a_fresh_backend_over_the_same_directory_answers_for_saved_inodes_and_handles() {
    let dir = crate::test_util::host_tree(&[("d/f", b"data"), ("d/g", b"gg")]);
    let fs = fs_with(dir.path(), |_| {});
    let d = fs.lookup(&CTX, ROOT_INODE, &c("d")).unwrap();
    let f = fs.lookup(&CTX, d.inode, &c("f")).unwrap();
    let g = fs.lookup(&CTX, d.inode, &c("g")).unwrap();
    let rh = fs.open(&CTX, f.inode, libc::O_RDONLY as u32).unwrap();
    let wflags = (libc::O_WRONLY | libc::O_TRUNC) as u32;
    let wh = fs.open(&CTX, g.inode, wflags).unwrap();
    let dh = fs.opendir(&CTX, d.inode, 0).unwrap();
    fs.forget(d.inode, 1); // held only as the parent of f and g now
    let saved = fs.save_state().unwrap();
    assert_eq!(saved.handles.len(), 3);
    // g was truncated by its open, not again by the restore.
    std::fs::write(dir.path().join("d/g"), b"kept").unwrap();

    let fresh = fs_with(dir.path(), |_| {});
    fresh.restore_state(&saved).unwrap();
    assert!(fresh.restore_state(&saved).is_err(), "only once");
    assert_eq!(fresh.getattr(&CTX, f.inode, None).unwrap().0.size, 4);
    assert_eq!(
        fresh.read(&CTX, f.inode, rh.handle, 0, 100).unwrap(),
        b"data"
    );
    assert_eq!(
        fresh.write(&CTX, g.inode, wh.handle, 4, b"+", 0).unwrap(),
        1
    );
    assert_eq!(std::fs::read(dir.path().join("d/g")).unwrap(), b"kept+");
    let mut listed = Vec::new();
    fresh
        .readdir(&CTX, d.inode, dh.handle, 0, &mut |e| {
            listed.push(String::from_utf8(e.name.to_vec()).unwrap());
            true
        })
        .unwrap();
    listed.sort();
    assert_eq!(listed, [".", "..", "f", "g"]);
    // A lookup finds the restored inode; new ones are numbered above.
    assert_eq!(fresh.lookup(&CTX, d.inode, &c("f")).unwrap().inode, f.inode);
    assert_eq!(
        fresh.lookup(&CTX, ROOT_INODE, &c("d")).unwrap().inode,
        d.inode
    );
    std::fs::write(dir.path().join("new"), b"").unwrap();
    let new = fresh.lookup(&CTX, ROOT_INODE, &c("new")).unwrap();
    assert!(new.inode >= saved.next_inode);
    fresh.forget(1 << 40, 1);
}

#[test]
fn lookups_read_kept_modes_only_in_a_share_marked_for_them() {
    let (dir, fs) = fresh_share();
    let modes_marked = || ShareMark::Modes.on(fs.root.as_raw_fd());
    // A kept mode that is not this backend's doing (copied in with its
    // xattrs): an unmarked share does not read it.
    let forged = dir.path().join("forged");
    std::fs::write(&forged, b"").unwrap();
    let kept = KeptMode::for_request(libc::S_IFREG | 0o4755, 0);
    let file = std::fs::File::open(&forged).unwrap();
    KeptMode::store(file.as_raw_fd(), kept).unwrap();
    let mode_of =
        |fs: &PassthroughFs, name| fs.lookup(&CTX, ROOT_INODE, &c(name)).unwrap().attr.mode;
    assert_eq!(mode_of(&fs, "forged") & SETID, 0);
    // Plain creates and modes leave the share unmarked.
    let (plain, open) = fs
        .create(&CTX, ROOT_INODE, &c("plain"), 0o755, libc::O_RDWR as u32, 0)
        .unwrap();
    fs.release(&CTX, plain.inode, 0, open.handle).unwrap();
    fs.mkdir(&CTX, ROOT_INODE, &c("dir"), 0o755, 0).unwrap();
    assert!(!modes_marked() && !fs.modes_kept.load(Ordering::Relaxed));

    // The first kept mode marks it, before it is stored.
    let set = SetAttr {
        mode: Some(0o2755),
        ..Default::default()
    };
    assert_eq!(
        fs.setattr(&CTX, plain.inode, set).unwrap().0.mode,
        libc::S_IFREG | 0o2755
    );
    assert!(modes_marked() && fs.modes_kept.load(Ordering::Relaxed));
    assert!(!ShareMark::Devices.on(fs.root.as_raw_fd()));
    let fs2 = fs_with(dir.path(), |_| {});
    assert_eq!(mode_of(&fs2, "plain"), libc::S_IFREG | 0o2755);
    assert_eq!(mode_of(&fs2, "forged") & SETID, libc::S_ISUID);
    // The guest never sees the mark.
    assert_errno(
        fs2.getxattr(&CTX, ROOT_INODE, kept_mode::MODES_XATTR),
        libc::ENODATA,
    );
    assert!(fs2.listxattr(&CTX, ROOT_INODE).unwrap().is_empty());

    // A share marked only for devices (as before the mark for modes
    // existed) reads kept modes too.
    let old = tempfile::tempdir().unwrap();
    let path = old.path().join("suid");
    std::fs::write(&path, b"").unwrap();
    let file = std::fs::File::open(&path).unwrap();
    KeptMode::store(file.as_raw_fd(), kept).unwrap();
    let root = host::open_root(old.path()).unwrap();
    ShareMark::Devices.set(root.as_raw_fd()).unwrap();
    let fs3 = fs_with(old.path(), |_| {});
    assert_eq!(mode_of(&fs3, "suid") & SETID, libc::S_ISUID);
}
