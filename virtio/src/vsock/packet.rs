//! The virtio-vsock packet header and its mapping onto descriptor chains.
//!
//! Guest memory is untrusted: [`parse_tx`] checks a TX chain's flags and
//! lengths before anything reads the payload, and [`rx_writer`] checks that an
//! RX chain is device-writable and can hold a header. The header is converted
//! field by field from little-endian bytes, so no layout tricks are needed.
//! Chains may split header and payload over any number of descriptors (Linux
//! uses one or two), which virtio-queue's [`Reader`]/[`Writer`] handle.

use std::io::{Read, Write};

use thiserror::Error;
use virtio_queue::{DescriptorChain, Reader, Writer};

use super::defs::{MAX_PKT_DATA, PKT_HEADER_SIZE};
use crate::GuestMemoryMmap;

/// A descriptor chain borrowed from a queue over our guest memory.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Why a chain could not be used as a packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    /// A TX chain contains a device-writable descriptor.
    #[error("TX chain has a device-writable descriptor")]
    WritableInTx,
    /// An RX chain contains a device-readable descriptor.
    #[error("RX chain has a device-readable descriptor")]
    ReadableInRx,
    /// Descriptors point outside guest memory or overflow.
    #[error("descriptor chain points outside guest memory")]
    BadChain,
    /// Fewer bytes than a header.
    #[error("chain holds {0} bytes, less than a packet header")]
    ShortHeader(usize),
    /// The header's `len` exceeds what we accept per packet.
    #[error("payload length {0} exceeds the maximum packet size")]
    TooLong(u32),
    /// The header's `len` exceeds the bytes the chain actually has.
    #[error("payload length {len} exceeds the {available} bytes in the chain")]
    LenBeyondChain {
        /// The header's `len`.
        len: u32,
        /// Bytes left in the chain after the header.
        available: usize,
    },
}

/// A virtio-vsock packet header (struct virtio_vsock_hdr), host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (1 = stream).
    pub type_: u16,
    /// Operation (OP_*).
    pub op: u16,
    /// Operation flags (SHUTDOWN_* for OP_SHUTDOWN).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever.
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decodes the little-endian wire form.
    pub fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire form.
    pub fn to_bytes(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads and validates the header of a TX (guest-to-host) chain. On success
/// the returned reader is positioned at the payload, which holds at least
/// `header.len` bytes.
pub fn parse_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: Chain<'_>,
) -> Result<(PacketHeader, Reader<'a>), PacketError> {
    // Device-writable buffers in a TX chain mean a confused or hostile driver;
    // Reader would silently skip them, so refuse the chain outright.
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(PacketError::WritableInTx);
    }
    let mut reader = Reader::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    let available = reader.available_bytes();
    if available < PKT_HEADER_SIZE {
        return Err(PacketError::ShortHeader(available));
    }
    let mut raw = [0u8; PKT_HEADER_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::BadChain)?;
    let header = PacketHeader::from_bytes(&raw);
    if header.len > MAX_PKT_DATA {
        return Err(PacketError::TooLong(header.len));
    }
    let available = reader.available_bytes();
    if header.len as usize > available {
        return Err(PacketError::LenBeyondChain {
            len: header.len,
            available,
        });
    }
    Ok((header, reader))
}

/// Checks an RX (host-to-guest) chain and returns a writer over it, with room
/// for at least a header.
pub fn rx_writer<'a>(
    mem: &'a GuestMemoryMmap,
    chain: Chain<'_>,
) -> Result<Writer<'a>, PacketError> {
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(PacketError::ReadableInRx);
    }
    let writer = Writer::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    if writer.available_bytes() < PKT_HEADER_SIZE {
        return Err(PacketError::ShortHeader(writer.available_bytes()));
    }
    Ok(writer)
}

/// Writes one packet (header, then `data`) into an RX buffer; returns the
/// used length to report. The caller sized `data` to fit.
pub fn write_packet(
    writer: &mut Writer<'_>,
    header: &PacketHeader,
    data: &[u8],
) -> std::io::Result<u32> {
    writer.write_all(&header.to_bytes())?;
    writer.write_all(data)?;
    Ok((PKT_HEADER_SIZE + data.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::XorShift;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Builds one chain of (addr, len, flags) descriptors with the mock
    /// driver and runs `f` on it.
    fn with_chain<T>(
        mem: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        f: impl FnOnce(Chain<'_>) -> T,
    ) -> T {
        let vq = MockSplitQueue::new(mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, flags)| RawDescriptor::from(Descriptor::new(addr, len, flags, 0)))
            .collect();
        let chain = vq.build_desc_chain(&raw).unwrap();
        f(chain)
    }

    fn header(len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            len,
            type_: 1,
            op: 5,
            ..Default::default()
        }
    }

    #[test]
    fn tx_header_and_payload_may_share_or_split_descriptors() {
        let m = mem();
        let mut bytes = header(5).to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        m.write_slice(&bytes, GuestAddress(0x8000)).unwrap();
        for layout in [
            vec![(0x8000, 49, 0)],
            vec![(0x8000, 44, 0), (0x8000 + 44, 5, 0)],
            vec![(0x8000, 7, 0), (0x8007, 40, 0), (0x802f, 2, 0)],
        ] {
            let (hdr, mut data) = with_chain(&m, &layout, |c| parse_tx(&m, c)).unwrap();
            assert_eq!(hdr, header(5));
            let mut payload = [0u8; 5];
            data.read_exact(&mut payload).unwrap();
            assert_eq!(&payload, b"hello");
        }
    }

    #[test]
    fn tx_chains_with_bad_flags_or_lengths_are_refused() {
        let m = mem();
        m.write_slice(&header(100).to_bytes(), GuestAddress(0x8000))
            .unwrap();
        let parse = |layout: &[(u64, u32, u16)]| {
            with_chain(&m, layout, |c| parse_tx(&m, c).map(|(h, _)| h))
        };
        assert_eq!(parse(&[(0x8000, 44, W)]), Err(PacketError::WritableInTx));
        assert_eq!(
            parse(&[(0x8000, 44, 0), (0x9000, 100, W)]),
            Err(PacketError::WritableInTx)
        );
        assert_eq!(parse(&[(0x8000, 43, 0)]), Err(PacketError::ShortHeader(43)));
        assert_eq!(
            parse(&[(0x8000, 44, 0), (0x9000, 99, 0)]),
            Err(PacketError::LenBeyondChain {
                len: 100,
                available: 99
            })
        );
        assert_eq!(parse(&[(0x20_0000, 44, 0)]), Err(PacketError::BadChain));
        m.write_slice(&header(MAX_PKT_DATA + 1).to_bytes(), GuestAddress(0x8000))
            .unwrap();
        assert_eq!(
            parse(&[(0x8000, 44, 0)]),
            Err(PacketError::TooLong(MAX_PKT_DATA + 1))
        );
    }

    #[test]
    fn rx_chains_must_be_writable_and_hold_a_header() {
        let m = mem();
        let check = |layout: &[(u64, u32, u16)]| {
            with_chain(&m, layout, |c| {
                rx_writer(&m, c).map(|w| w.available_bytes())
            })
        };
        assert_eq!(check(&[(0x8000, 4096, W)]), Ok(4096));
        assert_eq!(check(&[(0x8000, 44, W), (0x9000, 100, W)]), Ok(144));
        assert_eq!(check(&[(0x8000, 4096, 0)]), Err(PacketError::ReadableInRx));
        assert_eq!(
            check(&[(0x8000, 44, W), (0x9000, 100, 0)]),
            Err(PacketError::ReadableInRx)
        );
        assert_eq!(check(&[(0x8000, 43, W)]), Err(PacketError::ShortHeader(43)));
        assert_eq!(check(&[(0xf_fff0, 64, W)]), Err(PacketError::BadChain));
    }

    #[test]
    fn written_packet_lands_across_descriptors() {
        let m = mem();
        let used = with_chain(&m, &[(0x8000, 30, W), (0x9000, 30, W)], |c| {
            let mut w = rx_writer(&m, c).unwrap();
            write_packet(&mut w, &header(6), b"abcdef").unwrap()
        });
        assert_eq!(used, 50);
        let mut first = [0u8; 30];
        m.read_slice(&mut first, GuestAddress(0x8000)).unwrap();
        assert_eq!(first[..], header(6).to_bytes()[..30]);
        let mut rest = [0u8; 20];
        m.read_slice(&mut rest, GuestAddress(0x9000)).unwrap();
        assert_eq!(&rest[..14], &header(6).to_bytes()[30..]);
        assert_eq!(&rest[14..], b"abcdef");
    }

    #[test]
    fn header_round_trips_through_wire_bytes() {
        let h = PacketHeader {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 80,
            len: 12,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08, "little endian");
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(PacketHeader::from_bytes(&b), h);
    }

    #[test]
    fn random_bytes_decode_and_reencode_identically() {
        let mut rng = XorShift::new(7);
        for _ in 0..1000 {
            let mut b = [0u8; PKT_HEADER_SIZE];
            rng.fill(&mut b);
            assert_eq!(PacketHeader::from_bytes(&b).to_bytes(), b);
        }
    }
}
