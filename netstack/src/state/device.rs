//! The smoltcp device over the frame socket: one datagram is one Ethernet frame.
//!
//! Received frames are queued by the stack loop after it has looked at them (new flows are
//! decided before smoltcp sees them); transmitted frames go straight to the socket, and to a
//! bounded backlog when the socket is full, so that a slow reader costs drops, never memory.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tokio::net::UnixDatagram;

use super::coalesce::Coalescer;
use super::pace::Pace;
use crate::stats::StatsCounters;

/// Frames kept for a full frame socket before new ones are dropped.
const TX_BACKLOG_FRAMES: usize = 1024;
/// Received frames queued for smoltcp before new ones are dropped.
const RX_QUEUE_FRAMES: usize = 4096;
/// Bytes of received frames queued for smoltcp before new ones are dropped (frames from the
/// guest may be 64 KiB each with segment offload).
const RX_QUEUE_BYTES: usize = 16 << 20;

/// The sending half shared by smoltcp and the stack's own hand-made frames.
pub(crate) struct FrameTx {
    /// The downward rate, when the sandbox has one.
    pub(crate) pace: Option<Pace>,
    socket: Rc<UnixDatagram>,
    backlog: VecDeque<Vec<u8>>,
    scratch: Vec<u8>,
    stats: Arc<StatsCounters>,
    /// Merges a poll's TCP segments towards the guest, when the device takes large frames.
    coalesce: Option<Coalescer>,
}

impl FrameTx {
    pub(crate) fn new(socket: Rc<UnixDatagram>, stats: Arc<StatsCounters>) -> Self {
        FrameTx {
            pace: None,
            socket,
            backlog: VecDeque::new(),
            scratch: Vec::new(),
            stats,
            coalesce: None,
        }
    }

    /// Merges consecutive TCP segments of a flow into frames of up to 64 KiB from now on
    /// (see [`super::coalesce`]); only for a device that takes such frames.
    pub(crate) fn merge_segments(&mut self) {
        self.coalesce = Some(Coalescer::default());
    }

    /// Sends the frame merged so far, if any: at the end of every smoltcp poll, and before any
    /// frame that does not continue it.
    pub(crate) fn end_merge(&mut self) {
        let Some(frame) = self.coalesce.as_mut().and_then(Coalescer::take) else {
            return;
        };
        self.send_frame(&frame);
        if let Some(c) = self.coalesce.as_mut() {
            c.recycle(frame);
        }
    }

    /// One send(2) on the socket. Not through tokio's `try_send`: that refuses to try before
    /// the reactor has seen the socket writable once, which would drop a fresh stack's first
    /// frames.
    fn send_now(&self, frame: &[u8]) -> io::Result<usize> {
        let result = socket2::SockRef::from(&*self.socket).send(frame);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            // Clear tokio's writable readiness so the loop's `writable()` really waits.
            let _ = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        result
    }

    /// Sends one frame (or merges it with the frame before), keeping order with what is
    /// already waiting.
    pub(crate) fn send(&mut self, frame: &[u8]) {
        if self.coalesce.is_some() {
            self.send_owned(&mut frame.to_vec());
        } else {
            self.send_frame(frame);
        }
    }

    /// [`send`](Self::send) of a frame in a buffer of the caller's, which a merge that starts
    /// with it may take (leaving `frame` empty) instead of copying it.
    fn send_owned(&mut self, frame: &mut Vec<u8>) {
        if let Some(c) = self.coalesce.as_mut() {
            if c.absorb(frame) {
                return;
            }
            self.end_merge();
            if self.coalesce.as_mut().is_some_and(|c| c.start(frame)) {
                return;
            }
        }
        self.send_frame(frame);
    }

    fn send_frame(&mut self, frame: &[u8]) {
        if self.backlog.is_empty() {
            match self.send_now(frame) {
                Ok(_) => {
                    self.count_sent(frame.len());
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // The device end is gone or the frame is too large for it: nothing to retry.
                    tracing::debug!(error = %e, "netstack: frame send failed");
                    self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if self.backlog.len() >= TX_BACKLOG_FRAMES {
            self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.backlog.push_back(frame.to_vec());
    }

    /// Sends what waited for room; true when the backlog is empty.
    pub(crate) fn flush(&mut self) -> bool {
        self.end_merge();
        while let Some(frame) = self.backlog.front() {
            match self.send_now(frame) {
                Ok(_) => {
                    let len = frame.len();
                    self.backlog.pop_front();
                    self.count_sent(len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.backlog.pop_front();
                    self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        true
    }

    /// How long smoltcp must wait before it may send again; `None`: it may now.
    pub(crate) fn pace_wait(&mut self) -> Option<std::time::Duration> {
        self.pace.as_mut()?.wait(std::time::Instant::now())
    }

    fn count_sent(&mut self, len: usize) {
        if let Some(pace) = &mut self.pace {
            pace.spend(len);
        }
        self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.stats.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// The smoltcp device: a queue of received frames and the sending half.
pub(crate) struct FrameDevice {
    rx: VecDeque<Vec<u8>>,
    /// Bytes in `rx`.
    rx_bytes: usize,
    pool: Vec<Vec<u8>>,
    pub(crate) tx: FrameTx,
    caps: DeviceCapabilities,
}

impl FrameDevice {
    pub(crate) fn new(tx: FrameTx, max_frame_len: usize, checksum_offload: bool) -> Self {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = max_frame_len;
        caps.checksum = crate::frames::offload_checksums(checksum_offload);
        FrameDevice {
            rx: VecDeque::new(),
            rx_bytes: 0,
            pool: Vec::new(),
            tx,
            caps,
        }
    }

    /// Queues a received frame for smoltcp; false when the queue is full and it was dropped.
    pub(crate) fn enqueue_rx(&mut self, frame: &[u8]) -> bool {
        if self.rx.len() >= RX_QUEUE_FRAMES || self.rx_bytes + frame.len() > RX_QUEUE_BYTES {
            return false;
        }
        self.rx_bytes += frame.len();
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.rx.push_back(buf);
        true
    }
}

impl phy::Device for FrameDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        self.rx_bytes -= frame.len();
        Some((
            RxToken {
                frame,
                pool: &mut self.pool,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.pace_wait().is_some() {
            // Out of pace: smoltcp keeps the data, and the loop polls again once there is room.
            return None;
        }
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// A queued received frame; its buffer goes back to the pool once smoltcp has read it.
pub(crate) struct RxToken<'a> {
    frame: Vec<u8>,
    pool: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(&self.frame);
        if self.pool.len() < 256 {
            self.pool.push(self.frame);
        }
        result
    }
}

/// Builds a frame in a reused buffer and sends it.
pub(crate) struct TxToken<'a> {
    tx: &'a mut FrameTx,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut scratch = std::mem::take(&mut self.tx.scratch);
        // Zeroed only where it grows: smoltcp writes every byte of the frame it asked for
        // (option padding included), and whatever an older frame left there went to this
        // same guest anyway.
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        scratch.truncate(len);
        let result = f(&mut scratch);
        self.tx.send_owned(&mut scratch);
        // A merge may have taken the buffer and left its spare one; keep the larger.
        if self.tx.scratch.capacity() <= scratch.capacity() {
            self.tx.scratch = scratch;
        }
        result
    }
}
