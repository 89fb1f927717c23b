//! The virtio-rng device driven through the MMIO transport and real guest
//! memory.

use std::time::Duration;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_DEVICE_ID};
use vm_memory::GuestAddress;

use super::worker::MAX_CHAIN_BYTES;
use super::Rng;
use crate::test_utils::{Desc, GuestDriver, MEM_SIZE};

const TIMEOUT: Duration = Duration::from_secs(5);

fn driver() -> GuestDriver {
    let mut d = GuestDriver::new(Box::new(Rng::new()));
    d.init();
    d
}

/// Offers `descs` as one chain; returns the used length.
fn request(d: &mut GuestDriver, descs: &[Desc]) -> u32 {
    d.add_chain(0, descs).expect("queue full");
    d.kick(0);
    d.wait_used(0, TIMEOUT).expect("device did not answer").len
}

#[test]
fn identifies_as_rng_with_an_empty_config_space() {
    let mut d = driver();
    assert_eq!(d.read_reg(VIRTIO_MMIO_DEVICE_ID), 4);
    assert_eq!(d.read_reg(VIRTIO_MMIO_CONFIG), 0);
}

#[test]
fn writable_buffers_are_filled_with_random_bytes() {
    let mut d = driver();
    let a = d.alloc(64);
    assert_eq!(request(&mut d, &[Desc::writable(a, 64)]), 64);
    let first = d.read_mem(a, 64);
    assert_ne!(first, vec![0; 64], "64 zero bytes are not random");
    // Two buffers in one chain, the second larger than the scratch buffer.
    let b = d.alloc(16);
    let c = d.alloc(10_000);
    assert_eq!(
        request(&mut d, &[Desc::writable(b, 16), Desc::writable(c, 10_000)]),
        10_016
    );
    assert_ne!(d.read_mem(c, 10_000), vec![0; 10_000]);
    // Each request gets bytes of its own.
    assert_eq!(request(&mut d, &[Desc::writable(a, 64)]), 64);
    assert_ne!(d.read_mem(a, 64), first);
}

#[test]
fn bad_chains_are_returned_with_what_was_filled() {
    let mut d = driver();
    let a = d.alloc(4096);
    // Device-readable: nothing written.
    assert_eq!(request(&mut d, &[Desc::readable(a, 64)]), 0);
    // Writable then outside guest memory: the first part only.
    let outside = GuestAddress(MEM_SIZE + 4096);
    let chain = [Desc::writable(a, 32), Desc::writable(outside, 32)];
    assert_eq!(request(&mut d, &chain), 32);
    // A chain larger than the cap gets the cap.
    let big = d.alloc(MAX_CHAIN_BYTES as u32 + 4096);
    let chain = [Desc::writable(big, MAX_CHAIN_BYTES as u32 + 4096)];
    assert_eq!(request(&mut d, &chain), MAX_CHAIN_BYTES as u32);
}

#[test]
fn the_device_serves_again_after_a_driver_reset() {
    let mut d = driver();
    let a = d.alloc(32);
    assert_eq!(request(&mut d, &[Desc::writable(a, 32)]), 32);
    d.reset();
    d.init();
    let b = d.alloc(32);
    assert_eq!(request(&mut d, &[Desc::writable(b, 32)]), 32);
}
