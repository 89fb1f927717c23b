use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;
use crate::testutil::{gzip, sha256, tar_of, Entry};

fn unpack(entries: &[Entry]) -> (tempfile::TempDir, Result<String>) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("layer");
    fs::create_dir(&dest).unwrap();
    let result = unpack_stream(&tar_of(entries)[..], &dest, Limits::default());
    (dir, result)
}

fn assert_refused(result: Result<String>) {
    match result {
        Err(Error::UnsafeArchive { .. }) => {}
        other => panic!("expected the archive to be refused, got {other:?}"),
    }
}

#[test]
fn parent_dir_components_are_refused() {
    for path in ["../x", "a/../../x", "./../x"] {
        let (dir, result) = unpack(&[Entry::File(path, 0o644, b"escaped")]);
        assert_refused(result);
        assert!(!dir.path().join("x").exists(), "{path} escaped");
    }
}

#[test]
fn absolute_paths_land_inside_the_layer() {
    let name = "etc/msbvm-unpack-test-absolute";
    let (dir, result) = unpack(&[Entry::File(&format!("/{name}"), 0o644, b"inside")]);
    result.unwrap();
    assert_eq!(
        fs::read(dir.path().join("layer/rootfs").join(name)).unwrap(),
        b"inside"
    );
    assert!(!Path::new("/").join(name).exists());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let (_dir, result) = unpack(&[
        Entry::Symlink("evil", target),
        Entry::File("evil/pwned", 0o644, b"x"),
    ]);
    assert_refused(result);
    let (_dir, result) = unpack(&[
        Entry::Dir("a", 0o755),
        Entry::Symlink("a", target),
        Entry::Dir("a/sub", 0o755),
    ]);
    assert_refused(result);
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn hard_links_must_point_at_earlier_files_of_the_layer() {
    for target in ["../../etc/passwd", "/etc/passwd", "later"] {
        let (_dir, result) = unpack(&[
            Entry::Hardlink("h", target),
            Entry::File("later", 0o644, b""),
        ]);
        assert!(result.is_err(), "hard link to {target} accepted");
    }
    let (_dir, result) = unpack(&[Entry::Dir("d", 0o755), Entry::Hardlink("h", "d")]);
    assert_refused(result);
    let (dir, result) = unpack(&[Entry::File("f", 0o644, b"data"), Entry::Hardlink("h", "f")]);
    result.unwrap();
    let rootfs = dir.path().join("layer/rootfs");
    assert_eq!(
        fs::metadata(rootfs.join("f")).unwrap().ino(),
        fs::metadata(rootfs.join("h")).unwrap().ino()
    );
}

#[test]
fn metadata_is_recorded_and_host_files_are_safe() {
    let (dir, result) = unpack(&[
        Entry::Dir("./", 0o755),
        Entry::Dir("usr/bin", 0o555),
        Entry::Owned("usr/bin/sudo", 0o4755, 1000, 1001),
        Entry::File("etc/shadow", 0o000, b"secret"),
        Entry::Char("dev/null", 1, 3),
        Entry::Fifo("run/fifo"),
        Entry::Symlink("bin", "usr/bin"),
        Entry::Xattr("usr/bin/ping", "security.capability", b"\x01\x02"),
    ]);
    result.unwrap();
    let layer = dir.path().join("layer");
    let rootfs = layer.join("rootfs");
    let meta = LayerMeta::load(&layer).unwrap().entries;
    assert_eq!(meta[""].mode, libc::S_IFDIR | 0o755);
    assert_eq!(meta["usr/bin"].mode, libc::S_IFDIR | 0o555);
    let sudo = &meta["usr/bin/sudo"];
    assert_eq!(
        (sudo.mode, sudo.uid, sudo.gid),
        (libc::S_IFREG | 0o4755, 1000, 1001)
    );
    assert_eq!(
        fs::metadata(rootfs.join("usr/bin/sudo")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(meta["etc/shadow"].mode, libc::S_IFREG);
    assert_eq!(fs::read(rootfs.join("etc/shadow")).unwrap(), b"secret");
    let null = &meta["dev/null"];
    assert_eq!(
        (null.mode, null.rdev),
        (libc::S_IFCHR | 0o666, libc::makedev(1, 3))
    );
    let host_null = fs::symlink_metadata(rootfs.join("dev/null")).unwrap();
    assert!(host_null.is_file() && host_null.len() == 0);
    assert_eq!(meta["run/fifo"].mode, libc::S_IFIFO | 0o644);
    assert!(fs::symlink_metadata(rootfs.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(meta["bin"].mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        fs::read_link(rootfs.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        meta["usr/bin/ping"].xattrs,
        [("security.capability".to_string(), vec![1, 2])]
    );
    // Implicit parents get no metadata: the lower layers' own entries stay in charge.
    assert!(!meta.contains_key("run"));
}

#[test]
fn whiteouts_and_opaque_markers_are_kept_as_files() {
    let (dir, result) = unpack(&[
        Entry::File("etc/.wh.motd", 0o644, b""),
        Entry::Dir("var/cache", 0o755),
        Entry::File("var/cache/.wh..wh..opq", 0o644, b""),
    ]);
    result.unwrap();
    let rootfs = dir.path().join("layer/rootfs");
    assert!(rootfs.join("etc/.wh.motd").is_file());
    assert!(rootfs.join("var/cache/.wh..wh..opq").is_file());
    let meta = LayerMeta::load(&dir.path().join("layer")).unwrap().entries;
    assert!(meta.contains_key("etc/.wh.motd") && meta.contains_key("var/cache/.wh..wh..opq"));
}

#[test]
fn later_entries_replace_earlier_ones() {
    let (dir, result) = unpack(&[
        Entry::Dir("x", 0o755),
        Entry::File("x/inner", 0o644, b"1"),
        Entry::File("x", 0o600, b"now a file"),
    ]);
    result.unwrap();
    let meta = LayerMeta::load(&dir.path().join("layer")).unwrap().entries;
    assert!(!meta.contains_key("x/inner"));
    assert_eq!(
        fs::read(dir.path().join("layer/rootfs/x")).unwrap(),
        b"now a file"
    );
}

#[test]
fn diff_id_is_the_digest_of_the_uncompressed_stream_whatever_the_compression() {
    let tar = tar_of(&[Entry::File("a", 0o644, b"hello")]);
    let dir = tempfile::tempdir().unwrap();
    let blobs = [
        tar.clone(),
        gzip(&tar),
        zstd::encode_all(&tar[..], 3).unwrap(),
    ];
    for (i, blob) in blobs.iter().enumerate() {
        let blob_path = dir.path().join(format!("blob{i}"));
        fs::write(&blob_path, blob).unwrap();
        let dest = dir.path().join(format!("layer{i}"));
        fs::create_dir(&dest).unwrap();
        assert_eq!(
            unpack_layer(&blob_path, &dest, Limits::default()).unwrap(),
            sha256(&tar)
        );
        assert_eq!(fs::read(dest.join("rootfs/a")).unwrap(), b"hello");
    }
}

#[test]
fn size_and_entry_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_of(&[
        Entry::File("a", 0o644, &[7u8; 10_000]),
        Entry::File("b", 0o644, b""),
    ]);
    let small = Limits {
        max_bytes: 5_000,
        max_entries: 10,
    };
    fs::create_dir(dir.path().join("1")).unwrap();
    assert!(unpack_stream(&tar[..], &dir.path().join("1"), small).is_err());
    let few = Limits {
        max_bytes: 1 << 20,
        max_entries: 1,
    };
    fs::create_dir(dir.path().join("2")).unwrap();
    assert!(unpack_stream(&tar[..], &dir.path().join("2"), few).is_err());
}
