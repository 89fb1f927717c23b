//! Driver-side helpers for the net device: the guest's half of the
//! protocol on top of [`GuestDriver`].
//!
//! [`NetDriver`] negotiates the features a test asks for, posts RX buffers
//! of a chosen size (one writable descriptor each, as Linux posts mergeable
//! buffers), sends frames as a header descriptor plus a frame descriptor,
//! and reassembles received frames from one or more used RX buffers.

use std::collections::HashMap;
use std::time::Duration;

use vm_memory::GuestAddress;

use super::defs::{NET_HDR_LEN, RXQ_INDEX, TXQ_INDEX};
use super::frame::NetHeader;
use super::Net;
use crate::test_utils::{Desc, GuestDriver, UsedElem};

/// How long helpers wait for the device before giving up.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A frame the device delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The header from the first buffer.
    pub hdr: NetHeader,
    /// The frame, reassembled from all its buffers.
    pub frame: Vec<u8>,
    /// The used entries it came in.
    pub used: Vec<UsedElem>,
}

/// The guest's net driver. See the module docs.
pub struct NetDriver {
    driver: GuestDriver,
    rx_bufs: HashMap<u16, GuestAddress>,
}

impl NetDriver {
    /// Puts `device` behind a transport and initializes it accepting
    /// `features`; panics if the device refuses them or fails to start.
    pub fn new(device: Net, features: u64) -> Self {
        let mut d = Self {
            driver: GuestDriver::new(Box::new(device)),
            rx_bufs: HashMap::new(),
        };
        d.reinit(features);
        d
    }

    /// Initializes the device again after a driver reset (status 0).
    pub fn reinit(&mut self, features: u64) {
        assert!(
            self.driver.negotiate(features),
            "features {features:#x} refused"
        );
        assert_eq!(self.driver.setup_queues(), 2);
        let status = self.driver.driver_ok();
        assert_eq!(status & 0x4, 0x4, "device did not accept DRIVER_OK");
        self.rx_bufs.clear();
    }

    /// The underlying generic driver.
    pub fn driver(&mut self) -> &mut GuestDriver {
        &mut self.driver
    }

    /// Posts `n` RX buffers of `size` bytes and kicks the RX queue.
    pub fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let addr = self.driver.alloc(size);
            let head = self
                .driver
                .add_chain(RXQ_INDEX, &[Desc::writable(addr, size)])
                .expect("RX descriptor table full");
            self.rx_bufs.insert(head, addr);
        }
        self.driver.kick(RXQ_INDEX);
    }

    /// Offers a TX chain made of `descs` and kicks, without waiting.
    pub fn offer_tx(&mut self, descs: &[Desc]) -> u16 {
        let head = self
            .driver
            .add_chain(TXQ_INDEX, descs)
            .expect("TX descriptor table full");
        self.driver.kick(TXQ_INDEX);
        head
    }

    /// Writes `hdr` and `frame` to guest memory as two readable descriptors.
    pub fn tx_descs(&mut self, hdr: &NetHeader, frame: &[u8]) -> [Desc; 2] {
        let haddr = self.driver.alloc(NET_HDR_LEN as u32);
        self.driver.write_mem(haddr, &hdr.to_bytes());
        let faddr = self.driver.alloc(frame.len() as u32);
        self.driver.write_mem(faddr, frame);
        [
            Desc::readable(haddr, NET_HDR_LEN as u32),
            Desc::readable(faddr, frame.len() as u32),
        ]
    }

    /// Sends `frame` with `hdr` and waits until the device returned the chain.
    pub fn send(&mut self, hdr: &NetHeader, frame: &[u8]) -> UsedElem {
        let descs = self.tx_descs(hdr, frame);
        self.offer_tx(&descs);
        self.wait_tx()
    }

    /// Waits for the device to return the next TX chain.
    pub fn wait_tx(&mut self) -> UsedElem {
        self.driver
            .wait_used(TXQ_INDEX, TIMEOUT)
            .expect("device did not return the TX chain")
    }

    /// Waits up to `timeout` for the next frame.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<RxFrame> {
        let first = self.driver.wait_used(RXQ_INDEX, timeout)?;
        let addr = self.rx_bufs.remove(&first.id).expect("unknown RX buffer");
        assert!(
            first.len as usize >= NET_HDR_LEN,
            "short RX buffer {first:?}"
        );
        let raw = self.driver.read_mem(addr, first.len as usize);
        let mut hbytes = [0u8; NET_HDR_LEN];
        hbytes.copy_from_slice(&raw[..NET_HDR_LEN]);
        let hdr = NetHeader::from_bytes(&hbytes);
        let mut frame = raw[NET_HDR_LEN..].to_vec();
        let mut used = vec![first];
        for _ in 1..hdr.num_buffers {
            let next = self
                .driver
                .wait_used(RXQ_INDEX, TIMEOUT)
                .expect("missing continuation buffer");
            let addr = self.rx_bufs.remove(&next.id).expect("unknown RX buffer");
            frame.extend(self.driver.read_mem(addr, next.len as usize));
            used.push(next);
        }
        Some(RxFrame { hdr, frame, used })
    }

    /// The next frame; panics after [`TIMEOUT`].
    pub fn recv(&mut self) -> RxFrame {
        self.recv_timeout(TIMEOUT)
            .expect("no frame from the device")
    }
}
