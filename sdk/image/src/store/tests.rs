use std::process::Command;

use super::*;
use crate::testutil::{gzip, sha256, tar_of, write_oci_layout, Entry};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// A gzip layer blob and its tar.
fn layer(entries: &[Entry]) -> (Vec<u8>, Vec<u8>) {
    let tar = tar_of(entries);
    (gzip(&tar), tar)
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_not_stored() {
    let (_dir, store) = store();
    let wrong = sha256(b"something else");
    match store.put_blob(Some(&wrong), &b"content"[..], 100) {
        Err(Error::DigestMismatch { expected, .. }) => assert_eq!(expected, wrong),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(count(&store.root.join("blobs/sha256")), 0);
    assert_eq!(count(&store.tmp_dir()), 0);
}

#[test]
fn a_layer_whose_diff_id_does_not_match_is_not_stored() {
    let (_dir, store) = store();
    let (blob, _tar) = layer(&[Entry::File("a", 0o644, b"a")]);
    let (digest, _) = store.put_blob(None, &blob[..], u64::MAX).unwrap();
    let wrong = sha256(b"not the tar");
    assert!(matches!(
        store.ensure_layer(&wrong, &digest),
        Err(Error::DigestMismatch { .. })
    ));
    assert_eq!(count(&store.root.join("layers")), 0);
    assert_eq!(count(&store.tmp_dir()), 0);
}

#[test]
fn threads_unpacking_the_same_layer_unpack_it_once() {
    let (_dir, store) = store();
    let files: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = files.iter().map(|f| Entry::File(f, 0o644, b"x")).collect();
    let (blob, tar) = layer(&entries);
    let (digest, _) = store.put_blob(None, &blob[..], u64::MAX).unwrap();
    let diff_id = sha256(&tar);
    let fresh: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| store.ensure_layer(&diff_id, &digest).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(fresh.iter().filter(|f| **f).count(), 1, "{fresh:?}");
    assert_eq!(
        count(&store.layer_dir(&diff_id).unwrap().join("rootfs")),
        300
    );
    assert_eq!(count(&store.tmp_dir()), 0);
}

const CHILD_ENV: &str = "MSBVM_IMAGE_TEST_UNPACK_CHILD";

/// Run by [`processes_unpacking_the_same_layer_unpack_it_once`] in child processes.
#[test]
#[ignore = "helper of processes_unpacking_the_same_layer_unpack_it_once"]
fn unpack_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let [root, diff_id, digest] = args.split(' ').collect::<Vec<_>>()[..] else {
        panic!("bad {CHILD_ENV}")
    };
    let store = ImageStore::open(Path::new(root)).unwrap();
    println!("fresh={}", store.ensure_layer(diff_id, digest).unwrap());
}

#[test]
fn processes_unpacking_the_same_layer_unpack_it_once() {
    let (_dir, store) = store();
    let files: Vec<String> = (0..2000).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = files.iter().map(|f| Entry::File(f, 0o644, b"x")).collect();
    let (blob, tar) = layer(&entries);
    let (digest, _) = store.put_blob(None, &blob[..], u64::MAX).unwrap();
    let diff_id = sha256(&tar);
    let arg = format!("{} {diff_id} {digest}", store.root.display());
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "store::tests::unpack_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(CHILD_ENV, &arg)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    let fresh = outputs.iter().filter(|o| o.contains("fresh=true")).count();
    let reused = outputs.iter().filter(|o| o.contains("fresh=false")).count();
    assert_eq!((fresh, reused), (1, 1), "{outputs:?}");
    assert_eq!(
        count(&store.layer_dir(&diff_id).unwrap().join("rootfs")),
        2000
    );
}

#[test]
fn open_removes_interrupted_unpacks_but_keeps_partial_downloads() {
    let (_dir, store) = store();
    fs::create_dir(store.tmp_dir().join("layer-abc-123")).unwrap();
    fs::write(store.tmp_dir().join("blob-abc.partial"), b"half").unwrap();
    let store = ImageStore::open(&store.root).unwrap();
    assert!(!store.tmp_dir().join("layer-abc-123").exists());
    assert!(store.tmp_dir().join("blob-abc.partial").exists());
}

#[test]
fn imported_layout_resolves_and_removal_collects_only_unshared_unleased_content() {
    let (dir, store) = store();
    let base = layer(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/motd", 0o644, b"hi"),
    ]);
    let top = layer(&[
        Entry::File("etc/.wh.motd", 0o644, b""),
        Entry::File("app", 0o755, b"#!"),
    ]);
    let other = layer(&[Entry::File("other", 0o644, b"o")]);
    let layout_a = dir.path().join("a");
    let layout_b = dir.path().join("b");
    let manifest_a = write_oci_layout(&layout_a, &[base.clone(), top.clone()], "/app", "v1");
    write_oci_layout(&layout_b, &[base.clone(), other.clone()], "/other", "v2");

    let info = store
        .import_oci_layout(&layout_a, Some("localhost:5000/app:v1"))
        .unwrap();
    assert_eq!(info.manifest_digest, manifest_a);
    assert_eq!(info.layers, [sha256(&base.1), sha256(&top.1)]);
    assert_eq!(info.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    store
        .import_oci_layout(&layout_b, Some("local/other"))
        .unwrap();
    let refs: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(refs, ["local/other:latest", "localhost:5000/app:v1"]);

    let app = store.resolve("localhost:5000/app:v1").unwrap();
    assert_eq!(app.config.cmd, ["/app"]);
    assert_eq!(app.config.env, ["PATH=/bin", "A=b"]);
    assert_eq!(app.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(app.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(app.lower_dirs.len(), 2);
    assert!(app.lower_dirs[0].join("rootfs/etc/motd").is_file());
    assert!(app.lower_dirs[1].join("rootfs/etc/.wh.motd").is_file());
    assert!(app.lower_dirs[1].join("meta.json").is_file());
    assert_eq!(count(&store.root.join("layers")), 3);

    // A running sandbox holds the top layer: removal keeps it, the shared base stays anyway.
    let lease = store.lease(&app).unwrap();
    store.remove("localhost:5000/app:v1").unwrap();
    assert!(matches!(
        store.resolve("localhost:5000/app:v1"),
        Err(Error::NotFound(_))
    ));
    assert!(app.lower_dirs[0].is_dir() && app.lower_dirs[1].is_dir());
    drop(lease);
    store.gc().unwrap();
    assert!(app.lower_dirs[0].is_dir(), "shared layer collected");
    assert!(!app.lower_dirs[1].exists(), "unreferenced layer kept");
    assert!(!store.has_blob(&manifest_a).unwrap());
    assert!(store.resolve("local/other").is_ok());
    assert!(store.lease(&app).is_err(), "lease on a removed layer");
    assert!(matches!(
        store.remove("localhost:5000/app:v1"),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn docker_archive_import_records_the_tag_and_unpacks_plain_tar_layers() {
    let (dir, store) = store();
    let tar1 = tar_of(&[Entry::File("hello", 0o644, b"world")]);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar1)]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "cfg.json", "RepoTags": ["example.test/hello:1"], "Layers": ["abc/layer.tar"],
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json", manifest.as_bytes()),
        ("cfg.json", config.as_bytes()),
        ("abc/layer.tar", tar1.as_slice()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }
    let archive = dir.path().join("save.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let info = store.import_docker_archive(&archive, None).unwrap();
    assert_eq!(info.reference, "example.test/hello:1");
    let image = store.resolve("example.test/hello:1").unwrap();
    assert_eq!(image.config.entrypoint, ["/hello"]);
    assert_eq!(
        fs::read(image.lower_dirs[0].join("rootfs/hello")).unwrap(),
        b"world"
    );
}

#[test]
fn pinned_layers_outlive_their_image_until_unpinned() {
    let (dir, store) = store();
    let base = layer(&[Entry::File("base", 0o644, b"b")]);
    let top = layer(&[Entry::File("top", 0o644, b"t")]);
    let layout = dir.path().join("a");
    write_oci_layout(&layout, &[base, top], "/app", "v1");
    store.import_oci_layout(&layout, Some("local/app")).unwrap();
    let app = store.resolve("local/app").unwrap();

    store.pin("snapshot-one", &app.lower_dirs).unwrap();
    store.pin("snapshot-two", &app.lower_dirs[..1]).unwrap();
    store.remove("local/app").unwrap();
    assert!(
        app.lower_dirs.iter().all(|d| d.is_dir()),
        "pinned layer collected"
    );
    // The pinned layers are leased by name, as a fork of the snapshot does.
    drop(store.lease_layers(&app.lower_dirs).unwrap());

    store.unpin("snapshot-one").unwrap();
    store.unpin("snapshot-one").unwrap(); // Twice is fine.
    store.gc().unwrap();
    assert!(
        app.lower_dirs[0].is_dir(),
        "layer of the other pin collected"
    );
    assert!(!app.lower_dirs[1].exists(), "unpinned layer kept");
    store.unpin("snapshot-two").unwrap();
    store.gc().unwrap();
    assert_eq!(count(&store.root.join("layers")), 0);
    // A gone layer cannot be pinned.
    assert!(matches!(
        store.pin("late", &app.lower_dirs),
        Err(Error::LayerGone(_))
    ));
}

#[test]
fn pins_refuse_bad_owners_and_foreign_directories() {
    let (dir, store) = store();
    for owner in ["", ".hidden", "a/b", "../x", &"x".repeat(200)] {
        assert!(
            matches!(store.pin(owner, &[]), Err(Error::Pin(_))),
            "{owner:?}"
        );
    }
    let foreign = dir.path().join("elsewhere").join("a".repeat(64));
    fs::create_dir_all(&foreign).unwrap();
    assert!(matches!(store.pin("s", &[foreign]), Err(Error::Pin(_))));
    let not_hex = store.root.join("layers/not-a-layer");
    fs::create_dir_all(&not_hex).unwrap();
    assert!(matches!(store.pin("s", &[not_hex]), Err(Error::Pin(_))));
}

#[test]
fn an_unreadable_pin_keeps_every_layer() {
    let (dir, store) = store();
    let only = layer(&[Entry::File("f", 0o644, b"f")]);
    let layout = dir.path().join("a");
    write_oci_layout(&layout, &[only], "/app", "v1");
    store.import_oci_layout(&layout, Some("local/app")).unwrap();
    let app = store.resolve("local/app").unwrap();
    fs::create_dir_all(store.root.join("pins")).unwrap();
    fs::write(store.root.join("pins/broken"), "not a layer\n").unwrap();
    store.remove("local/app").unwrap();
    assert!(
        app.lower_dirs[0].is_dir(),
        "collected despite an unreadable pin"
    );
    fs::remove_file(store.root.join("pins/broken")).unwrap();
    store.gc().unwrap();
    assert!(!app.lower_dirs[0].exists());
}
