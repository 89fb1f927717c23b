//! Hostile descriptor chains and FUSE requests from the guest into the virtio-fs device,
//! through real guest memory, answered by the in-process FUSE server over an in-memory file
//! system. Readable descriptors carry the request bytes straight from the input, so the
//! fuzzer reaches the FUSE parser and every operation's handler. See `common.rs`.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use msbvm_fs::{MemoryFs, Server, ServerOptions};
use msbvm_virtio::fs::Fs;
use msbvm_virtio::test_utils::GuestDriver;

fuzz_target!(|data: &[u8]| {
    let server = Arc::new(Server::new(MemoryFs::new(), ServerOptions::default()));
    let fs = Fs::new("fuzz", 1, server).expect("fs device");
    let mut d = GuestDriver::new(Box::new(fs));
    d.init();
    common::run_ops(&mut d, 2, common::Input(data));
});
