//! Device tests: the real vsock device behind the real MMIO transport, driven
//! through guest memory by [`VsockDriver`], with real Unix sockets in a
//! temporary directory on the host side.

mod connect;
mod flow;
mod malformed;
mod snapshot;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_STATUS};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::defs::*;
use super::test_utils::{RxPacket, VsockDriver, TIMEOUT};
use super::{Error, Vsock};
use crate::test_utils::{Desc, GuestDriver};
use crate::{ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice};

const CID: u64 = 3;

struct Setup {
    // Dropped last: the device's sockets live inside.
    path: PathBuf,
    d: VsockDriver,
    _dir: TempDir,
}

fn setup() -> Setup {
    setup_with(|_| {}, super::test_utils::INITIAL_RX_BUFFERS)
}

fn setup_with(configure: impl FnOnce(&mut Vsock), rx_buffers: usize) -> Setup {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.as_path().join("vsock.sock");
    let mut vsock = Vsock::new(CID, path.clone()).expect("vsock");
    configure(&mut vsock);
    let d = VsockDriver::with_rx_buffers(vsock, rx_buffers);
    Setup { path, d, _dir: dir }
}

/// The socket a guest connect to `port` reaches.
fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

fn listen(base: &Path, port: u32) -> UnixListener {
    UnixListener::bind(port_path(base, port)).expect("bind host listener")
}

fn read_exact(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("host read");
    buf
}

fn read_line(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(stream.read(&mut byte).expect("host read"), 1, "EOF in line");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Asserts the device closed the host stream: reads reach EOF in time
/// (possibly after `skip` bytes of earlier data).
fn assert_closed(stream: &mut UnixStream) {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("stream not closed: {e}"),
        }
    }
}

/// The guest connects from `guest_port` to host port `host_port`, where
/// `listener` accepts. Returns the host's end.
fn guest_connect(
    s: &mut Setup,
    listener: &UnixListener,
    guest_port: u32,
    host_port: u32,
) -> UnixStream {
    s.d.send(s.d.hdr(OP_REQUEST, guest_port, host_port), &[]);
    let resp = s.d.expect_op(OP_RESPONSE);
    assert_eq!(
        (
            resp.hdr.src_cid,
            resp.hdr.dst_cid,
            resp.hdr.src_port,
            resp.hdr.dst_port
        ),
        (HOST_CID, CID, host_port, guest_port)
    );
    assert_eq!(resp.hdr.type_, TYPE_STREAM);
    assert_eq!(resp.hdr.buf_alloc, TX_BUF_SIZE);
    let (stream, _) = listener.accept().expect("accept");
    stream
}

/// A host client connects through `CONNECT guest_port` and the guest accepts.
/// Returns the host stream and the host port the device allocated.
/// A device with one guest-initiated connection, from `guest_port` to
/// host port `host_port`: the setup, the host listener (keep it alive) and
/// the host's end of the stream.
fn connected(guest_port: u32, host_port: u32) -> (Setup, UnixListener, UnixStream) {
    let mut s = setup();
    let listener = listen(&s.path, host_port);
    let host = guest_connect(&mut s, &listener, guest_port, host_port);
    (s, listener, host)
}

/// The guest sends SHUTDOWN with `flags` on the connection from
/// `guest_port` to `host_port`.
fn send_shutdown(s: &mut Setup, guest_port: u32, host_port: u32, flags: u32) {
    let mut shut = s.d.hdr(OP_SHUTDOWN, guest_port, host_port);
    shut.flags = flags;
    s.d.send(shut, &[]);
}

/// A host client connects to the device and writes `bytes` (a CONNECT
/// line, maybe with data after it); returns its stream and the REQUEST the
/// guest then gets.
fn host_request(s: &mut Setup, bytes: &[u8]) -> (UnixStream, RxPacket) {
    let mut stream = UnixStream::connect(&s.path).expect("connect to device");
    stream.write_all(bytes).unwrap();
    (stream, s.d.expect_op(OP_REQUEST))
}

fn host_connect(s: &mut Setup, guest_port: u32) -> (UnixStream, u32) {
    let (mut stream, req) = host_request(s, format!("CONNECT {guest_port}\n").as_bytes());
    assert_eq!(req.hdr.dst_port, guest_port);
    assert_eq!((req.hdr.src_cid, req.hdr.dst_cid), (HOST_CID, CID));
    let host_port = req.hdr.src_port;
    assert!(host_port >= FIRST_EPHEMERAL_PORT);
    s.d.send(s.d.hdr(OP_RESPONSE, guest_port, host_port), &[]);
    assert_eq!(read_line(&mut stream), format!("OK {host_port}\n"));
    (stream, host_port)
}

/// Collects `n` payload bytes the device sends on (host_port -> guest_port),
/// ignoring credit packets.
fn recv_data(d: &mut VsockDriver, host_port: u32, guest_port: u32, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let RxPacket { hdr, data } = d.recv();
        assert_eq!(
            (hdr.src_port, hdr.dst_port),
            (host_port, guest_port),
            "{hdr:?}"
        );
        match hdr.op {
            OP_RW => got.extend_from_slice(&data),
            OP_CREDIT_REQUEST | OP_CREDIT_UPDATE => {}
            op => panic!("unexpected op {op} while receiving data"),
        }
    }
    assert_eq!(got.len(), n, "more data than expected");
    got
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn config_space_holds_guest_cid_and_only_version_1_is_offered() {
    let mut s = setup();
    let g = s.d.driver();
    assert_eq!(g.read_reg(VIRTIO_MMIO_DEVICE_ID), 19);
    let mut cid = [0u8; 8];
    g.transport().read(0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut hi = [0u8; 4];
    g.transport().read(0x104, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mut past = [0xffu8; 4];
    g.transport().read(0x106, &mut past);
    assert_eq!(past, [0; 4]);
    // Writes to the read-only config are ignored.
    g.transport().write(0x100, &[9, 9, 9, 9]);
    g.transport().read(0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    assert_eq!(g.device_features(), 1 << 32);
}

#[test]
fn new_rejects_reserved_cids_and_paths_that_are_not_sockets() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(matches!(
            Vsock::new(cid, path.clone()),
            Err(Error::InvalidCid(_))
        ));
    }
    let file = dir.as_path().join("regular");
    std::fs::write(&file, b"keep me").unwrap();
    let err = Vsock::new(CID, file.clone()).err().expect("must refuse");
    assert!(matches!(err, Error::PathInUse(_)));
    assert!(err.to_string().contains("not a Unix socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let missing_dir = dir.as_path().join("nope/v.sock");
    assert!(matches!(
        Vsock::new(CID, missing_dir),
        Err(Error::Bind { .. })
    ));
}

#[test]
fn new_replaces_a_stale_socket_and_drop_removes_it() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    let stale = UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let vsock = Vsock::new(CID, path.clone()).expect("stale socket replaced");
    assert!(UnixStream::connect(&path).is_ok());
    drop(vsock);
    assert!(!path.exists());
}

#[test]
fn activation_needs_three_ready_queues() {
    let dir = TempDir::new().unwrap();
    let mut vsock = Vsock::new(CID, dir.as_path().join("v.sock")).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap();
    let intr = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let queue = |ready: bool| {
        use virtio_queue::QueueT;
        let mut queue = virtio_queue::Queue::new(QUEUE_SIZE).unwrap();
        queue.set_ready(ready);
        crate::QueueWithEvent {
            queue,
            event: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    };
    let err = vsock
        .activate(mem.clone(), intr.clone(), vec![queue(true), queue(true)])
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 3,
            got: 2
        }
    ));
    let err = vsock
        .activate(mem, intr, vec![queue(true), queue(false), queue(true)])
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady(1)));

    // Through the transport, a missing queue shows as DEVICE_NEEDS_RESET.
    let vsock = Vsock::new(CID, dir.as_path().join("w.sock")).unwrap();
    let mut g = GuestDriver::new(Box::new(vsock));
    assert!(g.negotiate(1 << 32));
    let status = g.driver_ok();
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn driver_reset_closes_connections_and_the_device_comes_back() {
    let mut s = setup();
    let listener = listen(&s.path, 80);
    let mut host = guest_connect(&mut s, &listener, 1000, 80);
    let (mut client, _) = host_connect(&mut s, 2000);
    s.d.driver().write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(s.d.driver().read_reg(VIRTIO_MMIO_STATUS), 0);
    assert_closed(&mut host);
    assert_closed(&mut client);
    // The listener survives the reset; a new driver gets new connections.
    s.d.reinit(16);
    let mut host = guest_connect(&mut s, &listener, 1001, 80);
    host.write_all(b"again").unwrap();
    assert_eq!(recv_data(&mut s.d, 80, 1001, 5), b"again");
    let (mut client, port) = host_connect(&mut s, 2001);
    s.d.send(s.d.hdr(OP_RW, 2001, port), b"back");
    assert_eq!(read_exact(&mut client, 4), b"back");
}

#[test]
fn event_queue_buffers_are_left_alone() {
    let mut s = setup();
    let g = s.d.driver();
    let addr = g.alloc(8);
    g.add_chain(EVQ_INDEX, &[Desc::writable(addr, 8)]).unwrap();
    g.kick(EVQ_INDEX);
    std::thread::sleep(Duration::from_millis(100));
    assert!(g.pop_used(EVQ_INDEX).is_none());
    // And the device still works.
    let listener = listen(&s.path, 5);
    guest_connect(&mut s, &listener, 1, 5);
}
