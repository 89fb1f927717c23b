//! Bytes as the stream the SDK decodes from the (hostile) guest agent: framing and
//! `GuestMessage` decoding, delivered in pieces the way a socket splits them. The SDK's
//! readers (`msbvm_protocol::framing`) are this loop around `FrameDecoder`: a malformed frame
//! is skipped, an oversized one ends the connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_protocol::{Error, FrameDecoder, GuestMessage, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_message::<GuestMessage>() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(Error::Malformed(_)) => {}
                Err(_) => return,
            }
        }
        // Never more buffered than one frame and its length.
        assert!(decoder.buffered() < MAX_FRAME_LEN + 4 + piece);
    }
});
