//! Hooks over the in-memory backend, driven through the FileSystem trait as
//! the server drives them.

use std::sync::Mutex;

use super::encrypt::NONCE_XATTR;
use super::*;
use crate::filesystem::ROOT_INODE;
use crate::memory::MemoryFs;
use crate::test_util::{c, host_tree};

const CTX: Context = Context {
    uid: 1000,
    gid: 1000,
    pid: 42,
};

/// Records the order in which hooks run, optionally denying one op kind.
struct Tracer {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    deny: Option<OpKind>,
}

impl Hook for Tracer {
    fn before(&self, op: &Op<'_>) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} before {}", self.name, op.kind.name()));
        if self.deny == Some(op.kind) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
    fn rewrite_write(&self, _op: &Op<'_>, data: &mut Vec<u8>) -> io::Result<()> {
        data.extend_from_slice(self.name.as_bytes());
        Ok(())
    }
    fn after(&self, op: &Op<'_>, result: Result<u64, i32>) {
        self.log.lock().unwrap().push(format!(
            "{} after {} {:?}",
            self.name,
            op.kind.name(),
            result
        ));
    }
}

fn tracer(
    name: &'static str,
    log: &Arc<Mutex<Vec<String>>>,
    deny: Option<OpKind>,
) -> Arc<dyn Hook> {
    Arc::new(Tracer {
        name,
        log: log.clone(),
        deny,
    })
}

#[test]
fn hooks_run_before_in_order_after_in_reverse_and_deny_stops_the_chain() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let fs = Hooked::new(
        MemoryFs::new(),
        vec![
            tracer("a", &log, None),
            tracer("b", &log, Some(OpKind::Mkdir)),
            tracer("c", &log, None),
        ],
    );
    let (e, open) = fs.create(&CTX, ROOT_INODE, &c("f"), 0o644, 2, 0).unwrap();
    assert_eq!(fs.write(&CTX, e.inode, open.handle, 0, b"x", 0).unwrap(), 1);
    // Each hook appended its name, in order; the guest is told 1 byte.
    assert_eq!(fs.inner().read_file("f").unwrap(), b"xabc");
    log.lock().unwrap().clear();

    let err = fs.mkdir(&CTX, ROOT_INODE, &c("d"), 0o755, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "a before mkdir",
            "b before mkdir",
            "b after mkdir Err(1)",
            "a after mkdir Err(1)"
        ]
    );
    assert!(
        fs.inner().lookup(&CTX, ROOT_INODE, &c("d")).is_err(),
        "denied op reached the backend"
    );
}

#[test]
fn audit_log_records_reads_writes_and_namespace_changes_with_paths() {
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = records.clone();
    let audit = AuditLog::with_callback(move |r| sink.lock().unwrap().push(r.clone()));
    let fs = Hooked::new(MemoryFs::new(), vec![Arc::new(audit)]);
    let d = fs.mkdir(&CTX, ROOT_INODE, &c("work"), 0o755, 0).unwrap();
    let (e, open) = fs.create(&CTX, d.inode, &c("a.txt"), 0o644, 2, 0).unwrap();
    fs.write(&CTX, e.inode, open.handle, 3, b"hello", 0)
        .unwrap();
    fs.read(&CTX, e.inode, open.handle, 0, 100).unwrap();
    fs.rename(&CTX, d.inode, &c("a.txt"), ROOT_INODE, &c("b.txt"), 0)
        .unwrap();
    fs.read(&CTX, e.inode, open.handle, 4, 2).unwrap();
    fs.getattr(&CTX, e.inode, None).unwrap(); // not audited
    fs.unlink(&CTX, ROOT_INODE, &c("b.txt")).unwrap();

    let got: Vec<(&str, String, Option<String>, u64, u64)> = records
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.op, r.path.clone(), r.new_path.clone(), r.offset, r.length))
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        got,
        [
            ("mkdir", s("/work"), None, 0, 0),
            ("create", s("/work/a.txt"), None, 0, 0),
            ("write", s("/work/a.txt"), None, 3, 5),
            ("read", s("/work/a.txt"), None, 0, 8),
            ("rename", s("/work/a.txt"), Some(s("/b.txt")), 0, 0),
            ("read", s("/b.txt"), None, 4, 2),
            ("unlink", s("/b.txt"), None, 0, 0),
        ]
    );
    assert_eq!(records.lock().unwrap()[0].uid, 1000);
}

#[test]
fn audit_log_writes_json_lines() {
    let out = Arc::new(Mutex::new(Vec::new()));
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let fs = Hooked::new(
        MemoryFs::new(),
        vec![Arc::new(AuditLog::to_writer(Shared(out.clone())))],
    );
    fs.mkdir(&CTX, ROOT_INODE, &c("d"), 0o755, 0).unwrap();
    assert!(fs.mkdir(&CTX, ROOT_INODE, &c("d"), 0o755, 0).is_err());
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["path"], "/d");
    assert_eq!(lines[1]["errno"], libc::EEXIST);
}

#[test]
fn deny_paths_blocks_lookups_creates_and_renames_into_the_subtree() {
    let fs = deny_on_memory(
        &[("secret/key", b"k", 0o600), ("open.txt", b"o", 0o644)],
        ["/secret"],
    );
    let eacces = Some(libc::EACCES);
    assert_eq!(
        fs.lookup(&CTX, ROOT_INODE, &c("secret"))
            .unwrap_err()
            .raw_os_error(),
        eacces
    );
    let open = fs.lookup(&CTX, ROOT_INODE, &c("open.txt")).unwrap();
    assert_eq!(open.attr.size, 1);
    let err = fs.rename(
        &CTX,
        ROOT_INODE,
        &c("open.txt"),
        ROOT_INODE,
        &c("secret"),
        0,
    );
    assert_eq!(err.unwrap_err().raw_os_error(), eacces);
    // "/secretive" is not under "/secret".
    fs.mkdir(&CTX, ROOT_INODE, &c("secretive"), 0o755, 0)
        .unwrap();
}

fn encrypted() -> Hooked<MemoryFs> {
    Hooked::new(
        MemoryFs::new(),
        vec![Arc::new(EncryptAtRest::new([7; 32], "/vault"))],
    )
}

#[test]
fn encrypt_at_rest_stores_ciphertext_and_returns_plaintext() {
    let fs = encrypted();
    let v = fs.mkdir(&CTX, ROOT_INODE, &c("vault"), 0o755, 0).unwrap();
    let (e, open) = fs.create(&CTX, v.inode, &c("doc"), 0o644, 2, 0).unwrap();
    let plain = b"the quick brown fox jumps over the lazy dog".repeat(100);
    assert_eq!(
        fs.write(&CTX, e.inode, open.handle, 0, &plain, 0).unwrap() as usize,
        plain.len()
    );
    let stored = fs.inner().read_file("vault/doc").unwrap();
    assert_eq!(stored.len(), plain.len(), "length-preserving");
    assert_ne!(stored, plain);
    assert!(!stored.windows(9).any(|w| w == b"quick bro"));
    assert_eq!(
        fs.read(&CTX, e.inode, open.handle, 0, 1 << 20).unwrap(),
        plain
    );
    // Unaligned reads and overwrites decrypt at the right keystream offset.
    assert_eq!(
        fs.read(&CTX, e.inode, open.handle, 77, 13).unwrap(),
        &plain[77..90]
    );
    fs.write(&CTX, e.inode, open.handle, 101, b"XYZ", 0)
        .unwrap();
    let mut expect = plain.clone();
    expect[101..104].copy_from_slice(b"XYZ");
    assert_eq!(
        fs.read(&CTX, e.inode, open.handle, 0, 1 << 20).unwrap(),
        expect
    );

    // A write past the end and a truncate up both read back as zeros.
    let end = expect.len() as u64;
    fs.write(&CTX, e.inode, open.handle, end + 10, b"tail", 0)
        .unwrap();
    let grow = SetAttr {
        size: Some(end + 100),
        ..SetAttr::default()
    };
    fs.setattr(&CTX, e.inode, grow).unwrap();
    let back = fs.read(&CTX, e.inode, open.handle, end, 200).unwrap();
    assert_eq!(back.len(), 100);
    assert_eq!(&back[..10], &[0; 10]);
    assert_eq!(&back[10..14], b"tail");
    assert!(back[14..].iter().all(|&b| b == 0));

    // Renamed out of the prefix, it stays encrypted and readable.
    fs.rename(&CTX, v.inode, &c("doc"), ROOT_INODE, &c("moved"), 0)
        .unwrap();
    assert_ne!(fs.inner().read_file("moved").unwrap()[..20], expect[..20]);
    assert_eq!(
        fs.read(&CTX, e.inode, open.handle, 0, 20).unwrap(),
        &expect[..20]
    );

    // The nonce is invisible and untouchable from the guest.
    let ns = fs.listxattr(&CTX, e.inode).unwrap();
    assert!(ns.is_empty(), "{ns:?}");
    assert_eq!(
        fs.getxattr(&CTX, e.inode, NONCE_XATTR)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENODATA)
    );
    let rm = fs.removexattr(&CTX, e.inode, NONCE_XATTR);
    assert_eq!(rm.unwrap_err().raw_os_error(), Some(libc::EPERM));
    assert_eq!(
        fs.inner()
            .getxattr(&CTX, e.inode, NONCE_XATTR)
            .unwrap()
            .len(),
        24
    );
}

#[test]
fn encrypt_at_rest_leaves_files_outside_the_prefix_alone_and_rekeys_on_truncate() {
    let fs = encrypted();
    let (e, open) = fs
        .create(&CTX, ROOT_INODE, &c("plain"), 0o644, 2, 0)
        .unwrap();
    fs.write(&CTX, e.inode, open.handle, 0, b"visible", 0)
        .unwrap();
    assert_eq!(fs.inner().read_file("plain").unwrap(), b"visible");

    let v = fs.mkdir(&CTX, ROOT_INODE, &c("vault"), 0o755, 0).unwrap();
    let (e, open) = fs.create(&CTX, v.inode, &c("f"), 0o644, 2, 0).unwrap();
    fs.write(&CTX, e.inode, open.handle, 0, b"first", 0)
        .unwrap();
    let first_nonce = fs.inner().getxattr(&CTX, e.inode, NONCE_XATTR).unwrap();
    let zero = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(&CTX, e.inode, zero).unwrap();
    fs.write(&CTX, e.inode, open.handle, 0, b"second", 0)
        .unwrap();
    let second_nonce = fs.inner().getxattr(&CTX, e.inode, NONCE_XATTR).unwrap();
    assert_ne!(
        first_nonce, second_nonce,
        "a rewritten file gets a fresh keystream"
    );
    assert_eq!(
        fs.read(&CTX, e.inode, open.handle, 0, 100).unwrap(),
        b"second"
    );
}

/// The errno a lookup of `name` in `dir` fails with, if it fails.
fn lookup_errno(fs: &dyn FileSystem, dir: Inode, name: &str) -> Option<i32> {
    errno_of(fs.lookup(&CTX, dir, &c(name)))
}

/// A memory backend holding `files` (path, contents, mode) behind
/// [`DenyPaths`] of `denied`.
fn deny_on_memory<const N: usize>(
    files: &[(&str, &[u8], u32)],
    denied: [&str; N],
) -> Hooked<MemoryFs> {
    let backend = MemoryFs::new();
    for (path, contents, mode) in files {
        backend.add_file(path, contents, *mode).unwrap();
    }
    Hooked::new(backend, vec![Arc::new(DenyPaths::new(denied))])
}

/// Renames `/a` to `/b` through `fs`; the inode `/b` names then.
fn rename_a_to_b(fs: &dyn FileSystem) -> Inode {
    fs.rename(&CTX, ROOT_INODE, &c("a"), ROOT_INODE, &c("b"), 0)
        .unwrap();
    fs.lookup(&CTX, ROOT_INODE, &c("b")).unwrap().inode
}

fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> Option<i32> {
    r.unwrap_err().raw_os_error()
}

#[test]
fn deny_paths_follows_the_object_through_a_rename_of_its_parent() {
    let fs = deny_on_memory(&[("a/secret/key", b"k", 0o600)], ["/a/secret"]);
    let a = fs.lookup(&CTX, ROOT_INODE, &c("a")).unwrap();
    assert_eq!(lookup_errno(&fs, a.inode, "secret"), Some(libc::EACCES));
    // "/b/secret" is listed nowhere, but it is the denied directory.
    let b = rename_a_to_b(&fs);
    assert_eq!(lookup_errno(&fs, b, "secret"), Some(libc::EACCES));
    assert_eq!(lookup_errno(&fs, a.inode, "secret"), Some(libc::EACCES));
}

#[test]
fn deny_paths_refuses_a_hard_link_to_a_denied_file() {
    let backend = MemoryFs::new();
    backend.add_file("secret.txt", b"s", 0o600).unwrap();
    backend.add_file("pub/readme", b"r", 0o644).unwrap();
    let root = Context {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let s = backend.lookup(&root, ROOT_INODE, &c("secret.txt")).unwrap();
    let pubdir = backend.lookup(&root, ROOT_INODE, &c("pub")).unwrap();
    backend
        .link(&root, s.inode, pubdir.inode, &c("copy"))
        .unwrap();
    let fs = Hooked::new(backend, vec![Arc::new(DenyPaths::new(["/secret.txt"]))]);
    let p = fs.lookup(&CTX, ROOT_INODE, &c("pub")).unwrap();
    assert_eq!(lookup_errno(&fs, p.inode, "copy"), Some(libc::EACCES));
    fs.lookup(&CTX, p.inode, &c("readme")).unwrap();
}

#[test]
fn deny_paths_refuses_nodes_of_unknown_path_but_not_renamed_over_ones() {
    let fs = deny_on_memory(&[("f", b"f", 0o644), ("g", b"g", 0o644)], ["/secret"]);
    // Reached behind the hook's back: its path is unknown to the hook.
    let f = fs.inner().lookup(&CTX, ROOT_INODE, &c("f")).unwrap();
    assert_eq!(
        errno_of(fs.getattr(&CTX, f.inode, None)),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(fs.open(&CTX, f.inode, libc::O_RDONLY as u32)),
        Some(libc::EACCES)
    );
    // A file the guest holds whose name a rename replaced stays usable.
    let g = fs.lookup(&CTX, ROOT_INODE, &c("g")).unwrap();
    let f2 = fs.lookup(&CTX, ROOT_INODE, &c("f")).unwrap();
    fs.rename(&CTX, ROOT_INODE, &c("f"), ROOT_INODE, &c("g"), 0)
        .unwrap();
    fs.getattr(&CTX, g.inode, None).unwrap();
    fs.getattr(&CTX, f2.inode, None).unwrap();
}

#[test]
fn deny_paths_follows_host_objects_of_the_passthrough_backend() {
    use crate::passthrough::{PassthroughConfig, PassthroughFs};
    let dir = host_tree(&[("a/secret/key", b"k"), ("token", b"t")]);
    std::fs::hard_link(dir.path().join("token"), dir.path().join("a/alias")).unwrap();
    let backend = PassthroughFs::new(dir.path(), PassthroughConfig::default()).unwrap();
    let deny = DenyPaths::new(["/a/secret", "/token"]);
    let fs = Hooked::new(backend, vec![Arc::new(deny)]);
    let a = fs.lookup(&CTX, ROOT_INODE, &c("a")).unwrap();
    assert_eq!(lookup_errno(&fs, a.inode, "alias"), Some(libc::EACCES));
    let b = rename_a_to_b(&fs);
    assert_eq!(lookup_errno(&fs, b, "secret"), Some(libc::EACCES));
}

#[test]
fn a_restored_hooked_backend_knows_the_saved_paths() {
    use crate::passthrough::{PassthroughConfig, PassthroughFs};
    let dir = host_tree(&[("secret/key", b"k"), ("pub/f", b"f")]);
    let wrap = || {
        let fs = PassthroughFs::new(dir.path(), PassthroughConfig::default()).unwrap();
        Hooked::new(fs, vec![Arc::new(DenyPaths::new(["/secret"]))])
    };
    let fs = wrap();
    let pub_dir = fs.lookup(&CTX, ROOT_INODE, &c("pub")).unwrap();
    let f = fs.lookup(&CTX, pub_dir.inode, &c("f")).unwrap();
    let state = fs.save_state().unwrap();

    let restored = wrap();
    restored.restore_state(&state).unwrap();
    assert_eq!(restored.path_of(f.inode), Some(PathBuf::from("/pub/f")));
    assert_eq!(
        restored
            .inner()
            .getattr(&CTX, f.inode, None)
            .unwrap()
            .0
            .size,
        1
    );
}
