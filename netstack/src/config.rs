//! Addresses and limits of the sandbox network, with the defaults every sandbox uses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::dns::Upstream;

/// The guest network, 10.0.2.0/24 (the same plan as QEMU user networking, which guests know).
pub const SUBNET_PREFIX_LEN: u8 = 24;
/// The gateway: the network stack itself, and the DNS server the guest uses.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The gateway's MAC address.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
/// The guest's address (the guest configures it statically).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// `host.msbvm.internal`: reaches the host's 127.0.0.1 when policy allows the host.
pub const HOST_ALIAS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 254);
/// The DNS port the gateway answers on.
pub const DNS_PORT: u16 = 53;
/// Default IP MTU.
pub const DEFAULT_MTU: usize = 1500;
/// Largest IP MTU accepted (what virtio-net can carry without segmentation offload).
pub const MAX_MTU: usize = 65520;
/// Smallest IP MTU accepted (IPv4's minimum).
pub const MIN_MTU: usize = 576;
/// Length of an Ethernet II header.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// A [`NetConfig`] value out of range ([`NetConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The MTU is outside [`MIN_MTU`]..=[`MAX_MTU`].
    #[error("mtu {0} outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(usize),
    /// The prefix length is outside 8..=30.
    #[error("prefix length {0} outside 8..=30")]
    PrefixLen(u8),
    /// The gateway and the guest have one address.
    #[error("gateway and guest share an address")]
    SharedAddress,
    /// The TCP buffer size is outside 4 KiB..=16 MiB.
    #[error("tcp buffer size {0} outside 4 KiB..=16 MiB")]
    TcpBufferSize(usize),
    /// The gateway MAC is a multicast address.
    #[error("gateway MAC is not unicast")]
    GatewayMacNotUnicast,
    /// Segment offload was asked for without checksum offload.
    #[error("segment offload needs checksum offload")]
    SegmentOffloadWithoutChecksums,
    /// The byte rate is under 1 KiB per second.
    #[error("a network rate under 1024 bytes per second could not move a frame a second")]
    Rate,
}

/// Configuration of one sandbox's network stack. `NetConfig::default()` is what sandboxes use.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Gateway (stack) address.
    pub gateway_ip: Ipv4Addr,
    /// Gateway MAC address.
    pub gateway_mac: [u8; 6],
    /// Guest address.
    pub guest_ip: Ipv4Addr,
    /// Prefix length of the guest subnet.
    pub prefix_len: u8,
    /// Address that stands for the host's loopback.
    pub host_alias_ip: Ipv4Addr,
    /// IP MTU of the link (576..=65520).
    pub mtu: usize,
    /// Trust the guest's checksums and compute none towards it (the virtio-net device marks
    /// frames DATA_VALID and accepts partial checksums from the guest).
    pub checksum_offload: bool,
    /// TCP frames of up to 64 KiB both ways. Towards the guest, consecutive segments of a flow
    /// that one poll sends are merged, as GRO would, for a device that hands them to the guest
    /// whole (GSO) or cuts them again (msbvm's virtio-net with `guest_tso`); from the guest,
    /// TCP segments that large are taken (the device's `host_tso`). Needs `checksum_offload`:
    /// merged frames carry no TCP checksum.
    pub segment_offload: bool,
    /// Most TCP flows open at once (guest-initiated and published-port ones together).
    pub max_tcp_flows: usize,
    /// Most UDP flows open at once.
    pub max_udp_flows: usize,
    /// A UDP flow with no traffic either way for this long is closed.
    pub udp_idle_timeout: Duration,
    /// How long a host-side TCP connect may take before the guest gets an RST.
    pub connect_timeout: Duration,
    /// Receive and send buffer of each guest TCP connection inside the stack, each way.
    pub tcp_buffer_size: usize,
    /// Largest HTTP request head buffered for HTTP policy.
    pub max_http_head: usize,
    /// Ports published at start.
    pub published_ports: Vec<PublishedPort>,
    /// Where the DNS server at the gateway forwards allowed queries.
    pub dns_upstream: Upstream,
    /// TLS interception (`None`: TLS is spliced untouched).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Secrets substituted into intercepted requests to their hosts.
    pub secrets: Vec<crate::secrets::Secret>,
    /// Bytes per second the guest's frames may move each way, when limited (frames wait;
    /// nothing is dropped for it).
    pub bytes_per_sec: Option<u64>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            gateway_ip: GATEWAY_IP,
            gateway_mac: GATEWAY_MAC,
            guest_ip: GUEST_IP,
            prefix_len: SUBNET_PREFIX_LEN,
            host_alias_ip: HOST_ALIAS_IP,
            mtu: DEFAULT_MTU,
            checksum_offload: false,
            segment_offload: false,
            max_tcp_flows: 256,
            max_udp_flows: 256,
            udp_idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            tcp_buffer_size: 256 * 1024,
            max_http_head: 16 * 1024,
            published_ports: Vec::new(),
            dns_upstream: Upstream::System,
            tls: None,
            secrets: Vec::new(),
            bytes_per_sec: None,
        }
    }
}

impl NetConfig {
    /// Checks the values a caller may have got wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if !(8..=30).contains(&self.prefix_len) {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        if self.gateway_ip == self.guest_ip {
            return Err(ConfigError::SharedAddress);
        }
        if self.tcp_buffer_size < 4096 || self.tcp_buffer_size > 16 * 1024 * 1024 {
            return Err(ConfigError::TcpBufferSize(self.tcp_buffer_size));
        }
        if self.gateway_mac[0] & 1 != 0 {
            return Err(ConfigError::GatewayMacNotUnicast);
        }
        if self.segment_offload && !self.checksum_offload {
            return Err(ConfigError::SegmentOffloadWithoutChecksums);
        }
        if self.bytes_per_sec.is_some_and(|rate| rate < 1024) {
            return Err(ConfigError::Rate);
        }
        Ok(())
    }

    /// Largest Ethernet frame on the link.
    pub fn max_frame_len(&self) -> usize {
        self.mtu + ETHERNET_HEADER_LEN
    }

    /// Largest frame taken from the guest: a TCP segment of up to 64 KiB with segment
    /// offload (the device passes the guest's TSO frames whole), else [`Self::max_frame_len`].
    pub fn max_guest_frame_len(&self) -> usize {
        if self.segment_offload {
            ETHERNET_HEADER_LEN + 65535
        } else {
            self.max_frame_len()
        }
    }
}

/// Transport of a published port (only TCP for now).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// TCP.
    Tcp,
}

/// A host address whose connections are spliced to `guest_port` on the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublishedPort {
    /// Where the host listens (port 0 picks a free one; `publish` returns the bound address).
    pub host_addr: SocketAddr,
    /// The guest port connections reach.
    pub guest_port: u16,
    /// Transport.
    pub proto: PortProtocol,
}

impl PublishedPort {
    /// Publishes `guest_port` on the host's 127.0.0.1 at `host_port`.
    pub fn tcp(host_port: u16, guest_port: u16) -> Self {
        PublishedPort {
            host_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
            guest_port,
            proto: PortProtocol::Tcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_mtu_is_bounded() {
        assert!(NetConfig::default().validate().is_ok());
        let big = NetConfig {
            mtu: MAX_MTU,
            ..NetConfig::default()
        };
        assert!(big.validate().is_ok());
        let too_big = NetConfig {
            mtu: MAX_MTU + 1,
            ..NetConfig::default()
        };
        assert!(too_big.validate().is_err());
    }
}
