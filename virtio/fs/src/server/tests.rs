//! The server against the in-memory backend, request bytes in, reply bytes
//! out, the way the device drives it.

use super::*;
use crate::abi::{fattr, request, OutHeader};
use crate::filesystem::ROOT_INODE;
use crate::memory::MemoryFs;
use proptest::prelude::*;

/// The guest kernel's side of the conversation.
struct Kernel<F: FileSystem = MemoryFs> {
    server: Server<F>,
    unique: u64,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn args(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn cname(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn read_in(fh: u64, off: u64, size: u32) -> Vec<u8> {
    args(&[
        &fh.to_le_bytes(),
        &off.to_le_bytes(),
        &size.to_le_bytes(),
        &[0; 20],
    ])
}

/// `fuse_write_in` claiming `size` bytes, followed by `data`.
fn write_in(fh: u64, off: u64, size: u32, data: &[u8]) -> Vec<u8> {
    args(&[
        &fh.to_le_bytes(),
        &off.to_le_bytes(),
        &size.to_le_bytes(),
        &[0; 20],
        data,
    ])
}

impl Kernel {
    fn new() -> Self {
        Self::with(MemoryFs::new(), ServerOptions::default())
    }
}

/// Offset of `fuse_attr.size` and `.mode`/`.nlink` inside `fuse_entry_out`.
const ENTRY_SIZE_AT: usize = 48;
const ENTRY_MODE_AT: usize = 100;
const ENTRY_NLINK_AT: usize = 104;

impl<F: FileSystem> Kernel<F> {
    fn with(fs: F, options: ServerOptions) -> Self {
        let mut k = Self {
            server: Server::new(fs, options),
            unique: 0,
        };
        let (err, _) = k.call(opcode::INIT, 0, &init_in(41, u32::MAX));
        assert_eq!(err, 0);
        k
    }

    /// Sends one request; returns (error, body) and checks the header.
    fn call(&mut self, op: u32, node: u64, a: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let mut reply = Vec::new();
        self.server
            .handle(&request(op, self.unique, node, a), &mut reply)
            .unwrap();
        let h = OutHeader::parse(&reply).expect("reply without header");
        assert_eq!(h.unique, self.unique);
        assert_eq!(h.len as usize, reply.len());
        (-h.error, reply[abi::OUT_HEADER_SIZE..].to_vec())
    }

    fn ok(&mut self, op: u32, node: u64, a: &[u8]) -> Vec<u8> {
        let (err, body) = self.call(op, node, a);
        assert_eq!(err, 0, "opcode {op} failed");
        body
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<Vec<u8>, i32> {
        match self.call(opcode::LOOKUP, parent, &cname(name)) {
            (0, b) => Ok(b),
            (e, _) => Err(e),
        }
    }

    fn create(&mut self, parent: u64, name: &str) -> (u64, u64) {
        let a = args(&[
            &(libc::O_RDWR as u32).to_le_bytes(),
            &0o644u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &cname(name),
        ]);
        let b = self.ok(opcode::CREATE, parent, &a);
        assert_eq!(b.len(), abi::ENTRY_OUT_SIZE + 16);
        (u64_at(&b, 0), u64_at(&b, abi::ENTRY_OUT_SIZE))
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> u64 {
        let a = args(&[&0o755u32.to_le_bytes(), &0u32.to_le_bytes(), &cname(name)]);
        u64_at(&self.ok(opcode::MKDIR, parent, &a), 0)
    }

    fn write(&mut self, ino: u64, fh: u64, off: u64, data: &[u8]) -> u32 {
        let a = write_in(fh, off, data.len() as u32, data);
        u32_at(&self.ok(opcode::WRITE, ino, &a), 0)
    }

    fn read(&mut self, ino: u64, fh: u64, off: u64, size: u32) -> Vec<u8> {
        self.ok(opcode::READ, ino, &read_in(fh, off, size))
    }

    fn open(&mut self, ino: u64, flags: i32) -> Result<u64, i32> {
        let a = args(&[&(flags as u32).to_le_bytes(), &0u32.to_le_bytes()]);
        match self.call(opcode::OPEN, ino, &a) {
            (0, b) => Ok(u64_at(&b, 0)),
            (e, _) => Err(e),
        }
    }

    fn rename2(&mut self, dir: u64, old: &str, newdir: u64, new: &str, flags: u32) -> i32 {
        let a = args(&[
            &newdir.to_le_bytes(),
            &flags.to_le_bytes(),
            &0u32.to_le_bytes(),
            &cname(old),
            &cname(new),
        ]);
        self.call(opcode::RENAME2, dir, &a).0
    }

    /// Names from READDIR at offset 0 with a `size` buffer.
    fn readdir_names(&mut self, dir: u64, size: u32) -> Vec<String> {
        let fh = u64_at(&self.ok(opcode::OPENDIR, dir, &[0; 8]), 0);
        let b = self.ok(opcode::READDIR, dir, &read_in(fh, 0, size));
        let mut names = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let len = u32_at(&b, at + 16) as usize;
            names.push(String::from_utf8(b[at + 24..at + 24 + len].to_vec()).unwrap());
            at += abi::dirent_size(len);
        }
        names
    }
}

fn init_in(minor: u32, flags: u32) -> Vec<u8> {
    args(&[
        &7u32.to_le_bytes(),
        &minor.to_le_bytes(),
        &(128u32 << 10).to_le_bytes(),
        &flags.to_le_bytes(),
        &[0; 48],
    ])
}

#[test]
fn init_negotiates_version_and_flags_and_gates_other_requests() {
    let server = Server::new(MemoryFs::new(), ServerOptions::default());
    let mut reply = Vec::new();
    server
        .handle(&request(opcode::GETATTR, 1, 1, &[0; 16]), &mut reply)
        .unwrap();
    assert_eq!(OutHeader::parse(&reply).unwrap().error, -libc::EIO);

    for (major, minor) in [(7, 26), (8, 41), (6, 41)] {
        let mut a = init_in(minor, 0);
        a[0..4].copy_from_slice(&(major as u32).to_le_bytes());
        server
            .handle(&request(opcode::INIT, 2, 0, &a), &mut reply)
            .unwrap();
        assert_eq!(OutHeader::parse(&reply).unwrap().error, -libc::EPROTO);
    }

    let offered = (init_flags::ASYNC_READ | init_flags::BIG_WRITES | init_flags::MAX_PAGES) as u32
        | (1 << 20); // POSIX_ACL: not wanted
    server
        .handle(
            &request(opcode::INIT, 3, 0, &init_in(45, offered)),
            &mut reply,
        )
        .unwrap();
    let body = &reply[abi::OUT_HEADER_SIZE..];
    assert_eq!(body.len(), abi::INIT_OUT_SIZE);
    assert_eq!((u32_at(body, 0), u32_at(body, 4)), (7, 41));
    let granted = u32_at(body, 12);
    assert_eq!(
        u64::from(granted),
        init_flags::ASYNC_READ | init_flags::BIG_WRITES | init_flags::MAX_PAGES
    );
    assert_eq!(u32_at(body, 20), MAX_WRITE);
    assert_eq!(u16::from_le_bytes([body[28], body[29]]), MAX_PAGES);
    assert_eq!(server.negotiated_minor(), 41);
}

#[test]
fn create_write_read_lookup_getattr_and_readdir_round_trip() {
    let mut k = Kernel::new();
    let dir = k.mkdir(ROOT_INODE, "d");
    let (ino, fh) = k.create(dir, "f.txt");
    assert_eq!(k.write(ino, fh, 0, b"hello world"), 11);
    assert_eq!(k.write(ino, fh, 6, b"there"), 5);
    assert_eq!(k.read(ino, fh, 0, 4096), b"hello there");
    assert_eq!(k.read(ino, fh, 6, 3), b"the");
    assert_eq!(k.read(ino, fh, 100, 10), b"");

    let e = k.lookup(dir, "f.txt").unwrap();
    assert_eq!(u64_at(&e, 0), ino);
    assert_eq!(u64_at(&e, ENTRY_SIZE_AT), 11);
    assert_eq!(u32_at(&e, ENTRY_MODE_AT), libc::S_IFREG | 0o644);
    let a = k.ok(opcode::GETATTR, ino, &[0; 16]);
    assert_eq!(u64_at(&a, 16 + 8), 11);

    k.create(dir, "g");
    assert_eq!(k.readdir_names(dir, 4096), [".", "..", "f.txt", "g"]);
    // A buffer with room for two entries gets exactly two.
    assert_eq!(k.readdir_names(dir, 64), [".", ".."]);

    // READDIRPLUS: dot entries carry no inode, real ones carry their entry.
    let dfh = u64_at(&k.ok(opcode::OPENDIR, dir, &[0; 8]), 0);
    let b = k.ok(opcode::READDIRPLUS, dir, &read_in(dfh, 0, 4096));
    assert_eq!(u64_at(&b, 0), 0);
    // "." and ".." both pad to 32-byte dirents.
    let third = 2 * (abi::ENTRY_OUT_SIZE + abi::dirent_size(2));
    assert_eq!(u64_at(&b, third), ino);

    assert_eq!(k.call(opcode::UNLINK, dir, &cname("f.txt")).0, 0);
    assert_eq!(k.lookup(dir, "f.txt"), Err(libc::ENOENT));
    // Still open: still readable.
    assert_eq!(k.read(ino, fh, 0, 5), b"hello");
    assert_eq!(
        k.call(opcode::RMDIR, ROOT_INODE, &cname("d")).0,
        libc::ENOTEMPTY
    );
}

#[test]
fn namespace_operations_keep_links_and_types_right() {
    let mut k = Kernel::new();
    let (f, _) = k.create(ROOT_INODE, "a");
    // LINK: nodeid is the new parent, the argument the existing inode.
    let l = k.ok(
        opcode::LINK,
        ROOT_INODE,
        &args(&[&f.to_le_bytes(), &cname("b")]),
    );
    assert_eq!(u32_at(&l, ENTRY_NLINK_AT), 2);

    let s = k.ok(
        opcode::SYMLINK,
        ROOT_INODE,
        &args(&[&cname("s"), &cname("/a/target")]),
    );
    assert_eq!(k.ok(opcode::READLINK, u64_at(&s, 0), &[]), b"/a/target");

    let fifo = args(&[
        &(libc::S_IFIFO | 0o600).to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &cname("p"),
    ]);
    let p = k.ok(opcode::MKNOD, ROOT_INODE, &fifo);
    assert_eq!(u32_at(&p, ENTRY_MODE_AT), libc::S_IFIFO | 0o600);

    assert_eq!(
        k.rename2(ROOT_INODE, "a", ROOT_INODE, "s", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        k.rename2(ROOT_INODE, "a", ROOT_INODE, "s", libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(u64_at(&k.lookup(ROOT_INODE, "s").unwrap(), 0), f);
    let d = k.mkdir(ROOT_INODE, "dir");
    let sub = k.mkdir(d, "sub");
    assert_eq!(k.rename2(ROOT_INODE, "dir", sub, "x", 0), libc::EINVAL);
    assert_eq!(
        k.rename2(ROOT_INODE, "s", ROOT_INODE, "dir", 0),
        libc::EISDIR
    );
    let root = k.ok(opcode::GETATTR, ROOT_INODE, &[0; 16]);
    assert_eq!(
        u32_at(&root, 16 + 64),
        3,
        "root nlink: 2 + one subdirectory"
    );
}

#[test]
fn xattr_size_probe_and_erange() {
    let mut k = Kernel::new();
    let (f, _) = k.create(ROOT_INODE, "x");
    let set = args(&[
        &5u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &cname("user.k"),
        b"value",
    ]);
    k.ok(opcode::SETXATTR, f, &set);
    let get = |size: u32| args(&[&size.to_le_bytes(), &0u32.to_le_bytes(), &cname("user.k")]);
    assert_eq!(k.ok(opcode::GETXATTR, f, &get(0)), [5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(k.call(opcode::GETXATTR, f, &get(4)).0, libc::ERANGE);
    assert_eq!(k.ok(opcode::GETXATTR, f, &get(5)), b"value");
    assert_eq!(
        k.ok(opcode::LISTXATTR, f, &[64, 0, 0, 0, 0, 0, 0, 0]),
        b"user.k\0"
    );
    k.ok(opcode::REMOVEXATTR, f, &cname("user.k"));
    assert_eq!(k.call(opcode::GETXATTR, f, &get(5)).0, libc::ENODATA);
}

/// An opcode FUSE defines that we do not implement.
const SETLK: u32 = 32;

#[test]
fn malformed_requests_get_error_replies_with_their_unique() {
    let mut k = Kernel::new();
    let mut reply = Vec::new();
    assert_eq!(
        k.server.handle(&[0; 39], &mut reply),
        Err(Error::ShortHeader(39))
    );

    // Length field disagreeing with the buffer.
    let mut r = request(opcode::GETATTR, 77, 1, &[0; 16]);
    r[0] = 10;
    k.server.handle(&r, &mut reply).unwrap();
    assert_eq!(
        OutHeader::parse(&reply).unwrap(),
        OutHeader {
            len: 16,
            error: -libc::EINVAL,
            unique: 77
        }
    );

    let long = "x".repeat(256);
    for (name, errno) in [
        (&b"nonul"[..], libc::EINVAL),
        (b"a/b\0", libc::EINVAL),
        (b"\0", libc::EINVAL),
        (b".\0", libc::EINVAL),
        (b"..\0", libc::EINVAL),
        (cname(&long).leak(), libc::ENAMETOOLONG),
    ] {
        assert_eq!(
            k.call(opcode::LOOKUP, ROOT_INODE, name).0,
            errno,
            "{name:?}"
        );
        let mk = args(&[&0o755u32.to_le_bytes(), &0u32.to_le_bytes(), name]);
        assert_eq!(k.call(opcode::MKDIR, ROOT_INODE, &mk).0, errno);
    }

    let (f, fh) = k.create(ROOT_INODE, "f");
    // WRITE claiming more bytes than it carries.
    let w = write_in(fh, 0, 100, b"short");
    assert_eq!(k.call(opcode::WRITE, f, &w).0, libc::EINVAL);
    // Truncated argument structs.
    assert_eq!(k.call(opcode::READ, f, &[0; 10]).0, libc::EINVAL);
    assert_eq!(k.call(opcode::SETATTR, f, &[0; 87]).0, libc::EINVAL);
    // Huge read sizes are refused, not allocated.
    assert_eq!(
        k.call(opcode::READ, f, &read_in(fh, 0, u32::MAX)).0,
        libc::EINVAL
    );
    // Stale handles and inodes.
    assert_eq!(
        k.call(opcode::READ, f, &read_in(fh + 99, 0, 1)).0,
        libc::EBADF
    );
    assert_eq!(k.call(opcode::GETATTR, 9999, &[0; 16]).0, libc::ENOENT);
    assert_eq!(k.call(SETLK, 1, &[]).0, libc::ENOSYS);

    // No reply at all for FORGET, BATCH_FORGET, INTERRUPT, even malformed.
    for (op, a) in [
        (opcode::FORGET, &[1u8, 0, 0, 0, 0, 0, 0, 0][..]),
        (opcode::FORGET, &[][..]),
        (
            opcode::BATCH_FORGET,
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1][..],
        ),
        (opcode::INTERRUPT, &[][..]),
    ] {
        k.server.handle(&request(op, 5, f, a), &mut reply).unwrap();
        assert!(reply.is_empty());
    }
}

#[test]
fn read_only_refuses_every_mutation_with_erofs() {
    let fs = MemoryFs::new();
    fs.add_file("ro.txt", b"data", 0o644).unwrap();
    let opts = ServerOptions {
        read_only: true,
        ..ServerOptions::default()
    };
    let mut k = Kernel::with(fs, opts);
    let f = u64_at(&k.lookup(ROOT_INODE, "ro.txt").unwrap(), 0);
    let fh = k.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(k.read(f, fh, 0, 10), b"data");
    assert_eq!(k.open(f, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(k.open(f, libc::O_RDONLY | libc::O_TRUNC), Err(libc::EROFS));
    let mk = args(&[&0o755u32.to_le_bytes(), &0u32.to_le_bytes(), &cname("d")]);
    assert_eq!(k.call(opcode::MKDIR, ROOT_INODE, &mk).0, libc::EROFS);
    assert_eq!(
        k.call(opcode::UNLINK, ROOT_INODE, &cname("ro.txt")).0,
        libc::EROFS
    );
    assert_eq!(k.call(opcode::SETATTR, f, &[0; 88]).0, libc::EROFS);
    assert_eq!(
        k.call(opcode::ACCESS, f, &[2, 0, 0, 0, 0, 0, 0, 0]).0,
        libc::EROFS
    );
}

#[test]
fn byte_limit_turns_growth_into_enospc_and_truncate_frees() {
    let mut k = Kernel::with(MemoryFs::with_byte_limit(10), ServerOptions::default());
    let (f, fh) = k.create(ROOT_INODE, "f");
    assert_eq!(k.write(f, fh, 0, b"0123456789"), 10);
    let w = write_in(fh, 10, 1, b"x");
    assert_eq!(k.call(opcode::WRITE, f, &w).0, libc::ENOSPC);
    let mut set = vec![0u8; 88];
    set[0..4].copy_from_slice(&fattr::SIZE.to_le_bytes());
    k.ok(opcode::SETATTR, f, &set);
    assert_eq!(k.server.filesystem().used_bytes(), 0);
    assert_eq!(k.write(f, fh, 0, b"abc"), 3);
}

#[test]
fn unlinked_inode_is_freed_after_release_and_forget() {
    let mut k = Kernel::new();
    let (f, fh) = k.create(ROOT_INODE, "gone");
    k.write(f, fh, 0, b"bytes");
    k.ok(opcode::UNLINK, ROOT_INODE, &cname("gone"));
    assert_eq!(k.server.filesystem().used_bytes(), 5);
    let rel = args(&[
        &fh.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u64.to_le_bytes(),
    ]);
    k.ok(opcode::RELEASE, f, &rel);
    assert_eq!(
        k.server.filesystem().used_bytes(),
        5,
        "kernel still holds a lookup"
    );
    let mut reply = Vec::new();
    k.server
        .handle(
            &request(opcode::FORGET, 99, f, &1u64.to_le_bytes()),
            &mut reply,
        )
        .unwrap();
    assert_eq!(k.server.filesystem().used_bytes(), 0);
    assert_eq!(k.call(opcode::GETATTR, f, &[0; 16]).0, libc::ENOENT);
}

#[test]
fn destroy_ends_the_session() {
    let mut k = Kernel::new();
    k.ok(opcode::DESTROY, 0, &[]);
    assert_eq!(k.call(opcode::GETATTR, ROOT_INODE, &[0; 16]).0, libc::EIO);
}

/// A valid request of each kind the fuzzer mutates.
fn seeds() -> Vec<Vec<u8>> {
    let name = cname("f");
    vec![
        request(opcode::LOOKUP, 1, 1, &name),
        request(
            opcode::CREATE,
            2,
            1,
            &args(&[&[2, 0, 0, 0], &[0o644u32 as u8, 1, 0, 0], &[0; 8], &name]),
        ),
        request(
            opcode::WRITE,
            3,
            2,
            &args(&[
                &1u64.to_le_bytes(),
                &0u64.to_le_bytes(),
                &3u32.to_le_bytes(),
                &[0; 20],
                b"abc",
            ]),
        ),
        request(opcode::READ, 4, 2, &read_in(1, 0, 100)),
        request(opcode::SETATTR, 5, 2, &[0xff; 88]),
        request(
            opcode::RENAME2,
            6,
            1,
            &args(&[
                &1u64.to_le_bytes(),
                &[3, 0, 0, 0, 0, 0, 0, 0],
                &name,
                &cname("g"),
            ]),
        ),
        request(opcode::READDIRPLUS, 7, 1, &read_in(1, 0, 4096)),
        request(
            opcode::SETXATTR,
            8,
            2,
            &args(&[&[3, 0, 0, 0, 0, 0, 0, 0], &cname("user.a"), b"xyz"]),
        ),
        request(
            opcode::BATCH_FORGET,
            9,
            0,
            &args(&[&[2, 0, 0, 0, 0, 0, 0, 0], &[2; 32]]),
        ),
        request(opcode::SYMLINK, 10, 1, &args(&[&cname("l"), &cname("t")])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random bytes, and valid requests with random bytes flipped, truncated
    /// or appended: the server never panics, and answers every request whose
    /// header it can read with that request's unique (or not at all).
    #[test]
    fn fuzzed_requests_never_panic(
        seed in 0usize..10,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
        fix_len in any::<bool>(),
        random in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut k = Kernel::new();
        // Some state to poke at: a file with an open handle.
        let (_f, _fh) = k.create(ROOT_INODE, "f");
        let mut reply = Vec::new();
        let _ = k.server.handle(&random, &mut reply);

        let mut req = seeds()[seed].clone();
        for (at, b) in flips {
            let i = at % req.len();
            req[i] ^= b;
        }
        req.truncate(cut % (req.len() + 1));
        req.extend_from_slice(&tail);
        if fix_len && req.len() >= 4 {
            let len = (req.len() as u32).to_le_bytes();
            req[..4].copy_from_slice(&len);
        }
        match k.server.handle(&req, &mut reply) {
            Err(Error::ShortHeader(n)) => prop_assert!(n < abi::IN_HEADER_SIZE),
            Ok(()) if reply.is_empty() => {}
            Ok(()) => {
                let h = OutHeader::parse(&reply).unwrap();
                prop_assert_eq!(h.unique, InHeader::parse(&req).unwrap().unique);
                prop_assert_eq!(h.len as usize, reply.len());
            }
        }
    }
}

#[test]
fn every_request_struct_one_byte_short_is_einval() {
    let mut k = Kernel::new();
    let (f, _) = k.create(ROOT_INODE, "short");
    let structs = [
        (opcode::GETATTR, 16),
        (opcode::SETATTR, 88),
        (opcode::MKNOD, 16),
        (opcode::MKDIR, 8),
        (opcode::RENAME, 8),
        (opcode::RENAME2, 16),
        (opcode::LINK, 8),
        (opcode::OPEN, 8),
        (opcode::OPENDIR, 8),
        (opcode::CREATE, 16),
        (opcode::READ, 40),
        (opcode::WRITE, 40),
        (opcode::RELEASE, 24),
        (opcode::RELEASEDIR, 24),
        (opcode::FSYNC, 16),
        (opcode::FSYNCDIR, 16),
        (opcode::FLUSH, 24),
        (opcode::SETXATTR, 8),
        (opcode::GETXATTR, 8),
        (opcode::LISTXATTR, 8),
        (opcode::ACCESS, 8),
        (opcode::FALLOCATE, 32),
        (opcode::READDIR, 40),
        (opcode::READDIRPLUS, 40),
        (opcode::LSEEK, 24),
    ];
    for (op, size) in structs {
        let short = vec![0u8; size - 1];
        assert_eq!(k.call(op, f, &short).0, libc::EINVAL, "opcode {op}");
    }
    let mut reply = Vec::new();
    k.server
        .handle(&request(opcode::INIT, 99, 0, &[0; 15]), &mut reply)
        .unwrap();
    assert_eq!(OutHeader::parse(&reply).unwrap().error, -libc::EINVAL);
}

/// One request to any server; returns (error, body).
fn send<F: FileSystem>(
    server: &Server<F>,
    unique: u64,
    op: u32,
    node: u64,
    a: &[u8],
) -> (i32, Vec<u8>) {
    let mut reply = Vec::new();
    server
        .handle(&request(op, unique, node, a), &mut reply)
        .unwrap();
    let h = OutHeader::parse(&reply).expect("reply without header");
    (-h.error, reply[abi::OUT_HEADER_SIZE..].to_vec())
}

#[test]
fn a_restored_server_serves_the_old_session_without_init() {
    use crate::passthrough::{PassthroughConfig, PassthroughFs};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"saved data").unwrap();
    let backend = || PassthroughFs::new(dir.path(), PassthroughConfig::default()).unwrap();
    let server = Server::new(backend(), ServerOptions::default());
    assert_eq!(
        send(&server, 1, opcode::INIT, 0, &init_in(31, u32::MAX)).0,
        0
    );
    let (err, entry) = send(&server, 2, opcode::LOOKUP, ROOT_INODE, &cname("f"));
    assert_eq!(err, 0);
    let ino = u64_at(&entry, 0);
    let open_in = args(&[&(libc::O_RDONLY as u32).to_le_bytes(), &0u32.to_le_bytes()]);
    let (err, open) = send(&server, 3, opcode::OPEN, ino, &open_in);
    assert_eq!(err, 0);
    let fh = u64_at(&open, 0);
    let state = server.save_state().unwrap();

    let restored = Server::new(backend(), ServerOptions::default());
    restored.restore_state(&state).unwrap();
    assert_eq!(restored.negotiated_minor(), 31);
    let (err, data) = send(&restored, 4, opcode::READ, ino, &read_in(fh, 6, 100));
    assert_eq!((err, data.as_slice()), (0, &b"data"[..]));
    assert_eq!(
        restored.restore_state(&state).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists,
        "a server with a session is not fresh"
    );

    // Bytes that are not a saved state are refused, the server untouched.
    let fresh = Server::new(backend(), ServerOptions::default());
    let mut wrong_version = state.clone();
    wrong_version[0] = STATE_VERSION + 1;
    let mut trailing = state.clone();
    trailing.push(0);
    for bad in [
        &[][..],
        &wrong_version,
        &state[..state.len() - 1],
        &trailing,
        &[1, 0xff, 0xff],
    ] {
        assert!(fresh.restore_state(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        send(&fresh, 5, opcode::READ, ino, &read_in(fh, 0, 10)).0,
        libc::EIO
    );
    let bad_minor = ServerState {
        initialized: true,
        minor: 99,
        fs: crate::FsState::default(),
    };
    assert!(ServerState::decode(&bad_minor.encode().unwrap()).is_err());
}

#[test]
fn a_server_over_an_unsaveable_backend_cannot_be_saved() {
    let k = Kernel::new();
    assert_eq!(
        k.server.save_state().unwrap_err().kind(),
        io::ErrorKind::Unsupported
    );
}

/// The in-memory backend claiming that the guest may remember misses for 7 s.
struct RemembersMisses(MemoryFs);

impl FileSystem for RemembersMisses {
    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<crate::Entry> {
        self.0.lookup(ctx, parent, name)
    }
    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(crate::Attr, Duration)> {
        self.0.getattr(ctx, inode, handle)
    }
    fn negative_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(7))
    }
}

#[test]
fn a_miss_is_a_negative_entry_only_where_the_backend_allows_it() {
    // Plain: an error the kernel does not cache.
    assert_eq!(Kernel::new().lookup(ROOT_INODE, "nope"), Err(libc::ENOENT));

    let fs = MemoryFs::new();
    fs.add_file("/here", b"x", 0o644).unwrap();
    let mut k = Kernel::with(RemembersMisses(fs), ServerOptions::default());
    let miss = k.lookup(ROOT_INODE, "nope").expect("a negative entry");
    assert_eq!(miss.len(), abi::ENTRY_OUT_SIZE);
    assert_eq!(u64_at(&miss, 0), 0, "node id 0 means: no such name");
    assert_eq!(u64_at(&miss, 16), 7, "entry_valid");
    // A name that exists is answered as always.
    let hit = k.lookup(ROOT_INODE, "here").unwrap();
    assert_ne!(u64_at(&hit, 0), 0);
    // Other errors stay errors: a file has no names in it.
    assert_eq!(k.lookup(u64_at(&hit, 0), "x"), Err(libc::ENOTDIR));
}

/// READ's data is read into the reply in place by the host-file backends
/// (`read_into`) and through the default for the others: both answer the
/// same bytes, header length included, at every offset and size.
#[test]
fn reads_in_place_and_through_the_default_answer_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let passthrough = crate::PassthroughFs::new(dir.path(), Default::default()).unwrap();
    let mut host = Kernel::with(passthrough, ServerOptions::default());
    let mut memory = Kernel::new();
    let mut files = Vec::new();
    for k in [&mut host as &mut dyn ReadWrite, &mut memory] {
        let (ino, fh) = k.create_file("f");
        assert_eq!(k.write_at(ino, fh, 0, &data), data.len() as u32);
        files.push((ino, fh));
    }
    let cases: &[(u64, u32)] = &[
        (0, 4096),
        (0, 1 << 20),
        (1, 100),
        (131_072, 131_072),
        (299_990, 4096),
        (300_000, 10),
        (1 << 40, 10),
        (5, 0),
    ];
    for &(off, size) in cases {
        let start = (off as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        let want = &data[start..end];
        let (ino, fh) = files[0];
        assert_eq!(
            host.read(ino, fh, off, size),
            want,
            "passthrough {off}+{size}"
        );
        let (ino, fh) = files[1];
        assert_eq!(memory.read(ino, fh, off, size), want, "memory {off}+{size}");
    }
}

/// The two kernels of the test above, whatever their backend.
trait ReadWrite {
    fn create_file(&mut self, name: &str) -> (u64, u64);
    fn write_at(&mut self, ino: u64, fh: u64, off: u64, data: &[u8]) -> u32;
}

impl<F: FileSystem> ReadWrite for Kernel<F> {
    fn create_file(&mut self, name: &str) -> (u64, u64) {
        self.create(ROOT_INODE, name)
    }
    fn write_at(&mut self, ino: u64, fh: u64, off: u64, data: &[u8]) -> u32 {
        self.write(ino, fh, off, data)
    }
}
