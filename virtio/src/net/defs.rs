//! Constants of the virtio-net protocol (virtio 1.2, section 5.1) and the
//! limits this implementation chooses.

/// Queue indices: one receive/transmit pair, no control queue.
pub const RXQ_INDEX: usize = 0;
/// Guest-to-host frames.
pub const TXQ_INDEX: usize = 1;
/// Size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;

/// Size of `struct virtio_net_hdr_v1`, which precedes every frame in both
/// directions once VIRTIO_F_VERSION_1 is negotiated (with or without
/// mergeable buffers).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// Shortest frame we send on: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Longest frame we accept from the guest or the backend: a 64 KiB IP
/// packet plus an Ethernet header with some slack for VLAN tags.
pub const MAX_FRAME_LEN: usize = 65550;

/// Smallest MTU the guest may be told (the IPv4 minimum, RFC 791).
pub const MIN_MTU: u16 = 68;

/// Config space layout (`struct virtio_net_config`): mac, status,
/// max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;
