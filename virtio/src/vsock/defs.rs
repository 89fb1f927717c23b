//! Constants of the virtio-vsock protocol (virtio 1.2, section 5.10) and the
//! limits this implementation chooses.

use std::time::Duration;

/// The CID that addresses the host.
pub const HOST_CID: u64 = 2;

/// Queue indices, in the order the driver sets them up.
pub const RXQ_INDEX: usize = 0;
/// Guest-to-host packets.
pub const TXQ_INDEX: usize = 1;
/// Device events: the transport reset a restored device sends.
pub const EVQ_INDEX: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: every connection is gone (the
/// driver also reads the guest CID again); listening sockets stay.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Size offered for each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// Size of the packet header on the wire.
pub const PKT_HEADER_SIZE: usize = 44;
/// Largest payload we accept in, or put in, one packet (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a bigger `len` is malformed.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// The only socket type supported (no SEQPACKET feature).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub const OP_REQUEST: u16 = 1;
/// Accepts a REQUEST.
pub const OP_RESPONSE: u16 = 2;
/// Refuses or aborts a connection.
pub const OP_RST: u16 = 3;
/// Half- or full-close, with the SHUTDOWN_* flags.
pub const OP_SHUTDOWN: u16 = 4;
/// Carries stream data.
pub const OP_RW: u16 = 5;
/// Announces the sender's buf_alloc/fwd_cnt.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer for a CREDIT_UPDATE.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both directions.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Bytes each connection buffers toward its host socket when the host peer
/// reads slower than the guest writes; also the buf_alloc we advertise, so a
/// guest that honours credit never overflows it.
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once the guest believes it has less than this much
/// credit left but we have freed more.
pub const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 2;

/// Most connections (plus host connections still sending their CONNECT line)
/// at once; beyond it new ones are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most guest-initiated connections to one host port at once. The guest is
/// hostile: without this cap it could hold every connection (and every host
/// thread or socket behind one port's listener) by dialing one port in a loop.
pub const MAX_GUEST_CONNECTIONS_PER_PORT: usize = 64;
/// Most queued RST replies for packets that match no connection; more are
/// dropped (the guest times out instead).
pub const MAX_PENDING_RST: usize = 1024;

/// Longest accepted `CONNECT <port>\n` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host client may take to send its CONNECT line (by default; see
/// `Vsock::set_timeouts`). Counted from our accept, so a client process that is descheduled
/// between its connect and its write spends it: 2 s was too short with 20 guests on one
/// emulated CPU (the client saw EPIPE). Host clients are the sandbox's owner's own processes;
/// a silent one holds only one entry of the bounded connection table meanwhile.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the guest may take to answer a host-initiated REQUEST (by default; see
/// `Vsock::set_request_timeout`). The guest kernel answers at once when it is scheduled, so this
/// only matters for a guest that is starved of CPU (an oversubscribed or emulated host: 20
/// guests on one emulated CPU were seen to take longer than 2 s) or hostile. Longer than the
/// SDK's own reply timeout (30 s), so a host client that gives up says so itself ("no answer to
/// CONNECT") instead of seeing the stream closed as if the guest had refused. A guest that never
/// answers only holds one entry of its own bounded connection table meanwhile.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the two sides may take to set up a host-initiated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For the host client's `CONNECT <port>` line ([`CONNECT_LINE_TIMEOUT`]).
    pub connect_line: Duration,
    /// For the guest's answer to our REQUEST ([`REQUEST_TIMEOUT`]).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_line: CONNECT_LINE_TIMEOUT,
            request: REQUEST_TIMEOUT,
        }
    }
}
/// How long a connection the guest closed may take to flush its buffered
/// data to a slow host reader before we drop it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First local port handed to host-initiated connections; ports above it are
/// unlikely to collide with what guest programs connect to.
pub const FIRST_EPHEMERAL_PORT: u32 = 1 << 30;
