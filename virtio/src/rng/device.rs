//! The virtio-rng device: no config space, one queue, one worker.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::worker::Worker;
use crate::base::{queue_array, Activation, Device, DeviceBackend, DeviceCommon};
use crate::device::ActivateError;
use crate::event_loop::{EventLoop, WorkerThread};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// A virtio-rng device. See the [module docs](super).
pub type Rng = Device<RngBackend>;

/// The virtio-rng half of [`Rng`]: it keeps no state between activations.
#[derive(Debug, Default)]
pub struct RngBackend;

impl Rng {
    /// A device that serves the guest's requests from the host's `getrandom`.
    pub fn new() -> Self {
        let common = DeviceCommon::new(
            "virtio-rng",
            VIRTIO_ID_RNG,
            &[QUEUE_SIZE],
            1 << VIRTIO_F_VERSION_1,
            &[0u8; 0],
        );
        Device::with_backend(common, RngBackend)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceBackend for RngBackend {
    fn activate(&mut self, a: Activation) -> Result<Vec<WorkerThread>, ActivateError> {
        let [q] = queue_array(a.queues)?;
        let worker = Worker::new(a.mem, a.interrupt, q.queue);
        let thread = WorkerThread::spawn(
            "virtio-rng".into(),
            "virtio-rng",
            EventLoop::new()?,
            vec![q.event],
            worker,
        )?;
        Ok(vec![thread])
    }

    // The device keeps nothing between requests: a snapshot needs no more
    // than the transport's state.
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        crate::base::restore_nothing(state)
    }
}
