//! The virtio-fs device driven through the MMIO transport and real guest
//! memory, with the in-memory backend behind a real FUSE server.

use std::sync::Arc;
use std::time::Duration;

use msbvm_fs::abi::{self, opcode, request, OutHeader};
use msbvm_fs::{MemoryFs, Server, ServerOptions, ROOT_INODE};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::GuestAddress;

use super::defs::{CONFIG_SIZE, MAX_REQUEST_BYTES, TAG_LEN};
use super::*;
use crate::test_utils::{Desc, GuestDriver, UsedElem, XorShift};
use crate::VirtioDevice;

const TIMEOUT: Duration = Duration::from_secs(5);
const HIPRIO: usize = 0;
const REQ: usize = 1;

fn server() -> Arc<dyn FsServer> {
    Arc::new(Server::new(MemoryFs::new(), ServerOptions::default()))
}

fn driver(queues: u16) -> GuestDriver {
    let mut d = GuestDriver::new(Box::new(Fs::new("shared", queues, server()).unwrap()));
    d.init();
    d
}

/// Sends `req` on queue `q` as a header descriptor plus an argument
/// descriptor (as Linux does), with `out_cap` writable bytes split over two
/// descriptors; returns the used entry and the reply bytes.
fn send(d: &mut GuestDriver, q: usize, req: &[u8], out_cap: u32) -> (UsedElem, Vec<u8>) {
    let inb = d.alloc(req.len() as u32);
    d.write_mem(inb, req);
    let split = req.len().min(abi::IN_HEADER_SIZE);
    let mut descs = vec![Desc::readable(inb, split as u32)];
    if req.len() > split {
        descs.push(Desc::readable(
            GuestAddress(inb.0 + split as u64),
            (req.len() - split) as u32,
        ));
    }
    let out = d.alloc(out_cap.max(1));
    if out_cap > 0 {
        let half = out_cap.min(abi::OUT_HEADER_SIZE as u32);
        descs.push(Desc::writable(out, half));
        if out_cap > half {
            descs.push(Desc::writable(
                GuestAddress(out.0 + u64::from(half)),
                out_cap - half,
            ));
        }
    }
    d.add_chain(q, &descs).expect("queue full");
    d.kick(q);
    let used = d.wait_used(q, TIMEOUT).expect("device did not answer");
    let reply = d.read_mem(out, used.len as usize);
    (used, reply)
}

/// Sends a request that expects a reply; returns (errno, body).
fn call(
    d: &mut GuestDriver,
    q: usize,
    op: u32,
    unique: u64,
    node: u64,
    args: &[u8],
) -> (i32, Vec<u8>) {
    let (used, reply) = send(d, q, &request(op, unique, node, args), 1 << 16);
    let h = OutHeader::parse(&reply).expect("no reply header");
    assert_eq!(h.unique, unique);
    assert_eq!(h.len, used.len);
    (-h.error, reply[abi::OUT_HEADER_SIZE..].to_vec())
}

fn init_in() -> Vec<u8> {
    [
        &7u32.to_le_bytes()[..],
        &41u32.to_le_bytes(),
        &(1u32 << 20).to_le_bytes(),
        &u32::MAX.to_le_bytes(),
        &[0; 48],
    ]
    .concat()
}

fn fuse_init(d: &mut GuestDriver, q: usize) {
    let (err, body) = call(d, q, opcode::INIT, 1, 0, &init_in());
    assert_eq!(err, 0);
    assert_eq!(body.len(), abi::INIT_OUT_SIZE);
    assert_eq!(u32::from_le_bytes(body[4..8].try_into().unwrap()), 41);
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn new_validates_tag_and_queue_count_and_config_space_carries_them() {
    assert!(matches!(
        Fs::new("", 1, server()),
        Err(Error::InvalidTag(_))
    ));
    assert!(matches!(
        Fs::new(&"t".repeat(37), 1, server()),
        Err(Error::InvalidTag(_))
    ));
    assert_eq!(
        Fs::new("t", 0, server()).err(),
        Some(Error::RequestQueues(0))
    );
    let fs = Fs::new(&"t".repeat(TAG_LEN), 3, server()).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes().len(), 4);
    let mut config = [0xffu8; CONFIG_SIZE + 4];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..TAG_LEN], "t".repeat(TAG_LEN).as_bytes());
    assert_eq!(&config[TAG_LEN..CONFIG_SIZE], &3u32.to_le_bytes());
    assert_eq!(&config[CONFIG_SIZE..], &[0; 4]);
    let fs = Fs::new("shared", 1, server()).unwrap();
    let mut tag = [0xffu8; TAG_LEN];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..7], b"shared\0");
}

#[test]
fn guest_creates_writes_and_reads_back_a_file_over_guest_memory() {
    let mut d = driver(1);
    fuse_init(&mut d, REQ);
    let name = b"hello.txt\0";
    let create = [
        &(libc::O_RDWR as u32).to_le_bytes()[..],
        &0o644u32.to_le_bytes(),
        &[0; 8],
        name,
    ]
    .concat();
    let (err, body) = call(&mut d, REQ, opcode::CREATE, 2, ROOT_INODE, &create);
    assert_eq!(err, 0);
    let (ino, fh) = (u64_at(&body, 0), u64_at(&body, abi::ENTRY_OUT_SIZE));

    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let write = [
        &fh.to_le_bytes()[..],
        &0u64.to_le_bytes(),
        &(data.len() as u32).to_le_bytes(),
        &[0; 20],
        &data,
    ]
    .concat();
    let (err, body) = call(&mut d, REQ, opcode::WRITE, 3, ino, &write);
    assert_eq!(
        (err, u32::from_le_bytes(body[..4].try_into().unwrap())),
        (0, 100_000)
    );

    let read = [
        &fh.to_le_bytes()[..],
        &0u64.to_le_bytes(),
        &(1u32 << 17).to_le_bytes(),
        &[0; 20],
    ]
    .concat();
    let (used, reply) = send(&mut d, REQ, &request(opcode::READ, 4, ino, &read), 1 << 17);
    assert_eq!(used.len as usize, abi::OUT_HEADER_SIZE + data.len());
    assert_eq!(&reply[abi::OUT_HEADER_SIZE..], &data[..]);

    let (err, body) = call(&mut d, REQ, opcode::LOOKUP, 5, ROOT_INODE, name);
    assert_eq!((err, u64_at(&body, 0)), (0, ino));

    // FORGET on the high-priority queue: consumed, no reply.
    let (used, _) = send(
        &mut d,
        HIPRIO,
        &request(opcode::FORGET, 6, ino, &2u64.to_le_bytes()),
        0,
    );
    assert_eq!(used.len, 0);
    assert!(d.irq().read().is_ok(), "no interrupt was raised");
}

#[test]
fn each_request_queue_is_served() {
    let mut d = driver(3);
    fuse_init(&mut d, 2);
    for q in 1..=3 {
        let (err, body) = call(
            &mut d,
            q,
            opcode::GETATTR,
            10 + q as u64,
            ROOT_INODE,
            &[0; 16],
        );
        assert_eq!(err, 0, "queue {q}");
        assert_eq!(body.len(), 104);
    }
    // A reset ends the session: after re-initializing the device, requests
    // before a new FUSE INIT fail with EIO.
    d.reset();
    d.init();
    assert_eq!(
        call(&mut d, REQ, opcode::GETATTR, 20, ROOT_INODE, &[0; 16]).0,
        libc::EIO
    );
    fuse_init(&mut d, REQ);
    assert_eq!(
        call(&mut d, REQ, opcode::GETATTR, 21, ROOT_INODE, &[0; 16]).0,
        0
    );
}

/// Sends `readable` plus 64 writable bytes on the request queue; returns the
/// error of the reply the device wrote.
fn reply_error(d: &mut GuestDriver, readable: &[Desc]) -> i32 {
    let out = d.alloc(64);
    let mut descs = readable.to_vec();
    descs.push(Desc::writable(out, 64));
    d.add_chain(REQ, &descs).expect("queue full");
    d.kick(REQ);
    let used = d.wait_used(REQ, TIMEOUT).unwrap();
    OutHeader::parse(&d.read_mem(out, used.len as usize))
        .unwrap()
        .error
}

#[test]
fn malformed_chains_are_answered_or_returned_and_the_device_keeps_serving() {
    let mut d = driver(1);
    fuse_init(&mut d, REQ);
    let getattr = request(opcode::GETATTR, 99, ROOT_INODE, &[0; 16]);

    // Readable after writable: EIO reply carrying the unique.
    let inb = d.alloc(64);
    d.write_mem(inb, &getattr);
    let out = d.alloc(64);
    let late = d.alloc(8);
    d.add_chain(
        REQ,
        &[
            Desc::readable(inb, getattr.len() as u32),
            Desc::writable(out, 64),
            Desc::readable(late, 8),
        ],
    );
    d.kick(REQ);
    let used = d.wait_used(REQ, TIMEOUT).unwrap();
    let h = OutHeader::parse(&d.read_mem(out, used.len as usize)).unwrap();
    assert_eq!((h.unique, h.error), (99, -libc::EIO));

    // A readable buffer outside guest memory, after a good header: EIO.
    let bad = GuestAddress(crate::test_utils::MEM_SIZE + 4096);
    assert_eq!(
        reply_error(&mut d, &[Desc::readable(inb, 40), Desc::readable(bad, 16)]),
        -libc::EIO
    );

    // Too short for a header, no writable part at all, a zero-length
    // descriptor, a huge request: returned, nothing written.
    let (used, _) = send(&mut d, REQ, &getattr[..20], 64);
    assert_eq!(used.len, 0);
    let (used, _) = send(&mut d, REQ, &getattr, 0);
    assert_eq!(used.len, 0);
    let out = d.alloc(64);
    d.add_chain(REQ, &[Desc::readable(inb, 0), Desc::writable(out, 64)]);
    d.kick(REQ);
    assert_eq!(d.wait_used(REQ, TIMEOUT).unwrap().len, 0);
    let huge = [
        Desc::readable(inb, 40),
        Desc::readable(inb, MAX_REQUEST_BYTES as u32),
    ];
    assert_eq!(reply_error(&mut d, &huge), -libc::EIO);

    // A reply bigger than the writable part becomes EIO.
    let (used, reply) = send(&mut d, REQ, &getattr, 32);
    assert_eq!(used.len, 16);
    assert_eq!(OutHeader::parse(&reply).unwrap().error, -libc::EIO);

    // A descriptor loop and a bogus next index.
    let head = 500;
    d.write_raw_descriptor(REQ, head, inb.0, 40, VRING_DESC_F_NEXT as u16, head);
    d.push_raw_avail(REQ, head);
    d.write_raw_descriptor(
        REQ,
        head + 1,
        out.0,
        64,
        (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
        9999,
    );
    d.push_raw_avail(REQ, head + 1);
    d.kick(REQ);
    for _ in 0..2 {
        d.wait_used(REQ, TIMEOUT)
            .expect("malformed chain not returned");
    }

    // Random chains of random bytes.
    let mut rng = XorShift::new(7);
    for i in 0..200u64 {
        let mut req = vec![0u8; rng.below(200) as usize];
        rng.fill(&mut req);
        if req.len() >= 8 && i % 2 == 0 {
            let len = (req.len() as u32).to_le_bytes();
            req[..4].copy_from_slice(&len);
        }
        send(&mut d, REQ, &req, rng.below(300) as u32);
    }

    assert_eq!(
        call(&mut d, REQ, opcode::GETATTR, 1000, ROOT_INODE, &[0; 16]).0,
        0
    );
}

/// A guest session of the common file operations against a real host backend: under
/// `MSBVM_TEST_SECCOMP=1` (see `confine::tests`) the worker runs them under its seccomp
/// filter, so every host call the backends make for them must be on its list.
fn host_backend_session(server: Arc<dyn FsServer>) {
    let mut d = GuestDriver::new(Box::new(Fs::new("host", 1, server).unwrap()));
    d.init();
    fuse_init(&mut d, REQ);
    let mut unique = 10;
    let mut op = |d: &mut GuestDriver, code: u32, node: u64, args: &[u8]| {
        unique += 1;
        call(d, REQ, code, unique, node, args)
    };
    let create = [
        &2u32.to_le_bytes()[..],
        &0o644u32.to_le_bytes(),
        &[0; 8],
        b"f\0",
    ]
    .concat();
    let (err, body) = op(&mut d, opcode::CREATE, ROOT_INODE, &create);
    assert_eq!(err, 0, "create");
    let (ino, fh) = (u64_at(&body, 0), u64_at(&body, abi::ENTRY_OUT_SIZE));
    let io = |size: u32, data: &[u8]| {
        [
            &fh.to_le_bytes()[..],
            &0u64.to_le_bytes(),
            &size.to_le_bytes(),
            &[0; 20],
            data,
        ]
        .concat()
    };
    assert_eq!(
        op(&mut d, opcode::WRITE, ino, &io(5, b"hello")).0,
        0,
        "write"
    );
    let (err, body) = op(&mut d, opcode::READ, ino, &io(64, b""));
    assert_eq!((err, body.as_slice()), (0, &b"hello"[..]), "read");
    let fsync = [&fh.to_le_bytes()[..], &[0; 8]].concat();
    assert_eq!(op(&mut d, opcode::FSYNC, ino, &fsync).0, 0, "fsync");
    let mut setattr = vec![0u8; 88];
    setattr[..4].copy_from_slice(&1u32.to_le_bytes()); // FATTR_MODE
    setattr[68..72].copy_from_slice(&0o600u32.to_le_bytes());
    assert_eq!(op(&mut d, opcode::SETATTR, ino, &setattr).0, 0, "chmod");
    let mkdir = [&0o755u32.to_le_bytes()[..], &0u32.to_le_bytes(), b"d\0"].concat();
    let (err, body) = op(&mut d, opcode::MKDIR, ROOT_INODE, &mkdir);
    assert_eq!(err, 0, "mkdir");
    let dir = u64_at(&body, 0);
    assert_eq!(
        op(&mut d, opcode::SYMLINK, ROOT_INODE, b"l\0f\0").0,
        0,
        "symlink"
    );
    let rename = [&dir.to_le_bytes()[..], b"f\0g\0"].concat();
    assert_eq!(
        op(&mut d, opcode::RENAME, ROOT_INODE, &rename).0,
        0,
        "rename"
    );
    let (err, _) = op(&mut d, opcode::OPENDIR, dir, &[0; 8]);
    assert_eq!(err, 0, "opendir");
    // Answered with whatever errno the backend gives: what counts is that it answers.
    let _ = op(
        &mut d,
        opcode::SETXATTR,
        dir,
        &[&1u32.to_le_bytes()[..], &[0; 4], b"user.t\0v"].concat(),
    );
    let _ = op(
        &mut d,
        opcode::GETXATTR,
        dir,
        &[&64u32.to_le_bytes()[..], &[0; 4], b"user.t\0"].concat(),
    );
    let _ = op(
        &mut d,
        opcode::LISTXATTR,
        dir,
        &[&256u32.to_le_bytes()[..], &[0; 4]].concat(),
    );
    let _ = op(&mut d, opcode::STATFS, ROOT_INODE, &[]);
    let _ = op(&mut d, opcode::READLINK, ROOT_INODE, &[]);
    assert_eq!(op(&mut d, opcode::UNLINK, dir, b"g\0").0, 0, "unlink");
    assert_eq!(
        op(&mut d, opcode::UNLINK, ROOT_INODE, b"l\0").0,
        0,
        "unlink symlink"
    );
    assert_eq!(op(&mut d, opcode::RMDIR, ROOT_INODE, b"d\0").0, 0, "rmdir");
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("msbvm-fs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn passthrough_backend_serves_a_guest_session() {
    let root = scratch_dir("passthrough");
    let fs = msbvm_fs::PassthroughFs::new(&root, msbvm_fs::PassthroughConfig::default()).unwrap();
    host_backend_session(Arc::new(Server::new(fs, ServerOptions::default())));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn layered_backend_serves_a_guest_session() {
    let base = scratch_dir("layered");
    // No lower layer: every operation lands in (and the metadata xattrs go to) the upper
    // directory, which is where the host calls happen.
    let config = msbvm_fs::LayeredConfig::default();
    let fs = msbvm_fs::LayeredFs::new(Vec::new(), &base.join("upper"), config).unwrap();
    host_backend_session(Arc::new(Server::new(fs, ServerOptions::default())));
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn the_device_saves_and_restores_the_fuse_session_of_a_saveable_backend() {
    let memory = Fs::new("shared", 1, server()).unwrap();
    let refused = memory.save_state().unwrap_err();
    assert!(refused.contains("cannot be saved"), "{refused}");

    let root = scratch_dir("snapshot");
    std::fs::write(root.join("f"), b"12345").unwrap();
    let serve = || {
        let fs =
            msbvm_fs::PassthroughFs::new(&root, msbvm_fs::PassthroughConfig::default()).unwrap();
        Arc::new(Server::new(fs, ServerOptions::default()))
    };
    let ask = |s: &dyn FsServer, op, unique, node, args: &[u8]| {
        let mut reply = Vec::new();
        s.handle(&request(op, unique, node, args), &mut reply)
            .unwrap();
        let h = OutHeader::parse(&reply).unwrap();
        (-h.error, reply[abi::OUT_HEADER_SIZE..].to_vec())
    };
    let first = serve();
    assert_eq!(ask(&*first, opcode::INIT, 1, 0, &init_in()).0, 0);
    let (err, entry) = ask(&*first, opcode::LOOKUP, 2, ROOT_INODE, b"f\0");
    assert_eq!(err, 0);
    let ino = u64_at(&entry, 0);
    let device = Fs::new("shared", 1, first).unwrap();
    let state = device.save_state().unwrap();

    let second = serve();
    let mut restored = Fs::new("shared", 1, second.clone()).unwrap();
    assert!(restored.restore_state(b"not a state").is_err());
    restored.restore_state(&state).unwrap();
    let getattr_in = [0u8; 16];
    let (err, attr) = ask(&*second, opcode::GETATTR, 3, ino, &getattr_in);
    assert_eq!(err, 0, "the saved inode answers without a new INIT");
    assert_eq!(u64_at(&attr, 16 + 8), 5, "fuse_attr.size");
    std::fs::remove_dir_all(root).unwrap();
}
