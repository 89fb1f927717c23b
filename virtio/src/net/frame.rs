//! The virtio-net header and the checksum completion the device does for
//! the guest.
//!
//! With VIRTIO_NET_F_CSUM the guest may hand over a frame whose transport
//! checksum holds only the pseudo-header sum (`NEEDS_CSUM`); the host-side
//! stack should never see such a frame, so [`complete_checksum`] finishes it
//! the way the spec describes (5.1.6.2): the one's-complement sum from
//! `csum_start` to the end of the frame, stored at `csum_start + csum_offset`.
//! Both offsets come from the guest, so they are checked against the frame.

use thiserror::Error;

use super::defs::{NET_HDR_LEN, NUM_BUFFERS_OFFSET};

/// `flags`: the checksum at `csum_start + csum_offset` is partial.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the device vouches for the checksums (guest skips verification).
pub const HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a segmentation-offload frame.
pub const HDR_GSO_NONE: u8 = 0;
/// `gso_type`: a TCP/IPv4 frame larger than the MTU, to be taken as `gso_size`-byte segments.
pub const HDR_GSO_TCPV4: u8 = 1;

/// Why a partial checksum could not be completed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChecksumError {
    /// The checksum location lies outside the frame.
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    OutOfBounds {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
}

/// `struct virtio_net_hdr_v1`, host byte order; only the fields we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `HDR_F_*` bits.
    pub flags: u8,
    /// `HDR_GSO_*` value.
    pub gso_type: u8,
    /// Length of the headers before the payload a GSO frame splits.
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Chains this frame spans (receive side).
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decodes the little-endian wire form.
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(NUM_BUFFERS_OFFSET),
        }
    }

    /// Encodes the little-endian wire form.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[NUM_BUFFERS_OFFSET..].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Finishes a partial checksum in place: see the module docs.
pub fn complete_checksum(frame: &mut [u8], start: u16, offset: u16) -> Result<(), ChecksumError> {
    let out_of_bounds = ChecksumError::OutOfBounds {
        start,
        offset,
        len: frame.len(),
    };
    let begin = usize::from(start);
    let field = begin + usize::from(offset);
    if field + 2 > frame.len() {
        return Err(out_of_bounds);
    }
    let sum = fold(ones_complement_sum(&frame[begin..]));
    // A computed zero goes out as 0xffff, as Linux does: for UDP a zero
    // would mean "no checksum", and for TCP both encode the same value.
    let csum = match !sum {
        0 => 0xffff,
        c => c,
    };
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// The 32-bit one's-complement sum of `data` as big-endian 16-bit words
/// (an odd last byte padded with zero), carries kept in the upper bits.
pub(crate) fn ones_complement_sum(data: &[u8]) -> u64 {
    // Eight bytes at a time: the sum of four 16-bit words fits in 64 bits
    // with room for ~2^45 iterations of carries, far beyond 64 KiB frames.
    let mut sum = 0u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let mut rest = chunks.remainder().chunks(2);
    for pair in &mut rest {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u64::from);
        sum += hi | lo;
    }
    sum
}

/// Folds carries back in until the sum fits 16 bits.
pub(crate) fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The IPv4 pseudo-header sum for a transport segment, folded: what a
    /// guest puts in the checksum field before setting NEEDS_CSUM.
    pub(crate) fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u16 {
        let mut ph = Vec::new();
        ph.extend_from_slice(&src);
        ph.extend_from_slice(&dst);
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&len.to_be_bytes());
        fold(ones_complement_sum(&ph))
    }

    /// Verifies a transport checksum independently of [`complete_checksum`]:
    /// the sum over pseudo-header and segment, checksum included, is 0xffff.
    pub(crate) fn transport_checksum_ok(src: [u8; 4], dst: [u8; 4], proto: u8, seg: &[u8]) -> bool {
        let mut all = Vec::new();
        all.extend_from_slice(&src);
        all.extend_from_slice(&dst);
        all.extend_from_slice(&[0, proto]);
        all.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        all.extend_from_slice(seg);
        if all.len() % 2 == 1 {
            all.push(0);
        }
        let mut sum = 0u32;
        for w in all.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn header_round_trips_and_reads_little_endian() {
        let h = NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: HDR_GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 6,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 6, 0, 3, 0]);
        assert_eq!(NetHeader::from_bytes(&b), h);
    }

    #[test]
    fn completes_udp_checksum_over_odd_length_segment() {
        let (src, dst) = ([10, 0, 2, 15], [10, 0, 2, 2]);
        // 14 bytes of Ethernet, 20 of IPv4 (contents irrelevant here), then
        // UDP: ports, length, checksum, 13 bytes of payload (odd).
        let mut frame = vec![0u8; 34];
        let payload = b"hello, world!";
        let udp_len = (8 + payload.len()) as u16;
        frame.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&pseudo_header_sum(src, dst, 17, udp_len).to_be_bytes());
        frame.extend_from_slice(payload);
        complete_checksum(&mut frame, 34, 6).unwrap();
        assert!(transport_checksum_ok(src, dst, 17, &frame[34..]));
    }

    #[test]
    fn zero_result_is_sent_as_all_ones() {
        // A segment whose completed checksum would be 0: all-ones data
        // (0xffff words sum to "negative zero"), partial field zero.
        let mut frame = vec![0xff, 0xff, 0, 0];
        complete_checksum(&mut frame, 0, 2).unwrap();
        assert_eq!(&frame[2..], &[0xff, 0xff]);
    }

    #[test]
    fn checksum_location_outside_the_frame_is_refused() {
        let mut frame = vec![0u8; 40];
        for (start, offset) in [(39, 0), (38, 1), (40, 0), (u16::MAX, u16::MAX), (0, 39)] {
            assert!(
                complete_checksum(&mut frame, start, offset).is_err(),
                "{start}+{offset}"
            );
        }
        assert!(complete_checksum(&mut frame, 38, 0).is_ok());
        assert!(complete_checksum(&mut frame, 0, 38).is_ok());
    }

    #[test]
    fn wide_sum_matches_bytewise_sum_for_all_lengths() {
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..data.len() {
            let slow: u64 = data[..len]
                .chunks(2)
                .map(|w| u64::from(w[0]) << 8 | w.get(1).copied().map_or(0, u64::from))
                .sum();
            assert_eq!(fold(ones_complement_sum(&data[..len])), fold(slow), "{len}");
        }
    }
}
