//! The virtio-fs device: what the transport sees (through [`crate::base`]) and the
//! life cycle of its queue threads.

use std::sync::Arc;

use thiserror::Error;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use vm_memory::{ByteValued, Le32};

use super::defs::{CONFIG_SIZE, MAX_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use super::server::FsServer;
use super::worker::Worker;
use crate::base::{Activation, Device, DeviceBackend, DeviceCommon};
use crate::device::ActivateError;
use crate::event_loop::{EventLoop, WorkerThread};

/// Why a virtio-fs device could not be created.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// The tag is empty, longer than 36 bytes, or contains a NUL.
    #[error("virtio-fs tag {0:?} is invalid: it must be 1 to 36 bytes without NUL")]
    InvalidTag(String),
    /// Zero request queues, or more than the device supports.
    #[error("virtio-fs needs 1 to {MAX_REQUEST_QUEUES} request queues, not {0}")]
    RequestQueues(u16),
}

/// `struct virtio_fs_config`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct FsConfig {
    /// The mount tag, NUL-padded.
    pub tag: [u8; TAG_LEN],
    /// How many request queues follow the high-priority queue.
    pub num_request_queues: Le32,
}

// SAFETY: `FsConfig` is `repr(C)`: a 36-byte array then an `Le32` at offset
// 36 (a multiple of its alignment, 4), so it has no padding and every bit
// pattern is valid.
unsafe impl ByteValued for FsConfig {}

const _: () = assert!(std::mem::size_of::<FsConfig>() == CONFIG_SIZE);

/// A virtio-fs device. See the [module docs](super).
pub type Fs = Device<FsBackend>;

/// The virtio-fs half of [`Fs`]: the server every queue worker answers with.
pub struct FsBackend {
    server: Arc<dyn FsServer>,
}

impl Fs {
    /// A device the guest mounts as `tag`, with `num_request_queues` request
    /// queues (1 is what Linux uses), answered by `server`.
    pub fn new(
        tag: &str,
        num_request_queues: u16,
        server: Arc<dyn FsServer>,
    ) -> Result<Self, Error> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(Error::InvalidTag(tag.to_string()));
        }
        if num_request_queues == 0 || num_request_queues > MAX_REQUEST_QUEUES {
            return Err(Error::RequestQueues(num_request_queues));
        }
        let mut t = [0u8; TAG_LEN];
        t[..tag.len()].copy_from_slice(tag.as_bytes());
        let common = DeviceCommon::new(
            "virtio-fs",
            VIRTIO_ID_FS,
            &vec![QUEUE_SIZE; 1 + usize::from(num_request_queues)],
            1 << VIRTIO_F_VERSION_1,
            &FsConfig {
                tag: t,
                num_request_queues: u32::from(num_request_queues).into(),
            },
        );
        Ok(Device::with_backend(common, FsBackend { server }))
    }
}

impl DeviceBackend for FsBackend {
    /// One thread per queue, so a slow request on one never holds up another.
    fn activate(&mut self, a: Activation) -> Result<Vec<WorkerThread>, ActivateError> {
        let mut threads = Vec::with_capacity(a.queues.len());
        for (index, q) in a.queues.into_iter().enumerate() {
            let worker = Worker {
                mem: a.mem.clone(),
                interrupt: a.interrupt.clone(),
                queue: q.queue,
                server: self.server.clone(),
                index,
            };
            let spawned = EventLoop::new().and_then(|event_loop| {
                WorkerThread::spawn(
                    format!("virtio-fs-q{index}"),
                    "virtio-fs",
                    event_loop,
                    vec![q.event],
                    worker,
                )
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stop the threads already running before failing.
                    WorkerThread::stop_all(threads);
                    return Err(e.into());
                }
            }
        }
        Ok(threads)
    }

    fn reset(&mut self) {
        self.server.reset();
    }

    /// The server's session and its backend's inodes and handles: the
    /// guest keeps its mount across the snapshot, so the restored device
    /// must answer for the ids the guest kernel holds. The base also calls
    /// this before pausing, to learn whether the device can be saved: that
    /// costs one walk of the backend's inode table.
    fn save_state(&self) -> Result<Vec<u8>, String> {
        self.server
            .save_state()
            .map_err(|e| format!("cannot save the FUSE session: {e}"))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.server
            .restore_state(state)
            .map_err(|e| format!("cannot restore the FUSE session: {e}"))
    }
}
