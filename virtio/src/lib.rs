//! Virtio devices for msbvm guests.
//!
//! This crate will hold the virtio-mmio transport shared by every device and one
//! folder per device (net, fs with its in-process FUSE server, vsock; later blk,
//! rng and balloon). Nothing is implemented yet: the foundation boots a guest
//! with a serial console only.
