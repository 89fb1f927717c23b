//! Network set-up of the guest's one Ethernet interface, from the host's
//! [`NetworkSetup`].
//!
//! The guest has no `ip` or `ifconfig`, so [`configure`] talks to the kernel
//! directly with the classic interface ioctls on an `AF_INET` datagram
//! socket: MTU, address, netmask, link up, then the default route through
//! the gateway (`SIOCADDRT`). That is all a static IPv4 set-up needs, and
//! far less code than rtnetlink messages built by hand.
//!
//! [`write_resolver_files`] writes `/etc/resolv.conf` and merges the host's
//! names into `/etc/hosts` ([`msbvm_protocol::resolver`] decides the content),
//! unless the host has already written them into an image root. A root shared
//! with the host gets them through bind mounts instead ([`super::boot_files`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use msbvm_protocol::boot::NetworkSetup;

use msbvm_protocol::resolver::{hosts, resolv_conf};

use super::boot_files::{place, Placement};

/// Where the kernel lists network interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// ARPHRD_ETHER, as `/sys/class/net/<if>/type` shows it.
const ARPHRD_ETHER: &str = "1";

/// Why the network could not be set up; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `/sys/class/net` could not be read.
    #[error("cannot list network interfaces in {SYS_CLASS_NET}: {0}")]
    ListInterfaces(io::Error),
    /// Only loopback (or nothing Ethernet-like) exists.
    #[error("no Ethernet interface in {SYS_CLASS_NET}; is the virtio-net device attached?")]
    NoInterface,
    /// The interface name does not fit `IFNAMSIZ`.
    #[error("interface name {0:?} is too long")]
    BadName(String),
    /// The prefix length is over 32.
    #[error("invalid IPv4 prefix length /{0}")]
    BadPrefix(u8),
    /// The socket the ioctls go through could not be opened.
    #[error("cannot open a socket to configure the network: {0}")]
    Socket(io::Error),
    /// One configuration ioctl failed.
    #[error("cannot {step} of {interface}: {source}")]
    Ioctl {
        /// What was being done ("set the MTU", ...).
        step: &'static str,
        /// The interface.
        interface: String,
        /// The kernel's answer.
        source: io::Error,
    },
}

/// Configures the first Ethernet interface (normally `eth0`) as `setup`
/// says: MTU, address/prefix, up, default route via the gateway.
pub fn configure(setup: &NetworkSetup) -> Result<(), NetError> {
    let name = first_interface(Path::new(SYS_CLASS_NET))?;
    configure_interface(&name, setup)
}

/// The first (by name) non-loopback Ethernet interface under `sys_class_net`.
pub fn first_interface(sys_class_net: &Path) -> Result<String, NetError> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .map_err(NetError::ListInterfaces)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .filter(|name| {
            std::fs::read_to_string(sys_class_net.join(name).join("type"))
                .is_ok_and(|t| t.trim() == ARPHRD_ETHER)
        })
        .collect();
    names.sort();
    names.into_iter().next().ok_or(NetError::NoInterface)
}

/// The IPv4 netmask for a prefix length, or None past 32.
pub fn netmask(prefix_len: u8) -> Option<[u8; 4]> {
    let bits = match prefix_len {
        0 => 0,
        1..=32 => u32::MAX << (32 - u32::from(prefix_len)),
        _ => return None,
    };
    Some(bits.to_be_bytes())
}

/// Configures interface `name` as `setup` says (see [`configure`]). A zero
/// gateway means no default route; an existing one is left as is.
pub fn configure_interface(name: &str, setup: &NetworkSetup) -> Result<(), NetError> {
    let mask = netmask(setup.prefix_len).ok_or(NetError::BadPrefix(setup.prefix_len))?;
    let ifname = ifname(name)?;
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let failed = |step: &'static str| {
        let source = io::Error::last_os_error();
        NetError::Ioctl {
            step,
            interface: name.to_owned(),
            source,
        }
    };

    let mut req = new_ifreq(&ifname);
    req.ifr_ifru.ifru_mtu = libc::c_int::from(setup.mtu);
    // SAFETY: SIOCSIFMTU reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as _, &req) } < 0 {
        return Err(failed("set the MTU"));
    }

    let mut req = new_ifreq(&ifname);
    req.ifr_ifru.ifru_addr = sockaddr(setup.address);
    // SAFETY: SIOCSIFADDR reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR as _, &req) } < 0 {
        return Err(failed("set the address"));
    }

    let mut req = new_ifreq(&ifname);
    req.ifr_ifru.ifru_netmask = sockaddr(mask);
    // SAFETY: SIOCSIFNETMASK reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK as _, &req) } < 0 {
        return Err(failed("set the netmask"));
    }

    let mut req = new_ifreq(&ifname);
    // SAFETY: SIOCGIFFLAGS writes into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(failed("read the flags"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(failed("bring up"));
    }

    if setup.gateway != [0; 4] {
        // SAFETY: rtentry is plain old data (a null rt_dev is valid).
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr([0; 4]);
        route.rt_genmask = sockaddr([0; 4]);
        route.rt_gateway = sockaddr(setup.gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // The kernel only reads the name; `ifname` outlives the call.
        route.rt_dev = ifname.as_ptr().cast_mut();
        // SAFETY: SIOCADDRT reads the rtentry and the name it points to.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &route) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(failed("add the default route"));
        }
    }
    Ok(())
}

/// Gives the first Ethernet interface the MAC address `mac` (a fork's own), while it is up:
/// virtio-net lets the address change live, and the host's network stack learns it from the
/// guest's next frame.
pub fn set_mac(mac: [u8; 6]) -> Result<(), NetError> {
    let name = first_interface(Path::new(SYS_CLASS_NET))?;
    set_interface_mac(&name, mac)
}

/// Sets interface `name`'s MAC address (see [`set_mac`]).
pub fn set_interface_mac(name: &str, mac: [u8; 6]) -> Result<(), NetError> {
    let ifname = ifname(name)?;
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = new_ifreq(&ifname);
    // SAFETY: all zeroes is a valid sockaddr.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    // SAFETY: SIOCSIFHWADDR reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR as _, &req) } < 0 {
        return Err(NetError::Ioctl {
            step: "set the MAC address",
            interface: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn ifname(name: &str) -> Result<CString, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetError::BadName(name.to_owned()));
    }
    CString::new(name).map_err(|_| NetError::BadName(name.to_owned()))
}

fn new_ifreq(name: &CString) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // `name` is shorter than IFNAMSIZ, so the zeroed tail terminates it.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req
}

/// An `AF_INET` address in the generic `sockaddr` the ioctls take.
fn sockaddr(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // both are plain old data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Writes `<root>/etc/resolv.conf` and merges the host's names into
/// `<root>/etc/hosts` (see the module docs). Creates `<root>/etc`.
pub fn write_resolver_files(
    root: &Path,
    setup: &NetworkSetup,
    hostname: &str,
    placement: Placement,
) -> io::Result<()> {
    place(
        root,
        "etc/resolv.conf",
        resolv_conf(&setup.dns).as_bytes(),
        placement,
    )?;
    // Missing, a dangling symlink or not text: start from nothing rather
    // than leave the guest without localhost.
    let existing = std::fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
    let content = hosts(&existing, setup, hostname);
    place(root, "etc/hosts", content.as_bytes(), placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_from_prefix() {
        assert_eq!(netmask(0), Some([0, 0, 0, 0]));
        assert_eq!(netmask(1), Some([128, 0, 0, 0]));
        assert_eq!(netmask(24), Some([255, 255, 255, 0]));
        assert_eq!(netmask(30), Some([255, 255, 255, 252]));
        assert_eq!(netmask(32), Some([255, 255, 255, 255]));
        assert_eq!(netmask(33), None);
    }

    #[test]
    fn resolver_files_are_written_under_root_replacing_a_symlink() {
        let dir = std::env::temp_dir().join(format!("msbvm-net-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            dir.join("etc/resolv.conf"),
        )
        .unwrap();
        std::fs::write(dir.join("etc/hosts"), "192.168.1.1 router\n").unwrap();
        write_resolver_files(&dir, &NetworkSetup::example(), "box", Placement::InPlace).unwrap();
        let resolv = std::fs::read_to_string(dir.join("etc/resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 10.0.2.3\n"));
        assert!(!std::fs::symlink_metadata(dir.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
        let hosts = std::fs::read_to_string(dir.join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost\n10.0.2.15\tbox\n"));
        assert!(hosts.ends_with("192.168.1.1 router\n"));

        // A root without /etc gets one.
        let bare = dir.join("bare");
        write_resolver_files(&bare, &NetworkSetup::example(), "box", Placement::InPlace).unwrap();
        assert!(bare.join("etc/hosts").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn first_interface_skips_loopback_and_non_ethernet() {
        let dir = std::env::temp_dir().join(format!("msbvm-sysnet-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, ty) in [("lo", "772"), ("sit0", "776"), ("eth1", "1"), ("eth0", "1")] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("type"), format!("{ty}\n")).unwrap();
        }
        assert_eq!(first_interface(&dir).unwrap(), "eth0");
        std::fs::remove_dir_all(dir.join("eth0")).unwrap();
        std::fs::remove_dir_all(dir.join("eth1")).unwrap();
        assert!(matches!(first_interface(&dir), Err(NetError::NoInterface)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_prefix_and_name_are_refused_before_any_ioctl() {
        let mut s = NetworkSetup::example();
        s.prefix_len = 40;
        assert!(matches!(
            configure_interface("eth0", &s),
            Err(NetError::BadPrefix(40))
        ));
        assert!(matches!(
            configure_interface("a-very-long-interface-name", &NetworkSetup::example()),
            Err(NetError::BadName(_))
        ));
    }

    /// Runs `configure_interface` for real in a fresh network namespace (on
    /// a thread of its own: unshare affects only the calling thread) with a
    /// veth pair made by `ip`, then reads the result back with `ip`.
    #[test]
    fn configure_sets_mtu_address_link_and_default_route_in_a_netns() {
        if std::process::Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: the ip tool (iproute2) is not installed");
            return;
        }
        let result = std::thread::spawn(|| {
            // SAFETY: affects only this thread, which runs nothing else.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "skipped: cannot create a network namespace: {}",
                    io::Error::last_os_error()
                ));
            }
            // Through the agent's reaper: once another test in this binary started it, it
            // reaps every child (waitpid(-1)), so std's own wait would find none (ECHILD).
            let ip = |args: &str| {
                use std::io::Read;
                let mut spawned = None;
                let (_, status) = super::super::reaper::Reaper::global()
                    .spawn(|| {
                        let child = std::process::Command::new("ip")
                            .args(args.split_whitespace())
                            .stdout(std::process::Stdio::piped())
                            .stderr(std::process::Stdio::piped())
                            .spawn()?;
                        let pid = child.id() as libc::pid_t;
                        spawned = Some(child);
                        Ok(pid)
                    })
                    .expect("run ip");
                // The reaper waits for it (its status arrives on `status`).
                #[allow(clippy::zombie_processes)]
                let mut child = spawned.expect("spawned");
                let mut text = String::new();
                if let Some(mut out) = child.stdout.take() {
                    let _ = out.read_to_string(&mut text);
                }
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut text);
                }
                let ok = status
                    .recv()
                    .is_ok_and(|s| libc::WIFEXITED(s.0) && libc::WEXITSTATUS(s.0) == 0);
                (ok, text)
            };
            let (ok, why) = ip("link add eth0 type veth peer name peer0");
            if !ok {
                return Err(format!("skipped: cannot create a veth pair: {why}"));
            }
            configure_interface("eth0", &NetworkSetup::example())
                .map_err(|e| format!("configure: {e}"))?;
            // A fork's new address, on the interface that is up.
            set_interface_mac("eth0", [0x02, 0x11, 0x22, 0x33, 0x44, 0x55])
                .map_err(|e| format!("set_mac: {e}"))?;
            Ok((
                ip("-o link show eth0").1,
                ip("-o -4 addr show eth0").1,
                ip("-4 route").1,
            ))
        })
        .join()
        .unwrap();
        let (link, addr, route) = match result {
            Ok(v) => v,
            Err(msg) if msg.starts_with("skipped") => {
                eprintln!("{msg}");
                return;
            }
            Err(msg) => panic!("{msg}"),
        };
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains(",UP"), "{link}");
        assert!(link.contains("link/ether 02:11:22:33:44:55"), "{link}");
        assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
        assert!(route.contains("default via 10.0.2.2 dev eth0"), "{route}");
    }
}
