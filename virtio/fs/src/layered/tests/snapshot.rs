//! Snapshots of the layered backend: save the state, freeze the upper into
//! a layer, and restore into a fork over the same layers plus the frozen
//! one and a fresh upper.

use super::*;
use crate::layered::freeze::DETACHED_DIR;
use crate::saved_state::{SavedHandle, SavedNode, MAX_SAVED_NODES};

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_fork_over_the_frozen_upper_answers_for_the_saved_inodes_and_handles() {
    let base = layer(
        &[
            ("etc/hostname", Item::File(b"base\n")),
            ("bin/sh", Item::File(b"#!sh")),
            ("lib/a", Item::File(b"aaaa")),
        ],
        &[("etc/hostname", meta(libc::S_IFREG | 0o644, 0, 0))],
    );
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base], upper.path());

    // Changes of every kind the upper holds.
    let work = fs.mkdir(&CTX, ROOT_INODE, &c("work"), 0o750, 0).unwrap();
    let rw = libc::O_RDWR as u32;
    let (notes, h) = fs
        .create(&CTX, work.inode, &c("notes"), 0o640, rw, 0)
        .unwrap();
    fs.write(&CTX, notes.inode, h.handle, 0, b"hello notes", 0)
        .unwrap();
    fs.release(&CTX, notes.inode, 0, h.handle).unwrap();
    fs.setxattr(&CTX, notes.inode, &c("user.k"), b"v", 0)
        .unwrap();
    fs.link(&CTX, notes.inode, ROOT_INODE, &c("notes-link"))
        .unwrap();
    let link = fs
        .symlink(&CTX, &c("etc/hostname"), ROOT_INODE, &c("link"))
        .unwrap();
    let dev = mknod(&fs, work.inode, "null", libc::S_IFCHR | 0o666, 0x0103);
    let bin = walk(&fs, "bin").unwrap();
    fs.unlink(&CTX, bin.inode, &c("sh")).unwrap();

    // What the guest holds: lookups, a read handle on a lower file, a
    // write handle (which copies lib/a up), a directory handle.
    let hostname = walk(&fs, "etc/hostname").unwrap();
    walk(&fs, "etc/hostname").unwrap();
    let lib_a = walk(&fs, "lib/a").unwrap();
    let rh = fs
        .open(&CTX, hostname.inode, libc::O_RDONLY as u32)
        .unwrap();
    let wh = fs.open(&CTX, lib_a.inode, libc::O_WRONLY as u32).unwrap();
    let dh = fs.opendir(&CTX, work.inode, 0).unwrap();

    let saved = fs.save_state().unwrap();
    assert_eq!(saved.handles.len(), 3);
    let held = |ino| saved.nodes.iter().find(|n| n.inode == ino).unwrap();
    assert_eq!(held(hostname.inode).lookups, 2);
    assert_eq!(held(lib_a.inode).path.as_deref(), Some(&b"lib/a"[..]));

    let snaps = tempfile::tempdir().unwrap();
    let frozen = snaps.path().join("snap");
    fs.freeze_upper(&frozen).unwrap();
    assert_eq!(names_in(snaps.path()), ["snap"], "no temporary left");
    assert_eq!(
        fs.freeze_upper(&frozen).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    let frozen_root = frozen.join(ROOTFS_DIR);
    assert_eq!(
        std::fs::read(frozen_root.join("work/notes")).unwrap(),
        b"hello notes"
    );
    assert!(std::fs::symlink_metadata(frozen_root.join("link"))
        .unwrap()
        .is_symlink());
    assert!(frozen_root.join("bin/.wh.sh").exists(), "whiteout carried");
    let ino_of = |p: &str| std::fs::metadata(frozen_root.join(p)).unwrap().ino();
    assert_eq!(ino_of("work/notes"), ino_of("notes-link"), "hard link kept");
    let src_upper_before = snapshot(upper.path());
    let frozen_before = snapshot(&frozen);

    // The fork.
    let upper2 = tempfile::tempdir().unwrap();
    let fork = LayeredFs::new(
        vec![base.path().to_owned(), frozen.clone()],
        upper2.path(),
        LayeredConfig::default(),
    )
    .unwrap();
    fork.restore_state(&saved).unwrap();
    assert!(
        fork.restore_state(&saved).is_err(),
        "only a fresh backend restores"
    );

    let attr = |ino| fork.getattr(&CTX, ino, None).unwrap().0;
    assert_eq!(attr(notes.inode).size, 11);
    assert_eq!(attr(notes.inode).mode, libc::S_IFREG | 0o640);
    assert_eq!(attr(work.inode).mode, libc::S_IFDIR | 0o750);
    assert_eq!(attr(hostname.inode).size, 5);
    assert_eq!(attr(link.inode).mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fork.readlink(&CTX, link.inode).unwrap(), b"etc/hostname");
    assert_eq!(attr(dev.inode).mode, libc::S_IFCHR | 0o666);
    assert_eq!(attr(dev.inode).rdev, 0x0103);
    assert_eq!(
        fork.getxattr(&CTX, notes.inode, &c("user.k")).unwrap(),
        b"v"
    );
    assert_errno(fork.lookup(&CTX, bin.inode, &c("sh")), libc::ENOENT);
    assert_eq!(
        fork.lookup(&CTX, ROOT_INODE, &c("work")).unwrap().inode,
        work.inode
    );

    assert_eq!(
        fork.read(&CTX, hostname.inode, rh.handle, 0, 100).unwrap(),
        b"base\n"
    );
    assert_eq!(
        fork.write(&CTX, lib_a.inode, wh.handle, 0, b"AA", 0)
            .unwrap(),
        2
    );
    let mut listed = Vec::new();
    fork.readdir(&CTX, work.inode, dh.handle, 0, &mut |e| {
        listed.push(String::from_utf8(e.name.to_vec()).unwrap());
        true
    })
    .unwrap();
    listed.sort();
    assert_eq!(listed, [".", "..", "notes", "null"]);

    // The write landed in the fork's upper only.
    assert_eq!(
        std::fs::read(upper2.path().join("rootfs/lib/a")).unwrap(),
        b"AAaa"
    );
    assert_eq!(std::fs::read(frozen_root.join("lib/a")).unwrap(), b"aaaa");
    assert_eq!(
        std::fs::read(upper.path().join("rootfs/lib/a")).unwrap(),
        b"aaaa"
    );
    assert_eq!(snapshot(upper.path()), src_upper_before);
    assert_eq!(snapshot(&frozen), frozen_before);

    // New inodes and handles are numbered above the saved ones; unknown
    // ids are harmless.
    let new = fork.mkdir(&CTX, ROOT_INODE, &c("new"), 0o755, 0).unwrap();
    assert!(new.inode >= saved.next_inode);
    let h = fork.opendir(&CTX, new.inode, 0).unwrap();
    assert!(h.handle >= saved.next_handle);
    fork.forget(saved.next_inode + 1000, 1);
    assert_errno(fork.getattr(&CTX, 1 << 40, None), libc::ESTALE);
}

/// A file the guest holds open after unlinking it (an upper file and a lower one) is kept
/// beside the frozen tree, and a fork's handles on it read and write a copy of its own.
#[test]
fn handles_on_unlinked_files_survive_into_forks_on_copies_of_their_own() {
    let base = layer(&[("lib/old", Item::File(b"lower data"))], &[]);
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base], upper.path());
    let rw = libc::O_RDWR as u32;
    let (tmp, th) = fs
        .create(&CTX, ROOT_INODE, &c("tmp"), 0o600, rw, 0)
        .unwrap();
    fs.write(&CTX, tmp.inode, th.handle, 0, b"scratch", 0)
        .unwrap();
    let wo = fs.open(&CTX, tmp.inode, libc::O_WRONLY as u32).unwrap();
    fs.unlink(&CTX, ROOT_INODE, &c("tmp")).unwrap();
    let old = walk(&fs, "lib/old").unwrap();
    let oh = fs.open(&CTX, old.inode, libc::O_RDONLY as u32).unwrap();
    let lib = walk(&fs, "lib").unwrap();
    fs.unlink(&CTX, lib.inode, &c("old")).unwrap();

    let saved = fs.save_state().unwrap();
    let snaps = tempfile::tempdir().unwrap();
    let frozen = snaps.path().join("snap");
    fs.freeze_upper(&frozen).unwrap();
    let kept = frozen.join(DETACHED_DIR);
    let mut expected = vec![old.inode.to_string(), tmp.inode.to_string()];
    expected.sort();
    assert_eq!(names_in(&kept), expected);
    assert!(names_in(&frozen.join(ROOTFS_DIR))
        .iter()
        .all(|n| n != "tmp"));

    let fork_over = |dir: &Path| {
        let f = LayeredFs::new(
            vec![base.path().to_owned(), frozen.clone()],
            dir,
            LayeredConfig::default(),
        )
        .unwrap();
        f.restore_state(&saved).unwrap();
        f
    };
    let (u1, u2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (fork_over(u1.path()), fork_over(u2.path()));
    assert_eq!(
        a.read(&CTX, tmp.inode, th.handle, 0, 100).unwrap(),
        b"scratch"
    );
    assert_eq!(
        a.read(&CTX, old.inode, oh.handle, 0, 100).unwrap(),
        b"lower data"
    );
    // The write-only handle writes the read-write handle's file: one copy per inode.
    a.write(&CTX, tmp.inode, wo.handle, 0, b"SCR", 0).unwrap();
    assert_eq!(
        a.read(&CTX, tmp.inode, th.handle, 0, 100).unwrap(),
        b"SCRatch"
    );
    // Neither the other fork, nor the snapshot, nor the source see it.
    assert_eq!(
        b.read(&CTX, tmp.inode, th.handle, 0, 100).unwrap(),
        b"scratch"
    );
    assert_eq!(
        std::fs::read(kept.join(tmp.inode.to_string())).unwrap(),
        b"scratch"
    );
    assert_eq!(
        fs.read(&CTX, tmp.inode, th.handle, 0, 100).unwrap(),
        b"scratch"
    );
    // Nothing named is left in the forks' uppers or work directories.
    for u in [&u1, &u2] {
        assert!(names_in(&u.path().join(UPPER_WORK)).is_empty());
    }
    // A fork over a layer without the kept files gets EBADF for those handles, as before.
    let bare = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(&kept).unwrap();
    let c3 = fork_over(bare.path());
    assert_errno(c3.read(&CTX, tmp.inode, th.handle, 0, 100), libc::EBADF);
}

#[test]
fn a_damaged_or_hostile_state_is_refused_or_left_out_without_panic() {
    let base = layer(&[("a/b", Item::File(b"bb"))], &[]);
    let node = |inode, path: &str| SavedNode {
        inode,
        path: Some(path.as_bytes().to_vec()),
        lookups: 1,
        generation: inode,
    };
    let handle = |handle, inode, dir| SavedHandle {
        handle,
        inode,
        flags: 0,
        dir,
    };
    let good = FsState {
        nodes: vec![node(2, "a"), node(3, "a/b")],
        handles: vec![handle(1, 3, false)],
        next_inode: 10,
        next_handle: 10,
    };

    // Refused as a whole: not something a backend saves.
    let mut refused = Vec::new();
    for bad in ["../etc/passwd", "a/../../x", "/a", "a//b", "a\0b"] {
        let mut s = good.clone();
        s.nodes[1].path = Some(bad.as_bytes().to_vec());
        refused.push(s);
    }
    let mut s = good.clone();
    s.nodes = (0..=MAX_SAVED_NODES as u64)
        .map(|i| node(i + 2, "a"))
        .collect();
    s.next_inode = u64::MAX;
    refused.push(s);
    let mut s = good.clone();
    s.handles.push(handle(1, 2, true));
    refused.push(s);
    for s in refused {
        let upper = tempfile::tempdir().unwrap();
        let fs = fs_over(&[&base], upper.path());
        assert!(fs.restore_state(&s).is_err());
        assert_eq!(
            walk(&fs, "a/b").unwrap().inode,
            3,
            "left fresh: a is 2, a/b 3"
        );
    }

    // Left out one by one: names that do not resolve (or are whiteout
    // files), handles whose inode is unknown or whose kind is wrong.
    let mut s = good;
    s.nodes.extend([
        node(4, "gone/x"),
        node(5, "a/b/c"),
        node(6, ".wh.a"),
        SavedNode {
            path: None,
            ..node(7, "")
        },
    ]);
    s.handles.extend([
        handle(2, 99, false),
        handle(3, 3, true),
        handle(4, 2, false),
    ]);
    let upper = tempfile::tempdir().unwrap();
    let fs = fs_over(&[&base], upper.path());
    fs.restore_state(&s).unwrap();
    assert_eq!(fs.read(&CTX, 3, 1, 0, 10).unwrap(), b"bb");
    for ino in [4, 5, 6, 7] {
        assert_errno(fs.getattr(&CTX, ino, None), libc::ESTALE);
        fs.forget(ino, 1);
    }
    for h in [2, 3, 4] {
        assert_errno(fs.read(&CTX, 3, h, 0, 10), libc::EBADF);
    }
}
