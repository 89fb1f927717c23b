//! The stack itself: one thread running a current-thread tokio runtime that owns the frame
//! socket, the smoltcp interface and every flow.
//!
//! Everything shares one `Rc<Shared>` ([`crate::state`]): the loop reads frames, decides new
//! flows before smoltcp sees them ([`crate::frames::classify`]), hands them to the flow
//! proxies ([`crate::proxy`]) and published ports ([`crate::ports`]), polls smoltcp, and sleeps on frame readiness, smoltcp's
//! `poll_delay` or a wake from a flow task that moved data. Flow tasks touch their smoltcp socket
//! directly (same thread, short `RefCell` borrows never held across an await), so data moves
//! between smoltcp's buffers and host sockets without intermediate copies.

mod enforce;
mod hosted;

pub use hosted::HostedDevice;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use msbvm_plugins::Chain;
use smoltcp::time::Instant;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

use crate::config::{NetConfig, PublishedPort};
use crate::dns::DnsServer;
use crate::events::{emit, EventSink, SUMMARY_INTERVAL};
use crate::frames::{classify, Inbound};
use crate::pins::PinTable;
use crate::plugin_gate::PluginGate;
use crate::policy::Policy;
use crate::proxy;
use crate::state::{Shared, Stack, TcpEntry};
use crate::stats::{NetStats, StatsCounters};

/// Socket buffer size of each end of the frame socketpair: room for bursts of large frames.
const FRAME_SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Frames read per loop turn before smoltcp is polled and other tasks get to run.
const RX_BATCH: usize = 64;

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

/// Control messages from the handle to the stack thread.
enum Command {
    Publish(std::net::TcpListener, PublishedPort),
    /// Run this device on the stack's thread ([`NetStackHandle::host`]).
    Host(Box<dyn HostedDevice>),
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
        Self::start_with_plugins(config, stack_fd, policy, events, Arc::new(Chain::empty()))
    }

    /// [`start`](Self::start) with the sandbox's plugins: the ones that asked for `net.bytes`
    /// or `net.dns_answer` hear of closed flows and DNS answers (what `events` is told of);
    /// the ones that asked for `net.flow`, `net.dns` or `net.http` decide on what the policy
    /// allowed (a denial is reported as
    /// [`NetEvent::FlowDenied`](crate::NetEvent::FlowDenied) and the like, with rule
    /// `plugins`), and may change inspected requests' headers. Decisions run on threads of
    /// their own (started only when a plugin asked for one), so a slow plugin delays only the
    /// flow it decides on.
    pub fn start_with_plugins(
        config: NetConfig,
        stack_fd: OwnedFd,
        policy: Policy,
        events: EventSink,
        plugins: Arc<Chain>,
    ) -> io::Result<NetStackHandle> {
        let plugins = Arc::new(PluginGate::new(plugins)?);
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
        let dns = DnsServer::new(config.dns_upstream.clone(), pins.clone())?
            .with_secret_hosts(
                config
                    .secrets
                    .iter()
                    .flat_map(|s| s.hosts.iter().map(String::as_str)),
            )
            .with_plugins(plugins.clone());
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(
                crate::tls::Interceptor::new(tls, &config.secrets)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            )),
            None => None,
        };
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
                        let built = UnixDatagram::from_std(frame_socket).map(|socket| {
                            Shared::new(
                                config,
                                Rc::new(socket),
                                policy,
                                events,
                                stats,
                                pins,
                                dns,
                                tls,
                                plugins,
                            )
                        });
                        match built {
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
}

fn bind_published(port: &PublishedPort) -> io::Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(port.host_addr).map_err(|e| bind_error(port.host_addr, e))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Names the cause when binding a privileged port (below 1024, unless the host lowered
/// `net.ipv4.ip_unprivileged_port_start`) was refused for want of the capability.
fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::PermissionDenied && (1..1024).contains(&addr.port()) {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("binding {addr} needs CAP_NET_BIND_SERVICE or root ({e})"),
        )
    } else {
        e
    }
}

/// The loop: read a batch of frames, decide and queue them, poll smoltcp, sleep.
async fn run(shared: Rc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    tokio::task::spawn_local(report_suppressed(shared.clone()));
    let socket = shared.frame_socket.clone();
    // One byte more than the largest frame, so a longer datagram shows as one.
    let mut buf = vec![0u8; shared.config.max_guest_frame_len() + 1];
    let mut hosted: Option<hosted::Hosted> = None;
    let mut run_device = false;
    loop {
        if std::mem::take(&mut run_device) {
            if let Some(device) = &mut hosted {
                if !device.run() {
                    hosted = None;
                }
            }
        }
        let sent_before = shared
            .stats
            .tx_frames
            .load(std::sync::atomic::Ordering::Relaxed);
        let (delay, backlog, batch_full, up_wait) = {
            let mut st = shared.stack.borrow_mut();
            let mut read = 0;
            let mut up_wait = None;
            while read < RX_BATCH {
                if let Some(pace) = &mut st.up {
                    up_wait = pace.wait(std::time::Instant::now());
                    if up_wait.is_some() {
                        break;
                    }
                }
                match socket.try_recv(&mut buf) {
                    Ok(n) => {
                        read += 1;
                        if let Some(pace) = &mut st.up {
                            pace.spend(n);
                        }
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
            let mut delay = st.iface.poll_delay(now, &st.sockets);
            if let Some(down_wait) = st.device.tx.pace_wait() {
                // smoltcp wants to send but may not yet: poll again when it may.
                let down_wait =
                    smoltcp::time::Duration::from_micros(down_wait.as_micros() as u64 + 1);
                delay = delay.map(|d| d.max(down_wait));
            }
            shared.sync_flow_stats(st);
            (delay, backlog, read == RX_BATCH, up_wait)
        };
        let sent = shared
            .stats
            .tx_frames
            .load(std::sync::atomic::Ordering::Relaxed)
            != sent_before;
        if hosted.is_some() && sent {
            // The hosted device takes the frames now, on this thread (and what the guest
            // answered meanwhile), after the flow tasks had their turn.
            run_device = true;
            tokio::task::yield_now().await;
            continue;
        }
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
                Some(Command::Host(device)) => match hosted::Hosted::new(device) {
                    Ok(device) => {
                        hosted = Some(device);
                        run_device = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "netstack: cannot host the device"),
                },
                Some(Command::PolicyChanged) => enforce::end_denied_flows(&shared),
                Some(Command::Shutdown) | None => return,
            },
            ready = hosted::ready(&hosted), if hosted.is_some() => match ready {
                Ok(()) => run_device = true,
                Err(e) => {
                    tracing::warn!(error = %e, "netstack: hosted device failed, dropping it");
                    hosted = None;
                }
            },
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(up_wait.unwrap_or_default()), if up_wait.is_some() => {}
            ready = socket.readable(), if up_wait.is_none() => {
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
        Inbound::Udp(datagram) => {
            st.guest_mac = datagram.src_mac;
            proxy::udp::datagram(shared, st, &datagram, frame);
        }
    }
}

/// Hands devices to a running stack's thread ([`NetStackHandle::device_host`]).
#[derive(Clone, Debug)]
pub struct DeviceHost {
    cmd: mpsc::UnboundedSender<Command>,
}

impl DeviceHost {
    /// See [`NetStackHandle::host`].
    pub fn host(&self, device: Box<dyn HostedDevice>) -> io::Result<()> {
        self.cmd
            .send(Command::Host(device))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "network stack stopped"))
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
    /// closed; UDP: the host socket closed), each with a
    /// [`NetEvent::FlowDenied`](crate::NetEvent::FlowDenied) saying so.
    /// An open TCP flow the new policy would inspect under HTTP rules but that was opened
    /// uninspected is ended too (the guest's next connection is inspected).
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
        let _ = self.cmd.send(Command::PolicyChanged);
    }

    /// Runs `device` on the stack's thread from now on, until its
    /// [`run`](HostedDevice::run) says it is done (see [`HostedDevice`]). One device at a
    /// time: a second replaces the first.
    pub fn host(&self, device: Box<dyn HostedDevice>) -> io::Result<()> {
        self.device_host().host(device)
    }

    /// A handle that only hosts devices ([`host`](Self::host)), for whoever creates them
    /// (the VMM creates the virtio-net device when the VM starts).
    pub fn device_host(&self) -> DeviceHost {
        DeviceHost {
            cmd: self.cmd.clone(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A real refused bind is in the runtime's confinement tests (dropping a thread's
    /// capability needs `unsafe`, which this crate forbids).
    #[test]
    fn a_refused_privileged_port_names_the_capability() {
        let denied = || io::Error::from_raw_os_error(libc::EACCES);
        let low = bind_error(SocketAddr::from(([0, 0, 0, 0], 80)), denied());
        assert_eq!(low.kind(), io::ErrorKind::PermissionDenied);
        let text = low.to_string();
        assert!(
            text.starts_with("binding 0.0.0.0:80 needs CAP_NET_BIND_SERVICE or root"),
            "{text}"
        );
        // Other refusals keep their own words.
        for (port, e) in [
            (8080, denied()),
            (80, io::Error::from_raw_os_error(libc::EADDRINUSE)),
        ] {
            let other = bind_error(SocketAddr::from(([127, 0, 0, 1], port)), e);
            assert!(!other.to_string().contains("CAP_NET"), "{other}");
        }
    }
}
