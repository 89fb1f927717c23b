//! The net device's counters, shared by the device (which hands them out)
//! and its worker (which counts).

use std::sync::atomic::{AtomicU64, Ordering};

/// Frame and byte counters, shared with whoever wants to watch the device.
/// Drops count frames that were discarded, never silently.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames sent to the backend.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped: malformed chains, bad sizes, send errors.
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames.
    pub rx_bytes: AtomicU64,
    /// Backend frames dropped: too big for the guest's buffers or for us.
    pub rx_dropped: AtomicU64,
    /// Of the delivered frames, TCP frames over the MTU handed over whole (GSO).
    pub rx_gso: AtomicU64,
    /// TCP frames over the MTU cut into segments for a driver without GUEST_TSO4.
    pub rx_split: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
