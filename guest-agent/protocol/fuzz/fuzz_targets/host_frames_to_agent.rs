//! Bytes as the stream the guest agent decodes from the host: the protocol crate's blocking
//! frame reader (`msbvm_protocol::framing::FrameReader`, which the agent reads with) decoding
//! `HostMessage`s until the stream ends or cannot go on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_protocol::framing::{FrameError, FrameReader};
use msbvm_protocol::HostMessage;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data);
    // Each call consumes at least one frame header or ends the stream.
    for _ in 0..data.len() + 1 {
        match reader.read_message::<HostMessage>() {
            Ok(Some(_)) => {}
            Err(e) if e.is_recoverable() => {}
            // A stream cut inside a frame must say so, never pass as a clean end.
            Err(FrameError::Truncated { received, .. }) => {
                assert!(received > 0 && received <= data.len());
                return;
            }
            Ok(None) | Err(_) => return,
        }
    }
});
