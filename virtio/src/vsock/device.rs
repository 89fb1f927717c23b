//! The virtio-vsock device: what the transport sees (through [`crate::base`]) and the
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

use thiserror::Error;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vm_memory::{ByteValued, Le64};

use super::defs::{Timeouts, HOST_CID, MAX_CONNECTIONS, QUEUE_SIZE};
use super::unix::muxer::Muxer;
use super::worker::Worker;
use crate::base::{queue_array, Activation, Device, DeviceBackend, DeviceCommon};
use crate::device::ActivateError;
use crate::event_loop::{EventLoop, WorkerThread};

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

/// `struct virtio_vsock_config`: the guest's CID.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub guest_cid: Le64,
}

// SAFETY: `VsockConfig` is `repr(C)`, made only of `Le64` (itself plain
// bytes), so it has no padding and every bit pattern is valid.
unsafe impl ByteValued for VsockConfig {}

/// A virtio-vsock device bridging guest stream sockets to host Unix sockets.
/// See the [module docs](super) for the host-side protocol.
pub type Vsock = Device<VsockBackend>;

/// The vsock-specific half of [`Vsock`]: the host listener and what each
/// activation's muxer needs.
pub struct VsockBackend {
    guest_cid: u64,
    /// The prefix of guest-to-host sockets (`<uds_path>_<port>`).
    uds_path: PathBuf,
    /// Where the host listener is bound (usually `uds_path`).
    listen_path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file we created, so Drop only removes
    /// our own file.
    socket_id: Option<(u64, u64)>,
    max_connections: usize,
    timeouts: Timeouts,
    /// Restored from a snapshot: the next activation first tells the guest
    /// that its connections are gone.
    reset_on_activate: bool,
}

impl Vsock {
    /// Creates the device for guest CID `guest_cid` and binds its host
    /// listener at `uds_path`, replacing a stale socket file left there.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, Error> {
        Vsock::with_listen_path(guest_cid, uds_path.clone(), uds_path)
    }

    /// Like [`Vsock::new`], with the host listener bound at `listen_path` instead of
    /// `uds_path` (which stays the prefix of guest-to-host sockets): for a host that puts a
    /// proxy of its own at `uds_path`.
    pub fn with_listen_path(
        guest_cid: u64,
        uds_path: PathBuf,
        listen_path: PathBuf,
    ) -> Result<Vsock, Error> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid(guest_cid));
        }
        remove_stale_socket(&listen_path)?;
        let listener = UnixListener::bind(&listen_path).map_err(|source| Error::Bind {
            path: listen_path.clone(),
            source,
        })?;
        let socket_id = std::fs::metadata(&listen_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let common = DeviceCommon::new(
            "virtio-vsock",
            VIRTIO_ID_VSOCK,
            &[QUEUE_SIZE; 3],
            1 << VIRTIO_F_VERSION_1,
            &VsockConfig {
                guest_cid: guest_cid.into(),
            },
        );
        let backend = VsockBackend {
            guest_cid,
            uds_path,
            listen_path,
            listener,
            socket_id,
            max_connections: MAX_CONNECTIONS,
            timeouts: Timeouts::default(),
            reset_on_activate: false,
        };
        Ok(Device::with_backend(common, backend))
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.backend().guest_cid
    }

    /// Where host clients connect.
    pub fn uds_path(&self) -> &Path {
        &self.backend().uds_path
    }

    /// How long a host client may take to name its port and the guest to answer (default
    /// [`Timeouts::default`]); takes effect at the next activation.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.backend_mut().timeouts = timeouts;
    }

    /// Lowers the connection cap (takes effect at the next activation).
    #[cfg(test)]
    pub(crate) fn set_max_connections(&mut self, max: usize) {
        self.backend_mut().max_connections = max;
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

impl DeviceBackend for VsockBackend {
    fn activate(&mut self, a: Activation) -> Result<Vec<WorkerThread>, ActivateError> {
        let [rx, tx, ev] = queue_array(a.queues)?;
        let muxer = Muxer::new(
            self.guest_cid,
            self.uds_path.clone(),
            self.listener.try_clone()?,
            self.max_connections,
            self.timeouts,
        )?;
        let event_loop = EventLoop::with_epoll(Arc::clone(muxer.epoll()));
        let queues = [rx.queue, tx.queue, ev.queue];
        let reset = std::mem::take(&mut self.reset_on_activate);
        let worker = Worker::new(a.mem, a.interrupt, queues, muxer, reset);
        let thread = WorkerThread::spawn(
            format!("vsock-{}", self.guest_cid),
            "virtio-vsock",
            event_loop,
            vec![rx.event, tx.event, ev.event],
            worker,
        )?;
        Ok(vec![thread])
    }

    // Connections are not saved: their host ends belong to the source VM.
    // A restored device sends the guest a transport reset instead, which
    // drops every connection (listening sockets stay) and makes the driver
    // read the guest CID again, so a restored VM may have another one.
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        crate::base::restore_nothing(state)?;
        self.reset_on_activate = true;
        Ok(())
    }
}

/// Runs after the base stopped the worker (see [`Device`]).
impl Drop for VsockBackend {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we bound.
        let ours = std::fs::metadata(&self.listen_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = std::fs::remove_file(&self.listen_path);
        }
    }
}
