//! Device tests: the real net device behind the real MMIO transport, driven
//! through guest memory by [`NetDriver`], with a real socketpair standing in
//! for the host-side network stack.

mod flow;
mod gso;
mod hosted;
mod malformed;
mod offload;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_STATUS};
use virtio_bindings::virtio_net::*;

use super::defs::*;
use super::frame::{NetHeader, HDR_F_DATA_VALID};
use super::test_utils::{NetDriver, TIMEOUT};
use super::{Net, NetDeviceConfig, NetMetrics};
use crate::test_utils::GuestDriver;

const MAC: [u8; 6] = [0x02, 0x6d, 0x73, 0x62, 0x76, 0x6d];
const MTU: u16 = 1500;
/// What Linux posts per mergeable buffer for a 1500-byte MTU, roughly.
const MRG_BUF: u32 = 1536;

const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_MTU)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MRG_RXBUF);
const CSUM_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM);
/// Offered with checksum offload by these tests' devices.
const TSO_FEATURE: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
/// Offered with checksum offload by these tests' devices.
const HOST_TSO_FEATURE: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;

struct Setup {
    d: NetDriver,
    /// The host-side stack's end.
    host: UnixDatagram,
    metrics: std::sync::Arc<NetMetrics>,
}

fn device(checksum_offload: bool) -> (Net, UnixDatagram) {
    device_for(checksum_offload, false)
}

/// [`device`] for a backend that says whether it ignores checksums.
fn device_for(checksum_offload: bool, backend_ignores_checksums: bool) -> (Net, UnixDatagram) {
    device_with(checksum_offload, backend_ignores_checksums, None)
}

/// [`device_for`] with the worker on `worker_host`'s thread, if given.
fn device_with(
    checksum_offload: bool,
    backend_ignores_checksums: bool,
    worker_host: Option<crate::event_loop::WorkerHost>,
) -> (Net, UnixDatagram) {
    let (host, dev) = UnixDatagram::pair().expect("socketpair");
    let net = Net::new(NetDeviceConfig {
        mac: MAC,
        mtu: MTU,
        backend: OwnedFd::from(dev),
        checksum_offload,
        backend_ignores_checksums,
        guest_tso: true,
        host_tso: true,
        host: worker_host,
    })
    .expect("net device");
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    (net, host)
}

fn setup(features: u64) -> Setup {
    let (net, host) = device(features & CSUM_FEATURES != 0);
    let metrics = net.metrics();
    Setup {
        d: NetDriver::new(net, features),
        host,
        metrics,
    }
}

/// An Ethernet frame of `len` bytes (>= 14) with a recognisable payload.
fn ethernet_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((14..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// Sends an [`ethernet_frame`] from the host side; returns it.
fn host_send(host: &UnixDatagram, len: usize, seed: u8) -> Vec<u8> {
    let frame = ethernet_frame(len, seed);
    host.send(&frame).unwrap();
    frame
}

fn host_recv(host: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = host.recv(&mut buf).expect("frame on the backend socket");
    buf.truncate(n);
    buf
}

/// Throws away every frame already on the backend socket.
fn drain_host(host: &UnixDatagram) {
    host.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    while host.recv(&mut buf).is_ok() {}
    host.set_nonblocking(false).unwrap();
}

fn assert_host_silent(host: &UnixDatagram) {
    host.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let got = host.recv(&mut buf);
    host.set_nonblocking(false).unwrap();
    assert!(got.is_err(), "unexpected frame of {:?} bytes", got.ok());
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn offers_the_documented_features_and_config_space() {
    let (net, _host) = device(false);
    let mut g = GuestDriver::new(Box::new(net));
    assert_eq!(g.read_reg(VIRTIO_MMIO_DEVICE_ID), 1);
    assert_eq!(g.device_features(), BASE_FEATURES);
    // Byte by byte, as Linux reads the MAC.
    let mut config = [0xaau8; 16];
    for (i, b) in config.iter_mut().enumerate() {
        let mut one = [0u8; 1];
        g.transport().read(0x100 + i as u64, &mut one);
        *b = one[0];
    }
    assert_eq!(&config[0..6], &MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([config[8], config[9]]), 1, "one pair");
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), MTU);
    assert_eq!(&config[12..], &[0; 4], "past the end reads as zero");
    // The MAC is read-only.
    g.transport().write(0x100, &[0; 4]);
    let mut word = [0u8; 4];
    g.transport().read(0x100, &mut word);
    assert_eq!(word, MAC[..4]);
    // Offloads we cannot honour are refused at FEATURES_OK.
    assert!(!g.negotiate(BASE_FEATURES | (1 << VIRTIO_NET_F_GUEST_TSO4)));
    assert!(!g.negotiate(BASE_FEATURES | (1 << VIRTIO_NET_F_CSUM)));
    assert!(g.negotiate(BASE_FEATURES));

    let (net, _host) = device(true);
    let mut g = GuestDriver::new(Box::new(net));
    assert_eq!(
        g.device_features(),
        BASE_FEATURES | CSUM_FEATURES | TSO_FEATURE | HOST_TSO_FEATURE
    );
    assert!(!g.negotiate(BASE_FEATURES | (1 << VIRTIO_NET_F_HOST_UFO)));
    assert!(g.negotiate(BASE_FEATURES | CSUM_FEATURES));
}

#[test]
fn new_rejects_a_stream_socket_and_a_tiny_mtu() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = Net::new(NetDeviceConfig {
        mac: MAC,
        mtu: MTU,
        backend: OwnedFd::from(a),
        checksum_offload: false,
        backend_ignores_checksums: false,
        guest_tso: false,
        host_tso: false,
        host: None,
    })
    .err()
    .expect("stream socket refused");
    assert!(err.to_string().contains("SOCK_DGRAM"), "{err}");
    let (a, _b) = UnixDatagram::pair().unwrap();
    let err = Net::new(NetDeviceConfig {
        mac: MAC,
        mtu: 67,
        backend: OwnedFd::from(a),
        checksum_offload: false,
        backend_ignores_checksums: false,
        guest_tso: false,
        host_tso: false,
        host: None,
    })
    .err()
    .expect("tiny MTU refused");
    assert!(err.to_string().contains("MTU 67"), "{err}");
}

#[test]
fn tx_frame_arrives_on_the_socket_intact() {
    let mut s = setup(BASE_FEATURES);
    for (i, len) in [14usize, 60, 1514, 9000, MAX_FRAME_LEN]
        .into_iter()
        .enumerate()
    {
        let frame = ethernet_frame(len, i as u8);
        let used = s.d.send(&NetHeader::default(), &frame);
        assert_eq!(used.len, 0, "TX chains are returned with length 0");
        assert_eq!(host_recv(&s.host), frame, "frame of {len} bytes");
    }
    // Header and frame in one descriptor, as Linux usually sends them.
    let frame = ethernet_frame(100, 7);
    let mut bytes = NetHeader::default().to_bytes().to_vec();
    bytes.extend_from_slice(&frame);
    let g = s.d.driver();
    let addr = g.alloc(bytes.len() as u32);
    g.write_mem(addr, &bytes);
    s.d.offer_tx(&[crate::test_utils::Desc::readable(addr, bytes.len() as u32)]);
    s.d.wait_tx();
    assert_eq!(host_recv(&s.host), frame);
    assert_eq!(counter(&s.metrics.tx_frames), 6);
    assert_eq!(counter(&s.metrics.tx_dropped), 0);
}

#[test]
fn rx_frame_lands_in_a_guest_buffer_with_its_header() {
    let mut s = setup(BASE_FEATURES);
    s.d.post_rx(4, MRG_BUF);
    let frame = host_send(&s.host, 1514, 3);
    let rx = s.d.recv();
    assert_eq!(rx.frame, frame);
    assert_eq!(
        rx.hdr,
        NetHeader {
            num_buffers: 1,
            ..NetHeader::default()
        },
        "no DATA_VALID without GUEST_CSUM"
    );
    assert_eq!(rx.used[0].len as usize, NET_HDR_LEN + frame.len());
    assert_eq!(counter(&s.metrics.rx_frames), 1);

    // With GUEST_CSUM the device vouches for checksums.
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES);
    s.d.post_rx(1, MRG_BUF);
    s.host.send(&ethernet_frame(60, 1)).unwrap();
    assert_eq!(s.d.recv().hdr.flags, HDR_F_DATA_VALID);
}

#[test]
fn driver_reset_stops_the_worker_and_the_device_comes_back() {
    let mut s = setup(BASE_FEATURES);
    s.d.post_rx(2, MRG_BUF);
    s.d.driver().write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(s.d.driver().read_reg(VIRTIO_MMIO_STATUS), 0);
    // Frames sent while the device is down wait in the socket.
    let early = host_send(&s.host, 80, 9);
    std::thread::sleep(Duration::from_millis(50));
    s.d.reinit(BASE_FEATURES);
    s.d.post_rx(2, MRG_BUF);
    assert_eq!(s.d.recv().frame, early);
    let frame = ethernet_frame(64, 2);
    s.d.send(&NetHeader::default(), &frame);
    assert_eq!(host_recv(&s.host), frame);
}
