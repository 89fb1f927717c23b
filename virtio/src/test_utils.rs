//! Driver-side test harness: plays the guest's virtio driver against a real
//! device through a real [`MmioTransport`] and real guest memory.
//!
//! [`GuestDriver`] owns a [`GuestMemoryMmap`], lays out each queue's rings in
//! it ([`split_ring_layout`]), negotiates through the MMIO
//! registers exactly as Linux's virtio-mmio driver does, then lets a test put
//! descriptor chains in the avail ring, kick the queue (a QueueNotify write)
//! and read back used-ring entries. The device runs on its own thread, as it
//! does under the VMM, so waiting helpers poll the used ring with a timeout.
//!
//! Shipped under the `test-utils` feature so the VMM's tests can reuse it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{GuestMemoryMmap, MmioTransport, VirtioDevice};

/// Size of the guest memory the harness creates.
pub const MEM_SIZE: u64 = 64 << 20;
/// Where queue `i`'s rings start: `QUEUE_AREA + i * QUEUE_STRIDE`.
pub const QUEUE_AREA: u64 = 0x1_0000;
/// Room reserved for one queue's rings (enough for 1024 entries).
pub const QUEUE_STRIDE: u64 = 0x1_0000;
/// Data buffers handed out by [`GuestDriver::alloc`] live from here to the end.
pub const DATA_AREA: u64 = 4 << 20;

/// One descriptor of a chain the test wants to offer to the device.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Buffer length in bytes.
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE) rather than device-readable.
    pub writable: bool,
}

impl Desc {
    /// A buffer the device reads (driver to device).
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes (device to driver).
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// An entry the device put in a used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub id: u16,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

/// The driver's view of one split virtqueue.
#[derive(Debug)]
struct DriverQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

/// A fake guest driver in front of one device. See the module docs.
pub struct GuestDriver {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    irq: EventFd,
    queues: Vec<DriverQueue>,
    next_data: u64,
}

impl GuestDriver {
    /// Creates guest memory and a transport in front of `device`.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        crate::confine::confine_workers_in_tests();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("cannot create test guest memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("cannot create irq eventfd");
        let transport = MmioTransport::new(
            mem.clone(),
            device,
            irq.try_clone().expect("cannot clone irq eventfd"),
        )
        .expect("cannot create transport");
        Self {
            mem,
            transport,
            irq,
            queues: Vec::new(),
            next_data: DATA_AREA,
        }
    }

    /// The guest memory the device works on.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The transport, for tests that poke it directly.
    pub fn transport(&mut self) -> &mut MmioTransport {
        &mut self.transport
    }

    /// Replaces the transport with one in front of `device` restored from
    /// `state` (from [`MmioTransport::save_state`]) on the same guest memory,
    /// as a VM restored from a snapshot would have it; the driver's view of
    /// its queues, which lives in that memory, carries on.
    pub fn restore_into(
        &mut self,
        device: Box<dyn VirtioDevice>,
        state: &[u8],
    ) -> Result<(), String> {
        let irq = self.irq.try_clone().map_err(|e| e.to_string())?;
        let mut transport =
            MmioTransport::new(self.mem.clone(), device, irq).map_err(|e| e.to_string())?;
        transport.restore_state(state)?;
        self.transport = transport;
        Ok(())
    }

    /// The irqfd the transport raises.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// A 32-bit register read, as the guest does it.
    pub fn read_reg(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    /// A 32-bit register write, as the guest does it.
    pub fn write_reg(&mut self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    /// The 64-bit DeviceFeatures value, read in two halves.
    pub fn device_features(&mut self) -> u64 {
        self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Steps 1-6 of driver initialization (virtio 1.2, 3.1.1): reset,
    /// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK. Returns whether
    /// the device kept FEATURES_OK set (i.e. accepted the features).
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write_reg(VIRTIO_MMIO_STATUS, 0);
        self.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        let status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.write_reg(VIRTIO_MMIO_STATUS, status);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.write_reg(VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_FEATURES_OK);
        self.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Step 7: lays out every queue the device has at its maximum size (capped
    /// at 1024) and marks it ready. Returns how many queues were set up.
    pub fn setup_queues(&mut self) -> usize {
        self.queues.clear();
        for i in 0..64u32 {
            self.write_reg(VIRTIO_MMIO_QUEUE_SEL, i);
            let max = self.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let size = max.min(1024) as u16;
            let (desc, avail, used) =
                split_ring_layout(QUEUE_AREA + u64::from(i) * QUEUE_STRIDE, size);
            // A freshly allocated vring is zeroed.
            self.write_mem(
                desc,
                &vec![0; (used.0 + 6 + 8 * u64::from(size) - desc.0) as usize],
            );
            let q = DriverQueue {
                size,
                desc,
                avail,
                used,
                free: (0..size).rev().collect(),
                chains: HashMap::new(),
                avail_idx: 0,
                last_used: 0,
            };
            self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
            for (low, high, addr) in [
                (
                    VIRTIO_MMIO_QUEUE_DESC_LOW,
                    VIRTIO_MMIO_QUEUE_DESC_HIGH,
                    q.desc,
                ),
                (
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                    q.avail,
                ),
                (
                    VIRTIO_MMIO_QUEUE_USED_LOW,
                    VIRTIO_MMIO_QUEUE_USED_HIGH,
                    q.used,
                ),
            ] {
                self.write_reg(low, addr.raw_value() as u32);
                self.write_reg(high, (addr.raw_value() >> 32) as u32);
            }
            self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
            self.queues.push(q);
        }
        self.queues.len()
    }

    /// Step 8: sets DRIVER_OK; returns the status read back.
    pub fn driver_ok(&mut self) -> u32 {
        let status = self.read_reg(VIRTIO_MMIO_STATUS);
        self.write_reg(VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
        self.read_reg(VIRTIO_MMIO_STATUS)
    }

    /// The whole initialization, accepting only VERSION_1; panics if the
    /// device refuses or fails to activate.
    pub fn init(&mut self) {
        assert!(self.negotiate(1 << VIRTIO_F_VERSION_1), "features refused");
        self.setup_queues();
        let status = self.driver_ok();
        assert_eq!(
            status,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
            "device did not accept DRIVER_OK"
        );
    }

    /// Resets the device (status 0) and forgets the driver-side queue state.
    pub fn reset(&mut self) {
        self.write_reg(VIRTIO_MMIO_STATUS, 0);
        self.queues.clear();
    }

    /// Ring addresses (descriptor table, avail, used) and size of queue `q`.
    pub fn queue_layout(&self, q: usize) -> (GuestAddress, GuestAddress, GuestAddress, u16) {
        let dq = &self.queues[q];
        (dq.desc, dq.avail, dq.used, dq.size)
    }

    /// Hands out `len` bytes of guest memory for buffers, 16-byte aligned.
    /// Wraps around to the start of the data area when it runs out, which is
    /// fine for tests that keep far less than the area in flight.
    pub fn alloc(&mut self, len: u32) -> GuestAddress {
        let len = (u64::from(len) + 15) & !15;
        if self.next_data + len > MEM_SIZE {
            self.next_data = DATA_AREA;
        }
        let addr = GuestAddress(self.next_data);
        self.next_data += len.max(16);
        addr
    }

    /// Writes `data` into guest memory at `addr`.
    pub fn write_mem(&self, addr: GuestAddress, data: &[u8]) {
        self.mem
            .write_slice(data, addr)
            .expect("test write outside guest memory");
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read_mem(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem
            .read_slice(&mut data, addr)
            .expect("test read outside guest memory");
        data
    }

    /// Number of free descriptors left in queue `q`.
    pub fn free_descriptors(&self, q: usize) -> usize {
        self.queues[q].free.len()
    }

    /// Puts a chain in queue `q`'s descriptor table and avail ring (without
    /// kicking). Returns the head index, or None if the table is full.
    pub fn add_chain(&mut self, q: usize, descs: &[Desc]) -> Option<u16> {
        let dq = &mut self.queues[q];
        if descs.is_empty() || dq.free.len() < descs.len() {
            return None;
        }
        let ids: Vec<u16> = (0..descs.len()).filter_map(|_| dq.free.pop()).collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                ids[i + 1]
            } else {
                0
            };
            write_descriptor(
                &self.mem,
                dq.desc,
                ids[i],
                d.addr.raw_value(),
                d.len,
                flags,
                next,
            );
        }
        let head = ids[0];
        dq.chains.insert(head, ids);
        push_avail(&self.mem, dq, head);
        Some(head)
    }

    /// Writes descriptor `index` of queue `q` verbatim, for malformed chains
    /// (bad `next`, loops, INDIRECT flags...). The harness does not track it.
    pub fn write_raw_descriptor(
        &mut self,
        q: usize,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let dq = &self.queues[q];
        write_descriptor(&self.mem, dq.desc, index, addr, len, flags, next);
    }

    /// Publishes `head` in queue `q`'s avail ring without any bookkeeping,
    /// for use with [`GuestDriver::write_raw_descriptor`].
    pub fn push_raw_avail(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        push_avail(&self.mem, dq, head);
    }

    /// Notifies the device about queue `q` (a QueueNotify write).
    pub fn kick(&mut self, q: usize) {
        self.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, q as u32);
    }

    /// Takes the next used entry of queue `q`, if the device produced one.
    pub fn pop_used(&mut self, q: usize) -> Option<UsedElem> {
        let dq = &mut self.queues[q];
        let idx: u16 = self
            .mem
            .load(dq.used.unchecked_add(2), Ordering::Acquire)
            .ok()?;
        if idx == dq.last_used {
            return None;
        }
        let slot = u64::from(dq.last_used % dq.size);
        let elem = dq.used.unchecked_add(4 + 8 * slot);
        let id: u32 = self.mem.read_obj(elem).ok()?;
        let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).ok()?;
        dq.last_used = dq.last_used.wrapping_add(1);
        let id = id as u16;
        if let Some(ids) = dq.chains.remove(&id) {
            dq.free.extend(ids);
        }
        Some(UsedElem { id, len })
    }

    /// Waits up to `timeout` for the next used entry of queue `q`.
    pub fn wait_used(&mut self, q: usize, timeout: Duration) -> Option<UsedElem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(elem) = self.pop_used(q) {
                return Some(elem);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Where a split queue of `size` entries starting at `base` keeps its
/// descriptor table, avail ring and used ring (virtio 1.2, 2.7: 16-, 2- and
/// 4-byte alignment, each part right after the previous one).
///
/// virtio-queue's `MockSplitQueue::create` is not used for this: it sizes the
/// avail ring in entries rather than bytes, which puts the used ring inside
/// the avail ring once more than a few buffers are posted.
pub fn split_ring_layout(base: u64, size: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
    let desc = (base + 15) & !15;
    let avail = desc + 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
    (GuestAddress(desc), GuestAddress(avail), GuestAddress(used))
}

fn write_descriptor(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, table.unchecked_add(16 * u64::from(index)))
        .expect("descriptor table outside guest memory");
}

fn push_avail(mem: &GuestMemoryMmap, dq: &mut DriverQueue, head: u16) {
    let slot = u64::from(dq.avail_idx % dq.size);
    mem.write_obj(head, dq.avail.unchecked_add(4 + 2 * slot))
        .expect("avail ring outside guest memory");
    dq.avail_idx = dq.avail_idx.wrapping_add(1);
    // Release: the device must see the ring entry before the new index.
    mem.store(dq.avail_idx, dq.avail.unchecked_add(2), Ordering::Release)
        .expect("avail ring outside guest memory");
}

/// A tiny seeded PRNG (xorshift64*) for property-style tests: reproducible
/// from the seed, no dependency.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeds the generator; a zero seed is replaced by a fixed constant.
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
