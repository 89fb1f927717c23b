//! Hostile descriptor chains and frames from the guest into the virtio-net device, through
//! real guest memory, with the features the input picks (checksum offload, TSO to the guest,
//! mergeable RX buffers). Frames for the guest may exceed the MTU, so a TCP one goes as a GSO
//! frame or is cut. Frames that reach the backend socket are read and dropped. See `common.rs`.

#![no_main]

#[path = "common.rs"]
mod common;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use libfuzzer_sys::fuzz_target;
use msbvm_virtio::net::{Net, NetDeviceConfig};
use msbvm_virtio::test_utils::GuestDriver;

fuzz_target!(|data: &[u8]| {
    let (ours, backend) = UnixDatagram::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    let net = Net::new(NetDeviceConfig {
        mac: [0x02, 0, 0, 0, 0, 1],
        mtu: 1500,
        backend: OwnedFd::from(backend),
        checksum_offload: true,
        backend_ignores_checksums: false,
        guest_tso: true,
        host_tso: true,
        host: None,
    })
    .expect("net device");
    let mut d = GuestDriver::new(Box::new(net));
    let mut input = common::Input(data);
    // The first input word picks which of the offered features the guest accepts.
    let offered = d.device_features();
    let wanted = (offered & u64::from(input.u32())) | (1 << 32);
    if !d.negotiate(wanted & offered) {
        return;
    }
    d.setup_queues();
    d.driver_ok();
    // Some frames for the guest's RX queue, so RX chains are exercised too.
    let frames = usize::from(input.u8() % 4);
    for _ in 0..frames {
        let len = usize::from(input.u16()) % 2048;
        let frame = input.bytes(len).to_vec();
        let _ = ours.send(&frame);
    }
    common::run_ops(&mut d, 2, input);
    let mut buf = vec![0u8; 65536];
    while ours.recv(&mut buf).is_ok() {}
});
