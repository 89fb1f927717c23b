//! Address groups: named classes of destinations (`private`, `metadata`, ...)
//! that rules and the built-in denials refer to.
//!
//! Every address belongs to exactly one group, so `allow link-local` does not
//! open the cloud metadata service that lives inside 169.254.0.0/16, and
//! `allow loopback` does not open the host alias. The host alias is its own
//! group; it is never derived from an address, only from
//! [`FlowInfo::to_host_alias`](super::FlowInfo::to_host_alias).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};

/// A named class of destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// Globally routable unicast: whatever no other group claims.
    Public,
    /// Not routable on the internet: RFC 1918, CGNAT 100.64/10, fc00::/7,
    /// documentation, benchmarking and reserved ranges, broadcast.
    Private,
    /// 127/8, ::1, and the unspecified addresses 0/8 and :: (connecting to
    /// 0.0.0.0 reaches the local machine on Linux).
    Loopback,
    /// 169.254/16 and fe80::/10, except the metadata addresses.
    LinkLocal,
    /// Cloud instance-metadata services (AWS, GCP, Azure, Alibaba, ECS/EKS).
    Metadata,
    /// 224/4 and ff00::/8.
    Multicast,
    /// The host alias 10.0.2.254 (`host.msbvm.internal`).
    Host,
}

impl Group {
    /// All groups, in the order the grammar documents them.
    pub const ALL: [Group; 7] = [
        Group::Public,
        Group::Private,
        Group::Loopback,
        Group::LinkLocal,
        Group::Metadata,
        Group::Multicast,
        Group::Host,
    ];

    /// The keyword naming this group in rules.
    pub fn keyword(self) -> &'static str {
        match self {
            Group::Public => "public",
            Group::Private => "private",
            Group::Loopback => "loopback",
            Group::LinkLocal => "link-local",
            Group::Metadata => "metadata",
            Group::Multicast => "multicast",
            Group::Host => "host",
        }
    }

    /// The group an address belongs to (never [`Group::Host`]).
    pub fn of(ip: IpAddr) -> Group {
        match ip {
            IpAddr::V4(v4) => classify_v4(v4),
            // Mapped addresses reach the embedded IPv4 host on dual-stack
            // sockets, so they must not pass as public.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => classify_v4(v4),
                None => classify_v6(v6),
            },
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

impl FromStr for Group {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Group::ALL
            .into_iter()
            .find(|g| g.keyword().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// Metadata endpoints: AWS/GCP/Azure/OCI, AWS ECS task metadata, EKS pod
/// identity, Alibaba Cloud.
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
];

/// AWS's IPv6 instance-metadata and EKS pod-identity endpoints.
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
];

/// IPv4 ranges that are not globally routable and fall in no other group.
const PRIVATE_V4: [(Ipv4Addr, u8); 10] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

fn classify_v4(ip: Ipv4Addr) -> Group {
    let in_net = |(net, len): (Ipv4Addr, u8)| Ipv4Net::new(net, len).is_ok_and(|n| n.contains(&ip));
    if METADATA_V4.contains(&ip) {
        Group::Metadata
    } else if ip.is_loopback() || ip.octets()[0] == 0 {
        Group::Loopback
    } else if ip.is_link_local() {
        Group::LinkLocal
    } else if ip.is_multicast() {
        Group::Multicast
    } else if PRIVATE_V4.into_iter().any(in_net) {
        // 240/4 contains the broadcast address too.
        Group::Private
    } else {
        Group::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Group {
    let in_net = |net: Ipv6Addr, len: u8| Ipv6Net::new(net, len).is_ok_and(|n| n.contains(&ip));
    if METADATA_V6.contains(&ip) {
        Group::Metadata
    } else if ip.is_loopback() || ip.is_unspecified() {
        Group::Loopback
    } else if in_net(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) {
        Group::LinkLocal
    } else if ip.is_multicast() {
        Group::Multicast
    } else if in_net(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7)
        || in_net(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32)
        // Deprecated IPv4-compatible addresses (::a.b.c.d) and site-local.
        || in_net(Ipv6Addr::UNSPECIFIED, 96)
        || in_net(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10)
    {
        Group::Private
    } else {
        Group::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(s: &str) -> Group {
        Group::of(s.parse().unwrap())
    }

    #[test]
    fn addresses_fall_in_the_documented_groups() {
        let cases = [
            ("8.8.8.8", Group::Public),
            ("93.184.216.34", Group::Public),
            ("2606:4700::1111", Group::Public),
            ("10.1.2.3", Group::Private),
            ("172.31.255.255", Group::Private),
            ("172.32.0.1", Group::Public),
            ("192.168.1.10", Group::Private),
            ("100.64.0.1", Group::Private),
            ("255.255.255.255", Group::Private),
            ("fd12::1", Group::Private),
            ("127.0.0.1", Group::Loopback),
            ("0.0.0.0", Group::Loopback),
            ("::1", Group::Loopback),
            ("::", Group::Loopback),
            ("169.254.1.1", Group::LinkLocal),
            ("fe80::1", Group::LinkLocal),
            ("169.254.169.254", Group::Metadata),
            ("100.100.100.200", Group::Metadata),
            ("fd00:ec2::254", Group::Metadata),
            ("224.0.0.1", Group::Multicast),
            ("ff02::1", Group::Multicast),
        ];
        for (ip, want) in cases {
            assert_eq!(group(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_classified_by_its_ipv4() {
        assert_eq!(group("::ffff:127.0.0.1"), Group::Loopback);
        assert_eq!(group("::ffff:169.254.169.254"), Group::Metadata);
        assert_eq!(group("::ffff:10.0.0.1"), Group::Private);
        assert_eq!(group("::ffff:1.1.1.1"), Group::Public);
    }

    #[test]
    fn keywords_parse_back_case_insensitively() {
        for g in Group::ALL {
            assert_eq!(g.keyword().parse(), Ok(g));
            assert_eq!(g.keyword().to_uppercase().parse(), Ok(g));
        }
        assert_eq!("lan".parse::<Group>(), Err(()));
    }
}
