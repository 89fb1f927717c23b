//! The virtio-balloon device driven through the MMIO transport and real guest memory: pages
//! the driver reports or inflates are really gone from the host (they read back as zeroes),
//! and nothing outside what it named is touched.

use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_STATUS,
};
use vm_memory::GuestAddress;

use super::defs::{DEFLATE_QUEUE, INFLATE_QUEUE, REPORTING_QUEUE, VIRTIO_BALLOON_F_REPORTING};
use super::Balloon;
use crate::test_utils::{Desc, GuestDriver, MEM_SIZE};

const TIMEOUT: Duration = Duration::from_secs(5);
const PAGE: u64 = 4096;
/// Where the tests put the pages they give up: far from the harness's rings and buffers.
const POOL: u64 = 32 << 20;

/// A driver that negotiated reporting and set up all three queues.
fn driver(balloon: Balloon) -> GuestDriver {
    let mut d = GuestDriver::new(Box::new(balloon));
    assert!(d.negotiate((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING)));
    assert_eq!(d.setup_queues(), 3);
    assert_eq!(d.driver_ok() & 0x4, 0x4, "device did not accept DRIVER_OK");
    d
}

/// Fills `pages` pages from `addr` with a non-zero pattern.
fn fill(d: &GuestDriver, addr: u64, pages: u64) {
    d.write_mem(GuestAddress(addr), &vec![0x5a; (pages * PAGE) as usize]);
}

/// Whether the `pages` pages from `addr` read as zeroes (dropped) or all as the pattern
/// (kept); panics on a mix.
fn dropped(d: &GuestDriver, addr: u64, pages: u64) -> bool {
    let bytes = d.read_mem(GuestAddress(addr), (pages * PAGE) as usize);
    if bytes.iter().all(|&b| b == 0) {
        true
    } else {
        assert!(bytes.iter().all(|&b| b == 0x5a), "pages partly dropped");
        false
    }
}

/// Offers `descs` on queue `q` and waits for the chain to come back.
fn request(d: &mut GuestDriver, q: usize, descs: &[Desc]) {
    d.add_chain(q, descs).expect("queue full");
    d.kick(q);
    d.wait_used(q, TIMEOUT).expect("device did not answer");
}

#[test]
fn identifies_as_balloon_offering_reporting_and_asking_for_nothing() {
    let mut d = GuestDriver::new(Box::new(Balloon::new()));
    assert_eq!(d.read_reg(VIRTIO_MMIO_DEVICE_ID), 5);
    let features = d.device_features();
    assert_eq!(
        features,
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING)
    );
    // num_pages and actual.
    assert_eq!(d.read_reg(VIRTIO_MMIO_CONFIG), 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_CONFIG + 4), 0);
}

#[test]
fn reported_free_pages_leave_the_host_and_their_neighbours_stay() {
    let balloon = Balloon::new();
    let stats = balloon.stats();
    let mut d = driver(balloon);
    fill(&d, POOL, 6);
    // Two blocks in one report, as Linux sends them (device-writable), around a kept page.
    request(
        &mut d,
        REPORTING_QUEUE,
        &[
            Desc::writable(GuestAddress(POOL + PAGE), 2 * PAGE as u32),
            Desc::writable(GuestAddress(POOL + 4 * PAGE), PAGE as u32),
        ],
    );
    assert!(!dropped(&d, POOL, 1));
    assert!(dropped(&d, POOL + PAGE, 2));
    assert!(!dropped(&d, POOL + 3 * PAGE, 1));
    assert!(dropped(&d, POOL + 4 * PAGE, 1));
    assert!(!dropped(&d, POOL + 5 * PAGE, 1));
    assert_eq!(stats.reported_bytes(), 3 * PAGE);
    // The guest uses a dropped page again: it is ordinary memory.
    fill(&d, POOL + PAGE, 1);
    assert!(!dropped(&d, POOL + PAGE, 1));
}

#[test]
fn inflated_pages_are_dropped_and_deflates_come_back() {
    let balloon = Balloon::new();
    let stats = balloon.stats();
    let mut d = driver(balloon);
    fill(&d, POOL, 4);
    // Page numbers of pages 0, 1 and 3 of the pool (a run and a single page).
    let pfn = |i: u64| ((POOL >> 12) + i) as u32;
    let list: Vec<u8> = [pfn(0), pfn(1), pfn(3)]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let buf = d.alloc(list.len() as u32);
    d.write_mem(buf, &list);
    request(
        &mut d,
        INFLATE_QUEUE,
        &[Desc::readable(buf, list.len() as u32)],
    );
    assert!(dropped(&d, POOL, 2));
    assert!(!dropped(&d, POOL + 2 * PAGE, 1));
    assert!(dropped(&d, POOL + 3 * PAGE, 1));
    assert_eq!(stats.inflated_bytes(), 3 * PAGE);
    request(
        &mut d,
        DEFLATE_QUEUE,
        &[Desc::readable(buf, list.len() as u32)],
    );
}

#[test]
fn hostile_ranges_are_refused_and_the_queue_keeps_working() {
    let balloon = Balloon::new();
    let stats = balloon.stats();
    let mut d = driver(balloon);
    fill(&d, POOL, 2);
    // Past the end of RAM, reaching past it, a partial page (kept), a huge length: all
    // answered.
    let end = MEM_SIZE;
    request(
        &mut d,
        REPORTING_QUEUE,
        &[
            Desc::writable(GuestAddress(end + PAGE), PAGE as u32),
            Desc::writable(GuestAddress(end - PAGE), 2 * PAGE as u32),
            Desc::writable(GuestAddress(POOL + 1), 100),
        ],
    );
    assert_eq!(stats.refused(), 2);
    // (Alone: the queue ends a chain whose lengths add up past 4 GiB.)
    request(
        &mut d,
        REPORTING_QUEUE,
        &[Desc::writable(GuestAddress(POOL), u32::MAX)],
    );
    assert_eq!(stats.refused(), 3);
    assert_eq!(stats.reported_bytes(), 0);
    assert!(!dropped(&d, POOL, 2));
    // Page numbers beyond RAM and a truncated list in an inflate request.
    let list: Vec<u8> = [u32::MAX, (MEM_SIZE >> 12) as u32, 7]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .chain([1, 2])
        .collect();
    let buf = d.alloc(list.len() as u32);
    d.write_mem(buf, &list);
    request(
        &mut d,
        INFLATE_QUEUE,
        &[Desc::readable(buf, list.len() as u32)],
    );
    assert_eq!(stats.refused(), 5);
    assert_eq!(stats.inflated_bytes(), PAGE);
    // Still serving.
    request(
        &mut d,
        REPORTING_QUEUE,
        &[Desc::writable(GuestAddress(POOL), PAGE as u32)],
    );
    assert!(dropped(&d, POOL, 1));
}

#[test]
fn a_driver_without_reporting_uses_two_queues() {
    let mut d = GuestDriver::new(Box::new(Balloon::new()));
    assert!(d.negotiate(1 << VIRTIO_F_VERSION_1));
    d.setup_queues();
    // The driver leaves the third queue alone, as Linux does without the feature.
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 2);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(d.driver_ok() & 0x4, 0x4);
    assert_eq!(d.read_reg(VIRTIO_MMIO_STATUS) & 0x40, 0, "device failed");
    fill(&d, POOL, 1);
    let list = ((POOL >> 12) as u32).to_le_bytes();
    let buf = d.alloc(4);
    d.write_mem(buf, &list);
    request(&mut d, INFLATE_QUEUE, &[Desc::readable(buf, 4)]);
    assert!(dropped(&d, POOL, 1));
}

#[test]
fn the_device_saves_nothing_of_its_own_and_serves_after_a_restore() {
    let mut d = driver(Balloon::new());
    d.transport().pause().unwrap();
    let state = d.transport().save_state().unwrap();
    let balloon = Balloon::new();
    let stats = balloon.stats();
    d.restore_into(Box::new(balloon), &state).unwrap();
    fill(&d, POOL, 1);
    request(
        &mut d,
        REPORTING_QUEUE,
        &[Desc::writable(GuestAddress(POOL), PAGE as u32)],
    );
    assert!(dropped(&d, POOL, 1));
    assert_eq!(stats.reported_bytes(), PAGE);
}
