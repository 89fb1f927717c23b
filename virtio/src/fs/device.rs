//! The virtio-fs device: what the transport sees ([`VirtioDevice`]) and the
//! life cycle of its queue threads.

use std::sync::Arc;
use std::thread::JoinHandle;

use msbvm_fs::{FileSystem, Server};
use thiserror::Error;
use tracing::{debug, error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::{CONFIG_SIZE, MAX_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use super::worker::Worker;
use crate::device::{ActivateError, GuestMemoryMmap, QueueWithEvent, VirtioDevice};
use crate::Interrupt;

/// virtio device ID of virtio-fs.
const VIRTIO_ID_FS: u32 = 26;

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

/// The FUSE server behind the device: one request in, one reply out.
/// Implemented by [`msbvm_fs::Server`]; object-safe so the device does not
/// care which backend it serves.
pub trait FsServer: Send + Sync {
    /// Answers one request (see `msbvm_fs::server`); an empty `reply`
    /// means no reply.
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<(), msbvm_fs::server::Error>;

    /// The device was reset: end the FUSE session.
    fn reset(&self);
}

impl<F: FileSystem> FsServer for Server<F> {
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<(), msbvm_fs::server::Error> {
        Server::handle(self, request, reply)
    }

    fn reset(&self) {
        Server::reset(self)
    }
}

struct Workers {
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
}

/// A virtio-fs device. See the [module docs](super).
pub struct Fs {
    tag: [u8; TAG_LEN],
    num_request_queues: u16,
    queue_sizes: Vec<u16>,
    server: Arc<dyn FsServer>,
    acked_features: u64,
    workers: Option<Workers>,
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
        Ok(Self {
            tag: t,
            num_request_queues,
            queue_sizes: vec![QUEUE_SIZE; 1 + usize::from(num_request_queues)],
            server,
            acked_features: 0,
            workers: None,
        })
    }

    fn stop_workers(&mut self) {
        if let Some(w) = self.workers.take() {
            if let Err(e) = w.stop.write(1) {
                error!("virtio-fs: cannot signal queue threads to stop: {e}");
            }
            for t in w.threads {
                if t.join().is_err() {
                    error!("virtio-fs: a queue thread panicked");
                }
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config = [0u8; CONFIG_SIZE];
        config[..TAG_LEN].copy_from_slice(&self.tag);
        config[TAG_LEN..].copy_from_slice(&u32::from(self.num_request_queues).to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        debug!("virtio-fs: ignoring write to read-only config at {offset:#x}");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<QueueWithEvent>,
    ) -> Result<(), ActivateError> {
        if self.workers.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.queue.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let mut workers = Workers {
            stop: stop.try_clone()?,
            threads: Vec::new(),
        };
        for (index, q) in queues.into_iter().enumerate() {
            let worker = Worker {
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                queue: q.queue,
                event: q.event,
                stop: stop.try_clone()?,
                server: self.server.clone(),
                index,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("virtio-fs-q{index}"))
                .spawn(move || {
                    crate::confine::thread_started("virtio-fs");
                    worker.run()
                });
            match spawned {
                Ok(t) => workers.threads.push(t),
                Err(e) => {
                    // Stop the threads already running before failing.
                    self.workers = Some(workers);
                    self.stop_workers();
                    return Err(e.into());
                }
            }
        }
        self.workers = Some(workers);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_workers();
        self.server.reset();
        self.acked_features = 0;
        true
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
