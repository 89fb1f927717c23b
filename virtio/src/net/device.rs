//! The virtio-net device: what the transport sees (through [`crate::base`]), its
//! configuration, and the life cycle of its worker thread.
//!
//! [`Net::new`] takes the backend socket and keeps it across driver resets:
//! each DRIVER_OK starts a worker on a duplicate of it, each reset stops
//! that worker. Frames the backend sends while no worker runs wait in the
//! socket's receive queue. The worker runs on a thread of its own or, with
//! [`NetDeviceConfig::host`], on the network stack's thread (as in a sandbox),
//! where a frame passes between device and stack without a thread wake-up.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use vm_memory::{ByteValued, Le16};

use super::defs::{CONFIG_LEN, MIN_MTU, QUEUE_SIZE};
use super::metrics::NetMetrics;
use super::socket;
use super::worker::{Link, Worker};
use crate::base::{queue_array, Activation, Device, DeviceBackend, DeviceCommon};
use crate::device::ActivateError;
use crate::event_loop::{EventLoop, WorkerHost, WorkerThread};

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
    /// may send partial checksums, which the device completes (unless
    /// `backend_ignores_checksums`), and skips verifying checksums of
    /// received frames.
    pub checksum_offload: bool,
    /// The backend never verifies TCP and UDP checksums (msbvm's network stack
    /// with checksum offload, which ends every flow itself): the guest's
    /// partial checksums go to it as they are, rather than completed with a
    /// pass over every byte the guest sends. As Linux leaves a
    /// CHECKSUM_PARTIAL packet for local delivery.
    pub backend_ignores_checksums: bool,
    /// Offer VIRTIO_NET_F_GUEST_TSO4 (with checksum offload only): TCP/IPv4
    /// frames from the stack larger than the MTU reach the guest whole, as
    /// GSO frames. Without it (or if the driver declines) they are cut into
    /// segments on the device.
    pub guest_tso: bool,
    /// Offer VIRTIO_NET_F_HOST_TSO4 (with checksum offload only): the guest
    /// may send TCP/IPv4 frames of up to 64 KiB, passed to the stack whole;
    /// the stack must take TCP segments larger than the MTU.
    pub host_tso: bool,
    /// Where the worker runs: on a thread of its own (`None`) or on the
    /// network stack's thread (see [`WorkerHost`]), where frames cross the
    /// socket with no thread wake-up between the device and the stack. The
    /// worker then runs under that thread's confinement.
    pub host: Option<WorkerHost>,
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
pub type Net = Device<NetBackend>;

/// The net-specific half of [`Net`]: the backend socket (kept across driver
/// resets) and the counters.
pub struct NetBackend {
    mac: [u8; 6],
    mtu: u16,
    backend_ignores_checksums: bool,
    backend: OwnedFd,
    host: Option<WorkerHost>,
    metrics: Arc<NetMetrics>,
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
        socket::check_datagram_socket(&config.backend)?;
        socket::set_nonblocking(&config.backend)?;
        let mut avail_features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        if config.checksum_offload {
            avail_features |= (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM);
            if config.guest_tso {
                avail_features |= 1 << VIRTIO_NET_F_GUEST_TSO4;
            }
            if config.host_tso {
                avail_features |= 1 << VIRTIO_NET_F_HOST_TSO4;
            }
        }
        let common = DeviceCommon::new(
            "virtio-net",
            VIRTIO_ID_NET,
            &[QUEUE_SIZE; 2],
            avail_features,
            &NetConfig {
                mac: config.mac,
                status: (VIRTIO_NET_S_LINK_UP as u16).into(),
                max_virtqueue_pairs: 1.into(),
                mtu: config.mtu.into(),
            },
        );
        let backend = NetBackend {
            mac: config.mac,
            mtu: config.mtu,
            backend_ignores_checksums: config.backend_ignores_checksums,
            backend: config.backend,
            host: config.host,
            metrics: Arc::default(),
        };
        Ok(Device::with_backend(common, backend))
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.backend().mac
    }

    /// The device's counters (live while the device runs).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        Arc::clone(&self.backend().metrics)
    }
}

impl DeviceBackend for NetBackend {
    fn activate(&mut self, a: Activation) -> Result<Vec<WorkerThread>, ActivateError> {
        let [rx, tx] = queue_array(a.queues)?;
        let event_loop = EventLoop::new()?;
        let worker = Worker::new(
            a.mem,
            a.interrupt,
            [rx.queue, tx.queue],
            Arc::clone(event_loop.epoll()),
            self.backend.try_clone()?,
            Link {
                features: a.acked_features,
                mtu: usize::from(self.mtu),
                complete_checksums: !self.backend_ignores_checksums,
            },
            Arc::clone(&self.metrics),
        )?;
        let queue_events = vec![rx.event, tx.event];
        let thread = match &self.host {
            Some(host) => {
                WorkerThread::host("virtio-net".into(), host, event_loop, queue_events, worker)?
            }
            None => WorkerThread::spawn(
                "virtio-net".into(),
                "virtio-net",
                event_loop,
                queue_events,
                worker,
            )?,
        };
        Ok(vec![thread])
    }

    // Frames in flight are not saved: the host stack behind a restored
    // device is a new one, whose flows start empty (the guest's connections
    // see resets). RX buffers the device held for a frame are taken again
    // from the avail ring (see the transport's state).
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        crate::base::restore_nothing(state)
    }
}
