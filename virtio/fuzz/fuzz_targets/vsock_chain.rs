//! Hostile descriptor chains and packets from the guest into the virtio-vsock device, through
//! real guest memory, with a host listener on the runtime's events port (1025) so that guest
//! connection requests reach a live Unix socket. See `common.rs` for the input format.

#![no_main]

#[path = "common.rs"]
mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;

use libfuzzer_sys::fuzz_target;
use msbvm_virtio::test_utils::GuestDriver;
use msbvm_virtio::vsock::Vsock;

/// Guest CID of the fuzzed device.
const CID: u64 = 3;

fuzz_target!(|data: &[u8]| {
    let dir = vmm_sys_util::tempdir::TempDir::new().expect("tempdir");
    let path = dir.as_path().join("vsock.sock");
    let listener = UnixListener::bind(dir.as_path().join("vsock.sock_1025")).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let vsock = Vsock::new(CID, path).expect("vsock device");
    let mut d = GuestDriver::new(Box::new(vsock));
    d.init();
    common::run_ops(&mut d, 3, common::Input(data));
    // Whatever the guest connected, the host side reads and closes it.
    while let Ok((mut stream, _)) = listener.accept() {
        let _ = stream.set_nonblocking(true);
        let _ = stream.read(&mut [0u8; 4096]);
    }
    common::drain(&mut d, 3);
});
