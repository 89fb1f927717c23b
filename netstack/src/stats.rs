//! Counters of the stack, readable from any thread through `NetStackHandle::stats`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A snapshot of the stack's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// Frames received from the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Guest frames ignored: malformed, not for us, or not supported (IPv6, fragments of UDP).
    pub rx_dropped: u64,
    /// Frames sent to the guest.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames for the guest dropped because the frame socket stayed full.
    pub tx_dropped: u64,
    /// TCP flows open now (including ones still connecting).
    pub tcp_flows_open: u64,
    /// UDP flows open now.
    pub udp_flows_open: u64,
    /// Flows opened since start (TCP and UDP, both directions).
    pub flows_total: u64,
    /// Flows denied by policy or the flow cap.
    pub flows_denied: u64,
    /// Bytes the guest sent through TCP and UDP flows.
    pub bytes_up: u64,
    /// Bytes the host sent to the guest through TCP and UDP flows.
    pub bytes_down: u64,
    /// Events not reported because their kind was over the rate limit.
    #[serde(default)]
    pub events_suppressed: u64,
}

/// The live counters behind [`NetStats`].
#[derive(Default, Debug)]
pub(crate) struct StatsCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub tcp_flows_open: AtomicU64,
    pub udp_flows_open: AtomicU64,
    pub flows_total: AtomicU64,
    pub flows_denied: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub events_suppressed: AtomicU64,
}

impl StatsCounters {
    pub(crate) fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            tcp_flows_open: get(&self.tcp_flows_open),
            udp_flows_open: get(&self.udp_flows_open),
            flows_total: get(&self.flows_total),
            flows_denied: get(&self.flows_denied),
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
            events_suppressed: get(&self.events_suppressed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
