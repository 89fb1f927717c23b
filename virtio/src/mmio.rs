//! The virtio-mmio transport (virtio 1.2, section 4.2, register layout version 2).
//!
//! One [`MmioTransport`] sits in front of each device. It implements the part
//! of the protocol every device shares: the register file, the device status
//! state machine, feature negotiation, and queue configuration. At DRIVER_OK it
//! hands the configured queues to the device ([`VirtioDevice::activate`]); a
//! status write of 0 takes them back ([`VirtioDevice::reset`]).
//!
//! The guest controls every value written here, so nothing in this file may
//! panic on them: accesses of the wrong width or at unknown offsets are logged
//! at debug level and ignored, and out-of-order status or queue writes are
//! refused the way the spec lets a device refuse them (the driver reads the
//! register back and sees its write did not take).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, error, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{GuestMemoryMmap, QueueWithEvent, VirtioDevice};
use crate::interrupt::Interrupt;

/// "virt" in little endian: the value of the MagicValue register.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 is the virtio 1.x ("modern") layout.
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("MSBV"); Linux does not look at it.
pub const MMIO_VENDOR_ID: u32 = 0x5642_534d;
/// Offset of the QueueNotify register from a transport's base: where the
/// VMM registers each queue's ioeventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// The driver-owned status bits, in the order the driver must set them
/// (virtio 1.2, 3.1.1). Each entry is the cumulative status after that step.
const INIT_STEPS: [u32; 5] = [
    0,
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK,
];

/// What a snapshot keeps of a transport: its registers, the queues as the
/// driver configured them, and the device's own state.
///
/// The queues' positions are not kept: at a pause every request the device
/// answered is in the used ring, whose idx (in guest memory, saved with it)
/// says how far the device got. A restored device starts there, and takes
/// again the chains it had taken but not answered (net's held RX buffers).
#[derive(Serialize, Deserialize)]
struct TransportState {
    device_type: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    acked_unknown_features: bool,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    interrupt_status: u32,
    queues: Vec<SavedQueue>,
    device: Vec<u8>,
}

/// One queue's configuration registers.
#[derive(Serialize, Deserialize)]
struct SavedQueue {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// The virtio-mmio register file in front of one device.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    /// The driver accepted a feature bit above 63, which no device offers.
    acked_unknown_features: bool,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    /// The device holds our queues and is serving (between DRIVER_OK and reset).
    activated: bool,
}

impl MmioTransport {
    /// Puts `device` behind a transport. `irq` is the eventfd the VMM
    /// registers as this device's irqfd.
    ///
    /// Fails if the device declares an invalid queue size or if the queue
    /// eventfds cannot be created.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(new_queue(max)?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            mem,
            device,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            acked_unknown_features: false,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// One eventfd per queue; the VMM registers each as an ioeventfd on
    /// (base + [`QUEUE_NOTIFY_OFFSET`], datamatch = queue index).
    pub fn queue_events(&self) -> Vec<EventFd> {
        self.queue_evts
            .iter()
            .filter_map(|evt| match evt.try_clone() {
                Ok(evt) => Some(evt),
                Err(e) => {
                    error!("cannot clone a virtio queue eventfd: {e}");
                    None
                }
            })
            .collect()
    }

    /// The device's interrupt (status bits plus irqfd), e.g. for the VMM to
    /// re-raise a level-triggered line.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status register, as the driver would read it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// One line on where the device and its driver are, for a guest that
    /// looks stuck: the device status, the pending interrupt bits and, per
    /// ready queue, the driver's and the device's ring positions read from
    /// guest memory (`avail` ahead of `used`: requests the device has not
    /// completed; equal with interrupt bits pending: completions the driver
    /// has not taken).
    pub fn describe(&self) -> String {
        let index_at = |ring: u64| -> String {
            // Both rings start with a 16-bit flags word, then the 16-bit index.
            GuestAddress(ring)
                .checked_add(2)
                .and_then(|at| self.mem.read_obj::<u16>(at).ok())
                .map_or_else(|| "?".to_string(), |i| i.to_string())
        };
        let queues: Vec<String> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready())
            .map(|(i, q)| {
                format!(
                    "q{i} avail {} used {}",
                    index_at(q.avail_ring()),
                    index_at(q.used_ring())
                )
            })
            .collect();
        format!(
            "{}: status {:#x}, interrupt status {:#x}, {}",
            self.device.name(),
            self.status,
            self.interrupt.status(),
            if queues.is_empty() {
                "no queue ready".to_string()
            } else {
                queues.join(", ")
            }
        )
    }

    /// Handles a guest read of `data.len()` bytes at `offset` from the base.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let reg = match access(offset, data.len()) {
            Access::Config(at) => return self.device.read_config(at, data),
            Access::Register(reg) => reg,
            Access::Invalid => {
                debug!(
                    "virtio-mmio: read of {} bytes at {offset:#x} ignored",
                    data.len()
                );
                data.fill(0);
                return;
            }
        };
        let value = match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.device.avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: a length of all ones says "absent".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` from the base.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let reg = match access(offset, data.len()) {
            // The driver may only write config once it knows the features.
            Access::Config(at) if self.status & VIRTIO_CONFIG_S_DRIVER != 0 => {
                return self.device.write_config(at, data)
            }
            Access::Register(reg) => reg,
            _ => {
                debug!(
                    "virtio-mmio: write of {} bytes at {offset:#x} ignored",
                    data.len()
                );
                return;
            }
        };
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(data);
        let value = u32::from_le_bytes(bytes);
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                self.update_queue(|q| value <= 0xffff && q.try_set_size(value as u16).is_ok())
            }
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_address(reg, value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => {
                debug!("virtio-mmio: write {value:#x} to read-only or unknown register {offset:#x}")
            }
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are only negotiable between DRIVER and FEATURES_OK.
        if self.status & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
            != VIRTIO_CONFIG_S_DRIVER
        {
            debug!(
                "virtio-mmio: driver features written in status {:#x}",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            // Bits beyond 63 are never offered; accepting one makes the
            // negotiation fail at FEATURES_OK.
            sel => {
                if value != 0 {
                    debug!("virtio-mmio: driver accepted feature bits in bank {sel}");
                    self.acked_unknown_features = true;
                }
            }
        }
    }

    /// Queue configuration is only writable while the driver sets up queues:
    /// after FEATURES_OK, before DRIVER_OK, and while the queue is not ready.
    /// `f` applies the write and says whether the value was acceptable.
    fn update_queue(&mut self, f: impl FnOnce(&mut Queue) -> bool) {
        let setup = self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
            == VIRTIO_CONFIG_S_FEATURES_OK;
        let sel = self.queue_sel;
        match self.queues.get_mut(sel as usize) {
            Some(q) if setup && !q.ready() => {
                if !f(q) {
                    debug!("virtio-mmio: invalid configuration value for queue {sel} ignored");
                }
            }
            Some(_) => debug!("virtio-mmio: queue {sel} configuration locked"),
            None => debug!("virtio-mmio: queue {sel} does not exist"),
        }
    }

    /// A write to one half of a ring address. A low half the queue refused
    /// (misaligned) reads back as the old value, which is how the driver
    /// learns it did not take.
    fn write_queue_address(&mut self, reg: u32, value: u32) {
        let ring = match reg {
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => Ring::Desc,
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => Ring::Avail,
            _ => Ring::Used,
        };
        let high = matches!(
            reg,
            VIRTIO_MMIO_QUEUE_DESC_HIGH
                | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
                | VIRTIO_MMIO_QUEUE_USED_HIGH
        );
        self.update_queue(|q| {
            if high {
                ring.set(q, None, Some(value));
                true
            } else {
                ring.set(q, Some(value), None);
                ring.get(q) as u32 == value
            }
        });
    }

    fn write_queue_ready(&mut self, value: u32) {
        let setup = self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
            == VIRTIO_CONFIG_S_FEATURES_OK;
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            debug!("virtio-mmio: ready written for missing queue {sel}");
            return;
        };
        if !setup {
            debug!("virtio-mmio: queue {sel} ready written outside queue setup");
            return;
        }
        match value {
            0 => q.set_ready(false),
            1 => {
                // is_valid() only accepts ready queues: mark it, check, undo.
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    warn!("virtio-mmio: queue {sel} rings are outside guest memory; not ready");
                    q.set_ready(false);
                }
            }
            _ => debug!("virtio-mmio: queue ready value {value} ignored"),
        }
    }

    fn notify(&self, queue: u32) {
        // Without an ioeventfd the write traps here; signal the same eventfd
        // so the device sees one kind of notification either way.
        match self.queue_evts.get(queue as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot signal queue {queue}: {e}");
                }
            }
            None => debug!("virtio-mmio: notify for missing queue {queue}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up on the device; it will reset it next.
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // NEEDS_RESET belongs to the device; the driver echoes it back.
        let device_bits = self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED);
        let old = self.status & !device_bits;
        let new = value & !(VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED);
        let (Some(old_step), Some(new_step)) = (
            INIT_STEPS.iter().position(|&s| s == old),
            INIT_STEPS.iter().position(|&s| s == new),
        ) else {
            debug!("virtio-mmio: status {value:#x} is not an initialization step (now {old:#x})");
            return;
        };
        if new_step <= old_step || device_bits != 0 {
            debug!(
                "virtio-mmio: status {value:#x} does not advance from {:#x}",
                self.status
            );
            return;
        }
        if old_step < 3 && new_step >= 3 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear is how the device refuses; the driver
            // reads the status back and gives up.
            warn!(
                "virtio-mmio: refusing driver features {:#x} (offered {:#x})",
                self.acked_features,
                self.device.avail_features()
            );
            self.status = INIT_STEPS[2];
            return;
        }
        if old_step < 3 && new_step >= 3 {
            self.device.set_acked_features(self.acked_features);
        }
        self.status = INIT_STEPS[new_step];
        if new_step == 4 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        !self.acked_unknown_features
            && self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
            && self.acked_features & !offered == 0
    }

    fn activate(&mut self) {
        if self.activated {
            self.fail("device already active");
            return;
        }
        let queues = match self.device_queues(false) {
            Ok(queues) => queues,
            Err(e) => return self.fail(&e),
        };
        match self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), queues)
        {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// The device's copies of the configured queues, each with its notify
    /// eventfd. With `resume_at_used`, each starts where the used ring says
    /// the device got to (for a restored device; see [`TransportState`]).
    fn device_queues(&self, resume_at_used: bool) -> Result<Vec<QueueWithEvent>, String> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
            // The device gets its own copy so that the registers keep
            // reading back what the driver configured.
            let mut copy = new_queue(q.max_size()).map_err(|e| e.to_string())?;
            copy.set_size(q.size());
            for ring in [Ring::Desc, Ring::Avail, Ring::Used] {
                let addr = ring.get(q);
                ring.set(&mut copy, Some(addr as u32), Some((addr >> 32) as u32));
            }
            copy.set_event_idx(event_idx);
            copy.set_ready(q.ready());
            if resume_at_used && q.ready() {
                // The used ring's idx (after its flags) is how far the
                // device had got; chains it held without answering are
                // taken again.
                let idx: u16 = self
                    .mem
                    .read_obj(GuestAddress(q.used_ring()).unchecked_add(2))
                    .map_err(|e| format!("cannot read a used ring: {e}"))?;
                copy.set_next_avail(idx);
                copy.set_next_used(idx);
            }
            let event = evt
                .try_clone()
                .map_err(|e| format!("cannot clone queue eventfd: {e}"))?;
            queues.push(QueueWithEvent { queue: copy, event });
        }
        Ok(queues)
    }

    /// For a snapshot: parks the device (if it is serving).
    pub fn pause(&mut self) -> Result<(), String> {
        if self.activated {
            self.device.pause()
        } else {
            // Not serving: nothing runs; saving it is still up to the device.
            self.device.save_state().map(drop)
        }
    }

    /// Lets a paused device go on.
    pub fn resume(&mut self) {
        if self.activated {
            self.device.resume();
        }
    }

    /// The transport's and the device's state, for a snapshot taken while
    /// the device is paused.
    pub fn save_state(&self) -> Result<Vec<u8>, String> {
        let state = TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            acked_unknown_features: self.acked_unknown_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .map(|q| SavedQueue {
                    size: q.size(),
                    ready: q.ready(),
                    desc: q.desc_table(),
                    avail: q.avail_ring(),
                    used: q.used_ring(),
                })
                .collect(),
            device: self.device.save_state()?,
        };
        postcard::to_allocvec(&state).map_err(|e| e.to_string())
    }

    /// Loads [`MmioTransport::save_state`]'s bytes into this fresh transport
    /// (whose device is of the same kind, not yet activated) and, if the
    /// device was serving, activates it again where it was. Every value is
    /// checked as a guest write would be: a crafted state is refused, never
    /// obeyed into a panic.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: TransportState = postcard::from_bytes(bytes)
            .map_err(|e| format!("the saved transport state does not decode: {e}"))?;
        if self.activated || self.status != 0 {
            return Err("the device is in use already".into());
        }
        if state.device_type != self.device.device_type() {
            return Err(format!(
                "the snapshot has a device of type {} here; this VM has type {}",
                state.device_type,
                self.device.device_type()
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "the snapshot's device has {} queues; this one has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        let base_status = state.status & !(VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED);
        let Some(step) = INIT_STEPS.iter().position(|&s| s == base_status) else {
            return Err(format!(
                "saved status {:#x} is not a valid one",
                state.status
            ));
        };
        if state.activated && step != 4 {
            return Err("the saved device is active without DRIVER_OK".into());
        }
        if step >= 3
            && (state.acked_unknown_features
                || state.acked_features & !self.device.avail_features() != 0)
        {
            return Err(format!(
                "saved features {:#x} are not all offered by this device ({:#x})",
                state.acked_features,
                self.device.avail_features()
            ));
        }
        for (i, (q, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            q.reset();
            if saved.size != q.max_size() && q.try_set_size(saved.size).is_err() {
                return Err(format!("saved queue {i} has invalid size {}", saved.size));
            }
            let rings = [
                (Ring::Desc, saved.desc),
                (Ring::Avail, saved.avail),
                (Ring::Used, saved.used),
            ];
            for (ring, addr) in rings {
                ring.set(q, Some(addr as u32), Some((addr >> 32) as u32));
                if ring.get(q) != addr {
                    return Err(format!(
                        "saved queue {i} has a misaligned ring at {addr:#x}"
                    ));
                }
            }
            if saved.ready {
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    q.set_ready(false);
                    return Err(format!("saved queue {i} lies outside guest memory"));
                }
            }
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.acked_unknown_features = state.acked_unknown_features;
        self.queue_sel = state.queue_sel;
        self.config_generation = state.config_generation;
        self.device.restore_state(&state.device)?;
        if step >= 3 {
            self.device.set_acked_features(self.acked_features);
        }
        self.status = state.status;
        // An interrupt the driver had not acknowledged is raised again: the
        // irqchip's line state came back with the VM, the eventfd did not.
        // Before activation: the device's threads start signalling at once,
        // and a status stored after them would erase their bits (the driver
        // would then find nothing to do and never look at the queue again).
        self.interrupt.restore(state.interrupt_status);
        if state.activated {
            let queues = self.device_queues(true)?;
            self.device
                .activate(self.mem.clone(), self.interrupt.clone(), queues)
                .map_err(|e| format!("cannot activate the restored device: {e}"))?;
            self.activated = true;
        }
        Ok(())
    }

    /// The device cannot go on: tell the driver (DEVICE_NEEDS_RESET plus a
    /// config-change interrupt, virtio 1.2, 2.1.2).
    fn fail(&mut self, why: &str) {
        error!(
            "virtio-mmio: device type {} failed: {why}",
            self.device.device_type()
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.activated {
            if !self.device.reset() {
                // The device keeps running with the old queues; it cannot be
                // brought back, so keep telling the driver it needs a reset.
                error!(
                    "virtio-mmio: device type {} cannot be reset",
                    self.device.device_type()
                );
                self.status = VIRTIO_CONFIG_S_NEEDS_RESET;
                return;
            }
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.acked_unknown_features = false;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }
}

/// The three rings of a split queue, by the registers that place them.
#[derive(Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}

impl Ring {
    fn get(self, q: &Queue) -> u64 {
        match self {
            Ring::Desc => q.desc_table(),
            Ring::Avail => q.avail_ring(),
            Ring::Used => q.used_ring(),
        }
    }

    /// Sets the low and/or high half of the ring's address.
    fn set(self, q: &mut Queue, low: Option<u32>, high: Option<u32>) {
        match self {
            Ring::Desc => q.set_desc_table_address(low, high),
            Ring::Avail => q.set_avail_ring_address(low, high),
            Ring::Used => q.set_used_ring_address(low, high),
        }
    }
}

/// Where a guest access lands.
enum Access {
    /// The device config space, at this offset into it (an access of 1, 2,
    /// 4 or 8 bytes).
    Config(u64),
    /// A register: a whole aligned 32-bit access below the config space
    /// (the only kind virtio-mmio defines there).
    Register(u32),
    /// Anything else; ignored.
    Invalid,
}

fn access(offset: u64, len: usize) -> Access {
    let config = u64::from(VIRTIO_MMIO_CONFIG);
    if offset >= config {
        return match len {
            1 | 2 | 4 | 8 => Access::Config(offset - config),
            _ => Access::Invalid,
        };
    }
    if len != 4 || offset & 3 != 0 {
        return Access::Invalid;
    }
    Access::Register(offset as u32)
}

fn new_queue(max_size: u16) -> std::io::Result<Queue> {
    Queue::new(max_size).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid virtio queue size {max_size}: {e}"),
        )
    })
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
