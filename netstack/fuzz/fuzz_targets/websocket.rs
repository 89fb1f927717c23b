//! WebSocket frames from the guest or an upstream, fed in arbitrary pieces: the relay's frame
//! decoder must stay within its bounds, never panic, and decode re-encoded messages to
//! themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::fuzzing::websocket_frames;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (cuts, data) = input;
    websocket_frames(&data[..data.len().min(1 << 16)], &cuts);
});
