//! TCP frames larger than the MTU. From the stack: whole as GSO frames to a
//! driver with GUEST_TSO4, cut into segments for one without. From a driver
//! with HOST_TSO4: whole to the stack, checksum completed.

use super::*;
use crate::net::frame::tests::pseudo_header_sum;
use crate::net::frame::tests::transport_checksum_ok;
use crate::net::frame::{complete_checksum, HDR_F_NEEDS_CSUM, HDR_GSO_NONE, HDR_GSO_TCPV4};
use crate::net::gso::tests::{tcp_frame, DST, SRC};

/// 10 000 payload bytes: seven segments of at most 1448 at MTU 1500 with
/// the frame's 12 bytes of TCP options.
fn big_frame() -> (Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 13) as u8).collect();
    (tcp_frame(1000, 0x18, &payload), payload)
}

#[test]
fn goes_whole_as_a_gso_frame_when_the_driver_takes_tso() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES | TSO_FEATURE);
    s.d.post_rx(16, MRG_BUF);
    let (frame, _) = big_frame();
    s.host.send(&frame).unwrap();
    let mut rx = s.d.recv();
    // The whole frame, its TCP checksum field holding the pseudo-header sum that the
    // header's NEEDS_CSUM points at (the spec's form of a GSO frame): completed, it checks.
    assert_eq!(rx.frame[..50], frame[..50]);
    assert_eq!(rx.frame[52..], frame[52..]);
    assert_eq!(rx.hdr.gso_type, HDR_GSO_TCPV4);
    assert_eq!((rx.hdr.hdr_len, rx.hdr.gso_size), (66, 1448));
    assert_eq!(rx.hdr.flags, HDR_F_NEEDS_CSUM);
    assert_eq!((rx.hdr.csum_start, rx.hdr.csum_offset), (34, 16));
    complete_checksum(&mut rx.frame, 34, 16).unwrap();
    assert!(transport_checksum_ok(SRC, DST, 6, &rx.frame[34..]));
    assert_eq!(usize::from(rx.hdr.num_buffers), rx.used.len());
    assert_eq!(counter(&s.metrics.rx_gso), 1);

    // A frame within the MTU stays a plain frame.
    let small = tcp_frame(11_000, 0x10, &[1; 1448]);
    s.host.send(&small).unwrap();
    let rx = s.d.recv();
    assert_eq!(rx.frame, small);
    assert_eq!((rx.hdr.gso_type, rx.hdr.gso_size), (HDR_GSO_NONE, 0));
    assert_eq!(counter(&s.metrics.rx_gso), 1);
}

/// `csum`: the driver took GUEST_CSUM, so TCP checksums are not computed.
fn expect_segments(features: u64, csum: bool) {
    let mut s = setup(features);
    s.d.post_rx(16, MRG_BUF);
    let (frame, payload) = big_frame();
    s.host.send(&frame).unwrap();
    let mut joined = Vec::new();
    for i in 0..7 {
        let rx = s.d.recv();
        assert_eq!(rx.hdr.gso_type, HDR_GSO_NONE, "segment {i}");
        assert!(rx.frame.len() <= usize::from(MTU) + 14, "segment {i}");
        let seq = u32::from_be_bytes(rx.frame[38..42].try_into().unwrap());
        assert_eq!(seq, 1000 + i * 1448, "segment {i}");
        if !csum {
            assert!(transport_checksum_ok(SRC, DST, 6, &rx.frame[34..]), "{i}");
        }
        joined.extend_from_slice(&rx.frame[66..]);
    }
    assert_eq!(joined, payload);
    assert_eq!(counter(&s.metrics.rx_split), 1);
    assert_eq!(counter(&s.metrics.rx_frames), 7);
    assert!(s.d.recv_timeout(Duration::from_millis(100)).is_none());
}

#[test]
fn is_cut_into_segments_for_a_driver_without_tso() {
    expect_segments(BASE_FEATURES | CSUM_FEATURES, true);
}

#[test]
fn segments_get_tcp_checksums_for_a_driver_that_verifies_them() {
    expect_segments(BASE_FEATURES, false);
}

/// Segments wait for buffers like any frame: none is lost when the guest
/// posts them one at a time.
#[test]
fn segments_wait_for_rx_buffers() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES);
    let (frame, payload) = big_frame();
    s.host.send(&frame).unwrap();
    let mut joined = Vec::new();
    for _ in 0..7 {
        s.d.post_rx(1, MRG_BUF);
        joined.extend_from_slice(&s.d.recv().frame[66..]);
    }
    assert_eq!(joined, payload);
}

/// The guest's TSO frame: the pseudo-header sum in the checksum field, as
/// Linux leaves a CHECKSUM_PARTIAL GSO skb.
fn guest_tso_frame(payload: &[u8]) -> (Vec<u8>, NetHeader) {
    let mut frame = tcp_frame(7, 0x10, payload);
    let tcp_len = (frame.len() - 34) as u16;
    frame[50..52].copy_from_slice(&pseudo_header_sum(SRC, DST, 6, tcp_len).to_be_bytes());
    let hdr = NetHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: HDR_GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        ..NetHeader::default()
    };
    (frame, hdr)
}

#[test]
fn a_guest_tso_frame_reaches_the_stack_whole_and_checksummed() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES | HOST_TSO_FEATURE);
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let (frame, hdr) = guest_tso_frame(&payload);
    s.d.send(&hdr, &frame);
    let got = host_recv(&s.host);
    assert_eq!(got.len(), frame.len());
    assert_eq!(got[66..], payload[..]);
    assert!(transport_checksum_ok(SRC, DST, 6, &got[34..]));
    assert_eq!(counter(&s.metrics.tx_frames), 1);
}

#[test]
fn guest_gso_frames_not_offered_or_malformed_are_dropped() {
    let (frame, hdr) = guest_tso_frame(&[3; 4000]);
    let mut udp = frame.clone();
    udp[23] = 17;
    let cases = [
        (
            "HOST_TSO4 not negotiated",
            BASE_FEATURES | CSUM_FEATURES,
            hdr,
            frame.clone(),
        ),
        (
            "without NEEDS_CSUM",
            BASE_FEATURES | CSUM_FEATURES | HOST_TSO_FEATURE,
            NetHeader { flags: 0, ..hdr },
            frame.clone(),
        ),
        (
            "ECN variant",
            BASE_FEATURES | CSUM_FEATURES | HOST_TSO_FEATURE,
            NetHeader {
                gso_type: HDR_GSO_TCPV4 | 0x80,
                ..hdr
            },
            frame.clone(),
        ),
        (
            "not TCP",
            BASE_FEATURES | CSUM_FEATURES | HOST_TSO_FEATURE,
            hdr,
            udp,
        ),
    ];
    for (what, features, hdr, frame) in cases {
        let mut s = setup(features);
        s.d.send(&hdr, &frame);
        assert_eq!(counter(&s.metrics.tx_dropped), 1, "{what}");
        assert_host_silent(&s.host);
    }
}
