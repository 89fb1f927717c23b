//! The network benchmark's parts: a fresh network namespace with a TAP device standing in for
//! the guest, msbvm's netstack pumped to that TAP, slirp4netns and pasta attached to their own
//! namespaces the same way, and the measurements (iperf3 throughput, connection rate, CPU).
//!
//! No VM is involved: the namespace's kernel plays the guest, so every stack sees the same
//! frames from the same TCP implementation and differs only in what it does with them. For
//! msbvm, a pump moves frames between the TAP and the device end of
//! [`msbvm_netstack::frame_socketpair`], as the virtio-net device does with guest buffers,
//! and like that device it runs on the stack's thread ([`msbvm_netstack::HostedDevice`]);
//! `msbvm-threaded` runs it on two threads of its own instead.
//! `msbvm` runs with a sandbox's settings: checksum and segment offload, the TAP carrying a
//! virtio-net header (`IFF_VNET_HDR`) so that a TCP frame the stack merged reaches the
//! namespace's kernel whole as a GSO frame, marked the way the device marks it for a guest
//! ([`msbvm_virtio::net::gso`]); `msbvm-plain` is the stack without offloads over a plain TAP,
//! for what they change.
//! The `msbvm-plugin` stack is msbvm with one in-process plugin ([`FlowWatcher`]) deciding
//! every new flow and told every closed flow's bytes: the cost of an in-process observer.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use msbvm_netstack::policy::{Action, Policy, Rule};
use msbvm_netstack::{discard_events, frame_socketpair, NetConfig, NetStack, NetStackHandle};
use msbvm_plugins::data::{Flow, FlowBytes};
use msbvm_plugins::{Chain, Decision, Hook, Interests, Plugin};
use msbvm_virtio::net::frame::NetHeader;

pub use crate::image_bench::{on_path, BenchResult};

/// Name of the TAP device in every namespace.
pub const TAP: &str = "tap0";

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

/// Runs `ip` with `args`; its stderr goes into the error.
fn ip(args: &[&str]) -> BenchResult<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Netns {
    /// Creates `msbvm-bench-<pid>-<tag>` with its loopback up.
    pub fn create(tag: &str) -> BenchResult<Netns> {
        let name = format!("msbvm-bench-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its bind-mounted namespace file.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> BenchResult<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Whether `TAP` in the namespace has the address `addr` yet.
    pub fn has_address(&self, addr: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "-4", "-o", "addr", "show"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {addr}/")))
    }

    /// Waits until a peer configured the namespace's interface with `addr`.
    pub fn wait_for_address(&self, addr: &str, peer: &mut Child) -> BenchResult<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.has_address(addr) {
            if let Ok(Some(status)) = peer.try_wait() {
                return Err(format!("exited ({status}) before configuring {addr}"));
            }
            if Instant::now() > deadline {
                return Err(format!("did not configure {addr} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// `TUNSETIFF`: `_IOW('T', 202, int)` (not in the libc crate for every target).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags at the start of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a TAP device `TAP` (Ethernet frames, no packet-info header, nonblocking) inside
/// `ns`, from a helper thread that enters it; the device lives as long as the returned fd.
pub fn open_tap(ns: &Netns) -> BenchResult<OwnedFd> {
    open_tap_with(ns, false)
}

/// [`open_tap`], with a `struct virtio_net_hdr` (10 bytes) before every frame in both
/// directions if `vnet_hdr`, and then the offloads a guest's driver uses: the namespace
/// hands over partial checksums and TCP frames of up to 64 KiB, which [`pump_from_vnet`]
/// treats as the virtio-net device does.
pub fn open_tap_with(ns: &Netns, vnet_hdr: bool) -> BenchResult<OwnedFd> {
    let path = ns.path();
    let vnet = if vnet_hdr { IFF_VNET_HDR } else { 0 };
    std::thread::spawn(move || -> BenchResult<OwnedFd> {
        enter_netns(&path)?;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_nonblock()
            .open("/dev/net/tun")
            .map_err(|e| format!("opening /dev/net/tun: {e}"))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | vnet) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..TAP.len()].copy_from_slice(TAP.as_bytes());
        // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as, and writes it back.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } != 0 {
            return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
        }
        // What a guest's driver with CSUM and HOST_TSO4 does: hand over TCP frames of up to
        // 64 KiB with partial checksums.
        let offloads: libc::c_uint = if vnet_hdr { TUN_F_CSUM | TUN_F_TSO4 } else { 0 };
        // SAFETY: TUNSETOFFLOAD takes the flags as its integer argument.
        if vnet_hdr && unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD as _, offloads) } != 0 {
            return Err(format!(
                "TUNSETOFFLOAD: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(OwnedFd::from(tun))
    })
    .join()
    .map_err(|_| "the TAP helper thread panicked".to_string())?
}

/// Moves the calling thread into the network namespace at `path`, for good: call it on a
/// thread of its own.
pub fn enter_netns(path: &Path) -> BenchResult<()> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: setns on a namespace file we hold open; it changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `O_NONBLOCK` on open, spelled for readability at the call site.
trait NonblockOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonblockOpen for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// `TUNSETOFFLOAD` and its flags, from `linux/if_tun.h`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 1;
const TUN_F_TSO4: libc::c_uint = 2;
/// `IFF_VNET_HDR` of `linux/if_tun.h`.
const IFF_VNET_HDR: libc::c_int = 0x4000;
/// Length of `struct virtio_net_hdr`, the TAP's default header.
const VNET_HDR_LEN: usize = 10;

/// Thread-name prefix of the pump threads (so their CPU time can be told apart).
pub const PUMP_THREAD: &str = "bench-pump";

/// Waits up to 100 ms for `events` on `fd`.
fn wait_fd(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 100) };
}

/// Copies frames from `from` to `to` until `stop`; reads and writes are nonblocking, and the
/// thread polls only when a side is not ready, so a busy link costs one read and one write
/// per frame (what a virtio-net device's queue handler costs at best).
fn pump(from: RawFd, to: RawFd, frame_max: usize, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; frame_max + 64];
    while let Some(n) = read_frame(from, &mut buf, &stop) {
        write_frame(to, &buf[..n], &stop);
    }
}

/// [`pump`] from a TAP with a virtio-net header to the stack, doing the device's part as a
/// sandbox's device does it: a TCP GSO frame passed on whole, any other GSO dropped, and a
/// partial checksum left as it is (the stack, with checksum offload, never verifies it:
/// `NetDeviceConfig::backend_ignores_checksums`).
fn pump_from_vnet(from: RawFd, to: RawFd, stop: Arc<AtomicBool>) {
    use msbvm_virtio::net::frame::{HDR_GSO_NONE, HDR_GSO_TCPV4};
    let mut buf = vec![0u8; VNET_HDR_LEN + 65600];
    while let Some(n) = read_frame(from, &mut buf, &stop) {
        if n <= VNET_HDR_LEN {
            continue;
        }
        let hdr = vnet_header(&buf[..VNET_HDR_LEN]);
        if ![HDR_GSO_NONE, HDR_GSO_TCPV4].contains(&hdr.gso_type) {
            continue;
        }
        write_frame(to, &buf[VNET_HDR_LEN..n], &stop);
    }
}

/// The TAP's 10-byte header as the device's [`NetHeader`] (the virtio 1 header adds only
/// `num_buffers`, read here as zero).
fn vnet_header(raw: &[u8]) -> NetHeader {
    let mut v1 = [0u8; msbvm_virtio::net::defs::NET_HDR_LEN];
    v1[..VNET_HDR_LEN].copy_from_slice(&raw[..VNET_HDR_LEN]);
    NetHeader::from_bytes(&v1)
}

/// [`pump`] from the stack to a TAP with a virtio-net header, marking frames as the device
/// marks them for a guest that took checksum offload and GUEST_TSO4: a TCP frame carries a
/// partial checksum (the stack computed none), and one over the MTU is a GSO frame.
fn pump_to_vnet(from: RawFd, to: RawFd, mtu: usize, stop: Arc<AtomicBool>) {
    use msbvm_virtio::net::frame::{HDR_F_NEEDS_CSUM, HDR_GSO_TCPV4};
    use msbvm_virtio::net::gso;
    let mut buf = vec![0u8; VNET_HDR_LEN + 65600];
    while let Some(n) = read_frame(from, &mut buf[VNET_HDR_LEN..], &stop) {
        let frame = &mut buf[VNET_HDR_LEN..VNET_HDR_LEN + n];
        let mut hdr = NetHeader::default();
        if let Some(layout) = gso::tcp4(frame) {
            (hdr.csum_start, hdr.csum_offset) = gso::make_partial(frame, &layout);
            hdr.flags = HDR_F_NEEDS_CSUM;
            if n > mtu + gso::ETH_LEN {
                hdr.gso_type = HDR_GSO_TCPV4;
                hdr.hdr_len = layout.hdr_len() as u16;
                hdr.gso_size = gso::segment_size(mtu, &layout) as u16;
            }
        }
        buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes()[..VNET_HDR_LEN]);
        write_frame(to, &buf[..VNET_HDR_LEN + n], &stop);
    }
}

/// Reads one frame, waiting while there is none; None once `stop` is set or on an error.
fn read_frame(from: RawFd, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: reads into `buf`, of its length.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Some(n as usize);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return None;
        }
        wait_fd(from, libc::POLLIN);
    }
    None
}

/// Writes one frame, waiting for room; a frame the other side refuses is dropped.
fn write_frame(to: RawFd, frame: &[u8], stop: &AtomicBool) {
    loop {
        // SAFETY: writes `frame`, of its length.
        let w = unsafe { libc::write(to, frame.as_ptr().cast(), frame.len()) };
        if w >= 0 {
            return;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock || stop.load(Ordering::Relaxed) {
            return;
        }
        wait_fd(to, libc::POLLOUT);
    }
}

/// The pumps above as one device run on the stack's own thread
/// ([`msbvm_netstack::HostedDevice`]), the way a sandbox's virtio-net device runs: frames
/// cross the socketpair without a thread wake-up. Nonblocking both ways; a frame the other
/// side has no room for waits, and its source is not read meanwhile.
struct HostedPump {
    epoll: OwnedFd,
    tap: RawFd,
    device: RawFd,
    vnet: bool,
    mtu: usize,
    /// A frame read from the TAP (its range in `up_buf`) that the socket had no room for.
    up_buf: Vec<u8>,
    up_pending: Option<std::ops::Range<usize>>,
    /// A frame from the stack (header included, `down_buf[..len]`) the TAP had no room for.
    down_buf: Vec<u8>,
    down_pending: Option<usize>,
    /// The epoll events each descriptor is registered for.
    tap_events: u32,
    device_events: u32,
}

impl HostedPump {
    const TAP_TOKEN: u64 = 0;
    const DEVICE_TOKEN: u64 = 1;

    fn new(
        tap: RawFd,
        device: RawFd,
        vnet: bool,
        mtu: usize,
        frame_max: usize,
    ) -> BenchResult<Self> {
        // SAFETY: plain syscall; the descriptor is checked before use.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epoll) };
        let mut pump = HostedPump {
            epoll,
            tap,
            device,
            vnet,
            mtu,
            up_buf: vec![0u8; VNET_HDR_LEN + frame_max.max(65600)],
            up_pending: None,
            down_buf: vec![0u8; VNET_HDR_LEN + frame_max.max(65600)],
            down_pending: None,
            tap_events: 0,
            device_events: 0,
        };
        for (fd, token) in [(tap, Self::TAP_TOKEN), (device, Self::DEVICE_TOKEN)] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: valid descriptors and event.
            if unsafe { libc::epoll_ctl(pump.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }
                < 0
            {
                return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
            }
        }
        pump.tap_events = libc::EPOLLIN as u32;
        pump.device_events = libc::EPOLLIN as u32;
        Ok(pump)
    }

    /// Nonblocking write of one frame: false when there is no room (the frame waits); a
    /// frame refused for any other reason is dropped.
    fn try_write(fd: RawFd, frame: &[u8]) -> bool {
        // SAFETY: writes `frame`, of its length.
        let w = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        w >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
    }

    /// Nonblocking read of one frame; None when there is none.
    fn try_read(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: reads into `buf`, of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then_some(n as usize)
    }

    /// TAP to stack, until one side blocks.
    fn pump_up(&mut self) {
        use msbvm_virtio::net::frame::{HDR_GSO_NONE, HDR_GSO_TCPV4};
        loop {
            if let Some(range) = self.up_pending.clone() {
                if !Self::try_write(self.device, &self.up_buf[range]) {
                    return;
                }
                self.up_pending = None;
            }
            let Some(n) = Self::try_read(self.tap, &mut self.up_buf) else {
                return;
            };
            if !self.vnet {
                self.up_pending = Some(0..n);
                continue;
            }
            if n <= VNET_HDR_LEN {
                continue;
            }
            let hdr = vnet_header(&self.up_buf[..VNET_HDR_LEN]);
            if [HDR_GSO_NONE, HDR_GSO_TCPV4].contains(&hdr.gso_type) {
                self.up_pending = Some(VNET_HDR_LEN..n);
            }
        }
    }

    /// Stack to TAP, until one side blocks.
    fn pump_down(&mut self) {
        use msbvm_virtio::net::frame::{HDR_F_NEEDS_CSUM, HDR_GSO_TCPV4};
        use msbvm_virtio::net::gso;
        loop {
            if let Some(len) = self.down_pending {
                let start = if self.vnet { 0 } else { VNET_HDR_LEN };
                if !Self::try_write(self.tap, &self.down_buf[start..len]) {
                    return;
                }
                self.down_pending = None;
            }
            let Some(n) = Self::try_read(self.device, &mut self.down_buf[VNET_HDR_LEN..]) else {
                return;
            };
            if n == 0 {
                continue;
            }
            if self.vnet {
                let frame = &mut self.down_buf[VNET_HDR_LEN..VNET_HDR_LEN + n];
                let mut hdr = NetHeader::default();
                if let Some(layout) = gso::tcp4(frame) {
                    (hdr.csum_start, hdr.csum_offset) = gso::make_partial(frame, &layout);
                    hdr.flags = HDR_F_NEEDS_CSUM;
                    if n > self.mtu + gso::ETH_LEN {
                        hdr.gso_type = HDR_GSO_TCPV4;
                        hdr.hdr_len = layout.hdr_len() as u16;
                        hdr.gso_size = gso::segment_size(self.mtu, &layout) as u16;
                    }
                }
                self.down_buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes()[..VNET_HDR_LEN]);
            }
            self.down_pending = Some(VNET_HDR_LEN + n);
        }
    }

    /// Registers `fd` for `events` unless it already is.
    fn watch(epoll: RawFd, fd: RawFd, token: u64, current: &mut u32, events: u32) {
        if *current == events {
            return;
        }
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid descriptors and event.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut ev) };
        *current = events;
    }
}

impl msbvm_netstack::HostedDevice for HostedPump {
    fn ready_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.epoll.as_fd()
    }

    fn run(&mut self) -> bool {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // Empties the set's ready list (the descriptors are read below whatever it says).
        // SAFETY: `events` has room for 4.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 4, 0) };
        self.pump_up();
        self.pump_down();
        // Read a side only while what came from it has gone on; wait for room where it waits.
        let (in_, out) = (libc::EPOLLIN as u32, libc::EPOLLOUT as u32);
        let tap = if self.up_pending.is_none() { in_ } else { 0 }
            | if self.down_pending.is_some() { out } else { 0 };
        let device = if self.down_pending.is_none() { in_ } else { 0 }
            | if self.up_pending.is_some() { out } else { 0 };
        let epoll = self.epoll.as_raw_fd();
        Self::watch(epoll, self.tap, Self::TAP_TOKEN, &mut self.tap_events, tap);
        Self::watch(
            epoll,
            self.device,
            Self::DEVICE_TOKEN,
            &mut self.device_events,
            device,
        );
        true
    }
}

/// Where the frame pumps run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pumps {
    /// On the stack's thread ([`HostedPump`]), as a sandbox's virtio-net device does.
    Hosted,
    /// On two threads of their own.
    Threads,
}

/// msbvm's netstack serving a TAP in its own namespace.
pub struct MsbvmLink {
    /// The namespace playing the guest.
    pub ns: Netns,
    stack: Option<NetStackHandle>,
    stop: Arc<AtomicBool>,
    pumps: Vec<JoinHandle<()>>,
    _fds: (OwnedFd, OwnedFd),
}

impl MsbvmLink {
    /// Creates the namespace and TAP, configures it as the guest agent would (10.0.2.15/24,
    /// gateway 10.0.2.2, `mtu`), starts the stack (policy: default allow plus `allow host`)
    /// and the pumps.
    pub fn start(mtu: usize) -> BenchResult<MsbvmLink> {
        let (config, policy) = MsbvmLink::bench_setup(mtu)?;
        MsbvmLink::start_with(&format!("msbvm{mtu}"), config, policy)
    }

    /// Like [`MsbvmLink::start`], with a [`FlowWatcher`] as the sandbox's plugin.
    pub fn start_watched(mtu: usize) -> BenchResult<MsbvmLink> {
        let (config, policy) = MsbvmLink::bench_setup(mtu)?;
        let chain = Arc::new(Chain::new(
            vec![Arc::new(FlowWatcher::default())],
            Arc::new(|_| {}),
        ));
        MsbvmLink::start_full(
            &format!("msbvmp{mtu}"),
            config,
            policy,
            chain,
            Pumps::Hosted,
        )
    }

    /// Like [`MsbvmLink::start`] without checksum or segment offload, over a plain TAP.
    pub fn start_plain(mtu: usize) -> BenchResult<MsbvmLink> {
        let (config, policy) = MsbvmLink::bench_setup(mtu)?;
        let config = NetConfig {
            checksum_offload: false,
            segment_offload: false,
            ..config
        };
        MsbvmLink::start_with(&format!("msbvmn{mtu}"), config, policy)
    }

    /// A sandbox's stack settings (the runtime's offloads) at `mtu`, and the bench's policy.
    fn bench_setup(mtu: usize) -> BenchResult<(NetConfig, Policy)> {
        let rule = Rule::parse("host").map_err(|e| format!("rule host: {e}"))?;
        let policy = Policy::new(Action::Allow).allow(rule);
        let config = NetConfig {
            mtu,
            checksum_offload: true,
            segment_offload: true,
            ..NetConfig::default()
        };
        Ok((config, policy))
    }

    /// Like [`MsbvmLink::start`] with the stack's `config` and `policy` given (the namespace,
    /// `msbvm-bench-<pid>-<tag>`, is configured for `config.mtu`).
    pub fn start_with(tag: &str, config: NetConfig, policy: Policy) -> BenchResult<MsbvmLink> {
        let chain = Arc::new(Chain::empty());
        MsbvmLink::start_full(tag, config, policy, chain, Pumps::Hosted)
    }

    /// Like [`MsbvmLink::start`] with the pumps on two threads of their own, as the
    /// virtio-net device ran before it moved onto the stack's thread: what that move changes.
    pub fn start_threaded(mtu: usize) -> BenchResult<MsbvmLink> {
        let (config, policy) = MsbvmLink::bench_setup(mtu)?;
        let chain = Arc::new(Chain::empty());
        MsbvmLink::start_full(
            &format!("msbvmt{mtu}"),
            config,
            policy,
            chain,
            Pumps::Threads,
        )
    }

    fn start_full(
        tag: &str,
        config: NetConfig,
        policy: Policy,
        plugins: Arc<Chain>,
        pumps_on: Pumps,
    ) -> BenchResult<MsbvmLink> {
        let ns = Netns::create(tag)?;
        // With checksum offload the stack's frames need the device's marks.
        let vnet = config.checksum_offload;
        let tap = open_tap_with(&ns, vnet)?;
        let mtu = config.mtu;
        let mtu_text = config.mtu.to_string();
        ns.ip(&["link", "set", TAP, "mtu", &mtu_text, "up"])?;
        ns.ip(&["addr", "add", "10.0.2.15/24", "dev", TAP])?;
        ns.ip(&["route", "add", "default", "via", "10.0.2.2"])?;
        let (device, stack_fd) = frame_socketpair().map_err(|e| format!("socketpair: {e}"))?;
        let frame_max = config.max_frame_len();
        let stack =
            NetStack::start_with_plugins(config, stack_fd, policy, discard_events(), plugins)
                .map_err(|e| format!("starting the netstack: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut pumps = Vec::new();
        if pumps_on == Pumps::Hosted {
            let pump = HostedPump::new(tap.as_raw_fd(), device.as_raw_fd(), vnet, mtu, frame_max)?;
            stack
                .host(Box::new(pump))
                .map_err(|e| format!("hosting the pump: {e}"))?;
            return Ok(MsbvmLink {
                ns,
                stack: Some(stack),
                stop,
                pumps,
                _fds: (tap, device),
            });
        }
        for (dir, from, to) in [
            ("up", tap.as_raw_fd(), device.as_raw_fd()),
            ("down", device.as_raw_fd(), tap.as_raw_fd()),
        ] {
            let stop = stop.clone();
            pumps.push(
                std::thread::Builder::new()
                    .name(format!("{PUMP_THREAD}-{dir}"))
                    .spawn(move || match (vnet, dir) {
                        (false, _) => pump(from, to, frame_max, stop),
                        (true, "up") => pump_from_vnet(from, to, stop),
                        (true, _) => pump_to_vnet(from, to, mtu, stop),
                    })
                    .map_err(|e| format!("spawning a pump: {e}"))?,
            );
        }
        Ok(MsbvmLink {
            ns,
            stack: Some(stack),
            stop,
            pumps,
            _fds: (tap, device),
        })
    }
}

impl Drop for MsbvmLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        if let Some(stack) = self.stack.take() {
            stack.shutdown();
        }
    }
}

/// A peer stack process (slirp4netns or pasta) serving its own namespace.
pub struct PeerLink {
    /// The namespace playing the guest.
    pub ns: Netns,
    /// The peer process (its CPU time is read from /proc).
    pub child: Child,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PeerLink {
    /// `slirp4netns --configure --mtu=MTU` on a fresh namespace; the guest is 10.0.2.100 and
    /// 10.0.2.2 reaches the host's loopback.
    pub fn slirp4netns(mtu: usize) -> BenchResult<PeerLink> {
        let ns = Netns::create(&format!("slirp{mtu}"))?;
        let mut cmd = Command::new("slirp4netns");
        cmd.args(["--configure", &format!("--mtu={mtu}"), "--netns-type=path"])
            .arg(ns.path())
            .arg(TAP);
        PeerLink::start("slirp4netns", ns, &mut cmd, "10.0.2.100")
    }

    /// `pasta` in the foreground on a fresh namespace, configured like msbvm's guest
    /// (10.0.2.15/24, gateway 10.0.2.2, which pasta maps to the host's loopback).
    pub fn pasta(mtu: usize) -> BenchResult<PeerLink> {
        let ns = Netns::create(&format!("pasta{mtu}"))?;
        let mut cmd = Command::new("pasta");
        cmd.args(["-f", "-q", "--runas", "0", "--config-net"])
            .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
            .args(["-m", &mtu.to_string(), "--netns", &ns.name]);
        PeerLink::start("pasta", ns, &mut cmd, "10.0.2.15")
    }

    /// Starts `cmd` (peer `name`, serving `ns`) and waits until the namespace has `guest_ip`.
    fn start(name: &str, ns: Netns, cmd: &mut Command, guest_ip: &str) -> BenchResult<PeerLink> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let mut link = PeerLink { ns, child };
        link.ns
            .wait_for_address(guest_ip, &mut link.child)
            .map_err(|e| format!("{name} {e}"))?;
        Ok(link)
    }

    /// CPU seconds the peer process used so far.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

/// The stacks measured.
pub const STACKS: [&str; 6] = [
    "msbvm",
    "msbvm-threaded",
    "msbvm-plain",
    "msbvm-plugin",
    "slirp4netns",
    "pasta",
];

/// The in-process plugin of the `msbvm-plugin` stack: decides every new flow (letting it
/// through) and adds up the bytes of the closed ones.
#[derive(Default)]
pub struct FlowWatcher {
    flows: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Plugin for FlowWatcher {
    fn name(&self) -> &str {
        "flow-watcher"
    }

    fn interests(&self) -> Interests {
        Interests::NONE.with(Hook::Flow).with(Hook::Bytes)
    }

    fn flow(&self, _flow: &Flow) -> Decision {
        self.flows.fetch_add(1, Ordering::Relaxed);
        Decision::Continue
    }

    fn flow_bytes(&self, bytes: &FlowBytes) {
        self.bytes
            .fetch_add(bytes.bytes_up + bytes.bytes_down, Ordering::Relaxed);
    }
}

/// One stack serving one namespace.
pub enum Link {
    /// msbvm's netstack.
    Msbvm(MsbvmLink),
    /// slirp4netns or pasta.
    Peer(PeerLink),
}

impl Link {
    /// Starts `stack` (one of [`STACKS`]) at `mtu`.
    pub fn start(stack: &str, mtu: usize) -> BenchResult<Link> {
        match stack {
            "msbvm" => MsbvmLink::start(mtu).map(Link::Msbvm),
            "msbvm-plain" => MsbvmLink::start_plain(mtu).map(Link::Msbvm),
            "msbvm-threaded" => MsbvmLink::start_threaded(mtu).map(Link::Msbvm),
            "msbvm-plugin" => MsbvmLink::start_watched(mtu).map(Link::Msbvm),
            "slirp4netns" => PeerLink::slirp4netns(mtu).map(Link::Peer),
            "pasta" => PeerLink::pasta(mtu).map(Link::Peer),
            other => Err(format!("unknown stack {other}")),
        }
    }

    /// The namespace playing the guest.
    pub fn ns(&self) -> &Netns {
        match self {
            Link::Msbvm(l) => &l.ns,
            Link::Peer(l) => &l.ns,
        }
    }

    /// The address that reaches the host's 127.0.0.1 from the namespace.
    pub fn host_address(&self) -> Ipv4Addr {
        match self {
            Link::Msbvm(_) => msbvm_netstack::config::HOST_ALIAS_IP,
            Link::Peer(_) => Ipv4Addr::new(10, 0, 2, 2),
        }
    }

    /// CPU seconds the stack used so far: (all of it, the stack thread alone). For msbvm
    /// "all" adds the pump threads, which stand in for the virtio-net device; for a peer both
    /// are its process.
    pub fn cpu_seconds(&self) -> (f64, f64) {
        match self {
            Link::Msbvm(_) => {
                let stack = threads_cpu_seconds("msbvm-netstack");
                // With plugins, their decision threads count as the stack's.
                let plugins = threads_cpu_seconds("msbvm-net-plug");
                (stack + plugins + threads_cpu_seconds(PUMP_THREAD), stack)
            }
            Link::Peer(l) => {
                let cpu = l.cpu_seconds();
                (cpu, cpu)
            }
        }
    }
}

/// Why `stack` cannot be measured here, if it cannot.
pub fn missing_stack(stack: &str) -> Option<String> {
    match stack {
        "slirp4netns" | "pasta" if !on_path(stack) => Some(format!(
            "{stack} not installed (apt-get install -y {})",
            if stack == "pasta" { "passt" } else { stack }
        )),
        _ => None,
    }
}

/// utime + stime of a /proc `stat` file, in seconds (0 when unreadable).
pub fn proc_cpu_seconds(stat_path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .map(|t| proc_cpu_seconds(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// An `iperf3 -s` on the host's 127.0.0.1, stopped on drop.
pub struct IperfServer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl IperfServer {
    /// Starts the server on a free port and waits until it accepts.
    pub fn start() -> BenchResult<IperfServer> {
        let port = free_port()?;
        let child = Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting iperf3 -s: {e}"))?;
        let server = IperfServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        // A bare connect makes the server log a failed test; it only has to answer once.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("iperf3 -s did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> BenchResult<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("picking a port: {e}"))
}

/// One iperf3 test as the receiver saw it.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes received.
    pub bytes: f64,
    /// Receiver's rate in bits per second.
    pub bits_per_second: f64,
}

/// Runs `iperf3 -c target -t secs -J` inside `ns` (`-R`: host to namespace).
pub fn iperf(
    ns: &Netns,
    target: Ipv4Addr,
    port: u16,
    secs: u32,
    reverse: bool,
) -> BenchResult<Transfer> {
    let mut cmd = ns.command("iperf3");
    cmd.args(["-c", &target.to_string(), "-p", &port.to_string()])
        .args(["-t", &secs.to_string(), "-J"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running iperf3: {e}"))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let sum = &json["end"]["sum_received"];
    match (sum["bytes"].as_f64(), sum["bits_per_second"].as_f64()) {
        (Some(bytes), Some(bits_per_second)) => Ok(Transfer {
            bytes,
            bits_per_second,
        }),
        _ => Err("iperf3 JSON has no end.sum_received".into()),
    }
}

/// Connections per second: `count` sequential connect + wait-for-FIN from inside `ns` to
/// `target` (which reaches `listener` on the host).
pub fn connection_rate(
    ns: &Netns,
    target: Ipv4Addr,
    listener: &TcpListener,
    count: u32,
) -> BenchResult<f64> {
    let port = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?
        .port();
    let acceptor = listener
        .try_clone()
        .map_err(|e| format!("cloning the listener: {e}"))?;
    // The host side closes each connection at once; the client waits for that FIN, so a
    // sample covers set-up and tear-down through the stack.
    let server = std::thread::spawn(move || {
        for _ in 0..count {
            match acceptor.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => return,
            }
        }
    });
    let path = ns.path();
    let client = std::thread::spawn(move || -> BenchResult<Duration> {
        enter_netns(&path)?;
        let addr = SocketAddr::from((target, port));
        let start = Instant::now();
        for i in 0..count {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connection {i} to {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            let _ = s.read(&mut byte);
        }
        Ok(start.elapsed())
    });
    let elapsed = client
        .join()
        .map_err(|_| "the connecting thread panicked".to_string())?;
    let elapsed = match elapsed {
        Ok(elapsed) => elapsed,
        Err(e) => {
            // Unblock the acceptor so it can be joined.
            let _ = TcpStream::connect(("127.0.0.1", port));
            return Err(e);
        }
    };
    let _ = server.join();
    Ok(f64::from(count) / elapsed.as_secs_f64())
}

/// Why this host cannot run the benchmark at all, if it cannot.
pub fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces and a TAP device)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if !on_path("iperf3") || !on_path("ip") {
        return Some("iperf3 or ip not installed (apt-get install -y iperf3 iproute2)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_of_this_process_parses() {
        // Burn a little CPU so the counters are non-zero at clock-tick resolution.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(proc_cpu_seconds("/proc/self/stat") > 0.0);
        assert_eq!(proc_cpu_seconds("/proc/self/no-such-file"), 0.0);
    }
}
