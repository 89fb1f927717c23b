//! The virtio-vsock device: what the transport sees ([`VirtioDevice`]) and the
//! life cycle of its worker thread.
//!
//! [`Vsock::new`] binds the host listener at once, so host clients can connect
//! (they wait in the backlog) before the guest driver is up. DRIVER_OK starts
//! the worker thread with the three queues; a driver reset or dropping the
//! device stops it and closes every connection.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;
use tracing::{debug, error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::{HOST_CID, MAX_CONNECTIONS, QUEUE_SIZE};
use super::unix::muxer::Muxer;
use super::worker::Worker;
use crate::device::{ActivateError, GuestMemoryMmap, QueueWithEvent, VirtioDevice};
use crate::Interrupt;

/// Why a vsock device could not be created.
#[derive(Debug, Error)]
pub enum Error {
    /// The CID is reserved (0-2, or u32::MAX and above, which Linux cannot use).
    #[error("guest CID {0} is reserved; use a value from 3 to 4294967294")]
    InvalidCid(u64),
    /// Something other than a socket already exists at the path.
    #[error("{0} exists and is not a Unix socket; remove it or pick another vsock path")]
    PathInUse(PathBuf),
    /// Binding the listener failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The running worker and how to stop it.
struct WorkerHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// A virtio-vsock device bridging guest stream sockets to host Unix sockets.
/// See the [module docs](super) for the host-side protocol.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file we created, so Drop only removes
    /// our own file.
    socket_id: Option<(u64, u64)>,
    acked_features: u64,
    max_connections: usize,
    worker: Option<WorkerHandle>,
}

impl Vsock {
    /// Creates the device for guest CID `guest_cid` and binds its host
    /// listener at `uds_path`, replacing a stale socket file left there.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, Error> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid(guest_cid));
        }
        remove_stale_socket(&uds_path)?;
        let listener = UnixListener::bind(&uds_path).map_err(|source| Error::Bind {
            path: uds_path.clone(),
            source,
        })?;
        let socket_id = std::fs::metadata(&uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Vsock {
            guest_cid,
            uds_path,
            listener,
            socket_id,
            acked_features: 0,
            max_connections: MAX_CONNECTIONS,
            worker: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Where host clients connect.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Lowers the connection cap (takes effect at the next activation).
    #[cfg(test)]
    pub(crate) fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max;
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Err(e) = worker.stop.write(1) {
                error!("vsock: cannot signal worker to stop: {e}");
            }
            if worker.thread.join().is_err() {
                error!("vsock: worker thread panicked");
            }
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| Error::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(Error::PathInUse(path.to_path_buf())),
        Err(_) => Ok(()),
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        debug!("vsock: ignoring write to read-only config at {offset:#x}");
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
        let Ok([rx, tx, ev]) = <[QueueWithEvent; 3]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 3, got });
        };
        for (i, q) in [&rx, &tx, &ev].into_iter().enumerate() {
            if !q.queue.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let muxer = Muxer::new(
            self.guest_cid,
            self.uds_path.clone(),
            self.listener.try_clone()?,
            self.max_connections,
        )?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let worker = Worker::new(
            mem,
            interrupt,
            [
                (rx.queue, rx.event),
                (tx.queue, tx.event),
                (ev.queue, ev.event),
            ],
            stop.try_clone()?,
            muxer,
        )?;
        let thread = std::thread::Builder::new()
            .name(format!("vsock-{}", self.guest_cid))
            .spawn(move || {
                crate::confine::thread_started("virtio-vsock");
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

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        // Remove the socket file only if it is still the one we bound.
        let ours = std::fs::metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}
