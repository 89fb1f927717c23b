//! virtio-balloon numbers from the virtio 1.2 specification (5.5), which `virtio-bindings`
//! does not carry.

use vm_memory::ByteValued;

/// The host must be told before the guest reuses deflated pages (not offered).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// A statistics queue (not offered).
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// The guest deflates when it runs out of memory (not offered: the host never inflates).
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Free page reporting: the reporting queue (offered).
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Balloon page frame numbers count 4 KiB pages, whatever the guest's page size.
pub const PFN_SHIFT: u32 = 12;
/// The size of a balloon page.
pub const BALLOON_PAGE: u64 = 1 << PFN_SHIFT;

/// Index of the inflate queue.
pub const INFLATE_QUEUE: usize = 0;
/// Index of the deflate queue.
pub const DEFLATE_QUEUE: usize = 1;
/// Index of the reporting queue when the driver accepted `VIRTIO_BALLOON_F_REPORTING` and
/// nothing else that adds a queue (the statistics and free page hint queues come between
/// when negotiated; this device offers neither).
pub const REPORTING_QUEUE: usize = 2;

/// `struct virtio_balloon_config`: the pages the host wants (`num_pages`) and the pages the
/// guest has given (`actual`, written by the driver); the other fields belong to features this
/// device does not offer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioBalloonConfig {
    /// Pages the host asks the guest to give up: always 0 here.
    pub num_pages: u32,
    /// Pages the guest has given up (driver-written).
    pub actual: u32,
    /// Free page hinting's command id (feature not offered).
    pub free_page_hint_cmd_id: u32,
    /// Page poisoning's value (feature not offered).
    pub poison_val: u32,
}

// SAFETY: four u32 fields, no padding; any bit pattern is a valid value.
unsafe impl ByteValued for VirtioBalloonConfig {}
