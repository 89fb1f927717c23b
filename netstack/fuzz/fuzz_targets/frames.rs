//! Guest Ethernet frames through the stack's frame handling (classification, policy on new
//! flows, hand-made answers, smoltcp's ARP/ICMP/TCP). The input is a sequence of frames, each
//! prefixed by its length as two little-endian bytes, so a SYN and what follows it can meet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::fuzzing::FrameHarness;

fuzz_target!(|data: &[u8]| {
    let mut harness = FrameHarness::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 2048;
        let frame = &rest[2..(2 + len).min(rest.len())];
        harness.frame(frame);
        rest = &rest[2 + frame.len()..];
    }
});
