//! Entry points for the fuzz targets in `netstack/fuzz` and the frame device of the
//! integration tests' fake guest (feature `fuzzing`); not a stable API.
//!
//! [`FrameHarness`] does with each guest frame what the stack loop does, minus host sockets:
//! classify it, ask policy about new flows, build the stack's hand-made answers (RST, ICMP port
//! unreachable, UDP reply) and hand everything else to a smoltcp interface that accepts SYNs
//! the way the stack does, so ARP, ICMP and the TCP state machine see the frames too.

use std::collections::VecDeque;
use std::net::SocketAddr;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use crate::config::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP, HOST_ALIAS_IP};
use crate::frames::{classify, ipv4_packet, offload_checksums, tcp_seq, FrameBuilder, Inbound};
use crate::pins::PinTable;
use crate::policy::{FlowInfo, Policy, Protocol};
use crate::state::Stack;

/// Makes `port` an interception port besides 443 in this process (integration tests run
/// their upstream TLS servers on ephemeral ports); 0 removes it.
pub fn set_test_tls_port(port: u16) {
    crate::tls::TEST_TLS_PORT.store(port, std::sync::atomic::Ordering::Relaxed);
}

/// TCP sockets one harness accepts at most (each costs two buffers).
const MAX_SOCKETS: usize = 8;
/// Buffer size of those sockets.
const SOCKET_BUFFER: usize = 4096;

/// Where a [`QueueDevice`] puts the frames smoltcp sends.
pub trait FrameSink {
    /// Takes one frame smoltcp built.
    fn send(&mut self, frame: &[u8]);
}

/// A smoltcp Ethernet device whose received frames are queued by hand and whose sent frames
/// go to a [`FrameSink`]: the fuzz harness only counts them, the integration tests' fake guest
/// writes them to its end of the frame socketpair.
pub struct QueueDevice<S> {
    /// Frames smoltcp receives next, oldest first.
    pub rx: VecDeque<Vec<u8>>,
    /// Largest frame on the link (the MTU plus the Ethernet header).
    pub max_frame: usize,
    /// Where sent frames go.
    pub sink: S,
}

impl<S> QueueDevice<S> {
    /// A device with nothing queued.
    pub fn new(max_frame: usize, sink: S) -> QueueDevice<S> {
        QueueDevice {
            rx: VecDeque::new(),
            max_frame,
            sink,
        }
    }
}

/// A received frame of a [`QueueDevice`].
pub struct QueueRx(Vec<u8>);
/// A frame a [`QueueDevice`] is about to send.
pub struct QueueTx<'a, S>(&'a mut S);

impl phy::RxToken for QueueRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl<S: FrameSink> phy::TxToken for QueueTx<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.send(&buf);
        r
    }
}

impl<S: FrameSink> phy::Device for QueueDevice<S> {
    type RxToken<'a>
        = QueueRx
    where
        S: 'a;
    type TxToken<'a>
        = QueueTx<'a, S>
    where
        S: 'a;
    fn receive(&mut self, _: Instant) -> Option<(QueueRx, QueueTx<'_, S>)> {
        let frame = self.rx.pop_front()?;
        Some((QueueRx(frame), QueueTx(&mut self.sink)))
    }
    fn transmit(&mut self, _: Instant) -> Option<QueueTx<'_, S>> {
        Some(QueueTx(&mut self.sink))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        caps
    }
}

/// Counts the frames sent to the guest (the harness looks at nothing else).
#[derive(Default)]
struct SentCount(usize);

impl FrameSink for SentCount {
    fn send(&mut self, _: &[u8]) {
        self.0 += 1;
    }
}

/// One guest's frames through the stack's frame handling, without host sockets.
pub struct FrameHarness {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: QueueDevice<SentCount>,
    builder: FrameBuilder,
    policy: Policy,
    pins: PinTable,
    now: i64,
}

impl Default for FrameHarness {
    fn default() -> Self {
        FrameHarness::new()
    }
}

impl FrameHarness {
    /// A harness with the built-in policy plus `allow host`.
    pub fn new() -> FrameHarness {
        let mut dev = QueueDevice::new(1514, SentCount::default());
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        let mut iface = Interface::new(config, &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), 24));
        });
        iface.set_any_ip(true);
        FrameHarness {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            builder: FrameBuilder::new(EthernetAddress(GATEWAY_MAC), false),
            policy: Policy::builder().allow("host".parse().expect("a valid rule")),
            pins: PinTable::new(),
            now: 0,
        }
    }

    /// Handles one frame from the guest; returns how many frames went back to the guest.
    pub fn frame(&mut self, frame: &[u8]) -> usize {
        for offload in [false, true] {
            match classify(frame, GUEST_IP, GATEWAY_IP, &offload_checksums(offload)) {
                Inbound::ToStack => self.dev.rx.push_back(frame.to_vec()),
                Inbound::Drop(_) => {}
                Inbound::TcpSyn { key, src_mac } => {
                    self.check(Protocol::Tcp, key.remote.into());
                    let _ = self
                        .builder
                        .tcp_rst(src_mac, key, tcp_seq(frame).unwrap_or(0))
                        .len();
                    if !offload && self.sockets.iter().count() < MAX_SOCKETS {
                        self.accept(key.remote, frame);
                    }
                }
                Inbound::Udp(d) => {
                    self.check(Protocol::Udp, d.dst.into());
                    if let Some(packet) = ipv4_packet(frame) {
                        let _ = self
                            .builder
                            .icmp_port_unreachable(d.src_mac, *d.dst.ip(), packet);
                    }
                    let _ = self.builder.udp(d.src_mac, d.dst, d.src, d.payload).len();
                }
            }
        }
        self.now += 10;
        let before = self.dev.sink.0;
        self.iface.poll(
            Instant::from_millis(self.now),
            &mut self.dev,
            &mut self.sockets,
        );
        self.dev.sink.0 - before
    }

    fn check(&self, protocol: Protocol, dst: SocketAddr) {
        let flow = FlowInfo {
            protocol,
            dst,
            to_host_alias: dst.ip() == std::net::IpAddr::V4(HOST_ALIAS_IP),
        };
        let _ = self.policy.check_flow(&flow, &self.pins);
        let _ = self.policy.wants_http_inspection(dst.port());
    }

    /// Accepts a SYN the way the stack does: a socket listening on exactly its destination.
    fn accept(&mut self, remote: std::net::SocketAddrV4, syn: &[u8]) {
        let mut socket = Stack::new_tcp_socket(SOCKET_BUFFER);
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*remote.ip())),
            port: remote.port(),
        };
        if socket.listen(endpoint).is_ok() {
            self.sockets.add(socket);
            self.dev.rx.push_back(syn.to_vec());
        }
    }
}

/// Runs the secret scanner and the substituting replacer over `data` cut into `cuts`-sized
/// pieces (the way requests arrive) and checks that both agree with their one-shot forms:
/// the scanner finds the placeholder in the pieces exactly when it finds it in the whole, and
/// the replacer's pieces add up to the whole replaced at once.
pub fn secrets_in_pieces(placeholder: &str, value: &str, data: &[u8], cuts: &[u8]) {
    use crate::secrets::{Inject, Secret, SecretSet};
    let set = SecretSet::new(&[Secret {
        name: "FUZZ".into(),
        value: value.into(),
        placeholder: placeholder.into(),
        hosts: vec!["fuzz.test".into()],
        inject: Inject {
            headers: true,
            query: true,
            body: true,
        },
    }]);
    let not_eligible = set.eligible(None, false);
    let whole = set.detector(&not_eligible).scan_once(data);
    let mut scanner = set.detector(&not_eligible);
    let mut replacer = set.body_substituter(&set.eligible(Some("fuzz.test"), true));
    let mut replaced = Vec::new();
    let mut rest = data;
    let mut found = None;
    let cuts = if cuts.is_empty() { &[1u8][..] } else { cuts };
    for &cut in cuts.iter().cycle().take(data.len() + 1) {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(usize::from(cut.max(1)).min(rest.len()));
        found = found.or(scanner.feed(piece));
        replaced.extend(replacer.push(piece));
        rest = tail;
    }
    replaced.extend(replacer.finish());
    assert_eq!(found, whole, "pieces and whole disagree on detection");
    let once = crate::secrets::replace_all(
        vec![(placeholder.as_bytes().to_vec(), value.as_bytes().to_vec())],
        data,
    );
    assert_eq!(replaced, once, "pieces and whole disagree on replacement");
}

/// Runs the WebSocket frame decoder over `data` cut into `cuts`-sized pieces, as frames from a
/// client and as frames from a server, and checks its bounds (no payload piece over a fragment,
/// no control payload over 125 bytes, no more buffered than a header and a control frame)
/// and that the messages it decoded, encoded again as one frame each, decode to themselves.
pub fn websocket_frames(data: &[u8], cuts: &[u8]) {
    use crate::intercept::websocket::{encode_frame, Event, FrameDecoder, FRAGMENT};
    let decode = |masked: bool, data: &[u8], cuts: &[u8]| {
        let mut decoder = FrameDecoder::new(masked);
        let mut buf = bytes::BytesMut::new();
        let mut events = Vec::new();
        let mut current = Vec::new();
        let mut rest = data;
        let mut sizes = cuts.iter().map(|c| usize::from(*c).max(1)).cycle();
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(sizes.next().unwrap_or(1).min(rest.len()));
            rest = tail;
            buf.extend_from_slice(piece);
            loop {
                match decoder.next(&mut buf) {
                    Ok(Some(Event::Control { opcode, payload })) => {
                        assert!(payload.len() <= 125);
                        events.push((opcode, payload));
                    }
                    Ok(Some(Event::Data {
                        opcode,
                        chunk,
                        message_end,
                        ..
                    })) => {
                        assert!(chunk.len() <= FRAGMENT);
                        current.extend_from_slice(&chunk);
                        if message_end {
                            events.push((opcode, std::mem::take(&mut current)));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return events,
                }
            }
            assert!(buf.len() < 14 + 125, "{} bytes held", buf.len());
        }
        events
    };
    let cuts = if cuts.is_empty() { &[7u8][..] } else { cuts };
    for masked in [true, false] {
        let events = decode(masked, data, cuts);
        let mut wire = Vec::new();
        for (opcode, payload) in &events {
            encode_frame(
                &mut wire,
                true,
                *opcode,
                payload,
                masked.then_some([1, 2, 3, 4]),
            );
        }
        assert_eq!(decode(masked, &wire, &[255]), events);
    }
}
