//! The host-side network stack of a sandbox.
//!
//! It will terminate the guest's virtio-net traffic in a smoltcp stack, enforce
//! IP, DNS and HTTP policy, and proxy allowed flows to host sockets. Nothing is
//! implemented yet.
