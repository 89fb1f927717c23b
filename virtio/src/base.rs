//! The device base: what every device shares between the transport contract
//! ([`VirtioDevice`]) and its own queue handling.
//!
//! A device is a [`Device`]: the shared [`DeviceCommon`] (type, queue
//! sizes, features, the config space given as a plain `#[repr(C)]` struct,
//! and the [`DeviceState`]) plus the device's [`DeviceBackend`], which only
//! says how to start its [`WorkerThread`]s from an [`Activation`]. The base
//! supplies all of [`VirtioDevice`]: config reads served from the struct's
//! bytes, read-only config writes, the queue-count and queue-ready checks at
//! activation, and one reset path that stops the workers (also on drop).
//!
//! A complete device, one queue whose buffers are handed back unread:
//!
//! ```
//! use std::sync::Arc;
//! use msbvm_virtio::base::{queue_array, Activation, Device, DeviceBackend, DeviceCommon};
//! use msbvm_virtio::event_loop::{EventHandler, EventLoop, WorkerThread};
//! use msbvm_virtio::{ActivateError, GuestMemoryMmap, Interrupt};
//! use virtio_queue::{Queue, QueueOwnedT, QueueT};
//!
//! struct Sink;
//!
//! struct SinkWorker { mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queue: Queue }
//!
//! impl EventHandler for SinkWorker {
//!     fn queue_notified(&mut self, _index: usize) {
//!         while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
//!             let _ = self.queue.add_used(&self.mem, chain.head_index(), 0);
//!         }
//!         self.interrupt.signal_used_queue();
//!     }
//! }
//!
//! impl DeviceBackend for Sink {
//!     fn activate(&mut self, a: Activation) -> Result<Vec<WorkerThread>, ActivateError> {
//!         let [q] = queue_array(a.queues)?;
//!         let worker = SinkWorker { mem: a.mem, interrupt: a.interrupt, queue: q.queue };
//!         let thread = WorkerThread::spawn(
//!             "sink".into(), "sink", EventLoop::new()?, vec![q.event], worker)?;
//!         Ok(vec![thread])
//!     }
//! }
//!
//! // Type 42, one queue of 16, VERSION_1 only, no config space.
//! let common = DeviceCommon::new("sink", 42, &[16], 1 << 32, &[0u8; 0]);
//! let sink = Device::with_backend(common, Sink);
//! # let _: Box<dyn msbvm_virtio::VirtioDevice> = Box::new(sink);
//! ```

use std::sync::Arc;

use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use crate::device::{ActivateError, GuestMemoryMmap, QueueWithEvent, VirtioDevice};
use crate::event_loop::WorkerThread;
use crate::interrupt::Interrupt;

/// Whether a device is serving its queues.
#[derive(Debug, Default)]
pub enum DeviceState {
    /// Before DRIVER_OK, or after a reset: no worker runs.
    #[default]
    Inactive,
    /// Between DRIVER_OK and reset: these workers serve the queues.
    Activated(Vec<WorkerThread>),
}

/// The part of a device the base manages for it.
#[derive(Debug)]
pub struct DeviceCommon {
    name: &'static str,
    device_type: u32,
    queue_sizes: Vec<u16>,
    avail_features: u64,
    acked_features: u64,
    /// The config space's bytes, as the driver reads them.
    config: Vec<u8>,
    state: DeviceState,
}

impl DeviceCommon {
    /// A device called `name` in logs, of virtio type `device_type`, with
    /// queues of `queue_sizes`, offering `avail_features` (which must
    /// include `VIRTIO_F_VERSION_1`), and whose config space is `config`: a
    /// `#[repr(C)]` struct of little-endian fields
    /// (`struct virtio_<dev>_config`).
    pub fn new(
        name: &'static str,
        device_type: u32,
        queue_sizes: &[u16],
        avail_features: u64,
        config: &impl ByteValued,
    ) -> Self {
        Self {
            name,
            device_type,
            queue_sizes: queue_sizes.to_vec(),
            avail_features,
            acked_features: 0,
            config: config.as_slice().to_vec(),
            state: DeviceState::Inactive,
        }
    }

    /// The device's name in logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The features the driver accepted (0 before FEATURES_OK and after reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether workers are serving the queues.
    pub fn state(&self) -> &DeviceState {
        &self.state
    }

    /// Refuses an activation the device cannot take: while already active,
    /// with other than `expected` queues, or with a queue not made ready.
    fn check_activation(
        &self,
        queues: &[QueueWithEvent],
        expected: usize,
    ) -> Result<(), ActivateError> {
        if let DeviceState::Activated(_) = self.state {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        match queues.iter().position(|q| !q.queue.ready()) {
            Some(i) => Err(ActivateError::QueueNotReady(i)),
            None => Ok(()),
        }
    }

    /// Stops the workers, if any, and waits for them to end.
    pub fn stop(&mut self) {
        if let DeviceState::Activated(workers) = std::mem::take(&mut self.state) {
            WorkerThread::stop_all(workers);
        }
    }
}

impl Drop for DeviceCommon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes exactly `N` queues, in order (the base has already checked the
/// count; this only gives them names).
pub fn queue_array<const N: usize>(
    queues: Vec<QueueWithEvent>,
) -> Result<[QueueWithEvent; N], ActivateError> {
    let got = queues.len();
    queues
        .try_into()
        .map_err(|_| ActivateError::QueueCount { expected: N, got })
}

/// What a device gets at DRIVER_OK: its queues (as many as it declared, or
/// as [`DeviceBackend::queues_in_use`] says, all ready) and what it needs to
/// serve them.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory, where the rings and buffers are.
    pub mem: GuestMemoryMmap,
    /// The interrupt to signal used buffers with.
    pub interrupt: Arc<Interrupt>,
    /// The queues, in the device's order, each with its notify eventfd.
    pub queues: Vec<QueueWithEvent>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// The device-specific half of a [`Device`]: how to serve the queues.
pub trait DeviceBackend: Send {
    /// Starts serving the queues on the workers it returns; they run until
    /// the base stops them (driver reset or drop).
    fn activate(&mut self, activation: Activation) -> Result<Vec<WorkerThread>, ActivateError>;

    /// How many of the declared queues the driver uses with `acked_features`, the first
    /// ones in order (`None`, the default: all). For devices whose queues depend on the
    /// features (virtio-balloon's reporting queue): the others are left out of the
    /// [`Activation`] and need not be ready.
    fn queues_in_use(&self, acked_features: u64) -> Option<usize> {
        let _ = acked_features;
        None
    }

    /// Runs on a driver reset, after the workers stopped.
    fn reset(&mut self) {}

    /// The device's own state for a snapshot (see
    /// [`VirtioDevice::save_state`]); by default the device cannot be saved.
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Err("this device cannot be saved in a snapshot yet".into())
    }

    /// Loads [`DeviceBackend::save_state`]'s bytes before the device is
    /// activated again (see [`VirtioDevice::restore_state`]).
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Err("this device cannot be restored from a snapshot yet".into())
    }
}

/// [`DeviceBackend::restore_state`] for a device that saves nothing of its
/// own (its [`DeviceBackend::save_state`] returns no bytes): anything but
/// no bytes is refused.
pub fn restore_nothing(state: &[u8]) -> Result<(), String> {
    if state.is_empty() {
        Ok(())
    } else {
        Err(format!("unexpected {} bytes of saved state", state.len()))
    }
}

/// How long a device's workers get to finish the request in hand and park
/// for a snapshot.
pub const PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A virtio device built on the base: the shared [`DeviceCommon`] plus the
/// device's own [`DeviceBackend`]. It is the [`VirtioDevice`] the
/// transport sees.
#[derive(Debug)]
pub struct Device<B> {
    // Declared first so that dropping the device stops its workers before
    // the backend they used goes.
    common: DeviceCommon,
    backend: B,
}

impl<B: DeviceBackend> Device<B> {
    /// Puts `backend` on the base.
    pub fn with_backend(common: DeviceCommon, backend: B) -> Self {
        Self { common, backend }
    }

    /// The shared part (features, config, state).
    pub fn common(&self) -> &DeviceCommon {
        &self.common
    }

    /// The shared part, e.g. to change the config space.
    pub fn common_mut(&mut self) -> &mut DeviceCommon {
        &mut self.common
    }

    /// The device-specific part.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The device-specific part, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
}

/// Interrupts the guest for used buffers in `queue`, unless the driver
/// asked not to be (VIRTQ_AVAIL_F_NO_INTERRUPT, or EVENT_IDX's used_event).
pub fn signal_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    match queue.needs_notification(mem) {
        Ok(false) => {}
        // When in doubt, interrupt: a spurious one is harmless.
        Ok(true) | Err(_) => interrupt.signal_used_queue(),
    }
}

/// The split used ring's layout (virtio 1.2, 2.7.8): `flags` and `idx` (2 bytes each), then
/// elements of `id` and `len` (4 bytes each), all little-endian. virtio-queue keeps its own
/// copies private.
const USED_RING_HEADER: u64 = 4;
const USED_ELEMENT: u64 = 8;

/// Adds `used` (head index, bytes written) to the used ring of `queue` and lets the driver
/// see them all at once: every element is written first, then the used index moves past them
/// in one store. Nothing is published when one of them cannot be written.
///
/// A frame spread over several chains (VIRTIO_NET_F_MRG_RXBUF) must appear whole. A driver
/// that takes its first buffer reads `num_buffers` from its header and takes that many used
/// entries right away; with the index moved chain by chain it can find some missing, and
/// Linux then drops the frame (a length error), which TCP only recovers from by a
/// retransmission.
///
/// For queues without VIRTIO_RING_F_EVENT_IDX: the queue's count of entries added since the
/// last notification check, which only EVENT_IDX uses, is not kept.
pub fn add_used_together(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    use std::num::Wrapping;
    use virtio_queue::Error;
    let size = queue.size();
    if used.len() > usize::from(size) {
        return Err(Error::InvalidSize);
    }
    let ring = GuestAddress(queue.used_ring());
    let start = Wrapping(queue.next_used());
    for (i, &(head, len)) in used.iter().enumerate() {
        if head >= size {
            return Err(Error::InvalidDescriptorIndex);
        }
        // `i` is below the queue size, itself a u16.
        let slot = u64::from((start + Wrapping(i as u16)).0 % size);
        let addr = ring
            .checked_add(USED_RING_HEADER + slot * USED_ELEMENT)
            .ok_or(Error::AddressOverflow)?;
        let mut elem = [0u8; USED_ELEMENT as usize];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr).map_err(Error::GuestMemory)?;
    }
    let next = start + Wrapping(used.len() as u16);
    let idx_addr = ring.checked_add(2).ok_or(Error::AddressOverflow)?;
    mem.store(
        u16::to_le(next.0),
        idx_addr,
        std::sync::atomic::Ordering::Release,
    )
    .map_err(Error::GuestMemory)?;
    queue.set_next_used(next.0);
    Ok(())
}

/// Copies the bytes of `config` at `offset` into `data`; bytes past its end
/// read as 0.
fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| config.get(usize::try_from(o).ok()?))
            .copied()
            .unwrap_or(0);
    }
}

impl<B: DeviceBackend> VirtioDevice for Device<B> {
    fn device_type(&self) -> u32 {
        self.common.device_type
    }

    fn name(&self) -> &'static str {
        self.common.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.common.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.common.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // No device here has writable config (net's MAC is writable only
        // in legacy devices).
        debug!(
            "{}: ignoring write to read-only config at {offset:#x}",
            self.common.name
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        mut queues: Vec<QueueWithEvent>,
    ) -> Result<(), ActivateError> {
        let declared = self.common.queue_sizes.len();
        let expected = match self.backend.queues_in_use(self.common.acked_features) {
            Some(n) => n.min(declared),
            None => declared,
        };
        if queues.len() == declared {
            queues.truncate(expected);
        }
        self.common.check_activation(&queues, expected)?;
        let workers = self.backend.activate(Activation {
            mem,
            interrupt,
            queues,
            acked_features: self.common.acked_features,
        })?;
        self.common.state = DeviceState::Activated(workers);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.common.stop();
        self.backend.reset();
        self.common.acked_features = 0;
        true
    }

    fn pause(&mut self) -> Result<(), String> {
        // Asked first, so a device that cannot be saved is not paused at all.
        self.backend.save_state().map(drop)?;
        match &self.common.state {
            DeviceState::Activated(workers) => WorkerThread::pause_all(workers, PAUSE_TIMEOUT)
                .map_err(|e| format!("{}: {e}", self.common.name)),
            DeviceState::Inactive => Ok(()),
        }
    }

    fn resume(&mut self) {
        if let DeviceState::Activated(workers) = &self.common.state {
            WorkerThread::resume_all(workers);
        }
    }

    fn save_state(&self) -> Result<Vec<u8>, String> {
        self.backend
            .save_state()
            .map_err(|e| format!("{}: {e}", self.common.name))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.backend
            .restore_state(state)
            .map_err(|e| format!("{}: {e}", self.common.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_or_at_huge_offsets_are_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xff; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, u64::MAX - 1, &mut data);
        assert_eq!(data, [0; 4]);
    }

    /// A 4-entry queue whose used ring is at 0x2000 of 64 KiB of guest memory, 3 entries
    /// used already so that a batch wraps.
    fn used_queue() -> (Queue, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = Queue::new(4).unwrap();
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x1800), Some(0));
        q.set_used_ring_address(Some(0x2000), Some(0));
        q.set_ready(true);
        q.set_next_used(3);
        mem.write_obj(3u16.to_le(), GuestAddress(0x2002)).unwrap();
        (q, mem)
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(0x2002)).unwrap())
    }

    fn used_elem(mem: &GuestMemoryMmap, slot: u64) -> (u32, u32) {
        let at = GuestAddress(0x2004 + slot * 8);
        let id: u32 = mem.read_obj(at).unwrap();
        let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    #[test]
    fn used_elements_added_together_move_the_index_once_and_wrap() {
        let (mut q, mem) = used_queue();
        add_used_together(&mut q, &mem, &[(1, 100), (2, 200), (0, 50)]).unwrap();
        assert_eq!(used_idx(&mem), 6);
        assert_eq!(q.next_used(), 6);
        assert_eq!(used_elem(&mem, 3), (1, 100));
        assert_eq!(used_elem(&mem, 0), (2, 200), "slot 4 wraps to 0");
        assert_eq!(used_elem(&mem, 1), (0, 50));
    }

    #[test]
    fn nothing_is_published_when_one_element_is_bad() {
        // With the index moved per element, the driver would see the first two of a frame
        // and drop it; here it sees none of it, and the queue's position is unchanged.
        let (mut q, mem) = used_queue();
        let bad = add_used_together(&mut q, &mem, &[(1, 100), (2, 200), (9, 50)]);
        assert!(matches!(
            bad,
            Err(virtio_queue::Error::InvalidDescriptorIndex)
        ));
        assert_eq!(used_idx(&mem), 3);
        assert_eq!(q.next_used(), 3);
        let too_many = [(0u16, 0u32); 5];
        assert!(matches!(
            add_used_together(&mut q, &mem, &too_many),
            Err(virtio_queue::Error::InvalidSize)
        ));
        assert_eq!(used_idx(&mem), 3);
    }
}
