//! The host-side network stack of a sandbox.
//!
//! It terminates the guest's virtio-net traffic in a smoltcp stack, enforces
//! IP, DNS and HTTP policy, and proxies allowed flows to host sockets.

pub mod dns;
pub mod http;
pub mod policy;
