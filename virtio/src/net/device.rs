//! The virtio-net device: what the transport sees ([`VirtioDevice`]), its
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
use std::thread::JoinHandle;

use tracing::{debug, error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::{CONFIG_LEN, MIN_MTU, QUEUE_SIZE};
use super::worker::Worker;
use crate::device::{ActivateError, GuestMemoryMmap, QueueWithEvent, VirtioDevice};
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

/// The running worker and how to stop it.
struct WorkerHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// A virtio-net device whose frames go to and come from a datagram socket.
/// See the [module docs](super) for the features it offers and why.
pub struct Net {
    mac: [u8; 6],
    mtu: u16,
    backend: OwnedFd,
    avail_features: u64,
    acked_features: u64,
    metrics: Arc<NetMetrics>,
    worker: Option<WorkerHandle>,
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
            avail_features,
            acked_features: 0,
            metrics: Arc::default(),
            worker: None,
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

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Err(e) = worker.stop.write(1) {
                error!("net: cannot signal worker to stop: {e}");
            }
            if worker.thread.join().is_err() {
                error!("net: worker thread panicked");
            }
        }
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

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is writable only in legacy devices; we are not one.
        debug!("net: ignoring write to read-only config at {offset:#x}");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<QueueWithEvent>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let Ok([rx, tx]) = <[QueueWithEvent; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        for (i, q) in [&rx, &tx].into_iter().enumerate() {
            if !q.queue.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let worker = Worker::new(
            mem,
            interrupt,
            [(rx.queue, rx.event), (tx.queue, tx.event)],
            stop.try_clone()?,
            self.backend.try_clone()?,
            self.acked_features,
            Arc::clone(&self.metrics),
        )?;
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || {
                crate::confine::thread_started("virtio-net");
                worker.run()
            })?;
        self.worker = Some(WorkerHandle { stop, thread });
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        self.acked_features = 0;
        true
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
