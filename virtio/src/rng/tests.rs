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

#[test]
fn a_paused_device_is_saved_and_restored_where_it_was() {
    let mut d = driver();
    let a = d.alloc(64);
    assert_eq!(request(&mut d, &[Desc::writable(a, 64)]), 64);

    d.transport().pause().unwrap();
    // A request made while the device is paused is not served...
    d.add_chain(0, &[Desc::writable(a, 32)]).unwrap();
    d.kick(0);
    assert!(d.wait_used(0, Duration::from_millis(200)).is_none());
    let state = d.transport().save_state().unwrap();

    // ...and the device restored from the snapshot serves it, once.
    d.restore_into(Box::new(Rng::new()), &state).unwrap();
    assert_eq!(
        d.wait_used(0, TIMEOUT).expect("served after restore").len,
        32
    );
    assert!(d.wait_used(0, Duration::from_millis(100)).is_none());
    // It goes on serving new requests, and its registers read as before.
    assert_eq!(request(&mut d, &[Desc::writable(a, 16)]), 16);
    assert_eq!(d.read_reg(VIRTIO_MMIO_DEVICE_ID), 4);
    assert_eq!(
        d.read_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS),
        0xf
    );
}

#[test]
fn a_restore_refuses_state_that_does_not_fit() {
    let mut d = driver();
    let state = d.transport().save_state().unwrap();
    // Garbage and truncated bytes.
    for bad in [&[][..], &[0xff; 3][..], &state[..state.len() / 2]] {
        let mut fresh = GuestDriver::new(Box::new(Rng::new()));
        assert!(fresh.restore_into(Box::new(Rng::new()), bad).is_err());
    }
    // Any single changed byte is refused or restores a usable device:
    // never a panic.
    for i in 0..state.len() {
        for delta in [1u8, 0x80] {
            let mut bent = state.clone();
            bent[i] = bent[i].wrapping_add(delta);
            let mut fresh = GuestDriver::new(Box::new(Rng::new()));
            let _ = fresh.restore_into(Box::new(Rng::new()), &bent);
        }
    }
}
