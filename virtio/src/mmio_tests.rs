//! Register-protocol tests for the virtio-mmio transport, against a fake
//! device that records what the transport asked of it.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::*;
use crate::device::ActivateError;
use crate::test_utils::{Desc, GuestDriver, XorShift, MEM_SIZE};

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const FAKE_TYPE: u32 = 42;
const FAKE_FEATURE: u64 = 1 << 3;
const FULL: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;

#[derive(Debug, Default)]
struct Calls {
    acked: Option<u64>,
    activations: usize,
    resets: usize,
    /// (size, ready, desc table, event idx) of each queue at the last activation.
    queues: Vec<(u16, bool, u64, bool)>,
    config: [u8; 8],
}

struct FakeDevice {
    calls: Arc<Mutex<Calls>>,
    features: u64,
    sizes: Vec<u16>,
    fail_activate: bool,
    can_reset: bool,
    /// Signals a used buffer as soon as it is activated (as a restored
    /// device's worker may, e.g. vsock's transport reset).
    signal_on_activate: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        FAKE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn set_acked_features(&mut self, features: u64) {
        self.calls.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let calls = self.calls.lock().unwrap();
        for (i, b) in data.iter_mut().enumerate() {
            *b = calls.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut calls = self.calls.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = calls.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<QueueWithEvent>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::QueueNotReady(0));
        }
        if self.signal_on_activate {
            interrupt.signal_used_queue();
        }
        let mut calls = self.calls.lock().unwrap();
        calls.activations += 1;
        calls.queues = queues
            .iter()
            .map(|q| {
                (
                    q.queue.size(),
                    q.queue.ready(),
                    q.queue.desc_table(),
                    q.queue.event_idx_enabled(),
                )
            })
            .collect();
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.calls.lock().unwrap().resets += 1;
        self.can_reset
    }
    fn save_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

fn fake() -> (FakeDevice, Arc<Mutex<Calls>>) {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let dev = FakeDevice {
        calls: calls.clone(),
        features: VERSION_1 | FAKE_FEATURE | (1 << VIRTIO_RING_F_EVENT_IDX),
        sizes: vec![256, 16],
        fail_activate: false,
        can_reset: true,
        signal_on_activate: false,
    };
    (dev, calls)
}

fn driver() -> (GuestDriver, Arc<Mutex<Calls>>) {
    driver_with(|_| {})
}

/// A driver for the fake device after `configure` changed it.
fn driver_with(configure: impl FnOnce(&mut FakeDevice)) -> (GuestDriver, Arc<Mutex<Calls>>) {
    let (mut dev, calls) = fake();
    configure(&mut dev);
    (GuestDriver::new(Box::new(dev)), calls)
}

#[test]
fn identification_registers_read_back_virtio_mmio_v2() {
    let (mut d, _) = driver();
    assert_eq!(d.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.read_reg(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.read_reg(VIRTIO_MMIO_DEVICE_ID), FAKE_TYPE);
    assert_eq!(d.read_reg(VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
}

#[test]
fn device_features_are_selected_by_bank() {
    let (mut d, _) = driver();
    let offered = VERSION_1 | FAKE_FEATURE | (1 << VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(d.device_features(), offered);
    d.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(d.read_reg(VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

#[test]
fn full_initialization_activates_device_with_configured_queues() {
    let (mut d, calls) = driver();
    d.init();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.acked, Some(VERSION_1));
    assert_eq!(calls.activations, 1);
    let (desc, _, _, size) = d.queue_layout(0);
    assert_eq!(calls.queues[0], (size, true, desc.0, false));
    assert_eq!(calls.queues[1].0, 16);
    assert!(calls.queues[1].1);
    // The registers still read back what the driver configured.
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn event_idx_is_passed_to_queues_when_negotiated() {
    let (mut d, calls) = driver();
    assert!(d.negotiate(VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX)));
    d.setup_queues();
    assert_eq!(d.driver_ok(), FULL);
    assert!(calls.lock().unwrap().queues.iter().all(|q| q.3));
}

#[test]
fn features_without_version_1_are_refused() {
    let (mut d, calls) = driver();
    assert!(!d.negotiate(FAKE_FEATURE));
    assert_eq!(
        d.read_reg(VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    // DRIVER_OK cannot follow a refused FEATURES_OK.
    d.write_reg(VIRTIO_MMIO_STATUS, FULL);
    assert_eq!(calls.lock().unwrap().activations, 0);
    assert_eq!(calls.lock().unwrap().acked, None);
}

#[test]
fn features_not_offered_are_refused() {
    let (mut d, calls) = driver();
    assert!(!d.negotiate(VERSION_1 | (1 << 5)));
    // A bit beyond the 64 the device can offer also fails negotiation.
    d.write_reg(VIRTIO_MMIO_STATUS, 0);
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    d.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    d.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    d.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(
        d.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    assert_eq!(calls.lock().unwrap().acked, None);
}

#[test]
fn driver_features_are_frozen_after_features_ok() {
    let (mut d, calls) = driver();
    assert!(d.negotiate(VERSION_1));
    d.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    d.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, FAKE_FEATURE as u32);
    d.setup_queues();
    d.driver_ok();
    assert_eq!(calls.lock().unwrap().acked, Some(VERSION_1));
}

#[test]
fn status_steps_out_of_order_are_ignored() {
    let (mut d, calls) = driver();
    // DRIVER without ACKNOWLEDGE.
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    // DRIVER_OK without FEATURES_OK.
    d.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    // Clearing a bit is not a step either.
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(
        d.read_reg(VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    assert_eq!(calls.lock().unwrap().activations, 0);
}

#[test]
fn failed_bit_sticks_until_reset() {
    let (mut d, calls) = driver();
    assert!(d.negotiate(VERSION_1));
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_FAILED);
    assert_ne!(d.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FAILED, 0);
    d.setup_queues();
    d.write_reg(VIRTIO_MMIO_STATUS, FULL);
    assert_eq!(calls.lock().unwrap().activations, 0);
    d.write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    d.init();
    assert_eq!(calls.lock().unwrap().activations, 1);
}

/// Puts the transport where the driver configures queues.
fn at_queue_setup() -> (GuestDriver, Arc<Mutex<Calls>>) {
    let (mut d, calls) = driver();
    assert!(d.negotiate(VERSION_1));
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    (d, calls)
}

fn set_rings(d: &mut GuestDriver, desc: u64, avail: u64, used: u64) {
    for (low, high, addr) in [
        (
            VIRTIO_MMIO_QUEUE_DESC_LOW,
            VIRTIO_MMIO_QUEUE_DESC_HIGH,
            desc,
        ),
        (
            VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
            avail,
        ),
        (
            VIRTIO_MMIO_QUEUE_USED_LOW,
            VIRTIO_MMIO_QUEUE_USED_HIGH,
            used,
        ),
    ] {
        d.write_reg(low, addr as u32);
        d.write_reg(high, (addr >> 32) as u32);
    }
}

#[test]
fn queue_num_max_reports_device_sizes_and_zero_past_the_last_queue() {
    let (mut d, _) = driver();
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    // Writes to a missing queue go nowhere.
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM, 4);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn invalid_queue_sizes_are_ignored() {
    let (mut d, calls) = at_queue_setup();
    set_rings(&mut d, 0x1_0000, 0x2_0000, 0x3_0000);
    for bad in [0, 3, 100, 512, 0x1_0010] {
        d.write_reg(VIRTIO_MMIO_QUEUE_NUM, bad);
    }
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1);
    set_rings(&mut d, 0x4_0000, 0x5_0000, 0x6_0000);
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM, 8);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(d.driver_ok(), FULL);
    let calls = calls.lock().unwrap();
    // Queue 0 kept its default size (the maximum); queue 1 took 8.
    assert_eq!(calls.queues[0].0, 256);
    assert_eq!(calls.queues[1].0, 8);
}

#[test]
fn misaligned_ring_addresses_are_ignored() {
    let (mut d, calls) = at_queue_setup();
    set_rings(&mut d, 0x1_0000, 0x2_0000, 0x3_0000);
    d.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1_0008); // needs 16-byte alignment
    d.write_reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2_0001); // needs 2
    d.write_reg(VIRTIO_MMIO_QUEUE_USED_LOW, 0x3_0002); // needs 4
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 1);
    d.driver_ok();
    assert_eq!(calls.lock().unwrap().queues[0].2, 0x1_0000);
}

#[test]
fn rings_outside_guest_memory_keep_queue_not_ready() {
    for (desc, avail, used) in [
        (MEM_SIZE, 0x2_0000, 0x3_0000),
        (0x1_0000, MEM_SIZE - 16, 0x3_0000),
        (0x1_0000, 0x2_0000, MEM_SIZE - 64),
        (0x1_0000, 0x2_0000, u64::MAX - 3),
    ] {
        let (mut d, _) = at_queue_setup();
        set_rings(&mut d, desc, avail, used);
        d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(
            d.read_reg(VIRTIO_MMIO_QUEUE_READY),
            0,
            "{desc:#x} {avail:#x} {used:#x}"
        );
    }
}

#[test]
fn queue_configuration_is_locked_when_ready_before_features_and_after_driver_ok() {
    // Before FEATURES_OK nothing sticks.
    let (mut d, _) = driver();
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    set_rings(&mut d, 0x1_0000, 0x2_0000, 0x3_0000);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);

    // Once ready, a queue's size and addresses cannot change.
    let (mut d, calls) = at_queue_setup();
    set_rings(&mut d, 0x1_0000, 0x2_0000, 0x3_0000);
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM, 64);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM, 32);
    set_rings(&mut d, 0x7_0000, 0x8_0000, 0x9_0000);
    assert_eq!(d.driver_ok(), FULL);
    assert_eq!(calls.lock().unwrap().queues[0].0, 64);
    assert_eq!(calls.lock().unwrap().queues[0].2, 0x1_0000);

    // After DRIVER_OK even clearing ready is refused.
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn queue_ready_can_be_cleared_during_setup() {
    let (mut d, calls) = at_queue_setup();
    set_rings(&mut d, 0x1_0000, 0x2_0000, 0x3_0000);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM, 32);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 7); // only 0 and 1 mean anything
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    d.driver_ok();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.queues[0].0, 32);
    assert!(!calls.queues[1].1, "queue 1 was never set up");
}

#[test]
fn queue_notify_signals_that_queues_eventfd() {
    let (mut d, _) = driver();
    let evts = d.transport().queue_events();
    assert_eq!(evts.len(), 2);
    d.init();
    d.kick(1);
    d.kick(1);
    d.kick(7); // no such queue
    assert_eq!(evts[1].read().unwrap(), 2);
    assert!(evts[0].read().is_err(), "queue 0 was not notified");
}

#[test]
fn interrupt_status_reads_and_ack_clears_bits() {
    let (mut d, _) = driver();
    d.init();
    let intr = d.transport().interrupt().clone();
    intr.signal_used_queue();
    intr.signal_config_change();
    assert_eq!(d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    assert!(d.irq().read().unwrap() >= 2);
    d.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(
        d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    d.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn reset_stops_device_clears_state_and_allows_reinitialization() {
    let (mut d, calls) = driver();
    d.init();
    d.transport().interrupt().signal_used_queue();
    d.write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(calls.lock().unwrap().resets, 1);
    d.init();
    assert_eq!(calls.lock().unwrap().activations, 2);
    // A reset before activation does not bother the device.
    let (mut d2, calls2) = driver();
    d2.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d2.write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(calls2.lock().unwrap().resets, 0);
}

#[test]
fn device_that_cannot_reset_reports_needs_reset() {
    let (mut d, calls) = driver_with(|dev| dev.can_reset = false);
    d.init();
    d.write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_NEEDS_RESET);
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(calls.lock().unwrap().activations, 1);
}

#[test]
fn activation_failure_sets_needs_reset_and_raises_config_interrupt() {
    let (mut d, calls) = driver_with(|dev| dev.fail_activate = true);
    assert!(d.negotiate(VERSION_1));
    d.setup_queues();
    let status = d.driver_ok();
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(
        d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(d.irq().read().unwrap(), 1);
    assert_eq!(calls.lock().unwrap().activations, 0);
    // Reset recovers the transport.
    d.write_reg(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn accesses_of_wrong_width_or_offset_are_ignored() {
    let (mut d, _) = driver();
    for len in [1usize, 2, 3, 8] {
        let mut data = vec![0xaau8; len];
        d.transport().read(0, &mut data);
        assert!(data.iter().all(|&b| b == 0), "{len}-byte read of magic");
        d.transport()
            .write(u64::from(VIRTIO_MMIO_STATUS), &vec![1u8; len]);
        assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    }
    let mut data = [0xaau8; 4];
    d.transport().read(2, &mut data);
    assert_eq!(data, [0; 4], "unaligned read");
    d.transport()
        .write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS), 0);
    // Holes and write-only registers read as zero.
    for off in [0x18u32, 0x20, 0x50, 0x64, 0xa8, 0xc0, 0xf8] {
        assert_eq!(d.read_reg(off), 0, "register {off:#x}");
    }
    // Writes to read-only registers do nothing.
    d.write_reg(VIRTIO_MMIO_MAGIC_VALUE, 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM_MAX, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    // Empty accesses too.
    d.transport().read(0, &mut []);
    d.transport().write(0x70, &[]);
}

#[test]
fn config_space_passes_through_at_any_width_once_driver_is_loaded() {
    let (mut d, calls) = driver();
    calls.lock().unwrap().config = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut b = [0u8; 1];
    d.transport().read(0x103, &mut b);
    assert_eq!(b, [4]);
    let mut w = [0u8; 8];
    d.transport().read(0x100, &mut w);
    assert_eq!(w, [1, 2, 3, 4, 5, 6, 7, 8]);
    let mut odd = [0xffu8; 3];
    d.transport().read(0x100, &mut odd);
    assert_eq!(odd, [0, 0, 0], "3-byte config read ignored");
    // Writes before the driver is loaded are ignored.
    d.transport().write(0x100, &[9, 9]);
    assert_eq!(calls.lock().unwrap().config[0], 1);
    assert!(d.negotiate(VERSION_1));
    d.transport().write(0x100, &[9, 9]);
    assert_eq!(calls.lock().unwrap().config[..2], [9, 9]);
}

#[test]
fn invalid_device_queue_size_fails_transport_creation() {
    let (mut dev, _) = fake();
    dev.sizes = vec![100];
    let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(MmioTransport::new(mem, Box::new(dev), irq).is_err());
}

#[test]
fn random_register_traffic_never_panics() {
    let mut rng = XorShift::new(0x5eed);
    for round in 0..20 {
        let (mut d, _) = driver();
        if round % 2 == 0 {
            d.init();
        }
        for _ in 0..2000 {
            let offset = rng.below(0x140);
            let len = [1usize, 2, 4, 8, 3][rng.below(5) as usize];
            let mut data = vec![0u8; len];
            if rng.below(2) == 0 {
                d.transport().read(offset, &mut data);
            } else {
                rng.fill(&mut data);
                // Bias toward real registers with 32-bit writes.
                if rng.below(2) == 0 {
                    let off = (offset & !3).min(0xfc);
                    d.transport().write(off, &data[..len.min(4)]);
                } else {
                    d.transport().write(offset, &data);
                }
            }
        }
    }
}

#[test]
fn transport_and_vsock_can_move_to_vcpu_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<MmioTransport>();
    assert_send::<crate::vsock::Vsock>();
}

/// A restored device that signals while it is being activated keeps its
/// interrupt status: the saved status is loaded first, so it cannot erase the
/// bit (the guest would read 0, do nothing, and never look at the queue).
#[test]
fn a_restored_device_signalling_at_activation_keeps_its_interrupt_status() {
    let (mut d, _) = driver();
    d.init();
    assert_eq!(d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    let state = d.transport().save_state().unwrap();
    let (mut dev, _) = fake();
    dev.signal_on_activate = true;
    d.restore_into(Box::new(dev), &state).unwrap();
    assert_eq!(
        d.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
}

#[test]
fn describe_reports_status_interrupt_and_ring_positions() {
    let (mut d, _calls) = driver();
    assert_eq!(
        d.transport().describe(),
        "virtio device: status 0x0, interrupt status 0x0, no queue ready"
    );
    d.init();
    // The driver made one request available on queue 0; the device completed none.
    let buf = d.alloc(16);
    d.add_chain(0, &[Desc::readable(buf, 16)]).unwrap();
    d.transport().interrupt().signal_used_queue();
    assert_eq!(
        d.transport().describe(),
        "virtio device: status 0xf, interrupt status 0x1, q0 avail 1 used 0, q1 avail 0 used 0"
    );
}
