//! Driver-side helpers for the vsock device: the guest's half of the
//! protocol on top of [`GuestDriver`].
//!
//! [`VsockDriver`] initializes the device through the MMIO transport, keeps
//! the RX queue stocked with 4 KiB buffers (one descriptor each, as Linux 6.x
//! posts them), sends packets as a header descriptor plus a data descriptor
//! (as Linux does), and reads packets back from used RX buffers.

use std::time::Duration;

use vm_memory::GuestAddress;

use super::defs::*;
use super::packet::PacketHeader;
use super::Vsock;
use crate::test_utils::{Desc, GuestDriver, UsedElem};

/// Size of each RX buffer the driver posts.
pub const RX_BUF_SIZE: u32 = 4096;
/// RX buffers posted at start-up.
pub const INITIAL_RX_BUFFERS: usize = 128;
/// How long helpers wait for the device before giving up.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A packet the device put in an RX buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    /// Its header.
    pub hdr: PacketHeader,
    /// Its payload (`hdr.len` bytes).
    pub data: Vec<u8>,
}

/// The guest's vsock driver. See the module docs.
pub struct VsockDriver {
    driver: GuestDriver,
    guest_cid: u64,
    rx_bufs: std::collections::HashMap<u16, GuestAddress>,
    /// RX buffers that came back empty (the device refused them).
    pub empty_rx: Vec<UsedElem>,
    /// Re-post an RX buffer for each one consumed (on by default).
    pub refill: bool,
}

impl VsockDriver {
    /// Puts `device` behind a transport, initializes it and posts
    /// [`INITIAL_RX_BUFFERS`] RX buffers.
    pub fn new(device: Vsock) -> Self {
        Self::with_rx_buffers(device, INITIAL_RX_BUFFERS)
    }

    /// Like [`VsockDriver::new`] with `n` RX buffers (0: the guest posts none).
    pub fn with_rx_buffers(device: Vsock, n: usize) -> Self {
        let guest_cid = device.guest_cid();
        let mut driver = GuestDriver::new(Box::new(device));
        driver.init();
        let mut d = Self {
            driver,
            guest_cid,
            rx_bufs: std::collections::HashMap::new(),
            empty_rx: Vec::new(),
            refill: true,
        };
        d.post_rx(n);
        d
    }

    /// The underlying generic driver.
    pub fn driver(&mut self) -> &mut GuestDriver {
        &mut self.driver
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Posts `n` RX buffers and kicks the RX queue.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.driver.alloc(RX_BUF_SIZE);
            match self
                .driver
                .add_chain(RXQ_INDEX, &[Desc::writable(addr, RX_BUF_SIZE)])
            {
                Some(head) => {
                    self.rx_bufs.insert(head, addr);
                }
                None => break,
            }
        }
        self.driver.kick(RXQ_INDEX);
    }

    /// Re-initializes the device after a driver reset (status 0).
    pub fn reinit(&mut self, rx_buffers: usize) {
        self.driver.init();
        self.rx_bufs.clear();
        self.post_rx(rx_buffers);
    }

    /// A STREAM header from the guest (its CID) to the host (CID 2), with a
    /// 256 KiB receive buffer and nothing consumed yet.
    pub fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: 0,
        }
    }

    /// Sends `hdr` (its `len` as given) with `data`, header and data in
    /// separate descriptors, and waits until the device consumed the chain.
    pub fn send_raw(&mut self, hdr: &PacketHeader, data: &[u8]) {
        let haddr = self.driver.alloc(PKT_HEADER_SIZE as u32);
        self.driver.write_mem(haddr, &hdr.to_bytes());
        let mut descs = vec![Desc::readable(haddr, PKT_HEADER_SIZE as u32)];
        if !data.is_empty() {
            let daddr = self.driver.alloc(data.len() as u32);
            self.driver.write_mem(daddr, data);
            descs.push(Desc::readable(daddr, data.len() as u32));
        }
        self.send_chain(&descs);
    }

    /// Sends `hdr` with `data`, setting `len` to match.
    pub fn send(&mut self, mut hdr: PacketHeader, data: &[u8]) {
        hdr.len = data.len() as u32;
        self.send_raw(&hdr, data);
    }

    /// Offers an arbitrary TX chain and waits until the device returned it.
    pub fn send_chain(&mut self, descs: &[Desc]) -> UsedElem {
        self.driver
            .add_chain(TXQ_INDEX, descs)
            .expect("TX descriptor table full");
        self.driver.kick(TXQ_INDEX);
        self.driver
            .wait_used(TXQ_INDEX, TIMEOUT)
            .expect("device did not return the TX chain")
    }

    /// Waits up to `timeout` for the next packet; buffers returned empty are
    /// recorded in [`VsockDriver::empty_rx`] and skipped.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<RxPacket> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let used = self.driver.wait_used(RXQ_INDEX, left)?;
            let addr = self.rx_bufs.remove(&used.id);
            if self.refill {
                self.post_rx(1);
            }
            let Some(addr) = addr else {
                self.empty_rx.push(used);
                continue;
            };
            if used.len == 0 {
                self.empty_rx.push(used);
                continue;
            }
            assert!(
                used.len as usize >= PKT_HEADER_SIZE,
                "short RX packet {used:?}"
            );
            let raw = self.driver.read_mem(addr, PKT_HEADER_SIZE);
            let mut bytes = [0u8; PKT_HEADER_SIZE];
            bytes.copy_from_slice(&raw);
            let hdr = PacketHeader::from_bytes(&bytes);
            assert_eq!(
                used.len as usize,
                PKT_HEADER_SIZE + hdr.len as usize,
                "used length disagrees with header {hdr:?}"
            );
            let data = self.driver.read_mem(
                GuestAddress(addr.0 + PKT_HEADER_SIZE as u64),
                hdr.len as usize,
            );
            return Some(RxPacket { hdr, data });
        }
    }

    /// The next packet; panics after [`TIMEOUT`].
    pub fn recv(&mut self) -> RxPacket {
        self.recv_timeout(TIMEOUT)
            .expect("no packet from the device")
    }

    /// The next packet, which must have operation `op`.
    pub fn expect_op(&mut self, op: u16) -> RxPacket {
        let pkt = self.recv();
        assert_eq!(pkt.hdr.op, op, "unexpected packet {:?}", pkt.hdr);
        pkt
    }

    /// Asserts that no packet arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Some(pkt) = self.recv_timeout(wait) {
            panic!("unexpected packet {:?}", pkt.hdr);
        }
    }
}
