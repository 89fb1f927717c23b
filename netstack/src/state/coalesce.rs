//! Merging the TCP segments smoltcp sends towards the guest in one poll into one frame of up
//! to 64 KiB, as GRO would on a receiving host.
//!
//! smoltcp cuts a flow's data into MTU-sized segments; each one crossing the frame socket and
//! the guest's virtio queue costs a syscall and a wake-up on each side. When the device takes
//! large frames (msbvm's virtio-net: a GSO frame for a guest with GUEST_TSO4, else cut again
//! on the device side), consecutive in-order segments of one flow are sent as one frame: the
//! first segment's headers, the segments' payloads one after the other. Only what GRO itself
//! would merge is merged: same flow, contiguous sequence numbers, only ACK (and PSH on the
//! last), equal acknowledgement, window and options, and every segment but the last exactly
//! the first one's size (the device cuts at that size, so the guest sees the same segments).
//! TCP checksums are not recomputed: this runs only with checksum offload, where the device
//! vouches for them.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, ETHERNET_HEADER_LEN,
};

/// Largest merged frame: the largest IPv4 packet and its Ethernet header.
const MAX_MERGED: usize = ETHERNET_HEADER_LEN + 65535;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// What a segment looks like, as far as merging is concerned.
struct Segment {
    /// Offset of the TCP header, of the payload.
    tcp: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// Reads a TCP/IPv4 Ethernet frame carrying data with only ACK (and maybe PSH) set.
fn segment(frame: &[u8]) -> Option<Segment> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
        || usize::from(ip.total_len()) != eth.payload().len()
    {
        return None;
    }
    let ip_header = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let tcp_header = usize::from(tcp.header_len());
    let flags = frame[ETHERNET_HEADER_LEN + ip_header + 13];
    let payload = tcp.payload().len();
    if flags & !TCP_PSH != TCP_ACK || payload == 0 {
        return None;
    }
    Some(Segment {
        tcp: ETHERNET_HEADER_LEN + ip_header,
        payload: ETHERNET_HEADER_LEN + ip_header + tcp_header,
        seq: tcp.seq_number().0 as u32,
        flags,
    })
}

/// The frame being merged, if any.
#[derive(Default)]
pub(crate) struct Coalescer {
    frame: Vec<u8>,
    /// Offsets in `frame` (of its first segment).
    tcp: usize,
    payload: usize,
    /// Payload size of the first segment: the size of every segment but the last.
    size: usize,
    next_seq: u32,
    /// Whether another segment may follow (the last one was full-sized, without PSH).
    open: bool,
    segments: usize,
}

impl Coalescer {
    /// Takes `frame` into the frame being merged if it continues it; false if it does not
    /// (then [`take`](Self::take) the merged frame and [`start`](Self::start) anew).
    pub(crate) fn absorb(&mut self, frame: &[u8]) -> bool {
        if !self.open || self.frame.len() + frame.len() > MAX_MERGED + self.payload {
            return false;
        }
        let Some(seg) = segment(frame) else {
            return false;
        };
        let len = frame.len() - seg.payload;
        let (old, new) = (&self.frame, frame);
        let same_headers = seg.tcp == self.tcp
            && seg.payload == self.payload
            // Ethernet addresses and type; IP version, length of header, DSCP/ECN.
            && old[..ETHERNET_HEADER_LEN + 2] == new[..ETHERNET_HEADER_LEN + 2]
            // IP flags, TTL, protocol; addresses.
            && old[ETHERNET_HEADER_LEN + 6..ETHERNET_HEADER_LEN + 10]
                == new[ETHERNET_HEADER_LEN + 6..ETHERNET_HEADER_LEN + 10]
            && old[ETHERNET_HEADER_LEN + 12..self.tcp] == new[ETHERNET_HEADER_LEN + 12..seg.tcp]
            // Ports; acknowledgement, header length; window; options.
            && old[self.tcp..self.tcp + 4] == new[seg.tcp..seg.tcp + 4]
            && old[self.tcp + 8..self.tcp + 13] == new[seg.tcp + 8..seg.tcp + 13]
            && old[self.tcp + 14..self.tcp + 16] == new[seg.tcp + 14..seg.tcp + 16]
            && old[self.tcp + 20..self.payload] == new[seg.tcp + 20..seg.payload];
        if !same_headers || seg.seq != self.next_seq || len > self.size {
            return false;
        }
        self.frame.extend_from_slice(&frame[seg.payload..]);
        self.next_seq = seg.seq.wrapping_add(len as u32);
        self.segments += 1;
        self.frame[self.tcp + 13] |= seg.flags & TCP_PSH;
        self.open = len == self.size && seg.flags & TCP_PSH == 0;
        true
    }

    /// Starts a new merged frame with `frame` if it could be continued; false if it is not
    /// a segment to merge (send it as it is). Nothing must be pending.
    ///
    /// The frame's buffer is taken, not copied: `frame` gets the coalescer's spare buffer
    /// (empty) in exchange, so the first segment of a merge costs no copy.
    pub(crate) fn start(&mut self, frame: &mut Vec<u8>) -> bool {
        debug_assert!(self.frame.is_empty(), "a merged frame is pending");
        let Some(seg) = segment(frame) else {
            return false;
        };
        // Not even a second segment of the same size would fit (e.g. at MTU 65520): nothing
        // could join it.
        let size = frame.len() - seg.payload;
        if seg.flags & TCP_PSH != 0 || frame.len() + size > MAX_MERGED {
            return false;
        }
        std::mem::swap(&mut self.frame, frame);
        frame.clear();
        self.tcp = seg.tcp;
        self.payload = seg.payload;
        self.size = size;
        self.next_seq = seg.seq.wrapping_add(size as u32);
        self.open = true;
        self.segments = 1;
        true
    }

    /// The pending frame, with its IP length and checksum set if segments were merged; the
    /// caller sends it and gives the buffer back with [`recycle`](Self::recycle).
    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        if self.frame.is_empty() {
            return None;
        }
        let mut frame = std::mem::take(&mut self.frame);
        if self.segments > 1 {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
            let total = ip.as_ref().len() as u16;
            ip.set_total_len(total);
            ip.fill_checksum();
        }
        self.open = false;
        Some(frame)
    }

    /// Keeps a sent frame's buffer for the next merge.
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.frame.is_empty() {
            buf.clear();
            self.frame = buf;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + TCP with a 12-byte timestamp option block.
    fn seg(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = (20 + 32 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 7, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 2, 10, 0, 2, 15]);
        f.extend_from_slice(&[0, 80, 0xc0, 0]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 9, 0x80, flags, 0x10, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        f.extend_from_slice(payload);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.fill_checksum();
        f
    }

    fn merge_all(c: &mut Coalescer, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for f in frames {
            if c.absorb(f) {
                continue;
            }
            out.extend(c.take());
            let mut f = f.clone();
            if !c.start(&mut f) {
                out.push(f);
            }
        }
        out.extend(c.take());
        out
    }

    #[test]
    fn contiguous_segments_become_one_frame() {
        let mut c = Coalescer::default();
        let frames = [
            seg(100, TCP_ACK, &[1; 1448]),
            seg(1548, TCP_ACK, &[2; 1448]),
            seg(2996, TCP_ACK | TCP_PSH, &[3; 500]),
        ];
        let out = merge_all(&mut c, &frames);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f.len(), 66 + 1448 * 2 + 500);
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert_eq!(usize::from(ip.total_len()), f.len() - 14);
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.seq_number().0, 100);
        assert!(tcp.psh(), "the last segment's PSH is kept");
        assert_eq!(&f[66..66 + 1448], &[1; 1448][..]);
        assert_eq!(&f[66 + 2896..], &[3; 500][..]);
    }

    #[test]
    fn only_what_gro_would_merge_is_merged() {
        let base = seg(100, TCP_ACK, &[1; 1000]);
        let mut other_port = seg(1100, TCP_ACK, &[2; 1000]);
        other_port[35] = 81;
        let mut other_ack = seg(1100, TCP_ACK, &[2; 1000]);
        other_ack[45] = 10;
        let mut other_window = seg(1100, TCP_ACK, &[2; 1000]);
        other_window[48] = 0x11;
        let mut other_ts = seg(1100, TCP_ACK, &[2; 1000]);
        other_ts[61] = 7;
        let cases = [
            ("gap", seg(1200, TCP_ACK, &[2; 1000])),
            ("larger than the first", seg(1100, TCP_ACK, &[2; 1001])),
            ("FIN", seg(1100, TCP_ACK | 0x01, &[2; 1000])),
            ("no payload", seg(1100, TCP_ACK, &[])),
            ("port", other_port),
            ("ack", other_ack),
            ("window", other_window),
            ("timestamp", other_ts),
        ];
        for (what, next) in cases {
            let mut c = Coalescer::default();
            let out = merge_all(&mut c, &[base.clone(), next.clone()]);
            assert_eq!(out, vec![base.clone(), next], "{what}");
        }
        // After a short segment or a PSH nothing more joins.
        for flags in [TCP_ACK, TCP_ACK | TCP_PSH] {
            let short = if flags == TCP_ACK { 999 } else { 1000 };
            let frames = [
                base.clone(),
                seg(1100, flags, &vec![2; short]),
                seg(1100 + short as u32, TCP_ACK, &[3; 10]),
            ];
            let out = merge_all(&mut Coalescer::default(), &frames);
            assert_eq!(out.len(), 2, "flags {flags:#x}");
            assert_eq!(out[1], frames[2]);
        }
        // A PSH segment starts nothing.
        let psh = seg(100, TCP_ACK | TCP_PSH, &[1; 1000]);
        let out = merge_all(
            &mut Coalescer::default(),
            &[psh.clone(), seg(1100, TCP_ACK, &[2; 9])],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], psh);
        // Not TCP data: left alone, pending frame sent first.
        let mut udp = seg(1100, TCP_ACK, &[2; 100]);
        udp[23] = 17;
        let mut c = Coalescer::default();
        let out = merge_all(&mut c, &[base.clone(), udp.clone()]);
        assert_eq!(out, vec![base, udp]);
    }

    #[test]
    fn a_merge_takes_the_first_buffer_and_skips_what_nothing_could_join() {
        // The first segment's buffer is taken whole, not copied.
        let mut c = Coalescer::default();
        let mut first = seg(100, TCP_ACK, &[1; 1448]);
        let ptr = first.as_ptr();
        assert!(c.start(&mut first));
        assert!(first.is_empty(), "the caller gets the spare buffer");
        let merged = c.take().unwrap();
        assert_eq!(merged.as_ptr(), ptr);
        assert_eq!(merged, seg(100, TCP_ACK, &[1; 1448]));
        // A segment more than half the largest frame (MTU 65520): no second one of its size
        // could fit, so it is left with the caller to send as it is.
        let mut big = seg(100, TCP_ACK, &vec![2; 40_000]);
        let copy = big.clone();
        assert!(!c.start(&mut big));
        assert_eq!(big, copy);
        assert!(c.take().is_none());
    }

    #[test]
    fn stops_at_the_largest_ip_packet() {
        let mut c = Coalescer::default();
        let frames: Vec<Vec<u8>> = (0..50u32)
            .map(|i| seg(i * 1448, TCP_ACK, &[i as u8; 1448]))
            .collect();
        let out = merge_all(&mut c, &frames);
        let mut seq = 0;
        for f in &out {
            assert!(f.len() <= MAX_MERGED, "{}", f.len());
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            assert!(ip.verify_checksum());
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(tcp.seq_number().0 as u32, seq);
            seq += tcp.payload().len() as u32;
        }
        assert_eq!(seq, 50 * 1448);
        assert_eq!(out.len(), 2, "45 segments fit in one frame, 5 in the next");
    }
}
