//! The virtio-balloon device: a config space that never asks for pages, three queues
//! (inflate, deflate, reporting) and one worker.

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;

use super::defs::{VirtioBalloonConfig, VIRTIO_BALLOON_F_REPORTING};
use super::worker::{BalloonStats, Worker};
use crate::base::{Activation, Device, DeviceBackend, DeviceCommon};
use crate::device::ActivateError;
use crate::event_loop::{EventLoop, WorkerThread};

/// Entries in each queue. Linux needs at least 32 in the reporting queue (it reports up to 32
/// blocks at a time) and puts at most 256 page numbers in one inflate buffer.
pub const QUEUE_SIZE: u16 = 128;

/// A virtio-balloon device. See the [module docs](super).
pub type Balloon = Device<BalloonBackend>;

/// The virtio-balloon half of [`Balloon`]: the counters its workers add to.
#[derive(Debug, Default)]
pub struct BalloonBackend {
    stats: Arc<BalloonStats>,
}

impl Balloon {
    /// A device offering free page reporting, that never asks the guest for pages.
    pub fn new() -> Self {
        let common = DeviceCommon::new(
            "virtio-balloon",
            VIRTIO_ID_BALLOON,
            &[QUEUE_SIZE; 3],
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING),
            &VirtioBalloonConfig::default(),
        );
        Device::with_backend(common, BalloonBackend::default())
    }

    /// What the guest has given back so far (shared: it keeps counting while the device
    /// runs, across driver resets).
    pub fn stats(&self) -> Arc<BalloonStats> {
        self.backend().stats.clone()
    }
}

impl Default for Balloon {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceBackend for BalloonBackend {
    fn queues_in_use(&self, acked_features: u64) -> Option<usize> {
        // A driver that declined reporting sets up only inflate and deflate.
        Some(if acked_features & (1 << VIRTIO_BALLOON_F_REPORTING) != 0 {
            3
        } else {
            2
        })
    }

    fn activate(&mut self, a: Activation) -> Result<Vec<WorkerThread>, ActivateError> {
        let mut queues = Vec::with_capacity(a.queues.len());
        let mut events = Vec::with_capacity(a.queues.len());
        for q in a.queues {
            queues.push(q.queue);
            events.push(q.event);
        }
        let worker = Worker::new(a.mem, a.interrupt, queues, self.stats.clone());
        let thread = WorkerThread::spawn(
            "virtio-balloon".into(),
            "virtio-balloon",
            EventLoop::new()?,
            events,
            worker,
        )?;
        Ok(vec![thread])
    }

    // Nothing lives between requests (the counters are statistics, not state): a snapshot
    // needs no more than the transport's state.
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        crate::base::restore_nothing(state)
    }
}
