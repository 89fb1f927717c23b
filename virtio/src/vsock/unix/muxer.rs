//! The host side of the vsock device: multiplexes guest connections onto
//! Unix sockets.
//!
//! - The device's listener at `uds_path` takes host-initiated connections: a
//!   client connects, writes `CONNECT <port>\n`, and becomes a connection to
//!   that guest port once the guest accepts.
//! - A guest connecting to (CID 2, port P) is connected to the Unix socket at
//!   `<uds_path>_<P>`, or refused with RST if nothing listens there.
//!
//! The muxer owns the epoll set (the device's event loop waits on it and
//! adds the queue eventfds),
//! the connection table, the queue of connections waiting for an RX buffer,
//! and the deadlines. After every call into a [`Connection`] it re-reads what
//! the connection wants ([`Muxer::sync`]): epoll interest, RX work, deadline.
//! Every table is bounded: at most `max_connections` connections (pending
//! CONNECT lines included) and [`MAX_PENDING_RST`] queued RST replies. The
//! guest gets at most half of the connections ([`Muxer::guest_limit`]) and at
//! most [`MAX_GUEST_CONNECTIONS_PER_PORT`] to one host port, so the other half
//! stays free for host-initiated connections (exec, files, shutdown) whatever
//! the guest dials.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use virtio_queue::{Reader, Writer};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::socket::connect_nonblocking;
use crate::vsock::csm::connection::{Connection, Outcome, RecvOutcome};
use crate::vsock::defs::*;
use crate::vsock::packet::{write_packet, PacketHeader};

/// epoll token of the listener; connection sockets use their fd, and the
/// event loop's eventfds use the tokens from `DEVICE_TOKEN_LIMIT` up.
pub const LISTENER_TOKEN: u64 = crate::event_loop::DEVICE_TOKEN_LIMIT - 1;

/// How long to stop accepting after accept() fails (e.g. out of fds), so a
/// backlog we cannot drain does not spin the thread.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A connection's identity: our port and the guest's port (the guest CID is
/// fixed per device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The host-side port (what the guest dialed, or one we allocated).
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

#[derive(Debug)]
struct ConnEntry {
    conn: Connection,
    /// The events registered in epoll, None if not registered.
    registered: Option<EventSet>,
    in_rxq: bool,
    scheduled: Option<Instant>,
}

/// A host client that has not finished its CONNECT line yet.
#[derive(Debug)]
struct PendingStream {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// An RST to send that belongs to no live connection.
#[derive(Clone, Copy, Debug)]
struct RstReply {
    src_cid: u64,
    src_port: u32,
    dst_port: u32,
}

#[derive(Debug)]
enum RxItem {
    Conn(ConnKey),
    Rst(RstReply),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    Conn(ConnKey),
    Pending(RawFd),
    Listener,
}

/// See the module docs.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    epoll: Arc<Epoll>,
    listener: UnixListener,
    conns: HashMap<ConnKey, ConnEntry>,
    fds: HashMap<RawFd, ConnKey>,
    pending: HashMap<RawFd, PendingStream>,
    rxq: VecDeque<RxItem>,
    queued_rsts: usize,
    deadlines: BinaryHeap<Reverse<(Instant, Deadline)>>,
    local_ports: HashSet<u32>,
    next_port: u32,
    max_connections: usize,
    /// How long host clients and the guest may take to set up a connection.
    timeouts: Timeouts,
    /// Guest-initiated connections per host port (only ports with some).
    guest_conns: HashMap<u32, usize>,
    /// Guest-initiated connections in all.
    guest_total: usize,
    scratch: Vec<u8>,
}

impl Muxer {
    /// A muxer serving `listener` (bound at `uds_path`) for the guest
    /// `guest_cid`, with its own epoll set.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        max_connections: usize,
        timeouts: Timeouts,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Arc::new(Epoll::new()?);
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            guest_cid,
            uds_path,
            epoll,
            listener,
            conns: HashMap::new(),
            fds: HashMap::new(),
            pending: HashMap::new(),
            rxq: VecDeque::new(),
            queued_rsts: 0,
            deadlines: BinaryHeap::new(),
            local_ports: HashSet::new(),
            next_port: FIRST_EPHEMERAL_PORT,
            max_connections,
            timeouts,
            guest_conns: HashMap::new(),
            guest_total: 0,
            scratch: vec![0; MAX_PKT_DATA as usize],
        })
    }

    /// Most guest-initiated connections at once: half the table (at least
    /// one), the rest being reserved for host-initiated ones.
    pub fn guest_limit(&self) -> usize {
        (self.max_connections / 2).max(1)
    }

    /// Most guest-initiated connections to one host port at once.
    pub fn guest_port_limit(&self) -> usize {
        MAX_GUEST_CONNECTIONS_PER_PORT.min(self.guest_limit())
    }

    /// The epoll set the worker's event loop waits on.
    pub fn epoll(&self) -> &Arc<Epoll> {
        &self.epoll
    }

    /// Whether packets are waiting for RX buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Milliseconds until the next deadline, for epoll_wait (-1: none).
    pub fn poll_timeout_ms(&self) -> i32 {
        match self.deadlines.peek() {
            Some(Reverse((when, _))) => {
                let left = when.saturating_duration_since(Instant::now());
                // Round up so we never wake just before the deadline.
                (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
            }
            None => -1,
        }
    }

    /// Handles epoll events for a token that is not one of the worker's.
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept();
            return;
        }
        let Ok(fd) = RawFd::try_from(token) else {
            return;
        };
        if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.fds.get(&fd) {
            if let Some(entry) = self.conns.get_mut(&key) {
                let outcome = entry.conn.notify(events);
                self.apply(key, outcome);
            }
        }
    }

    /// Handles a (header-validated) packet from the guest's TX queue.
    pub fn send_pkt(&mut self, hdr: &PacketHeader, data: &mut Reader<'_>) {
        if hdr.src_cid != self.guest_cid {
            // Not from our guest as far as the header says: there is nobody
            // to answer, so drop it.
            debug!("vsock: dropping packet with src_cid {}", hdr.src_cid);
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            debug!(
                "vsock: refusing packet to cid {} type {}",
                hdr.dst_cid, hdr.type_
            );
            self.reply_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(entry) => {
                let outcome = entry.conn.send_pkt(hdr, data, &mut self.scratch);
                self.apply(key, outcome);
            }
            None if hdr.op == OP_REQUEST => self.guest_connect(key, hdr),
            None if hdr.op == OP_RST => {}
            None => self.reply_rst(hdr),
        }
    }

    /// Fills one RX buffer; None if nothing could use it (the caller gives
    /// the buffer back to the queue).
    pub fn recv_pkt(&mut self, writer: &mut Writer<'_>) -> Option<u32> {
        // Each connection that produces nothing leaves the queue, and a reset
        // adds at most one RST, so this bound is never hit in practice; it
        // only guarantees the loop ends.
        let mut budget = 2 * self.rxq.len() + 1;
        while budget > 0 {
            budget -= 1;
            match self.rxq.pop_front()? {
                RxItem::Rst(rst) => {
                    self.queued_rsts -= 1;
                    let hdr = self.rst_header(rst);
                    return Some(write_packet(writer, &hdr, &[]).unwrap_or(0));
                }
                RxItem::Conn(key) => {
                    let Some(entry) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    entry.in_rxq = false;
                    match entry.conn.recv_pkt(writer, &mut self.scratch) {
                        RecvOutcome::Packet(len) => {
                            self.sync(key);
                            return Some(len);
                        }
                        RecvOutcome::Nothing => self.sync(key),
                        RecvOutcome::Reset => self.apply(key, Outcome::Reset),
                    }
                }
            }
        }
        None
    }

    /// Acts on deadlines that have passed.
    pub fn sweep(&mut self, now: Instant) {
        while let Some(Reverse((when, what))) = self.deadlines.peek().copied() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            match what {
                Deadline::Conn(key) => {
                    let Some(entry) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    if entry.scheduled == Some(when) {
                        entry.scheduled = None;
                    }
                    let outcome = entry.conn.expire(now);
                    if outcome != Outcome::Keep {
                        debug!("vsock: connection {key:?} timed out");
                    }
                    self.apply(key, outcome);
                }
                Deadline::Pending(fd) => {
                    if self.pending.get(&fd).is_some_and(|p| p.deadline <= now) {
                        debug!("vsock: host client sent no CONNECT line in time");
                        self.close_pending(fd);
                    }
                }
                Deadline::Listener => {
                    if let Err(e) = self.set_listener_events(EventSet::IN) {
                        warn!("vsock: cannot re-arm the listener: {e}");
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically out of fds: the client stays in the backlog
                    // and epoll would report it forever, so back off.
                    warn!("vsock: accept failed: {e}; pausing new host connections");
                    if self.set_listener_events(EventSet::empty()).is_ok() {
                        self.deadlines.push(Reverse((
                            Instant::now() + ACCEPT_BACKOFF,
                            Deadline::Listener,
                        )));
                    }
                    return;
                }
            };
            if self.conns.len() + self.pending.len() >= self.max_connections {
                debug!("vsock: connection limit reached; closing new host client");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            ) {
                warn!("vsock: cannot watch host client: {e}");
                continue;
            }
            let deadline = Instant::now() + self.timeouts.connect_line;
            self.deadlines
                .push(Reverse((deadline, Deadline::Pending(fd))));
            self.pending.insert(
                fd,
                PendingStream {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    deadline,
                },
            );
        }
    }

    fn set_listener_events(&self, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(events, LISTENER_TOKEN),
        )
    }

    /// Reads the CONNECT line one byte at a time, so that bytes after the
    /// newline stay in the socket as the start of the stream's data.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        loop {
            let mut byte = [0u8; 1];
            match (&p.stream).read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => {
                    let Some(p) = self.pending.remove(&fd) else {
                        return;
                    };
                    return self.host_connect(p.stream, &p.line);
                }
                Ok(_) => {
                    p.line.push(byte[0]);
                    if p.line.len() >= MAX_CONNECT_LINE {
                        debug!("vsock: overlong CONNECT line");
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close_pending(fd);
    }

    fn close_pending(&mut self, fd: RawFd) {
        if let Some(p) = self.pending.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            drop(p);
        }
    }

    /// A host client asked for guest port `line`'s port: allocate our side
    /// and queue the REQUEST. The stream stays registered in epoll.
    fn host_connect(&mut self, stream: UnixStream, line: &[u8]) {
        let fd = stream.as_raw_fd();
        let close = |epoll: &Epoll| {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        };
        let Some(peer_port) = parse_connect_line(line) else {
            debug!(
                "vsock: malformed CONNECT line {:?}",
                String::from_utf8_lossy(line)
            );
            return close(&self.epoll);
        };
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            warn!("vsock: no free local port for a host connection");
            return close(&self.epoll);
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = Connection::new_local(
            stream,
            self.guest_cid,
            (local_port, peer_port),
            self.timeouts.request,
        );
        self.fds.insert(fd, key);
        self.conns.insert(
            key,
            ConnEntry {
                conn,
                registered: Some(EventSet::IN),
                in_rxq: false,
                scheduled: None,
            },
        );
        self.sync(key);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.max_connections {
            let port = self.next_port;
            self.next_port = if port >= u32::MAX - 1 {
                FIRST_EPHEMERAL_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.local_ports.contains(&port) && !self.conns.contains_key(&key) {
                self.local_ports.insert(port);
                return Some(port);
            }
        }
        None
    }

    /// The guest connects to host port `key.local_port`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &PacketHeader) {
        let on_port = self.guest_conns.get(&key.local_port).copied().unwrap_or(0);
        if self.conns.len() + self.pending.len() >= self.max_connections
            || self.guest_total >= self.guest_limit()
            || on_port >= self.guest_port_limit()
        {
            debug!(
                port = key.local_port,
                on_port,
                guest_total = self.guest_total,
                "vsock: guest connection limit reached; refusing guest connection"
            );
            return self.reply_rst(hdr);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(path.as_ref()) {
            Ok(stream) => stream,
            Err(e) => {
                debug!("vsock: guest connect to {path:?} refused: {e}");
                return self.reply_rst(hdr);
            }
        };
        let fd = stream.as_raw_fd();
        let conn = Connection::new_peer(stream, self.guest_cid, hdr);
        *self.guest_conns.entry(key.local_port).or_default() += 1;
        self.guest_total += 1;
        self.fds.insert(fd, key);
        self.conns.insert(
            key,
            ConnEntry {
                conn,
                registered: None,
                in_rxq: false,
                scheduled: None,
            },
        );
        self.sync(key);
    }

    /// Applies what a connection asked for after handling something.
    fn apply(&mut self, key: ConnKey, outcome: Outcome) {
        match outcome {
            Outcome::Keep => self.sync(key),
            Outcome::Reset => {
                self.remove(key);
                self.push_rst(RstReply {
                    src_cid: HOST_CID,
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                });
            }
            Outcome::Remove => self.remove(key),
        }
    }

    /// Brings epoll, the RX queue and the deadlines in line with what the
    /// connection now wants.
    fn sync(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = entry.conn.fd();
        let want = entry.conn.interest();
        if want != entry.registered {
            let result = match (entry.registered, want) {
                (None, Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, fd as u64))
                }
                (Some(_), Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, fd as u64))
                }
                (Some(_), None) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => entry.registered = want,
                Err(e) => {
                    warn!("vsock: cannot update epoll for {key:?}: {e}");
                    // Without epoll the connection would hang silently.
                    return self.apply(key, Outcome::Reset);
                }
            }
        }
        if entry.conn.has_pending_rx() && !entry.in_rxq {
            entry.in_rxq = true;
            self.rxq.push_back(RxItem::Conn(key));
        }
        if let Some(deadline) = entry.conn.deadline() {
            if entry.scheduled != Some(deadline) {
                entry.scheduled = Some(deadline);
                self.deadlines
                    .push(Reverse((deadline, Deadline::Conn(key))));
            }
        }
    }

    fn remove(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.remove(&key) else {
            return;
        };
        let fd = entry.conn.fd();
        self.fds.remove(&fd);
        if entry.registered.is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        if entry.conn.host_initiated() {
            self.local_ports.remove(&key.local_port);
        } else {
            self.guest_total -= 1;
            if let Some(n) = self.guest_conns.get_mut(&key.local_port) {
                *n -= 1;
                if *n == 0 {
                    self.guest_conns.remove(&key.local_port);
                }
            }
        }
        // Dropping the entry closes the host stream.
    }

    /// Answers a guest packet that belongs to no connection with an RST.
    fn reply_rst(&mut self, hdr: &PacketHeader) {
        if hdr.op == OP_RST {
            return;
        }
        self.push_rst(RstReply {
            src_cid: hdr.dst_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
        });
    }

    fn push_rst(&mut self, rst: RstReply) {
        if self.queued_rsts >= MAX_PENDING_RST {
            debug!("vsock: too many queued RSTs; dropping one");
            return;
        }
        self.queued_rsts += 1;
        self.rxq.push_back(RxItem::Rst(rst));
    }

    fn rst_header(&self, rst: RstReply) -> PacketHeader {
        PacketHeader {
            src_cid: rst.src_cid,
            dst_cid: self.guest_cid,
            src_port: rst.src_port,
            dst_port: rst.dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }
}

/// Parses `CONNECT <port>` (an optional trailing CR tolerated).
fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line.strip_prefix(b"CONNECT ")?;
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(port).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing_accepts_only_a_decimal_u32_port() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 1 2",
            b"connect 1",
            b"CONNECT  1",
            b"CONNECT 0x10",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }
}
