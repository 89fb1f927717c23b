//! TCP/IPv4 frames larger than the MTU coming from the host-side stack, which merges the
//! segments of one flow it sends together (GRO on the host side, to cross the frame socket
//! once per 64 KiB instead of once per segment).
//!
//! The device hands such a frame to the guest whole, as a GSO frame (`HDR_GSO_TCPV4` with a
//! partial checksum, [`make_partial`]), when the driver accepted VIRTIO_NET_F_GUEST_TSO4; the
//! guest's stack takes it as the segments it stands for, as Linux does for a frame GRO merged. A driver that did not accept it gets the
//! segments [`split`] cuts. Segments are the MTU's size ([`segment_size`]): the stack's own
//! segments were at most that, so the guest sees no larger ones than it would have.
//!
//! Only frames the stack built reach here, but they are still checked ([`tcp4`]): anything
//! else larger than the MTU is delivered as it is, as before.

use std::collections::VecDeque;

use super::frame::{fold, ones_complement_sum};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Where the parts of a TCP/IPv4 Ethernet frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp4 {
    /// IPv4 header length.
    pub ip_len: usize,
    /// TCP header length, options included.
    pub tcp_len: usize,
}

impl Tcp4 {
    /// Ethernet, IPv4 and TCP headers: where the payload starts.
    pub fn hdr_len(&self) -> usize {
        ETH_LEN + self.ip_len + self.tcp_len
    }
}

/// The layout of `frame` if it is an unfragmented TCP/IPv4 Ethernet frame whose IP length
/// matches the frame's.
pub fn tcp4(frame: &[u8]) -> Option<Tcp4> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETH_LEN..];
    let ip_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // More fragments, or an offset: a fragment, which cannot be cut into segments.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ip_len < 20 || ip[9] != PROTO_TCP || fragment || total != ip.len() {
        return None;
    }
    let tcp = ip.get(ip_len..)?;
    let tcp_len = usize::from(tcp.get(12)? >> 4) * 4;
    if tcp_len < 20 || tcp_len > tcp.len() {
        return None;
    }
    Some(Tcp4 { ip_len, tcp_len })
}

/// Makes `frame` a GSO frame as the virtio spec wants it (5.1.6.4.1: a GSO frame has
/// NEEDS_CSUM set): the TCP checksum field gets the pseudo-header sum over the whole frame,
/// as Linux leaves it in a CHECKSUM_PARTIAL packet, so a guest that forwards the frame can
/// segment it and finish each segment's checksum. Returns `(csum_start, csum_offset)`.
pub fn make_partial(frame: &mut [u8], layout: &Tcp4) -> (u16, u16) {
    let tcp = ETH_LEN + layout.ip_len;
    let mut sum = ones_complement_sum(&frame[ETH_LEN + 12..ETH_LEN + 20]);
    sum += u64::from(PROTO_TCP) + (frame.len() - tcp) as u64;
    frame[tcp + 16..tcp + 18].copy_from_slice(&fold(sum).to_be_bytes());
    (tcp as u16, 16)
}

/// Payload bytes per segment for a guest with MTU `mtu`.
pub fn segment_size(mtu: usize, layout: &Tcp4) -> usize {
    mtu.saturating_sub(layout.ip_len + layout.tcp_len).max(1)
}

/// Cuts `frame` into segments of at most `mss` payload bytes, appended to `out`: sequence
/// numbers advanced, the IP identification counted up from the frame's, FIN and PSH kept for
/// the last segment and CWR for the first, IP checksums computed. The TCP checksum is
/// computed only with `tcp_checksum` (a guest that verifies checksums); otherwise it is left
/// as the stack wrote it, the device vouching for the data as for every received frame.
pub fn split(
    frame: &[u8],
    layout: &Tcp4,
    mss: usize,
    tcp_checksum: bool,
    out: &mut VecDeque<Vec<u8>>,
) {
    let hdr_len = layout.hdr_len();
    let payload = &frame[hdr_len..];
    let mss = mss.max(1);
    let ip = ETH_LEN;
    let tcp = ETH_LEN + layout.ip_len;
    let id = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]);
    let seq = u32::from_be_bytes([
        frame[tcp + 4],
        frame[tcp + 5],
        frame[tcp + 6],
        frame[tcp + 7],
    ]);
    let flags = frame[tcp + 13];
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let mut seg = Vec::with_capacity(hdr_len + chunk.len());
        seg.extend_from_slice(&frame[..hdr_len]);
        seg.extend_from_slice(chunk);
        let total = (layout.ip_len + layout.tcp_len + chunk.len()) as u16;
        seg[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        seg[ip + 4..ip + 6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        let seg_seq = seq.wrapping_add((i * mss) as u32);
        seg[tcp + 4..tcp + 8].copy_from_slice(&seg_seq.to_be_bytes());
        let mut seg_flags = flags;
        if i + 1 < count {
            seg_flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            seg_flags &= !TCP_CWR;
        }
        seg[tcp + 13] = seg_flags;
        seg[ip + 10..ip + 12].fill(0);
        let ip_sum = !fold(ones_complement_sum(&seg[ip..tcp]));
        seg[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
        if tcp_checksum {
            seg[tcp + 16..tcp + 18].fill(0);
            let mut sum = ones_complement_sum(&seg[ip + 12..ip + 20]);
            sum += u64::from(PROTO_TCP) + (seg.len() - tcp) as u64;
            sum += ones_complement_sum(&seg[tcp..]);
            let tcp_sum = !fold(sum);
            seg[tcp + 16..tcp + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        }
        out.push_back(seg);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::frame::tests::transport_checksum_ok;
    use super::*;

    pub(crate) const SRC: [u8; 4] = [10, 0, 2, 2];
    pub(crate) const DST: [u8; 4] = [10, 0, 2, 15];

    /// An Ethernet TCP/IPv4 frame with a 12-byte option block and `payload`.
    pub(crate) fn tcp_frame(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00];
        let total = (20 + 32 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, PROTO_TCP, 0, 0]);
        f.extend_from_slice(&SRC);
        f.extend_from_slice(&DST);
        f.extend_from_slice(&[0x1f, 0x90, 0xc3, 0x50]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x10, 0, 0x80, flags, 0x20, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend_from_slice(payload);
        f
    }

    fn ip_checksum_ok(seg: &[u8]) -> bool {
        fold(ones_complement_sum(&seg[14..34])) == 0xffff
    }

    #[test]
    fn finds_tcp4_frames_and_nothing_else() {
        let f = tcp_frame(1, 0x10, &[7; 100]);
        let layout = tcp4(&f).unwrap();
        assert_eq!(
            layout,
            Tcp4 {
                ip_len: 20,
                tcp_len: 32
            }
        );
        assert_eq!(layout.hdr_len(), 66);
        assert_eq!(segment_size(1500, &layout), 1448);

        let mut udp = f.clone();
        udp[23] = 17;
        let mut fragment = f.clone();
        fragment[20] = 0x20;
        let mut short_ip_len = f.clone();
        short_ip_len[17] -= 1;
        let mut bad_offset = f.clone();
        bad_offset[46] = 0x40;
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for (what, frame) in [
            ("udp", &udp[..]),
            ("fragment", &fragment),
            ("ip length", &short_ip_len),
            ("tcp offset", &bad_offset),
            ("arp", &arp),
            ("truncated", &f[..40]),
        ] {
            assert_eq!(tcp4(frame), None, "{what}");
        }
    }

    #[test]
    fn splits_into_mss_segments_that_reassemble() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let flags = 0x10 | TCP_PSH | TCP_FIN | TCP_CWR;
        let frame = tcp_frame(0xffff_ff00, flags, &payload);
        let layout = tcp4(&frame).unwrap();
        let mut out = VecDeque::new();
        split(&frame, &layout, 1448, true, &mut out);
        assert_eq!(out.len(), 7);
        let mut joined = Vec::new();
        for (i, seg) in out.iter().enumerate() {
            assert_eq!(tcp4(seg), Some(layout), "segment {i} parses");
            assert!(seg.len() <= 1514, "segment {i} fits the MTU");
            assert!(ip_checksum_ok(seg), "segment {i} IP checksum");
            assert!(
                transport_checksum_ok(SRC, DST, PROTO_TCP, &seg[34..]),
                "{i}"
            );
            let seq = u32::from_be_bytes([seg[38], seg[39], seg[40], seg[41]]);
            assert_eq!(seq, 0xffff_ff00u32.wrapping_add((i * 1448) as u32));
            assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), 0x1234 + i as u16);
            let last = i == 6;
            assert_eq!(seg[47] & (TCP_FIN | TCP_PSH) != 0, last, "{i}");
            assert_eq!(seg[47] & TCP_CWR != 0, i == 0, "{i}");
            assert_eq!(seg[47] & 0x10, 0x10, "ACK on every segment");
            // Options (timestamps) copied to each.
            assert_eq!(seg[54..66], frame[54..66]);
            joined.extend_from_slice(&seg[66..]);
        }
        assert_eq!(joined, payload);
    }

    /// Completing the partial checksum the way a device or Linux would gives the real one.
    #[test]
    fn a_partial_checksum_completes_to_the_real_one() {
        let mut frame = tcp_frame(9, 0x10, &[5; 3001]);
        let layout = tcp4(&frame).unwrap();
        let (start, offset) = make_partial(&mut frame, &layout);
        assert_eq!((start, offset), (34, 16));
        super::super::frame::complete_checksum(&mut frame, start, offset).unwrap();
        assert!(transport_checksum_ok(SRC, DST, PROTO_TCP, &frame[34..]));
    }

    #[test]
    fn without_checksums_the_stacks_field_is_left() {
        let frame = tcp_frame(5, 0x10, &[1; 3000]);
        let mut out = VecDeque::new();
        split(&frame, &tcp4(&frame).unwrap(), 1000, false, &mut out);
        assert_eq!(out.len(), 3);
        for seg in &out {
            assert_eq!(seg[50..52], [0, 0]);
            assert!(ip_checksum_ok(seg));
        }
    }
}
