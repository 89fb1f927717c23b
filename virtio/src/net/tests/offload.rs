//! Checksum offload: partial checksums from the guest are completed before
//! a frame reaches the stack, unless the stack says it ignores them.

use super::*;
use crate::net::frame::tests::{pseudo_header_sum, transport_checksum_ok};
use crate::net::frame::HDR_F_NEEDS_CSUM;

const SRC: [u8; 4] = [10, 0, 2, 15];
const DST: [u8; 4] = [93, 184, 216, 34];

/// Ethernet + IPv4 (checksum left zero: IP checksums are never offloaded)
/// + `l4` with the pseudo-header sum already in its checksum field at
///   `csum_offset`, as Linux prepares a CHECKSUM_PARTIAL skb.
fn partial_frame(proto: u8, mut l4: Vec<u8>, csum_offset: usize) -> Vec<u8> {
    let sum = pseudo_header_sum(SRC, DST, proto, l4.len() as u16);
    l4[csum_offset..csum_offset + 2].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet_frame(14, 0);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0, total.to_be_bytes()[0], total.to_be_bytes()[1]]);
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&SRC);
    f.extend_from_slice(&DST);
    f.extend_from_slice(&l4);
    f
}

fn needs_csum(csum_offset: u16) -> NetHeader {
    NetHeader {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset,
        ..NetHeader::default()
    }
}

#[test]
fn partial_udp_checksum_is_completed_before_the_socket() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES);
    let mut udp = vec![0x9c, 0x40, 0x00, 0x35, 0, 0, 0, 0];
    udp.extend_from_slice(b"an odd-length DNS-ish payload");
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    let frame = partial_frame(17, udp, 6);
    assert!(!transport_checksum_ok(SRC, DST, 17, &frame[34..]));
    s.d.send(&needs_csum(6), &frame);
    let out = host_recv(&s.host);
    assert_eq!(out.len(), frame.len());
    assert!(transport_checksum_ok(SRC, DST, 17, &out[34..]));
    // Only the checksum field changed.
    assert_eq!(out[..40], frame[..40]);
    assert_eq!(out[42..], frame[42..]);
}

#[test]
fn a_backend_that_ignores_checksums_gets_the_partial_one_as_it_is() {
    let (net, host) = device_for(true, true);
    let mut d = NetDriver::new(net, BASE_FEATURES | CSUM_FEATURES);
    let mut udp = vec![0x9c, 0x40, 0x00, 0x35, 0, 12, 0, 0];
    udp.extend_from_slice(b"abcd");
    let frame = partial_frame(17, udp, 6);
    // Even an offset outside the frame: nothing is written there, so nothing is refused.
    d.send(&needs_csum(6), &frame);
    assert_eq!(host_recv(&host), frame, "unchanged");
    let far = NetHeader {
        csum_start: 4000,
        ..needs_csum(6)
    };
    d.send(&far, &frame);
    assert_eq!(host_recv(&host), frame);
}

#[test]
fn partial_tcp_checksum_is_completed_across_descriptors() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES);
    let mut tcp = vec![0u8; 20];
    tcp[0..4].copy_from_slice(&[0xc3, 0x50, 0x01, 0xbb]);
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp.extend((0..3000u32).map(|i| (i * 7) as u8));
    let frame = partial_frame(6, tcp, 16);
    // Split the frame over three descriptors at odd offsets.
    let hdr = needs_csum(16).to_bytes();
    let g = s.d.driver();
    let mut descs = Vec::new();
    for part in [&hdr[..], &frame[..41], &frame[41..1001], &frame[1001..]] {
        let addr = g.alloc(part.len() as u32);
        g.write_mem(addr, part);
        descs.push(crate::test_utils::Desc::readable(addr, part.len() as u32));
    }
    s.d.offer_tx(&descs);
    s.d.wait_tx();
    let out = host_recv(&s.host);
    assert!(transport_checksum_ok(SRC, DST, 6, &out[34..]));
    assert_eq!(counter(&s.metrics.tx_frames), 1);
}
