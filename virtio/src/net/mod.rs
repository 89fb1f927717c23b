//! virtio-net (device ID 1): the guest's Ethernet interface, carried over a
//! host datagram socket to the host-side network stack.
//!
//! Backend: an `AF_UNIX`/`SOCK_DGRAM` socket given to [`Net::new`]; one
//! datagram is one Ethernet frame, with no virtio header, in both
//! directions. Flow control is the socket's own: a full send queue stalls
//! the guest's TX ring, and a guest without RX buffers leaves frames queued
//! in the socket.
//!
//! Features: VERSION_1, MAC, MTU, STATUS (link always up), MRG_RXBUF (a
//! frame may span several RX chains), and with
//! [`NetDeviceConfig::checksum_offload`] CSUM (the device completes partial
//! checksums before a frame reaches the socket, so the stack only ever sees
//! whole checksums) and GUEST_CSUM (received frames are marked DATA_VALID),
//! and with [`NetDeviceConfig::guest_tso`] GUEST_TSO4: a TCP/IPv4 frame from
//! the stack larger than the MTU (the stack merged a flow's segments) goes
//! to the guest whole as a GSO frame, or cut into MTU-sized segments for a
//! driver that did not accept it ([`gso`]); with [`NetDeviceConfig::host_tso`]
//! HOST_TSO4: the guest's TCP GSO frames (up to 64 KiB, partial checksum)
//! go to the stack whole, their checksum completed. No UFO, no ECN GSO. No
//! control queue, no multiqueue, no EVENT_IDX (see `worker.rs` for why).
//!
//! Layout, as in every device folder: `device.rs` (the device on
//! [`crate::base`]), `worker.rs` (its event handler), [`frame`] (the header
//! and checksum completion), [`gso`] (oversized TCP frames), `metrics.rs` (counters), `socket.rs` (backend
//! socket checks), [`defs`] (constants), `tests/` (device tests).

pub mod defs;
mod device;
pub mod frame;
pub mod gso;
mod metrics;
pub mod seccomp;
mod socket;
mod worker;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

#[cfg(test)]
mod tests;

pub use device::{Net, NetBackend, NetConfig, NetDeviceConfig};
pub use metrics::NetMetrics;
