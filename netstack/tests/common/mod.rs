//! A fake guest for the stack's tests: a second smoltcp interface on the device end of the
//! frame socketpair, so tests talk to the stack through a real TCP/IP peer. The test thread
//! pumps it; an optional filter drops frames to simulate loss.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use msbvm_netstack::dns::Upstream;
use msbvm_netstack::fuzzing::{FrameSink, QueueDevice};
use msbvm_netstack::policy::{Policy, Rule};
use msbvm_netstack::{EventSink, NetConfig, NetEvent, NetStack, NetStackHandle};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const HOST_ALIAS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 254);

/// Decides per frame whether it is lost (true = drop).
pub type LossFilter = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// Turns a frame from the stack into the frames the guest's smoltcp gets (a device's work).
pub type RxMap = Box<dyn FnMut(Vec<u8>, &mut VecDeque<Vec<u8>>) + Send>;

/// The fake guest's end of the frame socketpair: what its smoltcp sends goes there, unless
/// `loss_out` drops it.
pub struct GuestLink {
    socket: UnixDatagram,
    pub loss_out: Option<LossFilter>,
}

impl GuestLink {
    /// Sends a hand-made frame to the stack.
    pub fn send_raw(&self, frame: &[u8]) {
        // The socket is non-blocking and the stack may be slower than a burst on a loaded
        // machine: a full queue is waited out (bounded), as the virtio-net device would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.socket.send(frame) {
                Ok(_) => return,
                Err(e)
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("send frame: {e}"),
            }
        }
    }

    /// Queues every frame the stack sent that `loss_in` does not drop.
    fn fill(
        &self,
        rx: &mut VecDeque<Vec<u8>>,
        loss_in: &mut Option<LossFilter>,
        map: &mut Option<RxMap>,
    ) {
        let mut buf = vec![0u8; 70000];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    if loss_in.as_mut().is_some_and(|f| f(&buf[..n])) {
                        continue;
                    }
                    match map {
                        Some(map) => map(buf[..n].to_vec(), rx),
                        None => rx.push_back(buf[..n].to_vec()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

impl FrameSink for GuestLink {
    fn send(&mut self, frame: &[u8]) {
        let lost = self.loss_out.as_mut().is_some_and(|f| f(frame));
        if !lost {
            let _ = self.socket.send(frame);
        }
    }
}

/// The fake guest's device: frames from the stack are queued by [`Guest::pump`].
pub type GuestDevice = QueueDevice<GuestLink>;

pub struct Guest {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub dev: GuestDevice,
    pub loss_in: Option<LossFilter>,
    /// What happens to a frame from the stack after `loss_in` (default: given as it is).
    pub rx_map: Option<RxMap>,
    /// Raw frames received while `capture` is on (they are not given to smoltcp).
    pub captured: Vec<Vec<u8>>,
    pub capture: bool,
}

impl Guest {
    pub fn new(fd: OwnedFd, mtu: usize) -> Guest {
        let socket = UnixDatagram::from(fd);
        socket.set_nonblocking(true).unwrap();
        let mut dev = GuestDevice::new(
            mtu + 14,
            GuestLink {
                socket,
                loss_out: None,
            },
        );
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
            &mut dev,
            Instant::now(),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(10, 0, 2, 2))
            .unwrap();
        Guest {
            iface,
            sockets: SocketSet::new(vec![]),
            dev,
            loss_in: None,
            rx_map: None,
            captured: vec![],
            capture: false,
        }
    }

    /// Moves frames once both ways.
    pub fn pump(&mut self) {
        self.dev
            .sink
            .fill(&mut self.dev.rx, &mut self.loss_in, &mut self.rx_map);
        if self.capture {
            self.captured.extend(self.dev.rx.drain(..));
        }
        self.iface
            .poll(Instant::now(), &mut self.dev, &mut self.sockets);
    }

    /// Pumps until `f` returns Some, or panics after `secs` seconds.
    pub fn run_until<T>(
        &mut self,
        secs: u64,
        what: &str,
        mut f: impl FnMut(&mut Guest) -> Option<T>,
    ) -> T {
        let deadline = StdInstant::now() + Duration::from_secs(secs);
        loop {
            self.pump();
            if let Some(v) = f(self) {
                return v;
            }
            assert!(StdInstant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// Pumps for a while.
    pub fn run_for(&mut self, dur: Duration) {
        let deadline = StdInstant::now() + dur;
        while StdInstant::now() < deadline {
            self.pump();
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    pub fn tcp_connect(&mut self, dst: SocketAddrV4, local_port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(*dst.ip()), dst.port()),
            local_port,
        )
        .unwrap();
        self.sockets.add(s)
    }

    /// Connects to `port` on the host alias (the tests' servers listen on the host's loopback).
    pub fn tcp_connect_host(&mut self, port: u16, local_port: u16) -> SocketHandle {
        self.tcp_connect(SocketAddrV4::new(HOST_ALIAS, port), local_port)
    }

    /// Connects to `port` on the host alias and waits until the connection is established.
    pub fn tcp_established(&mut self, port: u16, local_port: u16) -> SocketHandle {
        let s = self.tcp_connect_host(port, local_port);
        self.run_until(5, "established", |g| g.tcp(s).may_send().then_some(()));
        s
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    pub fn udp_bind(&mut self, port: u16) -> SocketHandle {
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]),
        );
        s.bind(port).unwrap();
        self.sockets.add(s)
    }

    pub fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    /// Sends all of `data` on a TCP socket, pumping as needed.
    pub fn tcp_send_all(&mut self, h: SocketHandle, data: &[u8]) {
        let mut sent = 0;
        self.run_until(30, "tcp send", |g| {
            if g.tcp(h).can_send() {
                sent += g.tcp(h).send_slice(&data[sent..]).unwrap();
            }
            (sent == data.len()).then_some(())
        });
    }

    /// Receives exactly `n` bytes on a TCP socket.
    pub fn tcp_recv_exact(&mut self, h: SocketHandle, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; 65536];
        self.run_until(30, "tcp receive", |g| {
            if g.tcp(h).can_recv() {
                let k = g.tcp(h).recv_slice(&mut buf).unwrap();
                out.extend_from_slice(&buf[..k]);
            }
            (out.len() >= n).then_some(())
        });
        out
    }
}

/// A started stack with its fake guest and the events it reported.
pub struct Harness {
    pub guest: Guest,
    pub handle: NetStackHandle,
    pub events: Arc<Mutex<Vec<NetEvent>>>,
}

impl Harness {
    pub fn start(config: NetConfig, policy: Policy) -> Harness {
        Harness::start_with_plugins(config, policy, Arc::new(msbvm_plugins::Chain::empty()))
    }

    pub fn start_with_plugins(
        config: NetConfig,
        policy: Policy,
        plugins: Arc<msbvm_plugins::Chain>,
    ) -> Harness {
        Harness::start_on(config, policy, plugins, |device, _| device)
    }

    /// Starts the stack; `guest_end` turns the socketpair's device end into the fake guest's
    /// end (itself, or the far end of something put between them).
    fn start_on(
        config: NetConfig,
        policy: Policy,
        plugins: Arc<msbvm_plugins::Chain>,
        guest_end: impl FnOnce(OwnedFd, &NetStackHandle) -> OwnedFd,
    ) -> Harness {
        confine_if_requested();
        let (device, stack) = msbvm_netstack::frame_socketpair().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |e| events.lock().unwrap().push(e))
        };
        let mtu = config.mtu;
        let handle = NetStack::start_with_plugins(config, stack, policy, sink, plugins).unwrap();
        let guest = guest_end(device, &handle);
        Harness {
            guest: Guest::new(guest, mtu),
            handle,
            events,
        }
    }

    pub fn events(&self) -> Vec<NetEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Like [`Harness::start`], with a [`Relay`] run by the stack on its thread between the
    /// stack's socketpair and the fake guest's, as the stack runs a sandbox's virtio-net
    /// device. Also returns the relay's [`RelayControl`].
    pub fn start_hosted(config: NetConfig, policy: Policy) -> (Harness, RelayControl) {
        let control = RelayControl::default();
        let relay_control = control.clone();
        let plugins = Arc::new(msbvm_plugins::Chain::empty());
        let harness = Harness::start_on(config, policy, plugins, move |device, handle| {
            let (guest, relay_end) = msbvm_netstack::frame_socketpair().unwrap();
            let relay = Relay::new(relay_end, device, relay_control);
            handle.host(Box::new(relay)).unwrap();
            guest
        });
        (harness, control)
    }
}

/// What a test sees of and does to its [`Relay`].
#[derive(Clone, Debug, Default)]
pub struct RelayControl {
    /// How many times the stack ran it.
    pub runs: Arc<AtomicUsize>,
    /// Makes its next run its last.
    pub stop: Arc<AtomicBool>,
    /// Set once the stack dropped it.
    pub dropped: Arc<AtomicBool>,
}

/// A device for the stack to host: copies frames between two datagram sockets, nonblocking,
/// dropping a frame the other side has no room for. Its ready descriptor is an epoll set of
/// both.
pub struct Relay {
    epoll: OwnedFd,
    guest: UnixDatagram,
    device: UnixDatagram,
    control: RelayControl,
    buf: Vec<u8>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.control.dropped.store(true, Ordering::SeqCst);
    }
}

impl Relay {
    fn new(guest: OwnedFd, device: OwnedFd, control: RelayControl) -> Relay {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain syscall; checked below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epoll >= 0, "epoll_create1");
        // SAFETY: a fresh descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        for fd in [&guest, &device] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            // SAFETY: valid descriptors and event.
            let rc = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    fd.as_raw_fd(),
                    &mut ev,
                )
            };
            assert_eq!(rc, 0, "epoll_ctl");
        }
        Relay {
            epoll,
            guest: UnixDatagram::from(guest),
            device: UnixDatagram::from(device),
            control,
            buf: vec![0; 70_000],
        }
    }

    /// Moves what `from` has to `to`.
    fn relay(from: &UnixDatagram, to: &UnixDatagram, buf: &mut [u8]) {
        while let Ok(n) = from.recv(buf) {
            let _ = to.send(&buf[..n]);
        }
    }
}

impl msbvm_netstack::HostedDevice for Relay {
    fn ready_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.epoll.as_fd()
    }

    fn run(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        self.control.runs.fetch_add(1, Ordering::SeqCst);
        if self.control.stop.load(Ordering::SeqCst) {
            return false;
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // Empties the ready list; both sockets are read whatever it says.
        // SAFETY: room for two events.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, 0) };
        Relay::relay(&self.guest, &self.device, &mut self.buf);
        Relay::relay(&self.device, &self.guest, &mut self.buf);
        true
    }
}

/// A config that needs no host resolver (DNS is not what most tests look at).
pub fn test_config() -> NetConfig {
    NetConfig {
        dns_upstream: Upstream::Servers(vec!["127.0.0.1:9".parse().unwrap()]),
        ..NetConfig::default()
    }
}

/// A policy rule from its text form.
pub fn rule(text: &str) -> Rule {
    text.parse().unwrap()
}

/// A policy that opens the host alias (tests run their servers on the host's loopback).
pub fn host_allowed() -> Policy {
    Policy::builder().allow("host".parse().unwrap())
}

/// With this variable set to `1`, the netstack thread of every harness confines itself with
/// its seccomp filter (`msbvm_netstack::seccomp`, installed as the sandbox runtime does).
pub const SECCOMP_ENV: &str = "MSBVM_TEST_SECCOMP";

fn confine_if_requested() {
    fn hook(_kind: &'static str) {
        use msbvm_netstack::seccomp::{IOCTLS, SOCKET_FAMILIES, SYSCALLS};
        let program = msbvm_virtio::confine::compile(&[SYSCALLS], SOCKET_FAMILIES, IOCTLS)
            .expect("the netstack filter compiles");
        msbvm_virtio::confine::install(&program).expect("the netstack filter installs");
    }
    if std::env::var(SECCOMP_ENV).as_deref() == Ok("1") {
        msbvm_netstack::seccomp::set_thread_hook(hook);
    }
}
