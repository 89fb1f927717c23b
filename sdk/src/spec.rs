//! What a sandbox is made of beyond CPUs and memory: its root filesystem,
//! volumes, tmpfs mounts and network. The SDK builds a [`SandboxSpec`], hands
//! it to the runtime process (as JSON on its command line) and the runtime
//! turns it into virtio devices and the guest's boot configuration.
//!
//! The textual forms the CLI accepts are parsed here so the SDK and the CLI
//! agree: [`VolumeSpec::parse`] (`-v HOST:GUEST[:ro]`, `-v NAME:GUEST[:ro]`),
//! [`TmpfsSpec::parse`] (`--tmpfs GUEST[:SIZE]`) and [`PortSpec::parse`]
//! (`-p [ADDR:]HOST:GUEST`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The image a sandbox gets when none is named: built by the project from the
/// distribution's static busybox and embedded in the `msbvm` binary.
pub const DEFAULT_IMAGE: &str = "msbvm-default:latest";

/// Everything about a sandbox's filesystems and network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The root filesystem.
    pub root: RootSpec,
    /// Host directories and named volumes mounted in the guest.
    pub volumes: Vec<VolumeSpec>,
    /// tmpfs mounts.
    pub tmpfs: Vec<TmpfsSpec>,
    /// The network.
    pub network: NetworkSpec,
    /// Default working directory of every exec (the image's `WorkingDir` when unset).
    pub workdir: Option<String>,
    /// Default user of every exec, `UID[:GID]` (the image's `User` when unset).
    pub user: Option<String>,
    /// Size limit in bytes of the writable layer of an image root (`None`:
    /// [`DEFAULT_DISK_SIZE`]); writes past it get `ENOSPC` in the guest.
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    /// What programs inside may create ([`crate::spawn`]); nothing when unset.
    #[serde(default)]
    pub spawn: Option<crate::spawn::SpawnGrant>,
    /// The sandbox that created this one from inside (a child of the spawn service).
    #[serde(default)]
    pub parent: Option<String>,
    /// Start from this snapshot directory ([`crate::snapshots`]) instead of booting: the
    /// sandbox is a fork of the snapshot's source.
    #[serde(default)]
    pub fork_of: Option<std::path::PathBuf>,
    /// A fork's vCPUs left online when it runs on fewer than its snapshot's: the machine
    /// keeps the snapshot's vCPUs and the guest takes the others offline. `None`: all.
    #[serde(default)]
    pub online_cpus: Option<u8>,
    /// Plugins, in the order they run ([`msbvm_plugins`]); started by the runtime as the
    /// sandbox's creator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<msbvm_plugins::PluginSpec>,
}

/// Size limit of an image root's writable layer when none is given (10 GiB).
pub const DEFAULT_DISK_SIZE: u64 = 10 << 30;

/// Parses a disk size: bytes, or a number with a `k`, `m` or `g` suffix
/// (`512M`, `10G`); at least 1 MiB.
pub fn parse_disk_size(text: &str) -> Result<u64> {
    let bytes = parse_size(text.trim_end_matches(['b', 'B'])).ok_or_else(|| {
        Error::InvalidConfig(format!("disk size {text:?}: expected e.g. 512M or 10G"))
    })?;
    if bytes < 1 << 20 {
        return Err(Error::InvalidConfig(format!(
            "disk size {text:?} is below the minimum of 1M"
        )));
    }
    Ok(bytes)
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            root: RootSpec::Image {
                reference: DEFAULT_IMAGE.into(),
            },
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            network: NetworkSpec::default(),
            workdir: None,
            user: None,
            disk_size_bytes: None,
            spawn: None,
            parent: None,
            fork_of: None,
            online_cpus: None,
            plugins: Vec::new(),
        }
    }
}

/// Where the guest's `/` comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootSpec {
    /// An OCI image from the local store (pulled first if missing): its layers,
    /// shared read-only, under a copy-on-write directory of this sandbox.
    Image {
        /// The image reference (`registry:5000/name:tag`, or a local name).
        reference: String,
    },
    /// A host directory served through virtio-fs.
    HostDir {
        /// The directory.
        path: PathBuf,
        /// Refuse guest writes.
        read_only: bool,
    },
    /// The runtime's own initramfs (agent + static busybox) in guest RAM: no
    /// virtio-fs at all. For benchmarks and diagnosis.
    Initramfs,
}

/// One mount of a host directory or named volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// What is mounted.
    pub source: VolumeSource,
    /// Absolute path in the guest.
    pub guest_path: String,
    /// Refuse guest writes.
    pub read_only: bool,
}

/// The two kinds of volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// A host directory (made absolute by the SDK).
    Host(PathBuf),
    /// A volume managed by msbvm (`msbvm volume create NAME`), created on first use.
    Named(String),
}

impl VolumeSpec {
    /// Parses `HOST:GUEST[:ro|:rw]` (HOST starts with `/`, `.` or `~`: a host
    /// directory) or `NAME:GUEST[:ro|:rw]` (a named volume).
    pub fn parse(text: &str) -> Result<VolumeSpec> {
        let bad = |why: &str| {
            Error::InvalidConfig(format!(
                "volume {text:?}: {why}; expected HOST_DIR:GUEST_PATH[:ro] or NAME:GUEST_PATH[:ro]"
            ))
        };
        let mut parts: Vec<&str> = text.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() == 3 => {
                parts.pop();
                true
            }
            Some(&"rw") if parts.len() == 3 => {
                parts.pop();
                false
            }
            _ => false,
        };
        let [source, guest] = parts[..] else {
            return Err(bad("wrong number of `:`-separated parts"));
        };
        if source.is_empty() {
            return Err(bad("the source is empty"));
        }
        check_guest_path(guest).map_err(|why| bad(&why))?;
        let source =
            if source.starts_with('/') || source.starts_with('.') || source.starts_with('~') {
                let expanded = match source.strip_prefix('~') {
                    Some(rest) => {
                        let home =
                            std::env::var_os("HOME").ok_or_else(|| bad("HOME is not set"))?;
                        PathBuf::from(home).join(rest.trim_start_matches('/'))
                    }
                    None => PathBuf::from(source),
                };
                let absolute = std::path::absolute(&expanded)
                    .map_err(|e| bad(&format!("cannot make the path absolute: {e}")))?;
                VolumeSource::Host(absolute)
            } else {
                crate::volumes::validate_volume_name(source)?;
                VolumeSource::Named(source.to_string())
            };
        Ok(VolumeSpec {
            source,
            guest_path: guest.to_string(),
            read_only,
        })
    }
}

/// A tmpfs mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsSpec {
    /// Absolute path in the guest.
    pub guest_path: String,
    /// Size limit in bytes (`None`: half the guest's RAM, the kernel's default).
    pub size_bytes: Option<u64>,
}

impl TmpfsSpec {
    /// Parses `GUEST_PATH[:SIZE]` with SIZE in bytes or with a `k`, `m` or `g` suffix.
    pub fn parse(text: &str) -> Result<TmpfsSpec> {
        let bad = |why: String| {
            Error::InvalidConfig(format!(
                "tmpfs {text:?}: {why}; expected GUEST_PATH[:SIZE], e.g. /scratch:64m"
            ))
        };
        let (path, size) = match text.split_once(':') {
            Some((p, s)) => (p, Some(s)),
            None => (text, None),
        };
        check_guest_path(path).map_err(bad)?;
        let size_bytes = match size {
            None => None,
            Some(s) => Some(parse_size(s).ok_or_else(|| bad(format!("bad size {s:?}")))?),
        };
        Ok(TmpfsSpec {
            guest_path: path.to_string(),
            size_bytes,
        })
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, shift) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 10),
        'm' => (&s[..s.len() - 1], 20),
        'g' => (&s[..s.len() - 1], 30),
        _ => (&s[..], 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&n| n > 0)
}

fn check_guest_path(path: &str) -> std::result::Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("the guest path {path:?} is not absolute"));
    }
    if path == "/" {
        return Err("the guest path cannot be /".into());
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!("the guest path {path:?} contains . or .."));
    }
    if path.contains('\0') {
        return Err("the guest path contains a NUL".into());
    }
    Ok(())
}

/// The network of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Whether the guest has a network interface at all.
    pub enabled: bool,
    /// What happens to traffic no rule matches: `true` allows it. Built-in
    /// denials (private, loopback, link-local, metadata, the host) apply first
    /// unless a rule says otherwise.
    pub default_allow: bool,
    /// Rules in order (first match wins), in the grammar of
    /// `msbvm_netstack::policy` (`--net-allow`/`--net-deny`).
    pub rules: Vec<NetRule>,
    /// Published ports (ingress from the host).
    pub ports: Vec<PortSpec>,
    /// Interface MTU (default 1500).
    pub mtu: u16,
    /// DNS servers the netstack forwards to, instead of the host's resolvers.
    pub dns_servers: Vec<SocketAddr>,
    /// Most TCP connections (and, separately, UDP flows) the guest may have open at once;
    /// beyond it new ones are refused (default 256 each).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// TLS interception (none by default; secrets turn it on for their hosts).
    #[serde(default)]
    pub tls: TlsSpec,
}

/// Which certificate authority a sandbox's interception uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaScope {
    /// The user's CA, made once under the msbvm data directory (`tls/ca.pem`, `tls/ca.key`).
    #[default]
    User,
    /// A CA made for this sandbox alone, kept in the runtime's memory only (each fork of a
    /// snapshot makes its own, which its guest is given to trust).
    Sandbox,
}

impl CaScope {
    /// Parses `user`, or `sandbox` (also spelled `per-sandbox`, as the CLI's `--tls-ca`).
    pub fn parse(text: &str) -> Result<CaScope> {
        match text {
            "user" => Ok(CaScope::User),
            "sandbox" | "per-sandbox" => Ok(CaScope::Sandbox),
            _ => Err(Error::InvalidConfig(format!(
                "TLS CA {text:?}: use \"user\" or \"sandbox\""
            ))),
        }
    }
}

/// The MTUs a guest interface may have (IPv4's minimum to the netstack's largest frame).
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=65520;

/// `mtu`, if it is in [`MTU_RANGE`].
pub fn checked_mtu(mtu: u16) -> Result<u16> {
    if MTU_RANGE.contains(&mtu) {
        Ok(mtu)
    } else {
        Err(Error::InvalidConfig(format!(
            "MTU {mtu} is out of range: use {} to {}",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )))
    }
}

/// A DNS server as `ADDR` (port 53) or `ADDR:PORT` (`[V6ADDR]:PORT` for IPv6).
pub fn parse_dns_server(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| Error::InvalidConfig(format!("DNS server {text:?} is not ADDR or ADDR:PORT")))
}

/// TLS interception settings. Nothing here is secret: it travels in the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSpec {
    /// Hosts whose TLS connections the network stack terminates: `HOST`, `*.SUFFIX` or `all`.
    pub intercept: Vec<String>,
    /// Hosts never intercepted (`HOST` or `*.SUFFIX`; certificate-pinning clients).
    pub bypass: Vec<String>,
    /// PEM files of extra trust roots for upstream servers (absolute paths).
    pub upstream_cas: Vec<PathBuf>,
    /// The certificate authority the guest trusts.
    pub ca: CaScope,
}

impl TlsSpec {
    /// Whether anything asks for interception.
    pub fn is_requested(&self) -> bool {
        !self.intercept.is_empty()
    }

    /// Checks the patterns and makes the CA paths absolute.
    pub fn check(&mut self) -> Result<()> {
        for pattern in &self.intercept {
            if pattern != "all" {
                crate::secrets::validate_host_pattern(pattern).map_err(|why| {
                    Error::InvalidConfig(format!("--tls-intercept {pattern:?}: {why} (or `all`)"))
                })?;
            }
        }
        for host in &self.bypass {
            crate::secrets::validate_host_pattern(host)
                .map_err(|why| Error::InvalidConfig(format!("--tls-bypass {host:?}: {why}")))?;
        }
        for path in &mut self.upstream_cas {
            if !path.is_file() {
                return Err(Error::InvalidConfig(format!(
                    "--tls-upstream-ca {}: no such file",
                    path.display()
                )));
            }
            *path = std::path::absolute(&*path)
                .map_err(Error::io(format!("resolving {}", path.display())))?;
        }
        Ok(())
    }
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            enabled: true,
            default_allow: true,
            rules: Vec::new(),
            ports: Vec::new(),
            mtu: 1500,
            dns_servers: Vec::new(),
            max_connections: None,
            tls: TlsSpec::default(),
        }
    }
}

/// One policy rule and its action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRule {
    /// Allow (`true`) or deny what the rule matches.
    pub allow: bool,
    /// The rule text.
    pub rule: String,
}

/// A published port: connections to `host` reach the guest's `guest_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The host address and port to listen on.
    pub host: SocketAddr,
    /// The guest TCP port.
    pub guest_port: u16,
}

impl PortSpec {
    /// Parses `[ADDR:]HOST_PORT:GUEST_PORT` (ADDR defaults to 127.0.0.1;
    /// an IPv6 ADDR goes in brackets).
    pub fn parse(text: &str) -> Result<PortSpec> {
        let bad = |why: &str| {
            Error::InvalidConfig(format!(
                "port {text:?}: {why}; expected [ADDR:]HOST_PORT:GUEST_PORT, e.g. 8080:80"
            ))
        };
        let (rest, guest) = text.rsplit_once(':').ok_or_else(|| bad("no `:`"))?;
        let guest_port: u16 = guest.parse().map_err(|_| bad("bad guest port"))?;
        let (addr, host_port) = match rest.rsplit_once(':') {
            Some((addr, port)) => {
                let addr = addr.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = addr.parse().map_err(|_| bad("bad host address"))?;
                (ip, port)
            }
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
        };
        let host_port: u16 = host_port.parse().map_err(|_| bad("bad host port"))?;
        if guest_port == 0 {
            return Err(bad("the guest port cannot be 0"));
        }
        Ok(PortSpec {
            host: SocketAddr::new(addr, host_port),
            guest_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_words_parse_and_bad_ones_say_why() {
        assert_eq!(CaScope::parse("user").unwrap(), CaScope::User);
        assert_eq!(CaScope::parse("sandbox").unwrap(), CaScope::Sandbox);
        assert_eq!(CaScope::parse("per-sandbox").unwrap(), CaScope::Sandbox);
        assert!(CaScope::parse("mine")
            .unwrap_err()
            .to_string()
            .contains("\"user\""));
        assert_eq!(checked_mtu(1500).unwrap(), 1500);
        assert!(checked_mtu(575).is_err() && checked_mtu(65521).is_err());
        assert_eq!(
            parse_dns_server("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("::1").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        for bad in ["", "dns.example", "10.0.0.1:99999", "1.2.3"] {
            let e = parse_dns_server(bad).unwrap_err();
            assert!(e.to_string().contains("ADDR:PORT"), "{e}");
        }
    }

    #[test]
    fn volumes_parse() {
        let v = VolumeSpec::parse("/srv/data:/data:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Host("/srv/data".into()));
        assert_eq!(v.guest_path, "/data");
        assert!(v.read_only);
        let v = VolumeSpec::parse("cache:/var/cache").unwrap();
        assert_eq!(v.source, VolumeSource::Named("cache".into()));
        assert!(!v.read_only);
        let v = VolumeSpec::parse("./rel:/x:rw").unwrap();
        assert!(matches!(v.source, VolumeSource::Host(p) if p.is_absolute()));
        for bad in [
            "/a",
            "/a:rel",
            "/a:/",
            ":/x",
            "/a:/b/../c",
            "/a:/b:ro:x",
            "bad name:/x",
        ] {
            assert!(VolumeSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tmpfs_parses_sizes() {
        assert_eq!(TmpfsSpec::parse("/s").unwrap().size_bytes, None);
        assert_eq!(
            TmpfsSpec::parse("/s:64m").unwrap().size_bytes,
            Some(64 << 20)
        );
        assert_eq!(TmpfsSpec::parse("/s:4096").unwrap().size_bytes, Some(4096));
        for bad in ["s", "/s:0", "/s:12x", "/s:"] {
            assert!(TmpfsSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_parse_and_default_to_loopback() {
        let p = PortSpec::parse("8080:80").unwrap();
        assert_eq!(p.host, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p.guest_port, 80);
        let p = PortSpec::parse("0.0.0.0:8080:80").unwrap();
        assert_eq!(p.host, "0.0.0.0:8080".parse().unwrap());
        let p = PortSpec::parse("[::1]:9000:90").unwrap();
        assert_eq!(p.host, "[::1]:9000".parse().unwrap());
        for bad in ["80", "x:80", "8080:0", "1.2.3:8080:80", "8080:99999"] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_sizes_parse() {
        assert_eq!(parse_disk_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_disk_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_disk_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_disk_size("2097152").unwrap(), 2 << 20);
        for bad in ["", "x", "0", "10k", "-1G"] {
            assert!(parse_disk_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = SandboxSpec {
            volumes: vec![VolumeSpec::parse("v1:/v").unwrap()],
            tmpfs: vec![TmpfsSpec::parse("/t:1m").unwrap()],
            ..SandboxSpec::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SandboxSpec>(&json).unwrap(), spec);
    }
}
