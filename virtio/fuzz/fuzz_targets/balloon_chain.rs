//! Hostile descriptor chains from the guest into the virtio-balloon device, through real guest
//! memory, with or without free page reporting as the input picks: inflate page lists and
//! reported ranges anywhere (outside RAM, across its end, wrapping). Pages may be dropped (the
//! harness's own rings and buffers included, as a guest could do to itself); the device must
//! answer every chain, never panic or hang. See `common.rs`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use msbvm_virtio::balloon::Balloon;
use msbvm_virtio::test_utils::GuestDriver;

fuzz_target!(|data: &[u8]| {
    let mut d = GuestDriver::new(Box::new(Balloon::new()));
    let mut input = common::Input(data);
    let offered = d.device_features();
    let wanted = (offered & u64::from(input.u32())) | (1 << 32);
    if !d.negotiate(wanted & offered) {
        return;
    }
    let queues = d.setup_queues();
    d.driver_ok();
    common::run_ops(&mut d, queues, input);
});
