//! The virtio-net device: what the transport sees (through [`crate::base`]), its
//! configuration, and the life cycle of its worker thread.
//!
//! [`Net::new`] takes the backend socket and keeps it across driver resets:
//! each DRIVER_OK starts a worker on a duplicate of it, each reset stops
//! that worker. Frames the backend sends while no worker runs wait in the
//! socket's receive queue.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use vm_memory::{ByteValued, Le16};

use super::defs::{CONFIG_LEN, MIN_MTU, QUEUE_SIZE};
use super::worker::Worker;
use crate::base::{queue_array, BaseDevice, DeviceCommon};
use crate::device::{ActivateError, GuestMemoryMmap, QueueWithEvent};
use crate::event_loop::{EventLoop, WorkerThread};
use crate::Interrupt;

/// How to build a [`Net`] device.
#[derive(Debug)]
pub struct NetDeviceConfig {
    /// The guest's MAC address (config space `mac`).
    pub mac: [u8; 6],
    /// The MTU the guest is told (config space `mtu`); at least 68.
    pub mtu: u16,
    /// An `AF_UNIX`/`SOCK_DGRAM` socket connected to the host-side network
    /// stack: one datagram is one Ethernet frame, without virtio header.
    pub backend: OwnedFd,
    /// Offer checksum offload (VIRTIO_NET_F_CSUM and GUEST_CSUM): the guest
    /// may send partial checksums, which the device completes, and skips
    /// verifying checksums of received frames.
    pub checksum_offload: bool,
}

/// Frame and byte counters, shared with whoever wants to watch the device.
/// Drops count frames that were discarded, never silently.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames sent to the backend.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped: malformed chains, bad sizes, send errors.
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames.
    pub rx_bytes: AtomicU64,
    /// Backend frames dropped: too big for the guest's buffers or for us.
    pub rx_dropped: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// `struct virtio_net_config` up to `mtu`: the fields the features we
/// offer make valid.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct NetConfig {
    /// The guest's MAC address (VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    /// VIRTIO_NET_S_LINK_UP (VIRTIO_NET_F_STATUS).
    pub status: Le16,
    /// Always 1: no multiqueue.
    pub max_virtqueue_pairs: Le16,
    /// The MTU (VIRTIO_NET_F_MTU).
    pub mtu: Le16,
}

// SAFETY: `NetConfig` is `repr(C)`, made of a byte array and `Le16`s that
// start at even offsets, so it has no padding and every bit pattern is valid.
unsafe impl ByteValued for NetConfig {}

const _: () = assert!(std::mem::size_of::<NetConfig>() == CONFIG_LEN);

/// A virtio-net device whose frames go to and come from a datagram socket.
/// See the [module docs](super) for the features it offers and why.
pub struct Net {
    mac: [u8; 6],
    mtu: u16,
    backend: OwnedFd,
    metrics: Arc<NetMetrics>,
    common: DeviceCommon,
}

impl Net {
    /// Creates the device. Fails if `config.mtu` is below 68 or the backend
    /// is not a datagram socket; makes the backend non-blocking.
    pub fn new(config: NetDeviceConfig) -> io::Result<Net> {
        if config.mtu < MIN_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MTU {} is below the minimum of {MIN_MTU}", config.mtu),
            ));
        }
        check_datagram_socket(&config.backend)?;
        set_nonblocking(&config.backend)?;
        let mut avail_features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        if config.checksum_offload {
            avail_features |= (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM);
        }
        Ok(Net {
            mac: config.mac,
            mtu: config.mtu,
            backend: config.backend,
            metrics: Arc::default(),
            common: DeviceCommon::new("net", VIRTIO_ID_NET, &[QUEUE_SIZE; 2], avail_features),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The device's counters (live while the device runs).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        Arc::clone(&self.metrics)
    }
}

fn check_datagram_socket(fd: &OwnedFd) -> io::Result<()> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one c_int into `ty`, whose size `len` gives.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("network backend is not a socket: {e}"),
        ));
    }
    if ty != libc::SOCK_DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "network backend must be a SOCK_DGRAM socket (one frame per datagram)",
        ));
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl BaseDevice for Net {
    type Config = NetConfig;

    fn common(&self) -> &DeviceCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }

    fn config(&self) -> NetConfig {
        NetConfig {
            mac: self.mac,
            status: (VIRTIO_NET_S_LINK_UP as u16).into(),
            max_virtqueue_pairs: 1.into(),
            mtu: self.mtu.into(),
        }
    }

    fn start(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<QueueWithEvent>,
    ) -> Result<Vec<WorkerThread>, ActivateError> {
        let [rx, tx] = queue_array(queues)?;
        let event_loop = EventLoop::new()?;
        let worker = Worker::new(
            mem,
            interrupt,
            [rx.queue, tx.queue],
            Arc::clone(event_loop.epoll()),
            self.backend.try_clone()?,
            self.common.acked_features(),
            Arc::clone(&self.metrics),
        )?;
        let thread = WorkerThread::spawn(
            "virtio-net".into(),
            "virtio-net",
            event_loop,
            vec![rx.event, tx.event],
            worker,
        )?;
        Ok(vec![thread])
    }
}
