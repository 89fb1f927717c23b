//! The state the stack loop and its flow tasks share: the smoltcp interface with every flow
//! ([`Stack`]), and what surrounds it ([`Shared`]: configuration, policy, events, counters,
//! the DNS server).
//!
//! It sits below the loop (`crate::stack`), the flow proxies (`crate::proxy`) and the
//! published ports (`crate::ports`), which all work on it, so that none of them has to import
//! another's module for these types.

mod coalesce;
pub(crate) mod device;
pub(crate) mod pace;

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use arc_swap::ArcSwap;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::net::{UdpSocket, UnixDatagram};
use tokio::sync::Notify;

use crate::config::NetConfig;
use crate::dns::DnsServer;
use crate::events::{emit, Admission, EventLimiter, EventSink, NetEvent, Transport};
use crate::frames::{self, FrameBuilder, TcpKey};
use crate::pins::PinTable;
use crate::plugin_gate::{PluginGate, PLUGIN_RULE};
use crate::policy::{FlowInfo, Policy, Protocol, Verdict};
use crate::stats::StatsCounters;
use device::{FrameDevice, FrameTx};
use pace::Pace;

/// Ephemeral ports of published-port connections (gateway side).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// Closed TCP sockets kept for the next flows. Each has two zero-filled buffers of
/// `tcp_buffer_size` (256 KiB by default); zeroing half a megabyte for every new flow was a
/// tenth of the stack's time in a connection-rate loop. A few are enough for flows that follow
/// each other, and bound what an idle stack keeps.
const SPARE_TCP_SOCKETS: usize = 4;

/// What a TCP flow of the guest is at the moment.
pub(crate) enum TcpEntry {
    /// Connecting on the host; the guest's SYN waits here (retransmissions are dropped).
    Connecting { syn: Vec<u8> },
    /// A smoltcp socket carries it.
    Active(SocketHandle),
}

/// What a policy change needs to know about an open guest flow.
pub(crate) struct PolicedFlow {
    /// The DNS names pinned to its destination when it was allowed (a pin that expired since
    /// must not end a connection a name rule opened).
    pub names: Vec<String>,
    /// Whether its requests are inspected under HTTP policy.
    pub inspected: bool,
}

/// The mutable state of the stack, borrowed briefly by the loop and the flow tasks.
pub(crate) struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub device: FrameDevice,
    pub builder: FrameBuilder,
    pub tcp: HashMap<TcpKey, TcpEntry>,
    pub udp: HashMap<UdpKey, UdpFlow>,
    /// New UDP flows waiting for the plugins' decision: the datagrams the guest sent meanwhile
    /// (at most [`crate::proxy::udp::PENDING_DATAGRAMS`]).
    pub udp_pending: HashMap<UdpKey, Vec<Vec<u8>>>,
    /// The upward rate (frames from the guest), when the sandbox has one; the downward one
    /// is the device's.
    pub up: Option<Pace>,
    /// Guest-initiated TCP flows that policy allowed, for re-checking when the policy changes.
    pub policed: HashMap<TcpKey, PolicedFlow>,
    /// The guest's MAC, learned from its frames (used for hand-made frames).
    pub guest_mac: EthernetAddress,
    /// A listening socket was created since the last poll (two for one address must not meet a
    /// SYN in the same poll, or smoltcp could pair them the other way round).
    listener_unpolled: bool,
    next_port: u16,
    /// Closed sockets to reuse ([`SPARE_TCP_SOCKETS`]).
    spare_tcp: Vec<tcp::Socket<'static>>,
}

impl Stack {
    /// The interface of the gateway, over a frame device sending on `socket`.
    fn new(config: &NetConfig, socket: Rc<UnixDatagram>, stats: Arc<StatsCounters>) -> Stack {
        let mut tx = FrameTx::new(socket, stats);
        tx.pace = config.bytes_per_sec.map(Pace::new);
        if config.segment_offload {
            tx.merge_segments();
        }
        let mut device = FrameDevice::new(tx, config.max_frame_len(), config.checksum_offload);
        let gateway_mac = EthernetAddress(config.gateway_mac);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(gateway_mac));
        iface_config.random_seed = RandomState::new().hash_one(std::process::id());
        let mut iface = Interface::new(iface_config, &mut device, Instant::now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(config.gateway_ip),
                config.prefix_len,
            ));
        });
        // Accept every destination address: the guest's flows to the world end here.
        iface.set_any_ip(true);
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            builder: FrameBuilder::new(gateway_mac, config.checksum_offload),
            tcp: HashMap::new(),
            udp: HashMap::new(),
            udp_pending: HashMap::new(),
            up: config.bytes_per_sec.map(Pace::new),
            policed: HashMap::new(),
            guest_mac: EthernetAddress::BROADCAST,
            listener_unpolled: false,
            next_port: *EPHEMERAL_PORTS.start(),
            spare_tcp: Vec::new(),
        }
    }

    /// Runs smoltcp over everything queued.
    pub(crate) fn poll(&mut self) {
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets);
        // A poll's segments are merged only among themselves: nothing waits for the next.
        self.device.tx.end_merge();
        self.listener_unpolled = false;
    }

    pub(crate) fn new_tcp_socket(buffer: usize) -> tcp::Socket<'static> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        socket.set_nagle_enabled(false);
        socket
    }

    /// A closed socket with buffers of `buffer` bytes each way: a spare one if there is one
    /// (`listen` and `connect` reset whatever a flow left in it), else a new one.
    pub(crate) fn tcp_socket(&mut self, buffer: usize) -> tcp::Socket<'static> {
        match self.spare_tcp.pop() {
            Some(socket)
                if socket.recv_capacity() == buffer && socket.send_capacity() == buffer =>
            {
                socket
            }
            _ => Self::new_tcp_socket(buffer),
        }
    }

    /// Accepts the guest's SYN of `key` in a new socket listening on exactly its destination.
    pub(crate) fn accept_syn(&mut self, key: TcpKey, syn: &[u8], buffer: usize) -> SocketHandle {
        if self.listener_unpolled {
            self.poll();
        }
        let mut socket = self.tcp_socket(buffer);
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*key.remote.ip())),
            port: key.remote.port(),
        };
        // Cannot fail: the port is never 0 (classify saw a SYN to it) and the socket is new.
        if let Err(e) = socket.listen(endpoint) {
            tracing::warn!(error = %e, "netstack: listen failed");
        }
        let handle = self.sockets.add(socket);
        self.tcp.insert(key, TcpEntry::Active(handle));
        self.device.enqueue_rx(syn);
        self.listener_unpolled = true;
        handle
    }

    /// Answers the guest's SYN frame with a RST.
    pub(crate) fn send_rst(&mut self, key: TcpKey, syn: &[u8]) {
        if let Some(seq) = frames::tcp_seq(syn) {
            let frame = self.builder.tcp_rst(self.guest_mac, key, seq);
            self.device.tx.send(frame);
        }
    }

    /// Sends a UDP datagram `src` -> `dst` to the guest; false if it does not fit the MTU.
    pub(crate) fn send_udp(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: &[u8],
        mtu: usize,
    ) -> bool {
        // No IP fragmentation towards the guest: a datagram over the MTU is dropped.
        if data.len() + 28 > mtu {
            return false;
        }
        let frame = self.builder.udp(self.guest_mac, src, dst, data);
        self.device.tx.send(frame);
        true
    }

    /// Tells the guest that the datagram in `frame` reached no one (ICMP port unreachable).
    pub(crate) fn send_port_unreachable(&mut self, from: Ipv4Addr, frame: &[u8]) {
        let Some(packet) = frames::ipv4_packet(frame) else {
            return;
        };
        if let Some(reply) = self
            .builder
            .icmp_port_unreachable(self.guest_mac, from, packet)
        {
            self.device.tx.send(reply);
        }
    }

    /// A free gateway port for a published-port connection.
    pub(crate) fn alloc_port(&mut self, guest: SocketAddrV4, gateway: Ipv4Addr) -> Option<u16> {
        for _ in 0..EPHEMERAL_PORTS.len() {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                port + 1
            };
            let key = TcpKey {
                guest,
                remote: SocketAddrV4::new(gateway, port),
            };
            if !self.tcp.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Forgets a TCP flow and its socket (kept closed for a next flow while there is room).
    pub(crate) fn remove_tcp(&mut self, key: &TcpKey, handle: SocketHandle) {
        if matches!(self.tcp.get(key), Some(TcpEntry::Active(h)) if *h == handle) {
            self.tcp.remove(key);
            self.policed.remove(key);
        }
        if self.spare_tcp.len() < SPARE_TCP_SOCKETS {
            // Taken out of the set (an empty socket, which allocates nothing, stands in until
            // the removal below) it sends nothing more, no RST for an open one; closed, it
            // can listen or connect again.
            let slot = self.sockets.get_mut::<tcp::Socket>(handle);
            let empty = || tcp::SocketBuffer::new(Vec::new());
            let mut socket = std::mem::replace(slot, tcp::Socket::new(empty(), empty()));
            socket.abort();
            self.spare_tcp.push(socket);
        }
        self.sockets.remove(handle);
    }
}

/// Everything the loop and the flow tasks share.
pub(crate) struct Shared {
    pub config: NetConfig,
    pub policy: Arc<ArcSwap<Policy>>,
    pub events: EventSink,
    pub stats: Arc<StatsCounters>,
    pub pins: PinTable,
    pub dns: DnsServer,
    /// Wakes the loop to poll smoltcp after a flow task moved data.
    pub wake: Notify,
    pub dns_in_flight: Cell<usize>,
    /// Rate limit of the events.
    pub limiter: RefCell<EventLimiter>,
    /// Wakes the task reporting suppressed events once the first one of a kind was dropped.
    pub summary_due: Notify,
    /// The stack end of the frame socketpair (also inside the device, for sending).
    pub frame_socket: Rc<UnixDatagram>,
    pub stack: RefCell<Stack>,
    /// TLS interception, when configured.
    pub tls: Option<Arc<crate::tls::Interceptor>>,
    /// The plugins' network decisions.
    pub plugins: Arc<PluginGate>,
}

impl Shared {
    /// The state of a stack whose frame socket is `frame_socket`.
    #[allow(clippy::too_many_arguments)] // One per part of the stack; a builder buys nothing.
    pub(crate) fn new(
        config: NetConfig,
        frame_socket: Rc<UnixDatagram>,
        policy: Arc<ArcSwap<Policy>>,
        events: EventSink,
        stats: Arc<StatsCounters>,
        pins: PinTable,
        dns: DnsServer,
        tls: Option<Arc<crate::tls::Interceptor>>,
        plugins: Arc<PluginGate>,
    ) -> Rc<Shared> {
        let stack = Stack::new(&config, frame_socket.clone(), stats.clone());
        Rc::new(Shared {
            frame_socket,
            config,
            policy,
            events,
            stats,
            pins,
            dns,
            wake: Notify::new(),
            dns_in_flight: Cell::new(0),
            limiter: RefCell::new(EventLimiter::default()),
            summary_due: Notify::new(),
            stack: RefCell::new(stack),
            tls,
            plugins,
        })
    }

    /// Reports `event` unless its kind is over the rate limit (then it is only counted).
    pub(crate) fn emit(&self, event: NetEvent) {
        match self
            .limiter
            .borrow_mut()
            .admit(event.kind(), std::time::Instant::now())
        {
            Admission::Report => {
                self.plugins.observe(&event);
                emit(&self.events, event)
            }
            Admission::Suppress { first } => {
                StatsCounters::add(&self.stats.events_suppressed, 1);
                if first {
                    self.summary_due.notify_one();
                }
            }
        }
    }

    pub(crate) fn sync_flow_stats(&self, st: &Stack) {
        self.stats
            .tcp_flows_open
            .store(st.tcp.len() as u64, Ordering::Relaxed);
        self.stats
            .udp_flows_open
            .store(st.udp.len() as u64, Ordering::Relaxed);
    }

    /// The host address behind a guest-visible destination, and whether it was the host alias.
    pub(crate) fn real_destination(&self, dst: SocketAddrV4) -> (SocketAddr, bool) {
        if *dst.ip() == self.config.host_alias_ip {
            (SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())), true)
        } else {
            (SocketAddr::V4(dst), false)
        }
    }

    /// What policy sees of a flow of the guest to `dst`.
    pub(crate) fn flow_info(&self, transport: Transport, dst: SocketAddrV4) -> FlowInfo {
        let (real, to_host_alias) = self.real_destination(dst);
        let protocol = match transport {
            Transport::Tcp => Protocol::Tcp,
            Transport::Udp => Protocol::Udp,
        };
        FlowInfo {
            protocol,
            dst: real,
            to_host_alias,
        }
    }

    /// Asks policy about a new flow, and reports the verdict.
    /// The policy's verdict on a new flow: a denial is reported here; an allowed flow comes
    /// back with its rule, for [`Shared::flow_allowed`] once nothing else (a plugin) refuses it.
    pub(crate) fn check_flow(
        &self,
        transport: Transport,
        dst: SocketAddrV4,
    ) -> Option<(FlowInfo, Option<String>)> {
        let flow = self.flow_info(transport, dst);
        let ip = *dst.ip();
        if ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified() {
            self.deny(transport, dst, None, "not a unicast destination".into());
            return None;
        }
        match self.policy.load().check_flow(&flow, &self.pins) {
            Verdict::Allow { rule } => Some((flow, rule)),
            Verdict::Deny { rule, reason } => {
                self.deny(transport, dst, rule, reason);
                None
            }
        }
    }

    /// Counts and reports a flow that was let through, with the policy rule that allowed it.
    pub(crate) fn flow_allowed(
        &self,
        transport: Transport,
        dst: SocketAddrV4,
        rule: Option<String>,
    ) {
        StatsCounters::add(&self.stats.flows_total, 1);
        self.emit(NetEvent::FlowAllowed {
            transport,
            dst: SocketAddr::V4(dst),
            rule,
        });
    }

    /// Asks the plugins about a flow the policy allowed (when one asked); a denial is reported
    /// here, and the caller refuses the flow.
    /// `dst` is where the guest sent it; the host is the name the guest resolved it by.
    /// An allowed flow is reported ([`Shared::flow_allowed`]) with the policy's `rule`.
    pub(crate) async fn plugins_allow_flow(
        &self,
        transport: Transport,
        dst: SocketAddrV4,
        rule: Option<String>,
    ) -> bool {
        let host = self.pins.names((*dst.ip()).into()).into_iter().next();
        match self
            .plugins
            .flow(transport, SocketAddr::V4(dst), host)
            .await
        {
            Ok(()) => {
                self.flow_allowed(transport, dst, rule);
                true
            }
            Err(reason) => {
                self.deny(
                    transport,
                    dst,
                    Some(PLUGIN_RULE.into()),
                    format!("denied by a plugin: {reason}"),
                );
                false
            }
        }
    }

    pub(crate) fn deny(
        &self,
        transport: Transport,
        dst: SocketAddrV4,
        rule: Option<String>,
        reason: String,
    ) {
        StatsCounters::add(&self.stats.flows_denied, 1);
        self.emit(NetEvent::FlowDenied {
            transport,
            dst: SocketAddr::V4(dst),
            rule,
            reason,
        });
    }
}

/// A UDP flow as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UdpKey {
    /// The guest's source port.
    pub guest_port: u16,
    /// The destination the guest addressed.
    pub remote: SocketAddrV4,
}

/// An open UDP flow.
pub(crate) struct UdpFlow {
    pub socket: Rc<UdpSocket>,
    pub last_active: Rc<Cell<StdInstant>>,
    pub bytes_up: Rc<Cell<u64>>,
    /// The DNS names pinned to the destination when policy allowed the flow.
    pub names: Vec<String>,
    /// Tells the relay task to stop (the flow was ended by a policy change).
    pub ended: Rc<Notify>,
}

impl UdpFlow {
    /// Stops the flow's relay task, which then closes the host socket.
    pub(crate) fn end(&self) {
        self.ended.notify_one();
    }
}
