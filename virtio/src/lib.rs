//! Virtio devices for msbvm guests.
//!
//! The guest kernel sees every device through the virtio-mmio transport
//! ([`MmioTransport`], virtio 1.2, register layout version 2): the VMM maps one
//! transport per device into guest physical memory, forwards the guest's MMIO
//! accesses to [`MmioTransport::read`]/[`MmioTransport::write`], registers each
//! queue's notify eventfd ([`MmioTransport::queue_events`]) as an ioeventfd, and
//! the interrupt eventfd as an irqfd. Devices implement [`VirtioDevice`]; once
//! the driver sets DRIVER_OK, the transport hands the device its queues and the
//! device serves them on its own thread.
//!
//! Devices live in one folder each, with the same file names inside
//! (`device.rs`, `worker.rs`, `packet.rs`, ...): today [`vsock`].
//!
//! With the `test-utils` feature, `test_utils` (and `vsock::test_utils`)
//! provide a driver-side harness that drives a device through real guest
//! memory, the way the guest kernel would.

pub mod confine;
mod device;
pub mod fs;
mod interrupt;
mod mmio;
pub mod net;
pub mod vsock;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::{ActivateError, GuestMemoryMmap, QueueWithEvent, VirtioDevice};
pub use interrupt::Interrupt;
pub use mmio::{MmioTransport, MMIO_VENDOR_ID};
