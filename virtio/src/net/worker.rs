//! The net device's [`EventHandler`]: the base's event loop waits on the two
//! queue eventfds, the stop eventfd and the backend socket.
//!
//! **TX.** Each chain is copied into one reusable buffer (header + frame),
//! checked, its partial checksum completed (unless the backend ignores
//! checksums), and sent as one datagram; a
//! TCP GSO frame (HOST_TSO4) goes whole, up to 64 KiB. When
//! the socket's send queue is full the frame stays pending with its chain
//! not yet returned, the worker waits for EPOLLOUT and takes no more TX
//! chains: the guest's TX ring fills and its stack backs off; nothing is
//! dropped.
//!
//! **RX.** A frame is received into a reusable buffer only when none is
//! pending, then written, header first, into as many RX chains as it needs
//! (one without MRG_RXBUF). Chains popped for a frame that does not fit yet
//! are held, not given back, until the guest posts more; meanwhile the
//! socket is not read, so frames wait in the socket (back-pressure on the
//! stack) instead of being dropped. A frame that can never fit (bigger than
//! every buffer the guest can post) is dropped and counted. A TCP frame
//! larger than the MTU (segments the stack merged) goes whole as a GSO frame
//! to a driver that accepted GUEST_TSO4; for any other driver it is cut into
//! segments first, delivered one by one the same way ([`super::gso`]).
//! A frame's chains reach the used ring together, under one move of the used
//! index ([`add_used_together`]): a driver polling the ring never sees part
//! of a frame (Linux drops such a frame as a length error).
//!
//! Chains are walked descriptor by descriptor with plain guest-memory
//! copies rather than virtio-queue's `Reader`/`Writer`, which allocate a
//! deque per chain; the hot path allocates nothing.
//!
//! No EVENT_IDX: holding RX chains means the device's avail position lags
//! what it has seen, and with EVENT_IDX the driver would then never kick
//! again for new buffers. Kick suppression on TX uses the plain
//! NO_NOTIFY flag instead.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use thiserror::Error;
use tracing::{debug, error, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::defs::{MAX_FRAME_LEN, MIN_FRAME_LEN, NET_HDR_LEN, RXQ_INDEX, TXQ_INDEX};
use super::frame::{
    complete_checksum, ChecksumError, NetHeader, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HDR_GSO_NONE,
    HDR_GSO_TCPV4,
};
use super::gso;
use super::metrics::NetMetrics;
use super::socket::take_socket_error;
use crate::base::{add_used_together, signal_used};
use crate::event_loop::EventHandler;
use crate::{GuestMemoryMmap, Interrupt};

/// epoll token of the backend socket.
const SOCKET_TOKEN: u64 = 0;

/// Why a TX chain was dropped.
#[derive(Debug, Error)]
enum TxError {
    #[error("TX chain has a device-writable descriptor")]
    WritableInTx,
    #[error("descriptor points outside guest memory")]
    BadAddress,
    #[error("frame is longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    #[error("chain holds {0} bytes, less than a header and an Ethernet header")]
    TooShort(usize),
    #[error("segmentation offload gso_type {0} was not negotiated")]
    Gso(u8),
    #[error("GSO frame {0}")]
    BadGso(&'static str),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
}

/// An RX chain held for the next frame: its head, how many of the
/// following entries of `held_segs` are its descriptors, its capacity.
#[derive(Debug)]
struct HeldChain {
    head: u16,
    segs: usize,
    cap: usize,
}

/// The header fields of a frame that goes to the guest as a GSO frame.
#[derive(Clone, Copy, Debug)]
struct GsoHeader {
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

/// What became of the pending RX frame.
enum Delivery {
    Done,
    Dropped,
    NoBuffers,
}

/// Everything the device thread owns.
pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rxq: Queue,
    txq: Queue,
    socket: OwnedFd,
    /// The event loop's epoll set, where the socket's interest changes.
    epoll: Arc<Epoll>,
    mergeable: bool,
    guest_csum: bool,
    guest_tso: bool,
    host_tso: bool,
    /// See [`Link::complete_checksums`].
    complete_checksums: bool,
    /// The guest's MTU: a larger TCP frame is sent as GSO or cut.
    mtu: usize,
    metrics: Arc<NetMetrics>,
    /// Header + frame of the TX chain being sent.
    tx_buf: Vec<u8>,
    /// (head, frame length) of a frame the socket had no room for.
    tx_pending: Option<(u16, usize)>,
    /// Header space + the frame received from the socket.
    rx_buf: Vec<u8>,
    /// Header + frame length in `rx_buf` of a frame not yet delivered.
    rx_pending: Option<usize>,
    /// Set when the pending frame goes as a GSO frame.
    rx_gso: Option<GsoHeader>,
    /// Segments cut from an oversized frame, delivered before the socket is read again.
    rx_segments: VecDeque<Vec<u8>>,
    held: VecDeque<HeldChain>,
    held_segs: VecDeque<(GuestAddress, u32)>,
    held_cap: usize,
    /// (head, bytes written) of the chains of the frame being delivered, published together.
    rx_used: Vec<(u16, u32)>,
    /// Whether RX chains were returned since the last interrupt.
    rx_returned: bool,
    /// Events the socket is registered for.
    interest: EventSet,
    /// False once the backend hung up; the socket is out of the epoll set.
    socket_open: bool,
}

impl EventHandler for Worker {
    fn queue_notified(&mut self, index: usize) {
        match index {
            RXQ_INDEX => self.process_rx(),
            TXQ_INDEX => self.process_tx(),
            _ => {}
        }
    }

    fn fd_ready(&mut self, _token: u64, events: EventSet) {
        self.handle_socket(events);
    }
}

/// What the link is: the features the driver accepted and the MTU it was told.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Accepted feature bits.
    pub features: u64,
    /// The guest's MTU.
    pub mtu: usize,
    /// Complete the guest's partial checksums before frames go to the backend.
    pub complete_checksums: bool,
}

impl Worker {
    /// Prepares the thread's state and adds the socket to `epoll`, the
    /// event loop's set. `queues` are RX and TX.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: [Queue; 2],
        epoll: Arc<Epoll>,
        socket: OwnedFd,
        link: Link,
        metrics: Arc<NetMetrics>,
    ) -> io::Result<Self> {
        let [rxq, txq] = queues;
        let Link {
            features,
            mtu,
            complete_checksums,
        } = link;
        epoll.ctl(
            ControlOperation::Add,
            socket.as_raw_fd(),
            EpollEvent::new(EventSet::IN, SOCKET_TOKEN),
        )?;
        let held_capacity = usize::from(rxq.size());
        Ok(Self {
            mem,
            interrupt,
            rxq,
            txq,
            socket,
            epoll,
            mergeable: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            guest_csum: features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0,
            guest_tso: features & (1 << VIRTIO_NET_F_GUEST_TSO4) != 0,
            host_tso: features & (1 << VIRTIO_NET_F_HOST_TSO4) != 0,
            complete_checksums,
            mtu,
            metrics,
            tx_buf: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            tx_pending: None,
            rx_buf: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            rx_pending: None,
            rx_gso: None,
            rx_segments: VecDeque::new(),
            held: VecDeque::with_capacity(held_capacity),
            held_segs: VecDeque::with_capacity(held_capacity),
            held_cap: 0,
            rx_used: Vec::with_capacity(held_capacity),
            rx_returned: false,
            interest: EventSet::IN,
            socket_open: true,
        })
    }

    fn handle_socket(&mut self, set: EventSet) {
        if set.contains(EventSet::ERROR) {
            if let Some(e) = take_socket_error(&self.socket) {
                warn!("net: backend socket error: {e}");
            }
        }
        if set.contains(EventSet::HANG_UP) {
            warn!("net: backend socket hung up; the guest's network is down");
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                self.socket.as_raw_fd(),
                EpollEvent::default(),
            );
            self.socket_open = false;
        }
        if set.contains(EventSet::OUT) {
            self.process_tx();
        }
        if set.contains(EventSet::IN) {
            self.process_rx();
        }
    }

    /// Sends TX chains until the queue is empty or the socket is full.
    fn process_tx(&mut self) {
        let mut returned = false;
        'queue: {
            if let Some((head, len)) = self.tx_pending {
                if self.send_tx(len) == Sent::Blocked {
                    break 'queue;
                }
                self.tx_pending = None;
                self.return_tx(head);
                returned = true;
            }
            loop {
                // No kicks while we drain the ring anyway.
                let _ = self.txq.disable_notification(&self.mem);
                while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
                    let head = chain.head_index();
                    match read_tx_frame(
                        &self.mem,
                        chain,
                        &mut self.tx_buf,
                        self.host_tso,
                        self.complete_checksums,
                    ) {
                        Ok(len) => {
                            if self.send_tx(len) == Sent::Blocked {
                                self.tx_pending = Some((head, len));
                                break 'queue;
                            }
                        }
                        Err(e) => {
                            debug!("net: dropping TX chain {head}: {e}");
                            NetMetrics::add(&self.metrics.tx_dropped, 1);
                        }
                    }
                    self.return_tx(head);
                    returned = true;
                }
                match self.txq.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        debug!("net: cannot re-enable TX notifications: {e}");
                        break;
                    }
                }
            }
        }
        if returned {
            signal_used(&mut self.txq, &self.mem, &self.interrupt);
        }
        self.update_interest();
    }

    fn return_tx(&mut self, head: u16) {
        if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
            // Only a bogus head index or used ring gets here: the guest's doing.
            debug!("net: cannot return TX chain {head}: {e}");
        }
    }

    /// Sends the frame of `len` bytes after the header in `tx_buf`.
    fn send_tx(&mut self, len: usize) -> Sent {
        let frame = &self.tx_buf[NET_HDR_LEN..NET_HDR_LEN + len];
        loop {
            // SAFETY: `frame` is valid for `frame.len()` bytes for the call.
            let rc = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if rc >= 0 {
                NetMetrics::add(&self.metrics.tx_frames, 1);
                NetMetrics::add(&self.metrics.tx_bytes, len as u64);
                return Sent::Done;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) if self.socket_open => {
                    return Sent::Blocked
                }
                _ => {
                    debug!("net: dropping a {len}-byte TX frame: {e}");
                    NetMetrics::add(&self.metrics.tx_dropped, 1);
                    return Sent::Done;
                }
            }
        }
    }

    /// Moves frames from the socket to RX chains while both are there.
    fn process_rx(&mut self) {
        loop {
            let total = match self.rx_pending {
                Some(total) => total,
                None => match self.next_frame() {
                    Some(total) => total,
                    None => break,
                },
            };
            self.rx_pending = Some(total);
            match self.deliver(total) {
                Delivery::Done | Delivery::Dropped => self.rx_pending = None,
                Delivery::NoBuffers => break,
            }
        }
        if std::mem::take(&mut self.rx_returned) {
            signal_used(&mut self.rxq, &self.mem, &self.interrupt);
        }
        self.update_interest();
    }

    /// Puts the next frame for the guest after the header space of `rx_buf`
    /// (a segment left from a cut frame first, else one from the socket) and
    /// decides how it goes; returns the header + frame length.
    fn next_frame(&mut self) -> Option<usize> {
        self.rx_gso = None;
        if let Some(segment) = self.rx_segments.pop_front() {
            let total = NET_HDR_LEN + segment.len();
            self.rx_buf[NET_HDR_LEN..total].copy_from_slice(&segment);
            return Some(total);
        }
        let total = self.recv_frame()?;
        if total - NET_HDR_LEN <= self.mtu + gso::ETH_LEN {
            return Some(total);
        }
        let frame = &mut self.rx_buf[NET_HDR_LEN..total];
        let Some(layout) = gso::tcp4(frame) else {
            return Some(total);
        };
        let mss = gso::segment_size(self.mtu, &layout);
        if self.guest_tso {
            let (csum_start, csum_offset) = gso::make_partial(frame, &layout);
            // All fit 16 bits: the frame is at most 64 KiB and its headers 14+60+60 bytes.
            self.rx_gso = Some(GsoHeader {
                hdr_len: layout.hdr_len() as u16,
                gso_size: mss as u16,
                csum_start,
                csum_offset,
            });
            return Some(total);
        }
        gso::split(frame, &layout, mss, !self.guest_csum, &mut self.rx_segments);
        NetMetrics::add(&self.metrics.rx_split, 1);
        self.next_frame()
    }

    /// Receives one frame after the header space of `rx_buf`; returns the
    /// header + frame length, or None when the socket has nothing.
    fn recv_frame(&mut self) -> Option<usize> {
        while self.socket_open {
            let buf = &mut self.rx_buf[NET_HDR_LEN..];
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            // MSG_TRUNC makes recv report a datagram's real length, so a
            // frame too big for us is seen and counted, not cut.
            let rc = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return None,
                    _ => {
                        warn!("net: receiving from the backend failed: {e}");
                        return None;
                    }
                }
            }
            let len = rc as usize;
            if len == 0 || len > buf.len() {
                debug!("net: dropping a {len}-byte frame from the backend");
                NetMetrics::add(&self.metrics.rx_dropped, 1);
                continue;
            }
            return Some(NET_HDR_LEN + len);
        }
        None
    }

    /// Pops and holds RX chains until they can take `total` bytes (one
    /// chain without MRG_RXBUF) or the guest has no more.
    fn hold_rx_chains(&mut self, total: usize) {
        while self.held_cap < total && (self.mergeable || self.held.is_empty()) {
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                break;
            };
            // Hold the chain for this frame, or return it unused at once
            // if the device cannot write it; its used entry then never
            // lands between those of a frame, which are added together.
            let head = chain.head_index();
            let first = self.held_segs.len();
            let mut cap = 0usize;
            let mut usable = true;
            for desc in chain {
                let len = desc.len() as usize;
                if !desc.is_write_only()
                    || !self.mem.check_range(desc.addr(), len, Permissions::Write)
                {
                    usable = false;
                    break;
                }
                self.held_segs.push_back((desc.addr(), desc.len()));
                cap = cap.saturating_add(len);
            }
            if !usable || cap < NET_HDR_LEN {
                self.held_segs.truncate(first);
                debug!("net: returning unusable RX chain {head}");
                self.return_rx(head, 0);
                continue;
            }
            self.held.push_back(HeldChain {
                head,
                segs: self.held_segs.len() - first,
                cap,
            });
            self.held_cap += cap;
        }
    }

    /// Writes the pending frame (`total` bytes with its header) into held
    /// and newly popped RX chains.
    fn deliver(&mut self, total: usize) -> Delivery {
        self.hold_rx_chains(total);
        if self.held_cap < total {
            let may_get_more =
                self.mergeable && self.held_segs.len() < usize::from(self.rxq.size());
            if self.held.is_empty() || may_get_more {
                return Delivery::NoBuffers;
            }
            // Even the whole ring could not hold it: drop the frame, keep
            // the buffers for the next one.
            debug!(
                "net: dropping a {}-byte frame: larger than the guest's RX buffers",
                total - NET_HDR_LEN
            );
            NetMetrics::add(&self.metrics.rx_dropped, 1);
            return Delivery::Dropped;
        }

        // The fewest held chains that hold the frame.
        let mut chains = 0usize;
        let mut cap = 0usize;
        for c in &self.held {
            chains += 1;
            cap += c.cap;
            if cap >= total {
                break;
            }
        }
        let num_buffers = u16::try_from(chains).unwrap_or(u16::MAX);
        let header = match self.rx_gso {
            Some(gso) => NetHeader {
                flags: HDR_F_NEEDS_CSUM,
                gso_type: HDR_GSO_TCPV4,
                hdr_len: gso.hdr_len,
                gso_size: gso.gso_size,
                csum_start: gso.csum_start,
                csum_offset: gso.csum_offset,
                num_buffers,
            },
            None => NetHeader {
                flags: if self.guest_csum { HDR_F_DATA_VALID } else { 0 },
                num_buffers,
                ..NetHeader::default()
            },
        };
        self.rx_buf[..NET_HDR_LEN].copy_from_slice(&header.to_bytes());
        let mut off = 0usize;
        self.rx_used.clear();
        for _ in 0..chains {
            let Some(chain) = self.held.pop_front() else {
                break;
            };
            self.held_cap -= chain.cap;
            let mut written = 0usize;
            for _ in 0..chain.segs {
                let Some((addr, len)) = self.held_segs.pop_front() else {
                    break;
                };
                let n = (len as usize).min(total - off);
                if n > 0 {
                    if let Err(e) = self.mem.write_slice(&self.rx_buf[off..off + n], addr) {
                        // Ranges were checked when the chain was popped.
                        debug!("net: cannot write RX chain {}: {e}", chain.head);
                    }
                }
                off += n;
                written += n;
            }
            self.rx_used.push((chain.head, written as u32));
        }
        // All of the frame's chains at once: see `add_used_together`.
        if let Err(e) = add_used_together(&mut self.rxq, &self.mem, &self.rx_used) {
            debug!("net: cannot return the RX chains of a frame: {e}");
        }
        self.rx_returned = true;
        NetMetrics::add(&self.metrics.rx_frames, 1);
        if self.rx_gso.is_some() {
            NetMetrics::add(&self.metrics.rx_gso, 1);
        }
        NetMetrics::add(&self.metrics.rx_bytes, (total - NET_HDR_LEN) as u64);
        Delivery::Done
    }

    fn return_rx(&mut self, head: u16, len: u32) {
        if let Err(e) = self.rxq.add_used(&self.mem, head, len) {
            debug!("net: cannot return RX chain {head}: {e}");
        }
        self.rx_returned = true;
    }

    /// Reads the socket only while no frame waits for RX buffers, and waits
    /// for room to send only while a TX frame is pending.
    fn update_interest(&mut self) {
        if !self.socket_open {
            return;
        }
        let mut want = EventSet::empty();
        if self.rx_pending.is_none() {
            want |= EventSet::IN;
        }
        if self.tx_pending.is_some() {
            want |= EventSet::OUT;
        }
        if want == self.interest {
            return;
        }
        match self.epoll.ctl(
            ControlOperation::Modify,
            self.socket.as_raw_fd(),
            EpollEvent::new(want, SOCKET_TOKEN),
        ) {
            Ok(()) => self.interest = want,
            Err(e) => error!("net: cannot change backend socket events: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Done,
    Blocked,
}

/// Copies a TX chain (header + frame) into `buf`, checks it and, if
/// `complete_checksums`, completes a partial checksum. Returns the frame
/// length (after the header). `host_tso`: the driver accepted HOST_TSO4.
fn read_tx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
    host_tso: bool,
    complete_checksums: bool,
) -> Result<usize, TxError> {
    let mut len = 0usize;
    for desc in chain {
        // A device-writable buffer in a TX chain means a confused or hostile
        // driver: refuse the chain rather than guess.
        if desc.is_write_only() {
            return Err(TxError::WritableInTx);
        }
        let n = desc.len() as usize;
        if n > buf.len() - len {
            return Err(TxError::TooLong);
        }
        mem.read_slice(&mut buf[len..len + n], desc.addr())
            .map_err(|_| TxError::BadAddress)?;
        len += n;
    }
    if len < NET_HDR_LEN + MIN_FRAME_LEN {
        return Err(TxError::TooShort(len));
    }
    let mut raw = [0u8; NET_HDR_LEN];
    raw.copy_from_slice(&buf[..NET_HDR_LEN]);
    let hdr = NetHeader::from_bytes(&raw);
    match hdr.gso_type {
        HDR_GSO_NONE => {}
        // A TCP frame larger than the MTU, passed on whole: the stack takes
        // segments of any size. The spec has the driver set NEEDS_CSUM with
        // it; the ECN variant and UDP were not offered.
        HDR_GSO_TCPV4 if host_tso => {
            if hdr.flags & HDR_F_NEEDS_CSUM == 0 {
                return Err(TxError::BadGso("without NEEDS_CSUM"));
            }
            if gso::tcp4(&buf[NET_HDR_LEN..len]).is_none() {
                return Err(TxError::BadGso("not a whole TCP/IPv4 frame"));
            }
        }
        other => return Err(TxError::Gso(other)),
    }
    if complete_checksums && hdr.flags & HDR_F_NEEDS_CSUM != 0 {
        complete_checksum(&mut buf[NET_HDR_LEN..len], hdr.csum_start, hdr.csum_offset)?;
    }
    Ok(len - NET_HDR_LEN)
}
