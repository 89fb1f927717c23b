//! One vsock stream connection between a guest socket and a host Unix stream.
//!
//! A [`Connection`] forwards bytes both ways and keeps the protocol state:
//!
//! - **Set-up.** Host-initiated connections start in `LocalInit` with a REQUEST
//!   to send and a deadline for the guest's RESPONSE, which makes us write
//!   `OK <local port>\n` to the host stream. Guest-initiated ones start in
//!   `PeerInit` with a RESPONSE to send. Both end up `Established`.
//! - **Guest to host.** RW payloads go straight to the host socket; whatever
//!   the socket does not take waits in a bounded [`TxBuf`] and is flushed on
//!   EPOLLOUT. Our `fwd_cnt` counts bytes the socket took, so a host that stops
//!   reading stops our credit updates and the guest runs out of credit on this
//!   connection only. A guest that writes past its credit gets a reset.
//! - **Host to guest.** We read from the host socket only when the guest has
//!   credit (its `buf_alloc` minus bytes in flight) and an RX buffer is at
//!   hand, directly into that buffer's packet, so a guest that stops reading
//!   leaves the data in the host socket (whose writer then blocks).
//! - **Shutdown.** The guest's SHUTDOWN flags half-close the host stream; EOF
//!   from the host becomes SHUTDOWN(SEND) to the guest; once the guest has
//!   shut both directions and its data is flushed we answer RST, which is how
//!   a vsock close completes.
//!
//! The connection never touches epoll or the RX queue itself: it answers what
//! it wants (`interest`, `has_pending_rx`, `deadline`, [`Outcome`]) and the
//! muxer acts on it, which keeps this state machine testable on its own.

use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracing::debug;
use virtio_queue::{Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::txbuf::TxBuf;
use crate::vsock::defs::*;
use crate::vsock::packet::{write_packet, PacketHeader};
use crate::vsock::unix::socket::{send_nosignal, SocketWriter};

/// What the muxer must do with a connection after it handled an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Keep it; re-read its interest, pending RX and deadline.
    Keep,
    /// Drop it and tell the guest with an RST.
    Reset,
    /// Drop it silently (the guest already reset it).
    Remove,
}

/// Result of offering a connection one RX buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvOutcome {
    /// A packet of this many bytes (header included) was written.
    Packet(u32),
    /// Nothing to send after all (e.g. the host socket had no data).
    Nothing,
    /// The connection broke; drop it and send an RST.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated; REQUEST sent or pending, waiting for RESPONSE.
    LocalInit,
    /// Guest-initiated; RESPONSE pending.
    PeerInit,
    /// Data flows.
    Established,
}

/// Control packets (and data) waiting for an RX buffer.
const PENDING_REQUEST: u8 = 1;
const PENDING_RESPONSE: u8 = 2;
const PENDING_RW: u8 = 4;
const PENDING_CREDIT_UPDATE: u8 = 8;
const PENDING_CREDIT_REQUEST: u8 = 16;

/// See the module docs.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: State,
    host_initiated: bool,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    tx_buf: TxBuf,
    /// Guest bytes the host socket has taken.
    fwd_cnt: Wrapping<u32>,
    /// Guest bytes received in RW packets.
    recv_cnt: Wrapping<u32>,
    /// The fwd_cnt in the last packet we sent; the guest's view of our buffer.
    last_fwd_cnt_to_peer: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes we sent the guest in RW packets.
    rx_cnt: Wrapping<u32>,
    pending: u8,
    /// SHUTDOWN_* flags the guest sent.
    peer_shutdown: u32,
    /// The host socket returned EOF; we sent SHUTDOWN(SEND).
    host_eof: bool,
    /// We shut the host socket's write side after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
    /// epoll reported HUP/ERR: the socket is out of epoll and treated as
    /// always readable until it returns EOF or an error.
    hup: bool,
    /// We asked the guest for credit and it has not given any since.
    credit_requested: bool,
    deadline: Option<Instant>,
}

impl Connection {
    /// A host-initiated connection to guest port `peer_port`, from our
    /// `local_port` (`ports` is `(local_port, peer_port)`); the REQUEST is pending and the guest
    /// must answer within `timeout`.
    pub fn new_local(
        stream: UnixStream,
        guest_cid: u64,
        (local_port, peer_port): (u32, u32),
        timeout: Duration,
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port, State::LocalInit);
        c.host_initiated = true;
        c.pending = PENDING_REQUEST;
        c.deadline = Some(Instant::now() + timeout);
        c
    }

    /// A guest-initiated connection accepted on the host: `req` is the
    /// guest's REQUEST; the RESPONSE is pending.
    pub fn new_peer(stream: UnixStream, guest_cid: u64, req: &PacketHeader) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            req.dst_port,
            req.src_port,
            State::PeerInit,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending = PENDING_RESPONSE;
        c
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Self {
            stream,
            state,
            host_initiated: false,
            guest_cid,
            local_port,
            peer_port,
            tx_buf: TxBuf::new(),
            fwd_cnt: Wrapping(0),
            recv_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            pending: 0,
            peer_shutdown: 0,
            host_eof: false,
            host_write_shut: false,
            hup: false,
            credit_requested: false,
            deadline: None,
        }
    }

    /// The host socket's fd (its epoll token).
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether the host opened this connection (so its local port is ours).
    pub fn host_initiated(&self) -> bool {
        self.host_initiated
    }

    /// When the connection must be given up unless something happens first.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The epoll events wanted on the host socket, or None to stay out of
    /// epoll (after HUP, which epoll would otherwise report forever).
    pub fn interest(&self) -> Option<EventSet> {
        if self.hup {
            return None;
        }
        let mut events = EventSet::empty();
        if self.wants_read() && self.pending & PENDING_RW == 0 {
            events |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            events |= EventSet::OUT;
        }
        Some(events)
    }

    /// Whether the connection has something for an RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0 || self.rw_pending()
    }

    /// Bytes the guest can still take on this connection.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        // A guest claiming to have consumed more than we sent yields a huge
        // in_flight and thus no credit, never a wrapped-around large credit.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    fn rw_pending(&self) -> bool {
        self.pending & PENDING_RW != 0 || (self.hup && self.wants_read())
    }

    /// Handles a packet the guest sent on this connection; `data` holds at
    /// least `hdr.len` (<= `scratch.len()`) payload bytes.
    pub fn send_pkt(
        &mut self,
        hdr: &PacketHeader,
        data: &mut Reader<'_>,
        scratch: &mut [u8],
    ) -> Outcome {
        // Every packet carries the guest's current receive-buffer state.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match hdr.op {
            OP_RST => Outcome::Remove,
            OP_RESPONSE if self.state == State::LocalInit => {
                self.state = State::Established;
                // A guest answering before it saw our REQUEST needs no REQUEST.
                self.pending &= !PENDING_REQUEST;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                match send_nosignal(&self.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => Outcome::Keep,
                    // A fresh socket always takes a few bytes; anything else
                    // means the host client is gone.
                    _ => Outcome::Reset,
                }
            }
            OP_RW => self.forward_to_host(hdr.len as usize, data, scratch),
            OP_CREDIT_UPDATE => Outcome::Keep,
            OP_CREDIT_REQUEST => {
                self.pending |= PENDING_CREDIT_UPDATE;
                Outcome::Keep
            }
            OP_SHUTDOWN => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                if self.peer_shutdown & SHUTDOWN_RCV != 0 {
                    // Lets a host writer see EPIPE instead of filling a
                    // buffer nobody will read; failure just means it is gone.
                    let _ = self.stream.shutdown(Shutdown::Read);
                }
                self.after_flush()
            }
            // A second REQUEST, a RESPONSE we did not ask for, or an op we do
            // not know: the guest's view of this connection is broken.
            op => {
                debug!(
                    "vsock: unexpected op {op} on {}:{}",
                    self.local_port, self.peer_port
                );
                Outcome::Reset
            }
        }
    }

    fn forward_to_host(
        &mut self,
        len: usize,
        data: &mut Reader<'_>,
        scratch: &mut [u8],
    ) -> Outcome {
        if self.state != State::Established || self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Outcome::Reset;
        }
        if len == 0 {
            return Outcome::Keep;
        }
        let Some(buf) = scratch.get_mut(..len) else {
            return Outcome::Reset;
        };
        if data.read_exact(buf).is_err() {
            return Outcome::Reset;
        }
        self.recv_cnt += Wrapping(len as u32);
        let mut sent = 0;
        // Data may bypass the buffer only if nothing is queued ahead of it.
        if self.tx_buf.is_empty() {
            match send_nosignal(&self.stream, buf) {
                Ok(n) => sent = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    debug!("vsock: host socket write failed: {e}");
                    return Outcome::Reset;
                }
            }
        }
        self.fwd_cnt += Wrapping(sent as u32);
        if let Err(e) = self.tx_buf.push(&buf[sent..]) {
            // Only a guest ignoring our advertised credit gets here.
            debug!(
                "vsock: guest exceeded its credit on {}:{}: {e}",
                self.local_port, self.peer_port
            );
            return Outcome::Reset;
        }
        self.check_credit_update();
        Outcome::Keep
    }

    /// After buffered data drained (or a SHUTDOWN): apply the guest's
    /// half-closes now that nothing is queued ahead of them.
    fn after_flush(&mut self) -> Outcome {
        if self.tx_buf.is_empty() {
            if self.peer_shutdown == SHUTDOWN_BOTH {
                // The guest closed; our RST completes its close.
                return Outcome::Reset;
            }
            if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        } else if self.peer_shutdown == SHUTDOWN_BOTH && self.deadline.is_none() {
            // Give a slow host reader a bounded time to take the rest.
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        }
        Outcome::Keep
    }

    /// Tell the guest about freed buffer space once its view is stale.
    fn check_credit_update(&mut self) {
        let guest_view_used = (self.recv_cnt - self.last_fwd_cnt_to_peer).0;
        let guest_view_free = TX_BUF_SIZE.saturating_sub(guest_view_used);
        if guest_view_free < CREDIT_UPDATE_THRESHOLD && self.fwd_cnt != self.last_fwd_cnt_to_peer {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
    }

    /// Handles epoll events on the host socket.
    pub fn notify(&mut self, events: EventSet) -> Outcome {
        let hangup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if !self.tx_buf.is_empty() && (events.contains(EventSet::OUT) || hangup) {
            match self.tx_buf.flush_to(&mut SocketWriter(&self.stream)) {
                Ok(n) => self.fwd_cnt += Wrapping(n as u32),
                Err(e) => {
                    debug!("vsock: host socket write failed: {e}");
                    return Outcome::Reset;
                }
            }
            self.check_credit_update();
            let outcome = self.after_flush();
            if outcome != Outcome::Keep {
                return outcome;
            }
        }
        if events.contains(EventSet::IN) {
            self.pending |= PENDING_RW;
        }
        if hangup {
            self.hup = true;
        }
        Outcome::Keep
    }

    /// Called when the deadline passed: the guest never answered our REQUEST,
    /// or a closed connection could not flush in time.
    pub fn expire(&mut self, now: Instant) -> Outcome {
        match self.deadline {
            Some(deadline) if deadline <= now => Outcome::Reset,
            _ => Outcome::Keep,
        }
    }

    /// Fills one RX buffer with the most urgent pending packet.
    pub fn recv_pkt(&mut self, writer: &mut Writer<'_>, scratch: &mut [u8]) -> RecvOutcome {
        if self.pending & PENDING_REQUEST != 0 {
            self.pending &= !PENDING_REQUEST;
            return self.emit(writer, OP_REQUEST, 0, &[]);
        }
        if self.pending & PENDING_RESPONSE != 0 {
            self.pending &= !PENDING_RESPONSE;
            self.state = State::Established;
            return self.emit(writer, OP_RESPONSE, 0, &[]);
        }
        if self.rw_pending() {
            self.pending &= !PENDING_RW;
            if self.wants_read() {
                let room = writer.available_bytes().saturating_sub(PKT_HEADER_SIZE);
                let max = (self.peer_credit() as usize)
                    .min(room)
                    .min(MAX_PKT_DATA as usize)
                    .min(scratch.len());
                if max == 0 {
                    // An RX buffer with no room for data: try again with
                    // the next one.
                    self.pending |= PENDING_RW;
                } else {
                    match (&self.stream).read(&mut scratch[..max]) {
                        Ok(0) => {
                            self.host_eof = true;
                            return self.emit(writer, OP_SHUTDOWN, SHUTDOWN_SEND, &[]);
                        }
                        Ok(n) => {
                            self.rx_cnt += Wrapping(n as u32);
                            // The RW header carries fwd_cnt too.
                            self.pending &= !PENDING_CREDIT_UPDATE;
                            if self.peer_credit() == 0 && !self.credit_requested {
                                self.credit_requested = true;
                                self.pending |= PENDING_CREDIT_REQUEST;
                            }
                            return self.emit(writer, OP_RW, 0, &scratch[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // A hung-up socket never blocks, so the HUP was
                            // stale (its fd number reused within one epoll
                            // batch): put the socket back under epoll.
                            self.hup = false;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            self.pending |= PENDING_RW;
                        }
                        Err(e) => {
                            debug!("vsock: host socket read failed: {e}");
                            return RecvOutcome::Reset;
                        }
                    }
                }
            }
        }
        if self.pending & PENDING_CREDIT_UPDATE != 0 {
            self.pending &= !PENDING_CREDIT_UPDATE;
            return self.emit(writer, OP_CREDIT_UPDATE, 0, &[]);
        }
        if self.pending & PENDING_CREDIT_REQUEST != 0 {
            self.pending &= !PENDING_CREDIT_REQUEST;
            return self.emit(writer, OP_CREDIT_REQUEST, 0, &[]);
        }
        RecvOutcome::Nothing
    }

    fn emit(&mut self, writer: &mut Writer<'_>, op: u16, flags: u32, data: &[u8]) -> RecvOutcome {
        let hdr = PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        };
        match write_packet(writer, &hdr, data) {
            Ok(len) => {
                self.last_fwd_cnt_to_peer = self.fwd_cnt;
                RecvOutcome::Packet(len)
            }
            Err(e) => {
                debug!("vsock: cannot write RX packet: {e}");
                RecvOutcome::Reset
            }
        }
    }
}
