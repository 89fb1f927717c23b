//! Shared by the device fuzz targets: plays a hostile guest driver against a real virtio device
//! through real guest memory ([`msbvm_virtio::test_utils::GuestDriver`]).
//!
//! The input is a little program of operations on one device, run after a driver reset and
//! re-initialization (so every input starts from a fresh device state):
//!
//! - `0`: a well-formed chain on a queue: up to 4 descriptors, each readable (its bytes taken
//!   from the input) or writable (a length), then a kick;
//! - `1`: one raw descriptor written verbatim (any address, length, flags, next: loops,
//!   INDIRECT, out-of-memory addresses);
//! - `2`: a raw head pushed to a queue's avail ring, then a kick;
//! - `3`: raw bytes written at a guest address in the data area (indirect tables, headers).
//!
//! Afterwards the used rings are drained with a short wait. A panic in the device's worker
//! thread aborts the process, which is what the fuzzer detects; so does a hang (timeouts).

use std::time::Duration;

use msbvm_virtio::test_utils::{Desc, GuestDriver, DATA_AREA, MEM_SIZE};
use vm_memory::GuestAddress;

/// Reads the input front to back; everything past the end reads as zeros.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// A guest address in the data area from 16 input bits (16-byte granules).
fn data_addr(input: &mut Input) -> GuestAddress {
    let span = (MEM_SIZE - DATA_AREA - 0x1_0000) / 16;
    GuestAddress(DATA_AREA + (u64::from(input.u16()) % span) * 16)
}

/// Runs the operations of `input` against the driven device, whose queues are `queues`.
pub fn run_ops(d: &mut GuestDriver, queues: usize, mut input: Input) {
    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        let op = input.u8();
        let q = usize::from(input.u8()) % queues;
        let (_, _, _, size) = d.queue_layout(q);
        match op % 4 {
            0 => {
                let n = usize::from(input.u8() % 4) + 1;
                let mut descs = Vec::new();
                for _ in 0..n {
                    let writable = input.u8() & 1 == 1;
                    let len = u32::from(input.u16()) % 8192;
                    let addr = d.alloc(len.max(1));
                    if !writable {
                        let data = input.bytes(len as usize).to_vec();
                        d.write_mem(addr, &data);
                        descs.push(Desc::readable(addr, len));
                    } else {
                        descs.push(Desc::writable(addr, len));
                    }
                }
                if d.add_chain(q, &descs).is_some() {
                    d.kick(q);
                }
            }
            1 => {
                let index = input.u16() % size;
                let addr = if input.u8() & 1 == 1 { input.u64() } else { data_addr(&mut input).0 };
                let (len, flags, next) = (input.u32(), input.u16(), input.u16());
                d.write_raw_descriptor(q, index, addr, len, flags, next);
            }
            2 => {
                d.push_raw_avail(q, input.u16());
                d.kick(q);
            }
            _ => {
                let addr = data_addr(&mut input);
                let len = usize::from(input.u8()) * 4;
                let data = input.bytes(len).to_vec();
                d.write_mem(addr, &data);
            }
        }
    }
    drain(d, queues);
}

/// Takes what the device put in the used rings, waiting briefly for its worker.
pub fn drain(d: &mut GuestDriver, queues: usize) {
    for q in 0..queues {
        while d.wait_used(q, Duration::from_millis(2)).is_some() {}
    }
}
