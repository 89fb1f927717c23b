//! Bytes as the stream the guest agent decodes from the host: the agent's own frame reader
//! (`msbvm_guest_agent::agent::frame`) decoding `HostMessage`s until the stream ends or
//! cannot go on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_guest_agent::agent::frame::{FrameReader, Incoming};
use msbvm_protocol::HostMessage;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data);
    // Each call consumes at least one frame header or ends the stream.
    for _ in 0..data.len() + 1 {
        match reader.read_message::<HostMessage>() {
            Ok(Some(Incoming::Message(_))) => {}
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
});
