//! virtio-vsock (device ID 19): stream sockets between the guest and host
//! programs, carried over host Unix sockets (the scheme Firecracker uses).
//!
//! Host side protocol, relative to the `uds_path` given to [`Vsock::new`]:
//!
//! - **Host to guest.** Connect to `uds_path`, write `CONNECT <port>\n`. Once
//!   the guest accepts, the device writes `OK <hostport>\n` and the stream
//!   carries the connection; if the guest refuses (or does not answer within
//!   2 s) the stream is closed. A malformed line, or one over 32 bytes, closes
//!   the stream.
//! - **Guest to host.** A guest connect to (CID 2, port P) reaches whoever
//!   listens on the Unix socket `<uds_path>_<P>`; if nobody does, the guest
//!   gets a connection reset.
//!
//! Flow control is the protocol's own credit scheme in both directions, with
//! every buffer bounded: a host peer that stops reading stalls only its own
//! connection (the guest runs out of credit), and a guest that stops reading
//! stalls only its own connection (we stop reading that host socket).
//!
//! Layout, as in every device folder: `device.rs` (the device on
//! [`crate::base`]), `worker.rs` (its event handler), [`packet`] (headers over descriptor
//! chains), `csm/` (per-connection state machine and its bounded buffer),
//! `unix/` (host-side multiplexer), [`defs`] (constants), `tests/` (device
//! tests).

mod csm;
pub mod defs;
mod device;
pub mod packet;
pub mod seccomp;
mod unix;
mod worker;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

#[cfg(test)]
mod tests;

pub use device::{Error, Vsock, VsockBackend, VsockConfig};
pub use packet::PacketHeader;
