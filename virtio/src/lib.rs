//! Virtio devices for msbvm guests.
//!
//! The guest kernel sees every device through the virtio-mmio transport
//! ([`MmioTransport`], virtio 1.2, register layout version 2): the VMM maps one
//! transport per device into guest physical memory, forwards the guest's MMIO
//! accesses to [`MmioTransport::read`]/[`MmioTransport::write`], registers each
//! queue's notify eventfd ([`MmioTransport::queue_events`]) as an ioeventfd, and
//! the interrupt eventfd as an irqfd. The transport speaks to a device through
//! [`VirtioDevice`]; once the driver sets DRIVER_OK, it hands the device its
//! queues and the device serves them on its own thread.
//!
//! Devices are built on one base: [`base`] (config space from a struct, the
//! `Inactive | Activated` state, activation checks, one reset path) and
//! [`event_loop`] (the worker thread and its epoll loop, into which a device
//! plugs its queue and descriptor handlers). Each device lives in a folder of
//! its own, with the same file names inside (`device.rs`, `worker.rs`,
//! `defs.rs`, `seccomp.rs`, ...): [`net`] (virtio-net over a datagram
//! socket), [`fs`] (virtio-fs over an in-process FUSE server), [`vsock`]
//! (virtio-vsock over host Unix sockets), [`rng`] (virtio-rng from the
//! host's `getrandom`, the smallest device on the base) and [`balloon`]
//! (virtio-balloon, for free page reporting). [`confine`] holds the seccomp
//! filters their worker threads run under.
//!
//! With the `test-utils` feature, `test_utils` (and `vsock::test_utils`)
//! provide a driver-side harness that drives a device through real guest
//! memory, the way the guest kernel would.

mod allowlist;
pub mod balloon;
pub mod base;
pub mod confine;
mod device;
pub mod event_loop;
pub mod fs;
mod interrupt;
mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::{ActivateError, GuestMemoryMmap, QueueWithEvent, VirtioDevice};
pub use interrupt::Interrupt;
pub use mmio::{MmioTransport, MMIO_VENDOR_ID, QUEUE_NOTIFY_OFFSET};
