//! The stack itself: one thread running a current-thread tokio runtime that owns the frame
//! socket, the smoltcp interface and every flow.
//!
//! Everything shares one `Rc<Shared>`: the loop reads frames, decides new flows before smoltcp
//! sees them ([`frames::classify`]), polls smoltcp, and sleeps on frame readiness, smoltcp's
//! `poll_delay` or a wake from a flow task that moved data. Flow tasks touch their smoltcp socket
//! directly (same thread, short `RefCell` borrows never held across an await), so data moves
//! between smoltcp's buffers and host sockets without intermediate copies.

pub(crate) mod device;
mod enforce;
pub(crate) mod frames;
pub(crate) mod stats;

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, Notify};

use crate::config::NetConfig;
use crate::dns::{DnsServer, PinTable};
use crate::events::{
    emit, Admission, EventLimiter, EventSink, NetEvent, Transport, SUMMARY_INTERVAL,
};
use crate::policy::{FlowInfo, Policy, Protocol, Verdict};
use crate::ports::PublishedPort;
use crate::proxy;
use device::{FrameDevice, FrameTx};
use frames::{classify, FrameBuilder, Inbound, TcpKey};
pub use stats::NetStats;
use stats::StatsCounters;

/// Socket buffer size of each end of the frame socketpair: room for bursts of large frames.
const FRAME_SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Frames read per loop turn before smoltcp is polled and other tasks get to run.
const RX_BATCH: usize = 64;
/// Ephemeral ports of published-port connections (gateway side).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Creates the frame link between the virtio-net device and the stack: one datagram is one
/// Ethernet frame (no virtio header). Returns (device end, stack end), both nonblocking.
pub fn frame_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (device, stack) = std::os::unix::net::UnixDatagram::pair()?;
    for end in [&device, &stack] {
        end.set_nonblocking(true)?;
        let sock = socket2::SockRef::from(end);
        sock.set_send_buffer_size(FRAME_SOCKET_BUFFER)?;
        sock.set_recv_buffer_size(FRAME_SOCKET_BUFFER)?;
    }
    Ok((device.into(), stack.into()))
}

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
    pub udp: HashMap<proxy::udp::UdpKey, proxy::udp::UdpFlow>,
    /// Guest-initiated TCP flows that policy allowed, for re-checking when the policy changes.
    pub policed: HashMap<TcpKey, PolicedFlow>,
    /// The guest's MAC, learned from its frames (used for hand-made frames).
    pub guest_mac: EthernetAddress,
    /// A listening socket was created since the last poll (two for one address must not meet a
    /// SYN in the same poll, or smoltcp could pair them the other way round).
    listener_unpolled: bool,
    next_port: u16,
}

impl Stack {
    /// Runs smoltcp over everything queued.
    pub(crate) fn poll(&mut self) {
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets);
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

    /// Accepts the guest's SYN of `key` in a new socket listening on exactly its destination.
    pub(crate) fn accept_syn(&mut self, key: TcpKey, syn: &[u8], buffer: usize) -> SocketHandle {
        if self.listener_unpolled {
            self.poll();
        }
        let mut socket = Self::new_tcp_socket(buffer);
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

    /// Forgets a TCP flow and its socket.
    pub(crate) fn remove_tcp(&mut self, key: &TcpKey, handle: SocketHandle) {
        if matches!(self.tcp.get(key), Some(TcpEntry::Active(h)) if *h == handle) {
            self.tcp.remove(key);
            self.policed.remove(key);
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
}

impl Shared {
    /// Reports `event` unless its kind is over the rate limit (then it is only counted).
    pub(crate) fn emit(&self, event: NetEvent) {
        match self
            .limiter
            .borrow_mut()
            .admit(event.kind(), std::time::Instant::now())
        {
            Admission::Report => emit(&self.events, event),
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
    pub(crate) fn check_flow(&self, transport: Transport, dst: SocketAddrV4) -> Option<FlowInfo> {
        let flow = self.flow_info(transport, dst);
        let ip = *dst.ip();
        if ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified() {
            self.deny(transport, dst, None, "not a unicast destination".into());
            return None;
        }
        match self.policy.load().check_flow(&flow, &self.pins) {
            Verdict::Allow { rule } => {
                StatsCounters::add(&self.stats.flows_total, 1);
                self.emit(NetEvent::FlowAllowed {
                    transport,
                    dst: SocketAddr::V4(dst),
                    rule,
                });
                Some(flow)
            }
            Verdict::Deny { rule, reason } => {
                self.deny(transport, dst, rule, reason);
                None
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

/// Control messages from the handle to the stack thread.
enum Command {
    Publish(std::net::TcpListener, PublishedPort),
    /// The policy was replaced: end the open flows it denies.
    PolicyChanged,
    Shutdown,
}

/// Namespace of the stack's entry point.
pub struct NetStack;

impl NetStack {
    /// Starts a sandbox's network stack on its own thread (with its own current-thread tokio
    /// runtime, so callers need no runtime). `stack_fd` is the stack end of
    /// [`frame_socketpair`]. Ports in `config.published_ports` are bound before this returns.
    pub fn start(
        config: NetConfig,
        stack_fd: OwnedFd,
        policy: Policy,
        events: EventSink,
    ) -> io::Result<NetStackHandle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let frame_socket = std::os::unix::net::UnixDatagram::from(stack_fd);
        frame_socket.set_nonblocking(true)?;
        let mut listeners = Vec::new();
        for port in &config.published_ports {
            listeners.push((bind_published(port)?, *port));
        }
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let stats = Arc::new(StatsCounters::default());
        let pins = PinTable::new();
        let dns = DnsServer::new(config.dns_upstream.clone(), pins.clone())?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        for (listener, port) in listeners {
            let _ = cmd_tx.send(Command::Publish(listener, port));
        }
        let thread = {
            let (policy, stats, pins) = (policy.clone(), stats.clone(), pins.clone());
            std::thread::Builder::new()
                .name("msbvm-netstack".into())
                .spawn(move || {
                    crate::seccomp::thread_started();
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            tracing::error!(error = %e, "netstack: no runtime");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        match Self::build(config, frame_socket, policy, events, stats, pins, dns) {
                            Ok(shared) => run(shared, cmd_rx).await,
                            Err(e) => tracing::error!(error = %e, "netstack: start failed"),
                        }
                    });
                })?
        };
        Ok(NetStackHandle {
            cmd: cmd_tx,
            policy,
            stats,
            pins,
            thread: Some(thread),
        })
    }

    fn build(
        config: NetConfig,
        frame_socket: std::os::unix::net::UnixDatagram,
        policy: Arc<ArcSwap<Policy>>,
        events: EventSink,
        stats: Arc<StatsCounters>,
        pins: PinTable,
        dns: DnsServer,
    ) -> io::Result<Rc<Shared>> {
        let socket = Rc::new(UnixDatagram::from_std(frame_socket)?);
        let tx = FrameTx::new(socket.clone(), stats.clone());
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
        let stack = Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            builder: FrameBuilder::new(gateway_mac, config.checksum_offload),
            tcp: HashMap::new(),
            udp: HashMap::new(),
            policed: HashMap::new(),
            guest_mac: EthernetAddress::BROADCAST,
            listener_unpolled: false,
            next_port: *EPHEMERAL_PORTS.start(),
        };
        Ok(Rc::new(Shared {
            frame_socket: socket,
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
        }))
    }
}

fn bind_published(port: &PublishedPort) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(port.host_addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The loop: read a batch of frames, decide and queue them, poll smoltcp, sleep.
async fn run(shared: Rc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    tokio::task::spawn_local(report_suppressed(shared.clone()));
    let socket = shared.frame_socket.clone();
    let mut buf = vec![0u8; shared.config.max_frame_len() + 1];
    loop {
        let (delay, backlog, batch_full) = {
            let mut st = shared.stack.borrow_mut();
            let mut read = 0;
            while read < RX_BATCH {
                match socket.try_recv(&mut buf) {
                    Ok(n) => {
                        read += 1;
                        handle_frame(&shared, &mut st, &buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "netstack: frame socket failed, stopping");
                        return;
                    }
                }
            }
            st.poll();
            let backlog = !st.device.tx.flush();
            let now = Instant::now();
            let st = &mut *st;
            let delay = st.iface.poll_delay(now, &st.sockets);
            shared.sync_flow_stats(st);
            (delay, backlog, read == RX_BATCH)
        };
        if batch_full {
            // More frames are waiting; let the flow tasks drain smoltcp's buffers first.
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = delay.map(|d| std::time::Duration::from_micros(d.total_micros()));
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(Command::Publish(listener, port)) => crate::ports::serve(shared.clone(), listener, port),
                Some(Command::PolicyChanged) => enforce::end_denied_flows(&shared),
                Some(Command::Shutdown) | None => return,
            },
            _ = shared.wake.notified() => {}
            ready = socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(error = %e, "netstack: frame socket failed, stopping");
                    return;
                }
            }
            _ = socket.writable(), if backlog => {}
            _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
        }
    }
}

/// Reports, once per [`SUMMARY_INTERVAL`] at most, how many events of each kind the rate limit
/// dropped.
async fn report_suppressed(shared: Rc<Shared>) {
    loop {
        shared.summary_due.notified().await;
        tokio::time::sleep(SUMMARY_INTERVAL).await;
        let summaries = shared
            .limiter
            .borrow_mut()
            .take_summaries(std::time::Instant::now());
        for summary in summaries {
            emit(&shared.events, summary);
        }
    }
}

/// Decides what happens to one frame from the guest.
fn handle_frame(shared: &Rc<Shared>, st: &mut Stack, frame: &[u8]) {
    let stats = &shared.stats;
    StatsCounters::add(&stats.rx_frames, 1);
    StatsCounters::add(&stats.rx_bytes, frame.len() as u64);
    let checksums = st.builder.checksums.clone();
    match classify(
        frame,
        shared.config.guest_ip,
        shared.config.gateway_ip,
        &checksums,
    ) {
        Inbound::ToStack => {
            if !st.device.enqueue_rx(frame) {
                StatsCounters::add(&stats.rx_dropped, 1);
            }
        }
        Inbound::Drop(why) => {
            tracing::trace!(why, "netstack: guest frame dropped");
            StatsCounters::add(&stats.rx_dropped, 1);
        }
        Inbound::TcpSyn { key, src_mac } => {
            st.guest_mac = src_mac;
            match st.tcp.get(&key) {
                Some(TcpEntry::Active(_)) => {
                    st.device.enqueue_rx(frame);
                }
                Some(TcpEntry::Connecting { .. }) => {}
                None => proxy::tcp::new_flow(shared, st, key, frame),
            }
        }
        Inbound::Udp {
            src,
            dst,
            payload,
            src_mac,
        } => {
            st.guest_mac = src_mac;
            proxy::udp::datagram(shared, st, src, dst, payload, frame);
        }
    }
}

/// Control of a running stack. Dropping it stops the stack (without waiting).
pub struct NetStackHandle {
    cmd: mpsc::UnboundedSender<Command>,
    policy: Arc<ArcSwap<Policy>>,
    stats: Arc<StatsCounters>,
    pins: PinTable,
    thread: Option<JoinHandle<()>>,
}

impl NetStackHandle {
    /// Publishes a guest port on the host: binds `port.host_addr` now and returns the bound
    /// address (useful with port 0). Each accepted connection is spliced to the guest port.
    pub fn publish(&self, port: PublishedPort) -> io::Result<SocketAddr> {
        let listener = bind_published(&port)?;
        let addr = listener.local_addr()?;
        self.cmd
            .send(Command::Publish(listener, port))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "network stack stopped"))?;
        Ok(addr)
    }

    /// Replaces the policy. New flows, DNS queries and HTTP requests use it at once; open
    /// flows that it denies are ended soon after (TCP: RST to the guest and the host socket
    /// closed; UDP: the host socket closed), each with a [`NetEvent::FlowDenied`] saying so.
    /// An open TCP flow the new policy would inspect under HTTP rules but that was opened
    /// uninspected is ended too (the guest's next connection is inspected).
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
        let _ = self.cmd.send(Command::PolicyChanged);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The names the guest resolved through the stack's DNS server, by address.
    pub fn pins(&self) -> &PinTable {
        &self.pins
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        self.stats.snapshot()
    }

    /// Stops the stack and waits for its thread; every flow is closed.
    pub fn shutdown(mut self) {
        let _ = self.cmd.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NetStackHandle {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::Shutdown);
    }
}
