//! Constants of the virtio-fs device.

/// Size of the `tag` field of the config space (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
/// Size of the config space we expose: tag plus `num_request_queues`.
pub const CONFIG_SIZE: usize = TAG_LEN + 4;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Most request queues we offer; Linux uses one today.
pub const MAX_REQUEST_QUEUES: u16 = 64;
/// Largest request (readable part of a chain) we gather; a full 1 MiB
/// WRITE plus headers fits. Bigger chains get an error reply, unread.
pub const MAX_REQUEST_BYTES: usize = msbvm_fs::server::MAX_REQUEST_SIZE;
