//! Reading guest frames before smoltcp does, and writing the few frames the stack makes by hand
//! (UDP replies, RSTs for refused connections, ICMP port unreachable).
//!
//! smoltcp only knows sockets it was given; deciding a new flow (policy, connect first) needs a
//! look at the SYN or datagram before it, and UDP flows never enter smoltcp at all.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
    UDP_HEADER_LEN,
};

/// A TCP flow as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TcpKey {
    /// The guest's end.
    pub guest: SocketAddrV4,
    /// The other end as addressed by the guest (or the gateway end of a published-port flow).
    pub remote: SocketAddrV4,
}

/// What the stack loop does with a guest frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Inbound<'a> {
    /// Give it to smoltcp (ARP, ICMP to the gateway, TCP segments).
    ToStack,
    /// A TCP SYN without ACK: maybe a new flow.
    TcpSyn {
        key: TcpKey,
        src_mac: EthernetAddress,
    },
    /// A UDP datagram from the guest.
    Udp(Datagram<'a>),
    /// Ignore it.
    Drop(&'static str),
}

/// A UDP datagram from the guest, as [`classify`] found it.
#[derive(Debug, PartialEq)]
pub(crate) struct Datagram<'a> {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: &'a [u8],
    pub src_mac: EthernetAddress,
}

/// Looks at a frame from the guest. `guest_ip` is the only source address accepted for IP.
pub(crate) fn classify<'a>(
    frame: &'a [u8],
    guest_ip: Ipv4Addr,
    gateway_ip: Ipv4Addr,
    checksums: &ChecksumCapabilities,
) -> Inbound<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Inbound::Drop("short ethernet frame");
    };
    let src_mac = eth.src_addr();
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
                return Inbound::Drop("short arp");
            };
            match ArpRepr::parse(&arp) {
                // smoltcp answers ARP for every address once it accepts any destination IP;
                // a reply for the guest's own address would look like an address conflict.
                Ok(ArpRepr::EthernetIpv4 {
                    target_protocol_addr,
                    ..
                }) if target_protocol_addr == guest_ip => {
                    Inbound::Drop("arp for the guest's own address")
                }
                Ok(_) => Inbound::ToStack,
                Err(_) => Inbound::Drop("bad arp"),
            }
        }
        EthernetProtocol::Ipv4 => {
            classify_ipv4(eth.payload(), src_mac, guest_ip, gateway_ip, checksums)
        }
        _ => Inbound::Drop("not ipv4 or arp"),
    }
}

fn classify_ipv4<'a>(
    packet: &'a [u8],
    src_mac: EthernetAddress,
    guest_ip: Ipv4Addr,
    gateway_ip: Ipv4Addr,
    checksums: &ChecksumCapabilities,
) -> Inbound<'a> {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return Inbound::Drop("bad ipv4 header");
    };
    let Ok(repr) = Ipv4Repr::parse(&ip, checksums) else {
        return Inbound::Drop("bad ipv4 packet");
    };
    if repr.src_addr != guest_ip {
        return Inbound::Drop("source is not the guest");
    }
    let fragment = ip.more_frags() || ip.frag_offset() != 0;
    // new_checked bounded total_len by the buffer; payload() is the packet without link padding.
    let payload = ip.payload();
    match repr.next_header {
        IpProtocol::Tcp => {
            if fragment {
                return Inbound::ToStack;
            }
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Inbound::Drop("bad tcp header");
            };
            if checksums.tcp.rx()
                && !tcp.verify_checksum(&repr.src_addr.into(), &repr.dst_addr.into())
            {
                return Inbound::Drop("bad tcp checksum");
            }
            if tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin() {
                let key = TcpKey {
                    guest: SocketAddrV4::new(repr.src_addr, tcp.src_port()),
                    remote: SocketAddrV4::new(repr.dst_addr, tcp.dst_port()),
                };
                return Inbound::TcpSyn { key, src_mac };
            }
            Inbound::ToStack
        }
        IpProtocol::Udp => {
            if fragment {
                return Inbound::Drop("fragmented udp");
            }
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Inbound::Drop("bad udp header");
            };
            let Ok(udp_repr) = UdpRepr::parse(
                &udp,
                &repr.src_addr.into(),
                &repr.dst_addr.into(),
                checksums,
            ) else {
                return Inbound::Drop("bad udp checksum");
            };
            let payload = &udp.payload()[..udp.payload().len().min(payload.len())];
            Inbound::Udp(Datagram {
                src: SocketAddrV4::new(repr.src_addr, udp_repr.src_port),
                dst: SocketAddrV4::new(repr.dst_addr, udp_repr.dst_port),
                payload,
                src_mac,
            })
        }
        IpProtocol::Icmp if repr.dst_addr == gateway_ip && !fragment => Inbound::ToStack,
        _ => Inbound::Drop("protocol not handled"),
    }
}

/// The checksums the stack computes and verifies. With offload only the TCP
/// and UDP ones are skipped: the virtio-net device completes the guest's
/// partial ones and marks ours DATA_VALID, which covers layer 4 only — Linux
/// verifies every IPv4 header checksum itself, and ICMP is rare enough to
/// checksum always.
pub(crate) fn offload_checksums(checksum_offload: bool) -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    if checksum_offload {
        caps.tcp = smoltcp::phy::Checksum::None;
        caps.udp = smoltcp::phy::Checksum::None;
    }
    caps
}

/// Builds frames from the gateway towards the guest, in a reused buffer.
pub(crate) struct FrameBuilder {
    pub gateway_mac: EthernetAddress,
    pub checksums: ChecksumCapabilities,
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub(crate) fn new(gateway_mac: EthernetAddress, checksum_offload: bool) -> Self {
        let checksums = offload_checksums(checksum_offload);
        FrameBuilder {
            gateway_mac,
            checksums,
            buf: Vec::new(),
        }
    }

    fn ipv4(
        &mut self,
        guest_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProtocol,
        payload_len: usize,
    ) -> (&mut [u8], Ipv4Repr) {
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len,
            hop_limit: 64,
        };
        let total = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + payload_len;
        self.buf.clear();
        self.buf.resize(total, 0);
        let mut eth = EthernetFrame::new_unchecked(&mut self.buf[..]);
        EthernetRepr {
            src_addr: self.gateway_mac,
            dst_addr: guest_mac,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut packet, &self.checksums);
        (&mut self.buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..], ip)
    }

    /// A UDP datagram `src` -> `dst` (the guest).
    pub(crate) fn udp(
        &mut self,
        guest_mac: EthernetAddress,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: &[u8],
    ) -> &[u8] {
        let checksums = self.checksums.clone();
        let (l4, _) = self.ipv4(
            guest_mac,
            *src.ip(),
            *dst.ip(),
            IpProtocol::Udp,
            UDP_HEADER_LEN + data.len(),
        );
        let repr = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let mut packet = UdpPacket::new_unchecked(l4);
        repr.emit(
            &mut packet,
            &(*src.ip()).into(),
            &(*dst.ip()).into(),
            data.len(),
            |out| out.copy_from_slice(data),
            &checksums,
        );
        &self.buf
    }

    /// A RST answering the guest's SYN of `key` (`syn_seq` its sequence number).
    pub(crate) fn tcp_rst(
        &mut self,
        guest_mac: EthernetAddress,
        key: TcpKey,
        syn_seq: u32,
    ) -> &[u8] {
        let checksums = self.checksums.clone();
        let repr = TcpRepr {
            src_port: key.remote.port(),
            dst_port: key.guest.port(),
            control: TcpControl::Rst,
            seq_number: TcpSeqNumber(0),
            ack_number: Some(TcpSeqNumber(syn_seq.wrapping_add(1) as i32)),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let (l4, _) = self.ipv4(
            guest_mac,
            *key.remote.ip(),
            *key.guest.ip(),
            IpProtocol::Tcp,
            repr.buffer_len(),
        );
        let mut packet = TcpPacket::new_unchecked(l4);
        repr.emit(
            &mut packet,
            &(*key.remote.ip()).into(),
            &(*key.guest.ip()).into(),
            &checksums,
        );
        &self.buf
    }

    /// An ICMP port unreachable from `from` quoting the guest's IPv4 packet `original`.
    pub(crate) fn icmp_port_unreachable(
        &mut self,
        guest_mac: EthernetAddress,
        from: Ipv4Addr,
        original: &[u8],
    ) -> Option<&[u8]> {
        let checksums = self.checksums.clone();
        let ip = Ipv4Packet::new_checked(original).ok()?;
        let header = Ipv4Repr::parse(&ip, &ChecksumCapabilities::ignored()).ok()?;
        // RFC 792: the original header plus the first 8 bytes of its payload.
        let data = &ip.payload()[..ip.payload().len().min(8)];
        let repr = Icmpv4Repr::DstUnreachable {
            reason: Icmpv4DstUnreachable::PortUnreachable,
            header,
            data,
        };
        let (l4, _) = self.ipv4(
            guest_mac,
            from,
            header.src_addr,
            IpProtocol::Icmp,
            repr.buffer_len(),
        );
        let mut packet = Icmpv4Packet::new_unchecked(l4);
        repr.emit(&mut packet, &checksums);
        Some(&self.buf)
    }
}

/// The sequence number of a TCP segment in an Ethernet frame (checked by `classify` already).
pub(crate) fn tcp_seq(frame: &[u8]) -> Option<u32> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(tcp.seq_number().0 as u32)
}

/// The IPv4 packet inside an Ethernet frame.
pub(crate) fn ipv4_packet(frame: &[u8]) -> Option<&[u8]> {
    frame.get(ETHERNET_HEADER_LEN..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x15]);

    fn builder() -> FrameBuilder {
        FrameBuilder::new(EthernetAddress([0x52, 0x54, 0, 0, 0, 2]), false)
    }

    /// A UDP frame as if from the guest, made by swapping the roles of the builder.
    fn guest_udp(data: &[u8]) -> Vec<u8> {
        let mut b = FrameBuilder::new(GUEST_MAC, false);
        b.udp(
            EthernetAddress([0x52, 0x54, 0, 0, 0, 2]),
            SocketAddrV4::new(GUEST, 4000),
            SocketAddrV4::new(GW, 53),
            data,
        )
        .to_vec()
    }

    #[test]
    fn udp_from_the_guest_is_classified_with_its_payload() {
        let frame = guest_udp(b"hello");
        match classify(&frame, GUEST, GW, &ChecksumCapabilities::default()) {
            Inbound::Udp(Datagram {
                src, dst, payload, ..
            }) => {
                assert_eq!(src, SocketAddrV4::new(GUEST, 4000));
                assert_eq!(dst, SocketAddrV4::new(GW, 53));
                assert_eq!(payload, b"hello");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupted_udp_checksum_is_dropped_unless_offloaded() {
        let mut frame = guest_udp(b"hello");
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        assert!(matches!(
            classify(&frame, GUEST, GW, &ChecksumCapabilities::default()),
            Inbound::Drop(_)
        ));
        assert!(matches!(
            classify(&frame, GUEST, GW, &ChecksumCapabilities::ignored()),
            Inbound::Udp(_)
        ));
    }

    #[test]
    fn spoofed_source_and_bad_ihl_are_dropped() {
        let frame = guest_udp(b"x");
        assert!(matches!(
            classify(
                &frame,
                Ipv4Addr::new(10, 0, 2, 16),
                GW,
                &ChecksumCapabilities::default()
            ),
            Inbound::Drop(_)
        ));
        let mut bad_ihl = frame.clone();
        bad_ihl[ETHERNET_HEADER_LEN] = 0x42; // version 4, IHL 2 words
        assert!(matches!(
            classify(&bad_ihl, GUEST, GW, &ChecksumCapabilities::ignored()),
            Inbound::Drop(_)
        ));
        let mut long_total = frame.clone();
        long_total[ETHERNET_HEADER_LEN + 2] = 0xff;
        assert!(matches!(
            classify(&long_total, GUEST, GW, &ChecksumCapabilities::ignored()),
            Inbound::Drop(_)
        ));
    }

    #[test]
    fn rst_answers_the_syn_sequence() {
        let key = TcpKey {
            guest: SocketAddrV4::new(GUEST, 40000),
            remote: SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 80),
        };
        let mut b = builder();
        let frame = b.tcp_rst(GUEST_MAC, key, 41).to_vec();
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(42));
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }

    proptest! {
        #[test]
        fn classify_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes, GUEST, GW, &ChecksumCapabilities::default());
            let _ = classify(&bytes, GUEST, GW, &ChecksumCapabilities::ignored());
        }

        #[test]
        fn classify_never_panics_on_mutated_valid_frames(idx in 0usize..60, val in any::<u8>(), cut in 0usize..60) {
            let mut frame = guest_udp(b"0123456789abcdef");
            let i = idx % frame.len();
            frame[i] = val;
            frame.truncate(frame.len() - cut.min(frame.len()));
            let _ = classify(&frame, GUEST, GW, &ChecksumCapabilities::ignored());
        }
    }
}
