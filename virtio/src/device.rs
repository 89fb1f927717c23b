//! The contract between the virtio-mmio transport and a virtio device.
//!
//! The transport owns everything the virtio spec makes common to all devices
//! (status, feature negotiation, queue configuration); a device only says what
//! it offers (type, queue sizes, features, config space) and starts serving
//! once the driver is ready. Keeping the device side this small lets every
//! device be tested with the same driver-side harness.

use std::sync::Arc;

use thiserror::Error;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;

/// Guest memory as the devices see it: plain mmap'ed regions, no dirty bitmap.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// A virtqueue handed to a device at activation, with the eventfd that fires
/// when the driver notifies that queue (ioeventfd or a QueueNotify write).
#[derive(Debug)]
pub struct QueueWithEvent {
    /// The queue as the driver configured it (size, ring addresses, ready).
    pub queue: Queue,
    /// Readable when the driver has kicked this queue.
    pub event: EventFd,
}

/// Why a device could not start serving at DRIVER_OK.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The driver did not configure the number of queues the device needs.
    #[error("device needs {expected} queues but got {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the transport handed over.
        got: usize,
    },
    /// The driver left a queue the device needs unconfigured.
    #[error("queue {0} was not made ready by the driver")]
    QueueNotReady(usize),
    /// The device is already serving; the driver must reset it first.
    #[error("device is already active; reset it first")]
    AlreadyActive,
    /// Setting up the device's event loop or thread failed on the host.
    #[error("cannot start the device on the host: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device behind a transport.
///
/// The transport calls these methods from the vCPU thread that trapped the
/// MMIO access; after [`VirtioDevice::activate`] the device serves its queues
/// on its own thread until [`VirtioDevice::reset`].
pub trait VirtioDevice: Send {
    /// The virtio device ID (e.g. 19 for vsock).
    fn device_type(&self) -> u32;

    /// The device's name in logs and descriptions ("virtio-vsock").
    fn name(&self) -> &'static str {
        "virtio device"
    }

    /// The maximum size of each of the device's queues, in queue order.
    /// Each must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers; must include `VIRTIO_F_VERSION_1`,
    /// since the transport only speaks virtio 1.x.
    fn avail_features(&self) -> u64;

    /// The features the driver accepted, called once at FEATURES_OK
    /// (a subset of [`VirtioDevice::avail_features`]).
    fn set_acked_features(&mut self, features: u64);

    /// Reads the device config space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device config space at `offset`; read-only fields ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Called at DRIVER_OK: the device takes its queues and starts serving
    /// (its own thread).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<QueueWithEvent>,
    ) -> Result<(), ActivateError>;

    /// Called on reset by the driver: stop serving, give resources back.
    /// Returns false if unsupported.
    fn reset(&mut self) -> bool;

    /// For a snapshot: parks the device's threads between requests, so that
    /// none touches guest memory or raises the interrupt until
    /// [`VirtioDevice::resume`]. A device that cannot be saved says why.
    fn pause(&mut self) -> Result<(), String> {
        Err("this device cannot be saved in a snapshot".into())
    }

    /// Lets a paused device go on.
    fn resume(&mut self) {}

    /// The device's own state for a snapshot, beyond what the transport
    /// keeps (registers, queues, features), taken while it is paused.
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Err("this device cannot be saved in a snapshot".into())
    }

    /// Loads [`VirtioDevice::save_state`]'s bytes into a fresh device of the
    /// same kind, before the transport activates it again. The bytes come
    /// from a file: bad ones are an error, never a panic.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Err("this device cannot be restored from a snapshot".into())
    }
}
